"""Top-level bootstrap checks name what Tulle does not run."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from tulle.config.errors import UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.server.bootstrap import check_bootstrap


@pytest.mark.parametrize(("document", "field", "words"), [
    ({"dynamic_resources": {"ads_config": {}}}, "dynamic_resources", "xDS"),
    ({"layered_runtime": {"layers": [{"name": "x", "static_layer": {}}]}}, "layered_runtime", "runtime"),
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
    }, Bootstrap))
