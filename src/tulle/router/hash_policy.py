"""RouteAction.hash_policy: the request hash for ring-hash / Maglev load balancing.

Hashes are XXH64 (seed 0) of the same bytes Envoy hashes, so a request keeps
its upstream host across workers, restarts and an Envoy/Tulle mix. Policies
are evaluated in order; each new hash is XOR-ed into the running one after a
1-bit left rotation (so equal rules do not cancel out), and a ``terminal``
policy that produced a hash stops the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cython
import xxhash
from google.protobuf import message

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.http.headers import HeaderMap
from tulle.router.matchers import RegexRewrite, ascii_lower, parse_query, to_bytes, wire

_UINT64_MASK = (1 << 64) - 1

# (headers, remote_ip) -> hash or None when the policy has nothing to hash
HashMethod = Callable[[HeaderMap, str], "int | None"]


def _xxh64(data: bytes) -> int:
    return xxhash.xxh64_intdigest(data)


def _header_method(msg: message.Message, field: str) -> HashMethod:
    check_fields(msg, ("header_name", "regex_rewrite"), field)
    if not msg.header_name:
        raise ConfigError("header_name must not be empty", field=join(field, "header_name"))
    name = ascii_lower(wire(msg.header_name))
    rewrite = RegexRewrite(msg.regex_rewrite, join(field, "regex_rewrite")) if msg.HasField(
        "regex_rewrite"
    ) else None

    def hash_header(headers: HeaderMap, remote_ip: str) -> int | None:
        values = headers.get_all(name)
        if not values:
            return None
        if rewrite is not None:
            values = [rewrite.apply(value) for value in values]
        # sorted so that the order of repeated headers does not change the hash
        values.sort()
        return _xxh64(b"".join(to_bytes(value) for value in values))

    return hash_header


def cookie_value(headers: HeaderMap, name: str) -> str | None:
    """Envoy's parseCookieValue: first cookie called ``name`` over all Cookie headers."""
    for header_value in headers.get_all("cookie"):
        for cookie in header_value.split(";"):
            key, separator, value = cookie.partition("=")
            if not separator:
                continue
            if key.lstrip(" ") != name:
                continue
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _cookie_method(msg: message.Message, field: str) -> HashMethod:
    # ttl (and path/attributes, which only shape the generated cookie) make Envoy
    # issue a Set-Cookie: not implemented.
    check_fields(msg, ("name",), field)
    if not msg.name:
        raise ConfigError("cookie name must not be empty", field=join(field, "name"))
    name = wire(msg.name)

    def hash_cookie(headers: HeaderMap, remote_ip: str) -> int | None:
        value = cookie_value(headers, name)
        return _xxh64(to_bytes(value)) if value else None

    return hash_cookie


def _hash_source_ip(headers: HeaderMap, remote_ip: str) -> int | None:
    return _xxh64(remote_ip.encode("ascii", "replace")) if remote_ip else None


def _query_parameter_method(msg: message.Message, field: str) -> HashMethod:
    check_fields(msg, ("name",), field)
    if not msg.name:
        raise ConfigError("query parameter name must not be empty", field=join(field, "name"))
    name = wire(msg.name)

    def hash_query_parameter(headers: HeaderMap, remote_ip: str) -> int | None:
        path = headers.get(":path")
        if path is None or "?" not in path:
            return None
        value = parse_query(path).get(name)
        return None if value is None else _xxh64(to_bytes(value))

    return hash_query_parameter


class HashPolicy:
    """A route's hash_policy, compiled (a cdef class when compiled: hash_key runs per request)."""

    if not cython.compiled:
        __slots__ = ("_methods",)

    def __init__(self, methods: tuple[tuple[HashMethod, bool], ...]) -> None:
        self._methods = methods

    @classmethod
    def from_protos(cls, policies: Sequence[message.Message], field: str) -> HashPolicy | None:
        methods: list[tuple[HashMethod, bool]] = []
        for index, policy in enumerate(policies):
            policy_field = f"{field}[{index}]"
            check_fields(
                policy, ("header", "cookie", "connection_properties", "query_parameter", "terminal"), policy_field
            )
            kind = policy.WhichOneof("policy_specifier")
            kind_field = join(policy_field, kind or "policy_specifier")
            method: HashMethod | None
            if kind == "header":
                method = _header_method(policy.header, kind_field)
            elif kind == "cookie":
                method = _cookie_method(policy.cookie, kind_field)
            elif kind == "connection_properties":
                check_fields(policy.connection_properties, ("source_ip",), kind_field)
                # Envoy adds no method at all for source_ip: false
                method = _hash_source_ip if policy.connection_properties.source_ip else None
            elif kind == "query_parameter":
                method = _query_parameter_method(policy.query_parameter, kind_field)
            else:
                raise ConfigError("one of header, cookie, connection_properties, query_parameter is required",
                                  field=policy_field)
            if method is not None:
                methods.append((method, policy.terminal))
        return cls(tuple(methods)) if methods else None

    def hash_key(self, headers: HeaderMap, remote_ip: str) -> int | None:
        """The request's hash; ``remote_ip`` is the downstream IP without port or brackets."""
        combined: int | None = None
        for method, terminal in self._methods:
            new_hash = method(headers, remote_ip)
            if new_hash is not None:
                if combined is None:
                    combined = new_hash
                else:
                    rotated = ((combined << 1) | (combined >> 63)) & _UINT64_MASK
                    combined = rotated ^ new_hash
            if terminal and combined is not None:
                break
        return combined
