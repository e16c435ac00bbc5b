"""Envoy's default tag extraction: ``cluster.foo.upstream_rq_200`` -> ``cluster.upstream_rq``
with tags ``envoy.response_code=200`` and ``envoy.cluster_name=foo``.

Follows Envoy's TagProducer: every extractor is tried against the *full* stat
name; each match contributes one tag and marks a span of characters to cut
out, and the tag-extracted name is what remains once all spans are removed.
Extractors that cannot be indexed by the name's first token run first, then
the ones registered for that first token, each in Envoy's declaration order
(that order is also the label order in the Prometheus output). Only the first
successful extractor per tag name counts, as in Envoy.

Only the extractors for stats Tulle can emit are listed (HTTP, TCP, UDP,
clusters, listeners, virtual hosts, workers, local rate limits); the
protocol-specific ones (Mongo, DynamoDB, TLS ciphers, ...) have nothing to
match here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Envoy's well_known_names.cc shorthands.
_TAG_VALUE = r"[^\.]+"
_ADDRESS = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"

RESPONSE_CODE = "envoy.response_code"
RESPONSE_CODE_CLASS = "envoy.response_code_class"
HTTP_USER_AGENT = "envoy.http_user_agent"
VIRTUAL_CLUSTER = "envoy.virtual_cluster"
FAULT_DOWNSTREAM_CLUSTER = "envoy.fault_downstream_cluster"
TCP_PREFIX = "envoy.tcp_prefix"
UDP_PREFIX = "envoy.udp_prefix"
RATELIMIT_PREFIX = "envoy.ratelimit_prefix"
CLUSTER_NAME = "envoy.cluster_name"
HTTP_CONN_MANAGER_PREFIX = "envoy.http_conn_manager_prefix"
WORKER_ID = "envoy.worker_id"
LISTENER_ADDRESS = "envoy.listener_address"
VIRTUAL_HOST = "envoy.virtual_host"
RDS_ROUTE_CONFIG = "envoy.rds_route_config"
ROUTE = "envoy.route"
LOCAL_HTTP_RATELIMIT_PREFIX = "envoy.local_http_ratelimit_prefix"
LOCAL_NETWORK_RATELIMIT_PREFIX = "envoy.local_network_ratelimit_prefix"


@dataclass(frozen=True)
class _RegexExtractor:
    """Group 1 is cut from the name; group 2 (or group 1 if absent/empty) is the value."""

    name: str
    pattern: str
    substr: str = ""
    negative_value: str = ""
    compiled: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", None)

    def regex(self) -> Any:
        """Compiled on first use: re2 costs ~1.6 MB of RSS that a proxy never scraped need not pay."""
        if self.compiled is None:
            import re2

            object.__setattr__(self, "compiled", re2.compile(self.pattern))
        return self.compiled

    @property
    def prefix(self) -> str:
        return _regex_prefix(self.pattern)

    def extract(self, stat_name: str, _tokens: list[str]) -> tuple[str, int, int] | None:
        if self.substr and self.substr not in stat_name:
            return None
        match = self.regex().search(stat_name)
        if match is None or not match.group(1):
            return None
        value = match.group(2) or match.group(1)
        if self.negative_value and value == self.negative_value:
            return None
        return value, match.start(1), match.end(1)


@dataclass(frozen=True)
class _TokenExtractor:
    """Dot-separated pattern: literal tokens, ``*`` (one token), ``**`` (any), ``$`` (the value)."""

    name: str
    pattern: str

    @property
    def _pattern_tokens(self) -> list[str]:
        return self.pattern.split(".")

    @property
    def prefix(self) -> str:
        first = self.pattern.split(".", 1)[0]
        return "" if first in ("$", "*", "**") else first

    def extract(self, stat_name: str, tokens: list[str]) -> tuple[str, int, int] | None:
        found = _match_tokens(self._pattern_tokens, 0, tokens, 0, 0)
        if found is None:
            return None
        index, start = found
        value = tokens[index]
        end = start + len(value)
        # Cut the dot after the value, or before it when the value is the last token.
        if index < len(tokens) - 1:
            end += 1
        elif start > 0:
            start -= 1
        return value, start, end


def _match_tokens(
    pattern: list[str], p: int, tokens: list[str], t: int, offset: int,
    capture: tuple[int, int] | None = None,
) -> tuple[int, int] | None:
    """Match ``pattern[p:]`` against ``tokens[t:]``; return (value token index, its char offset).

    A trailing ``**`` needs at least one token, a middle one matches zero or more (as in Envoy).
    """
    while p < len(pattern) and t < len(tokens):
        expected = pattern[p]
        if expected == "$":
            capture = (t, offset)
        elif expected == "**":
            if p == len(pattern) - 1:
                return capture
            for skip in range(t, len(tokens)):
                found = _match_tokens(pattern, p + 1, tokens, skip, offset, capture)
                if found is not None:
                    return found
                offset += len(tokens[skip]) + 1
            return None
        elif expected != "*" and expected != tokens[t]:
            return None
        offset += len(tokens[t]) + 1
        p += 1
        t += 1
    return capture if p == len(pattern) and t == len(tokens) else None


def _regex_prefix(pattern: str) -> str:
    """Envoy's extractRegexPrefix: ``^word\\.`` (or ``^word$``) -> ``word``."""
    if not pattern.startswith("^"):
        return ""
    for i in range(1, len(pattern)):
        char = pattern[i]
        if char.isalnum() or char == "_":
            continue
        if i > 1:
            rest = pattern[i:]
            last = i == len(pattern) - 1
            if (not last and (rest.startswith("\\.") or rest.startswith("(?=\\."))) or (
                last and char == "$"
            ):
                return pattern[1:i]
        return ""
    return ""


