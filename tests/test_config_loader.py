"""Bootstrap loading: strict parsing, field paths, lazy Any types, Envoy's case-insensitive enums."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from tulle.config.errors import ConfigError
from tulle.config.loader import ensure_type, load_bootstrap, parse_message, read_document, unpack_any

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _listener_with(typed_config: dict) -> dict:
    return {"static_resources": {"listeners": [{
        "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [{"filters": [{"name": "f", "typed_config": typed_config}]}],
    }]}}


def test_loads_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("node: {id: n1}\n")
    (tmp_path / "b.json").write_text('{"node": {"id": "n2"}}')
    assert load_bootstrap(str(tmp_path / "b.yaml")).node.id == "n1"
    assert load_bootstrap(str(tmp_path / "b.json")).node.id == "n2"


def test_unknown_field_names_path_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_message({"static_resources": {"clusters": [{"name": "c", "conect_timeout": "1s"}]}},
                      Bootstrap, source="b.yaml")
    message = str(err.value)
    assert message.startswith("b.yaml: static_resources.clusters[0]")
    assert "unknown field 'conect_timeout'" in message
    assert "did you mean 'connect_timeout'" in message


def test_wrong_type_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        parse_message({"admin": {"address": {"socket_address": {"port_value": "eighty"}}}}, Bootstrap)
    assert err.value.field == "admin.address.socket_address.port_value"


def test_bad_duration_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        parse_message({"name": "c", "connect_timeout": "5 seconds"}, Cluster)
    assert err.value.field == "connect_timeout"


def test_any_payload_type_is_imported_on_demand_and_validated() -> None:
    boot = parse_message(_listener_with({"@type": HCM_TYPE, "stat_prefix": "x"}), Bootstrap)
    hcm = unpack_any(boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config)
    assert hcm.stat_prefix == "x"
    with pytest.raises(ConfigError) as err:
        parse_message(_listener_with({"@type": HCM_TYPE, "stat_prefx": "x"}), Bootstrap)
    assert err.value.field.endswith("filters[0].typed_config")
    assert "stat_prefx" in err.value.reason


def test_unknown_type_url_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_message(_listener_with({"@type": "type.googleapis.com/acme.v1.Thing"}), Bootstrap)
    assert "acme.v1.Thing" in err.value.reason
    assert err.value.field == "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def test_enum_names_are_case_insensitive_like_envoy() -> None:
    cluster = parse_message({"name": "c", "type": "strict_dns", "lb_policy": "least_request"}, Cluster)
    assert Cluster.DiscoveryType.Name(cluster.type) == "STRICT_DNS"
    assert Cluster.LbPolicy.Name(cluster.lb_policy) == "LEAST_REQUEST"
    with pytest.raises(ConfigError) as err:
        parse_message({"name": "c", "type": "STRICTLY_DNS"}, Cluster)
    assert err.value.field == "type"


def test_a_single_value_for_a_repeated_field_is_a_one_element_list_like_envoy() -> None:
    cluster = parse_message({"name": "c", "health_checks": {"timeout": "1s", "interval": "1s",
                                                            "tcp_health_check": {}}}, Cluster)
    assert len(cluster.health_checks) == 1 and cluster.health_checks[0].timeout.seconds == 1
    with pytest.raises(ConfigError) as err:  # a scalar where messages belong is still an error
        parse_message({"name": "c", "health_checks": 5}, Cluster)
    assert "health_checks" in err.value.field + err.value.reason


def test_read_document_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        read_document(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        read_document(str(bad))
    assert err.value.source == str(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_document(str(tmp_path / "list.yaml"))


def test_ensure_type_for_real_and_fake_types() -> None:
    assert ensure_type("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
    assert not ensure_type("type.googleapis.com/envoy.extensions.nothing.v3.Nope")
