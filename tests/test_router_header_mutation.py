"""headers_to_add / headers_to_remove with Envoy's HeaderValueOption semantics."""

from __future__ import annotations

import sys
import types

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc

from tulle.config.errors import ConfigError
from tulle.config.loader import parse_message
from tulle.http.headers import HeaderMap
from tulle.router.header_mutation import HeaderMutation
from tulle.stream_info import StreamInfo


def mutation(adds: list[dict], removes: list[str] = ()) -> HeaderMutation | None:
    # VirtualHost carries both repeated fields, so it parses the option protos for us
    vhost = parse_message(
        {"name": "v", "domains": ["*"], "request_headers_to_add": adds, "request_headers_to_remove": list(removes)},
        rc.VirtualHost,
    )
    return HeaderMutation.from_protos(
        vhost.request_headers_to_add, vhost.request_headers_to_remove,
        add_field="vh.request_headers_to_add", remove_field="vh.request_headers_to_remove",
    )


def apply(adds: list[dict], headers: list[tuple[str, str]], removes: list[str] = ()) -> HeaderMap:
    header_map = HeaderMap(headers)
    compiled = mutation(adds, removes)
    assert compiled is not None
    compiled.apply(header_map, StreamInfo())
    return header_map


def test_nothing_configured_is_none():
    assert mutation([]) is None


def test_default_action_appends():
    result = apply([{"header": {"key": "X-A", "value": "new"}}], [("x-a", "old")])
    assert result.get_all("x-a") == ["old", "new"]


def test_add_if_absent():
    action = {"append_action": "ADD_IF_ABSENT"}
    assert apply([{"header": {"key": "x-a", "value": "new"}, **action}], [("x-a", "old")]).get_all("x-a") == ["old"]
    assert apply([{"header": {"key": "x-a", "value": "new"}, **action}], []).get_all("x-a") == ["new"]


