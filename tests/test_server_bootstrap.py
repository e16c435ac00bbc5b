"""Top-level bootstrap checks name what Tulle does not run."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from tulle.config.errors import UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.server.bootstrap import check_bootstrap, xds_settings


@pytest.mark.parametrize(("document", "field", "words"), [
    ({"dynamic_resources": {"lds_config": {"path_config_source": {"path": "/lds.yaml"}}}},
     "dynamic_resources.lds_config.path_config_source", "path_config_source"),
    ({"dynamic_resources": {"ads_config": {"api_type": "REST"}}}, "dynamic_resources.ads_config.api_type", "REST"),
    ({"dynamic_resources": {"cds_config": {"ads": {}}}}, "dynamic_resources", "without ads_config"),
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
    assert xds_settings(bootstrap) == ("xds-grpc", True)