def _expand(pattern: str) -> str:
    return pattern.replace("<ADDRESS>", _ADDRESS).replace("<TAG_VALUE>", _TAG_VALUE)


# Envoy's declaration order (well_known_names.cc), restricted to what Tulle emits.
_EXTRACTORS: tuple[_RegexExtractor | _TokenExtractor, ...] = (
    _RegexExtractor(RESPONSE_CODE, r"_rq(_(\d{3}))$", "_rq_"),
    _RegexExtractor(RESPONSE_CODE_CLASS, r"_rq_((\d))xx$", "_rq_"),
    _TokenExtractor(HTTP_USER_AGENT, "http.*.user_agent.$.**"),
    _TokenExtractor(VIRTUAL_CLUSTER, "vhost.*.vcluster.$.**"),
    _TokenExtractor(FAULT_DOWNSTREAM_CLUSTER, "http.*.fault.$.**"),
    _TokenExtractor(TCP_PREFIX, "tcp.$.**"),
    _TokenExtractor(UDP_PREFIX, "udp.$.**"),
    _TokenExtractor(RATELIMIT_PREFIX, "ratelimit.$.**"),
    _TokenExtractor(CLUSTER_NAME, "cluster.$.**"),
    _RegexExtractor(HTTP_CONN_MANAGER_PREFIX, _expand(r"^listener\..*?\.http\.((<TAG_VALUE>)\.)"), ".http."),
    _TokenExtractor(HTTP_CONN_MANAGER_PREFIX, "http.$.**"),
    _RegexExtractor(
        WORKER_ID,
        _expand(r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)\.|server\.|listener_manager\.)worker_((\d+)\.)"),
    ),
    _RegexExtractor(LISTENER_ADDRESS, _expand(r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)"), "", "admin"),
    _TokenExtractor(VIRTUAL_HOST, "vhost.$.**"),
    _RegexExtractor(RDS_ROUTE_CONFIG, _expand(r"^http\.<TAG_VALUE>\.rds\.(([\w\-\.]+)\.)\w+?$"), ".rds."),
    _TokenExtractor(ROUTE, "vhost.*.route.$.**"),
    _TokenExtractor(LOCAL_HTTP_RATELIMIT_PREFIX, "$.http_local_rate_limit.**"),
    _TokenExtractor(LOCAL_NETWORK_RATELIMIT_PREFIX, "local_rate_limit.$.**"),
)

_UNPREFIXED = tuple(e for e in _EXTRACTORS if not e.prefix)
_BY_PREFIX: dict[str, tuple[_RegexExtractor | _TokenExtractor, ...]] = {}
for _extractor in _EXTRACTORS:
    if _extractor.prefix:
        _BY_PREFIX[_extractor.prefix] = _BY_PREFIX.get(_extractor.prefix, ()) + (_extractor,)

Tags = tuple[tuple[str, str], ...]
_cache: dict[str, tuple[str, Tags]] = {}
_CACHE_LIMIT = 100_000


def extract_tags(stat_name: str) -> tuple[str, Tags]:
    """Return (tag-extracted name, ((tag name, value), ...)) for a full Envoy stat name."""
    cached = _cache.get(stat_name)
    if cached is not None:
        return cached
    tokens = stat_name.split(".")
    tags: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    seen: set[str] = set()
    candidates = _UNPREFIXED + _BY_PREFIX.get(tokens[0], ()) if len(tokens) > 1 else _UNPREFIXED
    for extractor in candidates:
        if extractor.name in seen:
            continue
        found = extractor.extract(stat_name, tokens)
        if found is None:
            continue
        value, start, end = found
        seen.add(extractor.name)
        tags.append((extractor.name, value))
        spans.append((start, end))
    result = (_remove_spans(stat_name, spans), tuple(tags))
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[stat_name] = result
    return result


def _remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    pieces = []
    position = 0
    for start, end in sorted(spans):
        if start > position:
            pieces.append(text[position:start])
        position = max(position, end)
    pieces.append(text[position:])
    return "".join(pieces)
