"""Request matchers compiled at config time: regexes, string, header and query matchers.

Header values follow HeaderMap's convention: ``str`` decoded as latin-1, one
character per wire byte. Config strings are unicode, so :func:`wire` turns
them into the same representation (their UTF-8 bytes as latin-1 characters);
comparisons are then byte-exact, as in Envoy. Regexes are RE2 compiled from
the UTF-8 pattern (Envoy's default options) and run on the raw wire bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import cython
from google.protobuf import message

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.http.headers import HeaderMap

# Envoy's default for the runtime key re2.max_program_size.error_level: a more
# complex regex is refused at config time.
MAX_REGEX_PROGRAM_SIZE = 100

StringPredicate = Callable[[str], bool]
HeaderPredicate = Callable[[HeaderMap], bool]
QueryPredicate = Callable[[dict[str, str]], bool]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_SPACE = " \t\n\v\f\r"
_FORBIDDEN_IN_HEADERS = ("\x00", "\r", "\n")


def wire(text: str) -> str:
    """A config string in HeaderMap's representation (UTF-8 bytes as latin-1 chars)."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


def to_bytes(value: str) -> bytes:
    """Wire bytes of a HeaderMap value (values built elsewhere may hold wider chars)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only, like absl::AsciiStrToLower (Python's lower() is Unicode-wide)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def simple_atoi(text: str, low: int, high: int) -> int | None:
    """absl::SimpleAtoi: optional surrounding ASCII whitespace and sign, base 10, in range."""
    text = text.strip(_ASCII_SPACE)
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    number = int(text)
    return number if low <= number <= high else None


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1


def remove_query_and_fragment(path: str) -> str:
    """The path without ``?query`` or ``#fragment`` (Envoy's PathUtil::removeQueryAndFragment)."""
    query = path.find("?")
    end = len(path) if query < 0 else query
    fragment = path.find("#", 0, end)
    if fragment >= 0:
        end = fragment
    return path if end == len(path) else path[:end]


def parse_query(path: str) -> dict[str, str]:
    """Envoy's parseQueryString: no percent-decoding, the first value of a name wins."""
    start = path.find("?")
    params: dict[str, str] = {}
    if start < 0:
        return params
    for pair in path[start + 1 :].split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        params.setdefault(name, value)
    return params


def require_header_safe(value: str, field: str) -> None:
    """Refuse NUL/CR/LF in strings that end up in headers (Envoy's HTTP_HEADER_VALUE rule)."""
    if any(char in value for char in _FORBIDDEN_IN_HEADERS):
        raise ConfigError("must not contain NUL, CR or LF", field=field)


# --- regexes ------------------------------------------------------------------


class Regex:
    """An RE2 regex compiled once; matching and replacing work on wire bytes."""

    if not cython.compiled:
        __slots__ = ("pattern", "groups", "_compiled")

    def __init__(self, pattern: str, field: str, max_program_size: int = MAX_REGEX_PROGRAM_SIZE) -> None:
        if not pattern:
            raise ConfigError("regex must not be empty", field=field)
        import re2  # only configs with regexes pay its ~1.6 MB

        try:
            compiled = re2.compile(pattern)
        except re2.error as exc:
            raise ConfigError(f"invalid RE2 regex {pattern!r}: {exc}", field=field) from None
        if compiled.programsize > max_program_size:
            raise ConfigError(
                f"regex {pattern!r} RE2 program size of {compiled.programsize} > max program size of "
                f"{max_program_size} set for the error level threshold",
                field=field,
            )
        self.pattern = pattern
        self.groups: int = compiled.groups
        self._compiled = compiled

    def full_match(self, value: str) -> bool:
        return self._compiled.fullmatch(to_bytes(value)) is not None

    def replace_all(self, value: str, substitution: tuple[bytes | int, ...]) -> str:
        """RE2::GlobalReplace: every non-overlapping match, no empty match right after a match."""
        data = to_bytes(value)
        search = self._compiled.search
        end = len(data)
        out: list[bytes] = []
        pos = 0
        last_end = -1
        replaced = False
        while pos <= end:
            found = search(data, pos)
            if found is None:
                break
            start, stop = found.span()
            if pos < start:
                out.append(data[pos:start])
            if start == stop and start == last_end:
                step = _utf8_rune_length(data, pos)
                if pos < end:
                    out.append(data[pos : pos + step])
                pos += step
                continue
            for piece in substitution:
                if isinstance(piece, bytes):
                    out.append(piece)
                else:
                    out.append(found.group(piece) or b"")
            pos = last_end = stop
            replaced = True
        if not replaced:
            return value
        if pos < end:
            out.append(data[pos:])
        return b"".join(out).decode("latin-1")


