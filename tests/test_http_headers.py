"""HeaderMap: ordered, case-insensitive, repeated headers, pseudo-headers, and wire form
behaving exactly like the decoded map."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tulle.http.headers import HOP_BY_HOP, HeaderMap


def request_map() -> HeaderMap:
    return HeaderMap([
        (":method", "GET"), (":path", "/a?b=c"), (":authority", "example.com"), (":scheme", "http"),
        ("Accept", "text/html"), ("X-Multi", "one"), ("user-agent", "curl"), ("x-multi", "two"),
    ])


def test_names_are_lower_cased_and_order_kept() -> None:
    headers = request_map()
    assert [name for name, _ in headers][4:] == ["accept", "x-multi", "user-agent", "x-multi"]
    assert len(headers) == 8
    assert headers.items()[4] == ("accept", "text/html")


def test_get_returns_the_first_value_or_default() -> None:
    headers = request_map()
    assert headers.get("x-multi") == "one"
    assert headers.get("missing") is None
    assert headers.get("missing", "fallback") == "fallback"
    assert "accept" in headers
    assert "missing" not in headers


def test_get_all_and_joined_see_every_value() -> None:
    headers = request_map()
    assert headers.get_all("x-multi") == ["one", "two"]
    assert headers.joined("x-multi") == "one,two"
    assert headers.get_all("missing") == []
    assert headers.joined("missing") is None
    assert headers.joined("accept") == "text/html"


def test_pseudo_header_properties() -> None:
    headers = request_map()
    assert (headers.method, headers.path, headers.authority) == ("GET", "/a?b=c", "example.com")
    empty = HeaderMap()
    assert (empty.method, empty.path, empty.authority) == ("", "", "")


def test_add_appends_another_value() -> None:
    headers = request_map()
    headers.add("X-Multi", "three")
    assert headers.get_all("x-multi") == ["one", "two", "three"]
    assert headers.items()[-1] == ("x-multi", "three")


def test_set_replaces_all_values_in_the_first_position() -> None:
    headers = request_map()
    headers.set("X-Multi", "only")
    assert headers.get_all("x-multi") == ["only"]
    names = [name for name, _ in headers]
    assert names.index("x-multi") == 5  # where the first one was
    assert names.count("x-multi") == 1
    assert len(headers) == 7


def test_set_appends_an_absent_header() -> None:
    headers = request_map()
    headers.set("x-new", "1")
    assert headers.items()[-1] == ("x-new", "1")


def test_set_default_only_adds_when_absent() -> None:
    headers = request_map()
    headers.set_default("accept", "*/*")
    headers.set_default("x-forwarded-proto", "http")
    assert headers.get_all("accept") == ["text/html"]
    assert headers.get("x-forwarded-proto") == "http"


def test_remove_returns_how_many_went() -> None:
    headers = request_map()
    assert headers.remove("x-multi") == 2
    assert headers.remove("x-multi") == 0
    assert "x-multi" not in headers
    assert len(headers) == 6


def test_remove_prefix() -> None:
    headers = HeaderMap([("x-envoy-a", "1"), ("x-envoy-b", "2"), ("x-other", "3")])
    headers.remove_prefix("x-envoy-")
    assert headers.items() == [("x-other", "3")]


def test_copy_is_independent() -> None:
    headers = request_map()
    clone = headers.copy()
    clone.set("accept", "changed")
    clone.add("x-extra", "1")
    assert headers.get("accept") == "text/html"
    assert "x-extra" not in headers
    assert clone.get("accept") == "changed"


def test_values_round_trip_any_latin1_byte() -> None:
    raw = bytes(range(0x20, 0x100)).decode("latin-1")
    headers = HeaderMap([("x-bytes", raw)])
    assert headers.get("x-bytes").encode("latin-1") == bytes(range(0x20, 0x100))


def test_hop_by_hop_names() -> None:
    for name in ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"):
        assert name in HOP_BY_HOP
    assert "content-length" not in HOP_BY_HOP
    assert "host" not in HOP_BY_HOP


# --------------------------------------------------------------------------- wire form


WIRE_HEADERS = [("content-type", "text/plain"), ("x-multi", "one"), ("server", "upstream"),
                ("x-multi", "two"), ("content-length", "5")]
INDEXED = ("content-type", "content-length", "server", "transfer-encoding")


def wire_map() -> HeaderMap:
    block = b"".join(b"\r\n%s: %s" % (name.encode(), value.encode()) for name, value in WIRE_HEADERS)
    index: dict[str, str | None] = {}
    for name in INDEXED:
        index[name] = next((value for key, value in WIRE_HEADERS if key == name), None)
    return HeaderMap.from_wire([(":status", "200")], block, index)


def decoded_map() -> HeaderMap:
    return HeaderMap([(":status", "200"), *WIRE_HEADERS])


Operation = Callable[[HeaderMap], object]
OPERATIONS: dict[str, Operation] = {
    "get indexed": lambda h: h.get("content-type"),
    "get indexed absent": lambda h: h.get("transfer-encoding", "none"),
    "get other": lambda h: h.get("x-multi"),
    "get_all": lambda h: h.get_all("x-multi"),
    "joined": lambda h: h.joined("x-multi"),
    "contains": lambda h: ("x-multi" in h, "nope" in h),
    "len": len,
    "items": lambda h: h.items(),
    "status": lambda h: h.get(":status"),
    "set then get": lambda h: (h.set("server", "envoy"), h.get("server"), h.get_all("server"))[1:],
    "set then items": lambda h: (h.set("server", "envoy"), sorted(h.items()))[1],
    "set new then items": lambda h: (h.set("x-new", "1"), h.get("x-new"), sorted(h.items()))[1:],
    "set repeated": lambda h: (h.set("x-multi", "only"), h.get_all("x-multi"))[1],
    "add": lambda h: (h.add("x-multi", "three"), h.get_all("x-multi"))[1],
    "remove": lambda h: (h.remove("x-multi"), h.items())[1],
    "set then remove": lambda h: (h.set("server", "envoy"), h.remove("server"), h.get("server"))[1:],
    "set_default present": lambda h: (h.set_default("server", "envoy"), h.get_all("server"))[1],
    "set_default absent": lambda h: (h.set_default("via", "tulle"), h.get_all("via"))[1],
    "copy": lambda h: h.copy().items(),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_wire_form_behaves_like_the_decoded_map(operation: str) -> None:
    apply = OPERATIONS[operation]
    assert apply(wire_map()) == apply(decoded_map())


def test_wire_form_set_status_pseudo_header() -> None:
    headers = wire_map()
    headers.set(":status", "503")
    assert headers.get(":status") == "503"
    assert headers.get("x-multi") == "one"
    assert headers.items()[0] == (":status", "503")


def test_of_adopts_items_without_copying() -> None:
    items = [(":status", "200"), ("a", "1")]
    headers = HeaderMap.of(items)
    headers.add("b", "2")
    assert headers.get("b") == "2"
    assert headers.get("a") == "1"
