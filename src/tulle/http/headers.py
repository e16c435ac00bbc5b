"""An ordered, case-insensitive header map with Envoy's pseudo-headers.

Names are stored lower-case ``str``; values ``str`` decoded as latin-1 so that
any byte round-trips. Requests carry ``:method``, ``:path``, ``:authority``
(from ``Host`` on HTTP/1.1) and ``:scheme``; responses carry ``:status``.
Route matching, header mutation and access logs all read the same map, and
the HTTP/1.1 codec turns pseudo-headers back into the request/status line.
A linear scan over a list beats a dict for the ~10 headers of a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# RFC 9110 section 7.6.1 plus the ones every proxy strips (Envoy does the same).
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
        "upgrade", "trailer", "proxy-authenticate", "proxy-authorization",
    }
)


class HeaderMap:
    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(k.lower(), v) for k, v in items]

    # --- reading -------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name`` (lower-case expected)."""
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self._items if key == name]

    def joined(self, name: str) -> str | None:
        """All values joined by ',' as Envoy's header matchers see repeated headers."""
        values = self.get_all(name)
        return ",".join(values) if values else None

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    # --- writing -------------------------------------------------------
    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by one, keeping the first position."""
        name = name.lower()
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
        if name not in self:
            self._items.append((name, value))

    def remove(self, name: str) -> int:
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != name]
        return before - len(self._items)

    def remove_prefix(self, prefix: str) -> None:
        self._items = [item for item in self._items if not item[0].startswith(prefix)]

    def copy(self) -> HeaderMap:
        clone = HeaderMap.__new__(HeaderMap)
        clone._items = list(self._items)
        return clone

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
        return f"HeaderMap({self._items!r})"