def _utf8_rune_length(data: bytes, pos: int) -> int:
    """Bytes of the UTF-8 character at pos (1 when invalid), as RE2 steps over it."""
    lead = data[pos] if pos < len(data) else 0
    length = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1
    if length > 1:
        try:
            data[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError:
            return 1
    return length


def compile_substitution(text: str, groups: int, field: str) -> tuple[bytes | int, ...]:
    r"""Parse an RE2 rewrite string: ``\0``-``\9`` insert groups, ``\\`` is a backslash."""
    raw = wire(text).encode("latin-1")
    pieces: list[bytes | int] = []
    literal = bytearray()
    index = 0
    while index < len(raw):
        char = raw[index]
        if char != 0x5C:  # backslash
            literal.append(char)
            index += 1
            continue
        following = raw[index + 1] if index + 1 < len(raw) else -1
        if 0x30 <= following <= 0x39:
            group = following - 0x30
            if group > groups:
                raise ConfigError(
                    f"substitution refers to group \\{group} but the regex has {groups} groups", field=field
                )
            if literal:
                pieces.append(bytes(literal))
                literal = bytearray()
            pieces.append(group)
        elif following == 0x5C:
            literal.append(0x5C)
        else:
            raise ConfigError(
                "invalid rewrite pattern: a backslash must be followed by a digit or a backslash", field=field
            )
        index += 2
    if literal:
        pieces.append(bytes(literal))
    return tuple(pieces)


def compile_regex_matcher(msg: message.Message, field: str) -> Regex:
    """envoy.type.matcher.v3.RegexMatcher -> Regex (google_re2 is the only engine)."""
    check_fields(msg, ("regex", "google_re2"), field)
    limit = MAX_REGEX_PROGRAM_SIZE
    if msg.HasField("google_re2"):
        engine = msg.google_re2
        check_fields(engine, ("max_program_size",), join(field, "google_re2"))
        if engine.HasField("max_program_size"):
            limit = engine.max_program_size.value
    return Regex(msg.regex, join(field, "regex"), limit)


class RegexRewrite:
    """envoy.type.matcher.v3.RegexMatchAndSubstitute, ready to apply."""

    if not cython.compiled:
        __slots__ = ("regex", "substitution")

    def __init__(self, msg: message.Message, field: str) -> None:
        check_fields(msg, ("pattern", "substitution"), field)
        if not msg.HasField("pattern"):
            raise ConfigError("pattern is required", field=join(field, "pattern"))
        self.regex = compile_regex_matcher(msg.pattern, join(field, "pattern"))
        require_header_safe(msg.substitution, join(field, "substitution"))
        self.substitution = compile_substitution(
            msg.substitution, self.regex.groups, join(field, "substitution")
        )

    def apply(self, value: str) -> str:
        return self.regex.replace_all(value, self.substitution)


# --- string matchers ----------------------------------------------------------


def compile_string_matcher(msg: message.Message, field: str) -> StringPredicate:
    """envoy.type.matcher.v3.StringMatcher -> predicate over a (latin-1) value."""
    check_fields(msg, ("exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"), field)
    kind = msg.WhichOneof("match_pattern")
    if kind is None:
        raise ConfigError("one of exact, prefix, suffix, safe_regex, contains is required", field=field)
    ignore_case = msg.ignore_case
    if kind == "safe_regex":
        if ignore_case:
            raise ConfigError("ignore_case has no effect for safe_regex", field=join(field, "ignore_case"))
        return compile_regex_matcher(msg.safe_regex, join(field, "safe_regex")).full_match
    expected = wire(getattr(msg, kind))
    if kind != "exact" and not expected:
        raise ConfigError(f"{kind} must not be empty", field=join(field, kind))
    return _text_predicate(kind, expected, ignore_case)


def _text_predicate(kind: str, expected: str, ignore_case: bool) -> StringPredicate:
    if ignore_case:
        lowered = ascii_lower(expected)
        if kind == "exact":
            return lambda value: ascii_lower(value) == lowered
        if kind == "prefix":
            return lambda value: ascii_lower(value).startswith(lowered)
        if kind == "suffix":
            return lambda value: ascii_lower(value).endswith(lowered)
        return lambda value: lowered in ascii_lower(value)
    if kind == "exact":
        return lambda value: value == expected
    if kind == "prefix":
        return lambda value: value.startswith(expected)
    if kind == "suffix":
        return lambda value: value.endswith(expected)
    return lambda value: expected in value


# --- header matchers ----------------------------------------------------------

_HEADER_MATCHER_FIELDS = (
    "name", "exact_match", "safe_regex_match", "range_match", "present_match", "prefix_match",
    "suffix_match", "contains_match", "string_match", "invert_match", "treat_missing_header_as_empty",
)


def compile_header_matcher(msg: message.Message, field: str) -> HeaderPredicate:
    """envoy.config.route.v3.HeaderMatcher -> predicate over a HeaderMap.

    Repeated headers are joined with ','. A missing header never matches a value
    matcher (even inverted) unless treat_missing_header_as_empty is set;
    present_match compares presence, then invert_match flips the result.
    """
    check_fields(msg, _HEADER_MATCHER_FIELDS, field)
    if not msg.name:
        raise ConfigError("header name must not be empty", field=join(field, "name"))
    require_header_safe(msg.name, join(field, "name"))
    name = ascii_lower(wire(msg.name))
    invert = msg.invert_match
    kind = msg.WhichOneof("header_match_specifier")

    if kind == "present_match":
        expect_present = msg.present_match != invert
        return lambda headers: (name in headers) == expect_present

    value_matches = _header_value_predicate(msg, kind, field)
    treat_missing_as_empty = msg.treat_missing_header_as_empty

    def header_matches(headers: HeaderMap) -> bool:
        value = headers.joined(name)
        if value is None:
            if not treat_missing_as_empty:
                return False
            value = ""
        return value_matches(value) != invert

    return header_matches


def _header_value_predicate(msg: message.Message, kind: str | None, field: str) -> StringPredicate:
    if kind is None:
        return lambda value: True  # no specifier: the header only has to be there
    if kind == "exact_match":
        expected = wire(msg.exact_match)
        if not expected:
            return lambda value: True  # Envoy: an empty exact value matches any value
        return lambda value: value == expected
    if kind in ("prefix_match", "suffix_match", "contains_match"):
        expected = wire(getattr(msg, kind))
        if not expected:
            raise ConfigError(f"{kind} must not be empty", field=join(field, kind))
        return _text_predicate(kind.removesuffix("_match"), expected, False)
    if kind == "safe_regex_match":
        return compile_regex_matcher(msg.safe_regex_match, join(field, "safe_regex_match")).full_match
    if kind == "string_match":
        return compile_string_matcher(msg.string_match, join(field, "string_match"))
    # range_match: [start, end) over a base-10 int64
    check_fields(msg.range_match, ("start", "end"), join(field, "range_match"))
    start, end = msg.range_match.start, msg.range_match.end

    def in_range(value: str) -> bool:
        number = simple_atoi(value, INT64_MIN, INT64_MAX)
        return number is not None and start <= number < end

    return in_range


# --- query parameter matchers -------------------------------------------------


def compile_query_parameter_matcher(msg: message.Message, field: str) -> QueryPredicate:
    """envoy.config.route.v3.QueryParameterMatcher -> predicate over parse_query()'s dict.

    Like Envoy, only the first value of a repeated parameter is looked at, and
    without string_match (present_match true or false) the parameter only has
    to be present.
    """
    check_fields(msg, ("name", "string_match", "present_match"), field)
    if not msg.name:
        raise ConfigError("query parameter name must not be empty", field=join(field, "name"))
    name = wire(msg.name)
    if msg.WhichOneof("query_parameter_match_specifier") == "string_match":
        value_matches = compile_string_matcher(msg.string_match, join(field, "string_match"))

        def parameter_matches(params: dict[str, str]) -> bool:
            value = params.get(name)
            return value is not None and value_matches(value)

        return parameter_matches
    return lambda params: name in params
