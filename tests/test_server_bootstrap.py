"""Top-level bootstrap checks name what Tulle does not run."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.server.bootstrap import check_bootstrap, file_sources, initial_fetch_timeout, xds_settings


@pytest.mark.parametrize(("document", "field", "words"), [
    ({"dynamic_resources": {"lds_config": {"api_config_source": {"api_type": "REST"}}}},
     "dynamic_resources.lds_config.api_config_source", "api_config_source"),
    ({"dynamic_resources": {"ads_config": {"api_type": "REST"}}}, "dynamic_resources.ads_config.api_type", "REST"),
    ({"tracing": {}}, "tracing", "tracing"),
    ({"stats_sinks": [{"name": "s"}]}, "stats_sinks", "prometheus"),
    ({"static_resources": {"secrets": [{"name": "s"}]}}, "static_resources.secrets", "secrets"),
    ({"admin": {"access_log_path": "/tmp/admin.log"}}, "admin.access_log_path", "/dev/null"),
    ({"stats_flush_interval": "5s"}, "stats_flush_interval", "stats_flush_interval"),
])
def test_unsupported_top_level_parts_are_refused(document: dict, field: str, words: str) -> None:
    with pytest.raises(UnsupportedFeature) as err:
        check_bootstrap(parse_message(document, Bootstrap))
    assert err.value.field == field
    assert words in str(err.value)


def test_an_ads_source_needs_ads_config_and_files_do_not() -> None:
    with pytest.raises(ConfigError, match="ADS must be configured"):
        check_bootstrap(parse_message({"dynamic_resources": {"cds_config": {"ads": {}}}}, Bootstrap))
    files = parse_message({"dynamic_resources": {"lds_config": {"path_config_source": {"path": "/lds.yaml"}},
                                                 "cds_config": {"path_config_source": {"path": "/cds.yaml"}}}},
                          Bootstrap)
    check_bootstrap(files)
    assert xds_settings(files) is None  # no ADS stream: both come from files
    assert file_sources(files) == {"type.googleapis.com/envoy.config.listener.v3.Listener": "/lds.yaml",
                                   "type.googleapis.com/envoy.config.cluster.v3.Cluster": "/cds.yaml"}


def test_supported_top_level_parts_pass() -> None:
    check_bootstrap(parse_message({
        "node": {"id": "n", "cluster": "c"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                  "access_log_path": "/dev/null"},
        "static_resources": {"listeners": [], "clusters": []},
        "layered_runtime": {"layers": [{"name": "x", "static_layer": {}}]},  # checked by tulle.runtime
    }, Bootstrap))


def test_ads_bootstrap_is_accepted_and_names_the_xds_cluster() -> None:
    bootstrap = parse_message({"dynamic_resources": {
        "ads_config": {"api_type": "DELTA_GRPC", "transport_api_version": "V3",
                       "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
        "lds_config": {"ads": {}, "resource_api_version": "V3"},
        "cds_config": {"ads": {}, "resource_api_version": "V3"},
    }}, Bootstrap)
    check_bootstrap(bootstrap)
    settings = xds_settings(bootstrap)
    assert settings is not None
    assert (settings.cluster, settings.delta, settings.max_receive_message_length) == ("xds-grpc", True, 0)
    assert settings.lds_config is not None and settings.cds_config is not None


def _ads(**dynamic: object) -> Bootstrap:
    return parse_message({"dynamic_resources": {
        "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                       "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
        **dynamic,
    }}, Bootstrap)


def test_listeners_and_clusters_come_over_ads_only_when_the_bootstrap_asks() -> None:
    only_clusters = xds_settings(_ads(cds_config={"ads": {}, "initial_fetch_timeout": "2s"}))
    assert only_clusters is not None
    assert only_clusters.lds_config is None
    assert initial_fetch_timeout(only_clusters.cds_config) == 2.0
    neither = xds_settings(_ads())
    assert neither is not None and neither.lds_config is None and neither.cds_config is None


def test_initial_fetch_timeout_defaults_to_envoys_15s_and_0_disables_it() -> None:
    settings = xds_settings(_ads(lds_config={"ads": {}}, cds_config={"ads": {}, "initial_fetch_timeout": "0s"}))
    assert settings is not None
    assert initial_fetch_timeout(settings.lds_config) == 15.0
    assert initial_fetch_timeout(settings.cds_config) == 0.0


def test_max_receive_message_length_is_read_from_envoy_grpc() -> None:
    bootstrap = _ads()
    bootstrap.dynamic_resources.ads_config.grpc_services[0].envoy_grpc.max_receive_message_length.value = 1 << 20
    check_bootstrap(bootstrap)
    settings = xds_settings(bootstrap)
    assert settings is not None and settings.max_receive_message_length == 1 << 20
