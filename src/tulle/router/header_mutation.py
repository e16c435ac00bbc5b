"""headers_to_add / headers_to_remove at one level (Envoy's HeaderParser).

Removals run first, then every value is computed against the headers as they
were before this level's additions; overwrites are applied before appends.
Values containing '%' are substitution formats (``%DOWNSTREAM_REMOTE_ADDRESS%``,
``%%`` for a literal percent) compiled once by the access-log formatter; plain
values are stored as they are and never go through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cython
from google.protobuf import message

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.http.headers import HeaderMap
from tulle.router.matchers import ascii_lower, require_header_safe, wire
from tulle.stream_info import StreamInfo

APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3

# RFC 9110 token characters: anything else would corrupt the HTTP/1.1 header block.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _header_name(raw: str, field: str, verb: str) -> str:
    if not raw:
        raise ConfigError("header name must not be empty", field=field)
    name = ascii_lower(wire(raw))
    # Envoy: pseudo-headers and Host have dedicated route actions (rewrites).
    if name.startswith(":") or name == "host":
        raise ConfigError(f":-prefixed or host headers may not be {verb}", field=field)
    if not set(name) <= _TOKEN_CHARS:
        raise ConfigError(f"invalid header name {raw!r}", field=field)
    return name


class _HeaderToAdd:
    if not cython.compiled:
        __slots__ = ("name", "value", "formatter", "action", "keep_empty")

    def __init__(self, name: str, value: str, formatter: Any, action: int, keep_empty: bool) -> None:
        self.name = name
        self.value = value
        self.formatter = formatter
        self.action = action
        self.keep_empty = keep_empty


def _compile_value(text: str, field: str) -> Any:
    """A Formatter for values with substitution commands, None for plain text."""
    if "%" not in text:
        return None
    from tulle.access_log.formatter import compile_format  # only configs that use commands need it

    return compile_format(text, field, omit_empty_values=True)  # Envoy leaves a header empty, not "-"


def _parse_option(option: message.Message, field: str) -> _HeaderToAdd:
    check_fields(option, ("header", "append", "append_action", "keep_empty_value"), field)
    if not option.HasField("header"):
        raise ConfigError("header is required", field=join(field, "header"))
    header = option.header
    header_field = join(field, "header")
    check_fields(header, ("key", "value"), header_field)
    name = _header_name(header.key, join(header_field, "key"), "modified")
    require_header_safe(header.value, join(header_field, "value"))
    if option.HasField("append"):
        if option.append_action != APPEND_IF_EXISTS_OR_ADD:
            raise ConfigError("Both append and append_action are set and it's not allowed", field=field)
        action = APPEND_IF_EXISTS_OR_ADD if option.append.value else OVERWRITE_IF_EXISTS_OR_ADD
    else:
        action = option.append_action
        if action not in (APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS):
            raise ConfigError(f"unknown append_action {action}", field=join(field, "append_action"))
    value = wire(header.value)
    formatter = _compile_value(value, join(header_field, "value"))
    return _HeaderToAdd(name, value, formatter, action, option.keep_empty_value)


class HeaderMutation:
    """One level's header changes, compiled from the protos at config time."""

    if not cython.compiled:
        __slots__ = ("removes", "adds")

    def __init__(self, removes: tuple[str, ...], adds: tuple[_HeaderToAdd, ...]) -> None:
        self.removes = removes
        self.adds = adds

    @classmethod
    def from_protos(
        cls,
        headers_to_add: Sequence[message.Message],
        headers_to_remove: Sequence[str],
        *,
        add_field: str,
        remove_field: str,
    ) -> HeaderMutation | None:
        """None when the level changes nothing, so callers can skip it entirely."""
        adds = tuple(_parse_option(option, f"{add_field}[{i}]") for i, option in enumerate(headers_to_add))
        removes = tuple(
            _header_name(name, f"{remove_field}[{i}]", "removed") for i, name in enumerate(headers_to_remove)
        )
        if not adds and not removes:
            return None
        return cls(removes, adds)

    @cython.locals(entry="_HeaderToAdd", action=cython.long, overwrites=list, appends=list)
    def apply(self, headers: HeaderMap, info: StreamInfo | None) -> None:
        for name in self.removes:
            headers.remove(name)
        overwrites: list[tuple[str, str]] = []
        appends: list[tuple[str, str]] = []
        for entry in self.adds:
            if entry.formatter is None:
                value = entry.value
            else:
                value = entry.formatter.format(info) if info is not None else entry.value
            if not value and not entry.keep_empty:
                continue
            action = entry.action
            if action == APPEND_IF_EXISTS_OR_ADD:
                appends.append((entry.name, value))
            elif action == ADD_IF_ABSENT:
                if entry.name not in headers:
                    appends.append((entry.name, value))
            elif action == OVERWRITE_IF_EXISTS_OR_ADD or entry.name in headers:
                overwrites.append((entry.name, value))
        # Envoy's setReferenceKey: drop every existing value, then add at the end.
        for name, value in overwrites:
            headers.remove(name)
            headers.add(name, value)
        for name, value in appends:
            headers.add(name, value)


def apply_all(mutations: tuple[HeaderMutation, ...], headers: HeaderMap, info: StreamInfo | None) -> None:
    for mutation in mutations:
        mutation.apply(headers, info)