def test_overwrite_if_exists_or_add():
    action = {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    result = apply([{"header": {"key": "x-a", "value": "new"}, **action}], [("x-a", "1"), ("x-a", "2")])
    assert result.get_all("x-a") == ["new"]
    assert apply([{"header": {"key": "x-a", "value": "new"}, **action}], []).get_all("x-a") == ["new"]


def test_overwrite_if_exists():
    action = {"append_action": "OVERWRITE_IF_EXISTS"}
    assert apply([{"header": {"key": "x-a", "value": "new"}, **action}], [("x-a", "1")]).get_all("x-a") == ["new"]
    assert "x-a" not in apply([{"header": {"key": "x-a", "value": "new"}, **action}], [("y", "1")])


def test_deprecated_append_bool():
    assert apply([{"header": {"key": "x-a", "value": "n"}, "append": False}], [("x-a", "o")]).get_all("x-a") == ["n"]
    assert apply([{"header": {"key": "x-a", "value": "n"}, "append": True}], [("x-a", "o")]).get_all("x-a") == [
        "o", "n"]


def test_append_and_append_action_together_is_refused():
    with pytest.raises(ConfigError, match="Both append and append_action") as info:
        mutation([{"header": {"key": "x-a", "value": "n"}, "append": True, "append_action": "ADD_IF_ABSENT"}])
    assert info.value.field == "vh.request_headers_to_add[0]"


def test_empty_values_are_skipped_unless_kept():
    assert "x-a" not in apply([{"header": {"key": "x-a", "value": ""}}], [])
    kept = apply([{"header": {"key": "x-a", "value": ""}, "keep_empty_value": True}], [])
    assert kept.get_all("x-a") == [""]


def test_remove_runs_before_add():
    result = apply([{"header": {"key": "x-a", "value": "new"}}], [("x-a", "old"), ("x-b", "b")], ["X-A", "x-b"])
    assert result.get_all("x-a") == ["new"]
    assert "x-b" not in result


def test_conditions_see_headers_before_this_levels_additions():
    # both ADD_IF_ABSENT entries saw no x-a, as in Envoy's deferred evaluation
    result = apply(
        [{"header": {"key": "x-a", "value": "1"}, "append_action": "ADD_IF_ABSENT"},
         {"header": {"key": "x-a", "value": "2"}, "append_action": "ADD_IF_ABSENT"}],
        [],
    )
    assert result.get_all("x-a") == ["1", "2"]


def test_overwrites_apply_before_appends():
    result = apply(
        [{"header": {"key": "x-a", "value": "appended"}},
         {"header": {"key": "x-a", "value": "overwritten"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        [("x-a", "old")],
    )
    assert result.get_all("x-a") == ["overwritten", "appended"]


@pytest.mark.parametrize("key", [":path", ":authority", "host", "Host"])
def test_pseudo_and_host_headers_may_not_be_modified(key):
    with pytest.raises(ConfigError, match="may not be modified") as info:
        mutation([{"header": {"key": key, "value": "v"}}])
    assert info.value.field == "vh.request_headers_to_add[0].header.key"


@pytest.mark.parametrize("name", [":path", "host"])
def test_pseudo_and_host_headers_may_not_be_removed(name):
    with pytest.raises(ConfigError, match="may not be removed") as info:
        mutation([], [name])
    assert info.value.field == "vh.request_headers_to_remove[0]"


def test_invalid_names_and_values_are_refused():
    with pytest.raises(ConfigError) as info:
        mutation([{"header": {"key": "bad name", "value": "v"}}])
    assert info.value.field == "vh.request_headers_to_add[0].header.key"
    with pytest.raises(ConfigError) as info:
        mutation([{"header": {"key": "x-a", "value": "a\r\nx-injected: 1"}}])
    assert info.value.field == "vh.request_headers_to_add[0].header.value"


def test_raw_value_is_unsupported():
    with pytest.raises(ConfigError) as info:
        mutation([{"header": {"key": "x-a", "raw_value": "YQ=="}}])
    assert info.value.field == "vh.request_headers_to_add[0].header.raw_value"


def test_plain_values_never_load_the_formatter(monkeypatch):
    # a None entry makes any import of the module fail
    monkeypatch.setitem(sys.modules, "tulle.access_log.formatter", None)
    assert apply([{"header": {"key": "x-a", "value": "plain"}}], []).get_all("x-a") == ["plain"]


def test_percent_values_are_compiled_once_and_formatted_per_request(monkeypatch):
    compiled: list[tuple[str, str]] = []

    class Formatter:
        def __init__(self, text: str) -> None:
            self.text = text

        def format(self, info: StreamInfo) -> str:
            return self.text.replace("%DOWNSTREAM_REMOTE_ADDRESS%", info.downstream_remote_address)

    def compile_format(text: str, field: str, *, omit_empty_values: bool = False) -> Formatter:
        compiled.append((text, field, omit_empty_values))
        return Formatter(text)

    fake = types.ModuleType("tulle.access_log.formatter")
    fake.compile_format = compile_format  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tulle.access_log.formatter", fake)
    compiled_mutation = mutation([{"header": {"key": "x-client", "value": "ip=%DOWNSTREAM_REMOTE_ADDRESS%"}}])
    assert compiled == [("ip=%DOWNSTREAM_REMOTE_ADDRESS%", "vh.request_headers_to_add[0].header.value", True)]
    for address in ("10.0.0.1:5", "10.0.0.2:6"):
        headers = HeaderMap()
        compiled_mutation.apply(headers, StreamInfo(downstream_remote_address=address))
        assert headers.get_all("x-client") == [f"ip={address}"]
    assert len(compiled) == 1


def test_percent_values_with_the_real_formatter():
    formatter_module = pytest.importorskip("tulle.access_log.formatter")
    assert hasattr(formatter_module, "compile_format")
    compiled_mutation = mutation([
        {"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}},
        {"header": {"key": "x-percent", "value": "100%%"}},
    ])
    headers = HeaderMap()
    compiled_mutation.apply(headers, StreamInfo(downstream_remote_address="192.0.2.7:4242"))
    assert headers.get("x-client") == "192.0.2.7:4242"
    assert headers.get("x-percent") == "100%"
