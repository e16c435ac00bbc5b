"""An ordered, case-insensitive header map with Envoy's pseudo-headers.

Names are stored lower-case ``str``; values ``str`` decoded as latin-1 so that
any byte round-trips. Requests carry ``:method``, ``:path``, ``:authority``
(from ``Host`` on HTTP/1.1) and ``:scheme``; responses carry ``:status``.
Route matching, header mutation and access logs all read the same map, and
the HTTP/1.1 codec turns pseudo-headers back into the request/status line.
A linear scan over a list beats a dict for the ~10 headers of a request.

A map can also start in *wire form*: the header block exactly as an upstream
sent it, still bytes. Proxying a response usually needs only its status,
framing and a couple of overwritten headers, so those are answered from a
small index and ``set()`` is recorded on the side; anything else decodes the
block first (``_decode``), after which the map is an ordinary one. The HTTP/1
encoder writes a wire-form map by stripping hop-by-hop lines from the block in
one pass instead of re-encoding every header.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import cython

# RFC 9110 section 7.6.1 plus the ones every proxy strips (Envoy does the same).
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
        "upgrade", "trailer", "proxy-authenticate", "proxy-authorization",
    }
)


_ABSENT = object()


class HeaderMap:
    if not cython.compiled:
        __slots__ = ("_items", "wire", "wire_index", "wire_sets")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(k.lower(), v) for k, v in items]
        self.wire: bytes | None = None

    @classmethod
    def of(cls, items: list[tuple[str, str]]) -> HeaderMap:
        """Adopt ``items`` (already lower-case names) without copying: for the codecs."""
        headers = cls.__new__(cls)
        headers._items = items
        headers.wire = None
        return headers

    @classmethod
    def from_wire(cls, pseudo: list[tuple[str, str]], block: bytes, index: dict[str, str | None]) -> HeaderMap:
        """A map over ``block`` (header lines, each preceded by CRLF, no final CRLF).

        ``index`` holds the values (or None when absent) of the headers that can be read
        without decoding; pseudo-headers are always indexed.
        """
        return wire_headers(pseudo, block, index)

    def _decode(self) -> None:
        """Leave wire form: decode the block into items and apply the recorded set()s."""
        block = self.wire
        self.wire = None
        items = self._items
        for line in block.split(b"\r\n")[1:]:  # type: ignore[union-attr]
            name, _, value = line.partition(b":")
            items.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
        if self.wire_sets:
            for name, value in self.wire_sets.items():
                self.set(name, value)

    # --- reading -------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name`` (lower-case expected)."""
        if self.wire is not None:
            sets = self.wire_sets
            if sets and name in sets:
                return sets[name]
            value = self.wire_index.get(name, _ABSENT)
            if value is not _ABSENT:
                return default if value is None else value  # type: ignore[return-value]
            self._decode()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        if self.wire is not None:
            self._decode()
        return [value for key, value in self._items if key == name]

    def joined(self, name: str) -> str | None:
        """All values joined by ',' as Envoy's header matchers see repeated headers."""
        values = self.get_all(name)
        return ",".join(values) if values else None

    def __contains__(self, name: object) -> bool:
        if self.wire is not None:
            self._decode()
        return any(key == name for key, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if self.wire is not None:
            self._decode()
        return iter(self._items)

    def __len__(self) -> int:
        if self.wire is not None:
            self._decode()
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        if self.wire is not None:
            self._decode()
        return list(self._items)

    # --- writing -------------------------------------------------------
    def add(self, name: str, value: str) -> None:
        if self.wire is not None:
            self._decode()
        self._items.append((name.lower(), value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by one, keeping the first position."""
        name = name.lower()
        if self.wire is not None:
            if name[0] == ":":
                self.wire_index[name] = value  # pseudo-headers live in items and the index
            else:
                # wire form: the encoder drops the block's own lines of this name
                if self.wire_sets is None:
                    self.wire_sets = {}
                self.wire_sets[name] = value
                return
        items = self._items
        for index in range(len(items)):
            if items[index][0] == name:
                items[index] = (name, value)
                # rare: drop later duplicates (scan only what follows)
                for later in range(len(items) - 1, index, -1):
                    if items[later][0] == name:
                        del items[later]
                return
        items.append((name, value))

    def set_default(self, name: str, value: str) -> None:
        if self.get(name) is None:
            self._items.append((name, value))

    def remove(self, name: str) -> int:
        if self.wire is not None:
            self._decode()
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != name]
        return before - len(self._items)

    def remove_prefix(self, prefix: str) -> None:
        if self.wire is not None:
            self._decode()
        self._items = [item for item in self._items if not item[0].startswith(prefix)]

    def copy(self) -> HeaderMap:
        if self.wire is not None:
            self._decode()
        return HeaderMap.of(list(self._items))

    # --- convenience for pseudo-headers --------------------------------
    @property
    def method(self) -> str:
        return self.get(":method") or ""

    @property
    def path(self) -> str:
        return self.get(":path") or ""

    @property
    def authority(self) -> str:
        return self.get(":authority") or ""

    def __repr__(self) -> str:
        if self.wire is not None:
            self._decode()
        return f"HeaderMap({self._items!r})"


def wire_headers(pseudo: list[tuple[str, str]], block: bytes, index: dict[str, str | None]) -> HeaderMap:
    """HeaderMap.from_wire as a function: the codecs' per-response call, made at C level."""
    headers = HeaderMap.__new__(HeaderMap)
    headers._items = pseudo
    headers.wire = block
    for name, value in pseudo:
        index[name] = value
    headers.wire_index = index
    headers.wire_sets = None
    return headers
