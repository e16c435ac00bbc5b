"""YAML read the way ``kubectl`` and ``istioctl`` read it, so a file means the same to Tulle as to Istio.

Both turn YAML into JSON with sigs.k8s.io/yaml, which parses with go-yaml v2 into plain Go values.
PyYAML's ``SafeLoader`` follows YAML 1.1 instead, and the two disagree on ordinary Istio files:
``addresses: [1.2.3.4, 001:db8::]`` is a list of two strings to Istio and a string plus a mapping to
PyYAML; ``1:20`` is a string to Istio and the integer 80 to PyYAML. ``GoYamlLoader`` is a
``SafeLoader`` with go-yaml v2's rules (resolve.go, scannerc.go at v2.4, as vendored by
sigs.k8s.io/yaml), chosen rule by rule:

* Plain scalars in flow collections: a ``:`` ends one only when a space, tab, line break or the
  end follows it (go-yaml), not also before ``,[]{}`` (PyYAML), so ``[001:db8::]`` holds the
  string ``001:db8::``. Block context is unchanged: ``a: 001:db8::`` is an error in both.
* Unquoted scalars, resolved as go-yaml v2 resolves them when decoding into ``interface{}``:

  - null: ``""``, ``~``, ``null``, ``Null``, ``NULL``;
  - booleans: ``true``/``false``, ``yes``/``no``, ``on``/``off`` in lower, Title and UPPER case,
    and ``y``, ``Y``, ``n``, ``N`` (go-yaml keeps YAML 1.1's booleans, plus the one-letter ones);
  - integers: text starting with a digit or a sign, underscores removed, as Go's
    ``strconv.ParseInt(text, 0, 64)`` reads it (``0x1F``, ``0o17``, ``0b101``, and a leading ``0``
    means octal: ``017`` is 15), else ``ParseUint`` up to 2^64-1;
  - floats: otherwise ``[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?`` (so ``1e3`` and
    ``08`` are floats), text starting with ``.`` such as ``.5``, and ``.inf``/``-.inf``/``.nan``;
    a value out of float64's range stays a string, as ``ParseFloat`` fails on it;
  - everything else is a string, in particular sexagesimal numbers (``1:20``, which YAML 1.1
    reads as 80) and timestamps (``2024-01-02``: go-yaml hands them to ``interface{}`` as
    strings, PyYAML makes dates of them).

* Mapping keys become strings as sigs.k8s.io/yaml's ``YAMLToJSON`` writes them: ``80`` ->
  ``"80"``, ``true`` -> ``"true"``, ``1.5`` -> ``"1.5"`` (Go's shortest float32 form); a null,
  list or mapping key is an error. Two keys that are equal after this are duplicates.
* Duplicate keys are refused, as ``kubectl`` (strict decoding) refuses them.
* Explicit tags: ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null`` must fit their value
  (``!!int "x"`` is an error, as in go-yaml); ``!!timestamp`` gives the text; ``!!binary`` gives
  the decoded text. Quoted scalars are always strings. Anchors, aliases and ``<<`` merges work
  as in both parsers.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from decimal import Decimal
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode
from yaml.tokens import ScalarToken

STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
}
_SPECIAL_FLOATS = {
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
_NUMBER_START = frozenset("+-0123456789.")
# strconv.ParseInt(s, 0, 64)'s syntax: sign, then a base prefix or a decimal number.
_GO_INT = re.compile(r"([-+]?)(?:0[xX]([0-9a-fA-F]+)|0[bB]([01]+)|0[oO]([0-7]+)|0([0-7]*)|([1-9][0-9]*))")
_GO_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")  # go-yaml's yamlStyleFloat
_GO_DOT_FLOAT = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?")  # strconv.ParseFloat of text starting with "."
_BLANK_OR_END = "\0 \t\r\n\x85\u2028\u2029"


def plain_scalar(text: str) -> Any:
    """The value go-yaml v2 gives an unquoted scalar: None, bool, int, float or the text itself."""
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if text[0] not in _NUMBER_START:
        return text
    if text[0] == ".":
        return _finite_float(text) if _GO_DOT_FLOAT.fullmatch(text) else text
    plain = text.replace("_", "")
    number = _go_integer(plain)
    if number is not None:
        return number
    if _GO_FLOAT.fullmatch(plain):
        return _finite_float(plain)
    return text


def _go_integer(text: str) -> int | None:
    match = _GO_INT.fullmatch(text)
    if match is None:
        return None
    sign, hexadecimal, binary, octal, legacy_octal, decimal = match.groups()
    if hexadecimal is not None:
        value = int(hexadecimal, 16)
    elif binary is not None:
        value = int(binary, 2)
    elif octal is not None:
        value = int(octal, 8)
    elif legacy_octal is not None:
        value = int(legacy_octal or "0", 8)
    else:
        value = int(decimal)
    if sign == "-":
        value = -value
    if -(2**63) <= value < 2**63 or (not sign and value < 2**64):  # ParseInt, then ParseUint
        return value
    return None


def _finite_float(text: str) -> float | str:
    value = float(text)
    return text if math.isinf(value) else value  # ParseFloat fails out of range: go-yaml keeps the text


def json_key(key: Any) -> str:
    """A mapping key as sigs.k8s.io/yaml's YAMLToJSON writes it (JSON keys are strings)."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return _go_float32_text(key)
    raise TypeError(key)


def _go_float32_text(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 32), with go-yaml's names for infinities and NaN."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    single = struct.unpack("f", struct.pack("f", value))[0]
    if single == 0:
        return "0"
    for digits in range(1, 10):  # the fewest significant digits that give back the same float32
        text = f"{single:.{digits - 1}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            break
    mantissa, exponent_text = text.split("e")
    exponent = int(exponent_text)
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    if exponent < -4 or exponent >= 6:  # Go's %e threshold for the shortest 'g' form
        return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    fixed = format(Decimal(text), "f")
    return fixed.rstrip("0").rstrip(".") if "." in fixed else fixed


class GoYamlLoader(yaml.SafeLoader):
    """A SafeLoader that reads YAML as go-yaml v2 under sigs.k8s.io/yaml does (module docstring)."""

    def scan_plain(self) -> ScalarToken:
        # PyYAML's scan_plain, except that in flow context ':' ends the scalar only before a blank.
        chunks: list[str] = []
        start_mark = end_mark = self.get_mark()
        indent = self.indent + 1
        spaces: list[str] = []
        while self.peek() != "#":
            length = 0
            while True:
                char = self.peek(length)
                if (char in _BLANK_OR_END or (char == ":" and self.peek(length + 1) in _BLANK_OR_END)
                        or (self.flow_level and char in ",?[]{}")):
                    break
                length += 1
            if length == 0:
                break
            self.allow_simple_key = False
            chunks.extend(spaces)
            chunks.append(self.prefix(length))
            self.forward(length)
            end_mark = self.get_mark()
            spaces = self.scan_plain_spaces(indent, start_mark)
            if not spaces or (not self.flow_level and self.column < indent):
                break
        return ScalarToken("".join(chunks), True, start_mark, end_mark)

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode and implicit[0]:
            if value == "<<":
                return MERGE_TAG
            return _tag_of(plain_scalar(value))
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[str, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping node, but found {node.id}", node.start_mark)
        written = sum(1 for key_node, _ in node.value if key_node.tag != MERGE_TAG)
        self.flatten_mapping(node)
        merged = len(node.value) - written  # merged entries come first; a key written here overrides them
        mapping: dict[str, Any] = {}
        seen: set[str] = set()
        for position, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node, deep=deep)
            try:
                text = json_key(key)
            except TypeError:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       f"found a {_yaml_type(key)} key; keys must be strings, numbers or booleans",
                                       key_node.start_mark) from None
            if position >= merged:
                if text in seen:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"found duplicate key {text!r}", key_node.start_mark)
                seen.add(text)
            mapping[text] = self.construct_object(value_node, deep=deep)
        return mapping


def _tag_of(value: Any) -> str:
    if value is None:
        return NULL_TAG
    if isinstance(value, bool):
        return BOOL_TAG
    if isinstance(value, int):
        return INT_TAG
    if isinstance(value, float):
        return FLOAT_TAG
    return STR_TAG


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "list", dict: "mapping"}.get(type(value), type(value).__name__)


def _typed(expected: type | None, name: str) -> Any:
    """A constructor for an explicitly tagged scalar: go-yaml's value, which must be of that type."""

    def construct(loader: GoYamlLoader, node: ScalarNode) -> Any:
        text = loader.construct_scalar(node)
        value = plain_scalar(text)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        fits = value is None if expected is None else (
            isinstance(value, expected) and (expected is bool or not isinstance(value, bool)))
        if not fits:
            raise ConstructorError(None, None, f"cannot decode {text!r} as a !!{name}", node.start_mark)
        return value

    return construct


def _construct_binary(loader: GoYamlLoader, node: ScalarNode) -> str:
    try:
        data = base64.b64decode("".join(loader.construct_scalar(node).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConstructorError(None, None, "!!binary value contains invalid base64 data", node.start_mark) from None
    return data.decode("utf-8", errors="replace")


GoYamlLoader.add_constructor(INT_TAG, _typed(int, "int"))
GoYamlLoader.add_constructor(FLOAT_TAG, _typed(float, "float"))
GoYamlLoader.add_constructor(BOOL_TAG, _typed(bool, "bool"))
GoYamlLoader.add_constructor(NULL_TAG, _typed(None, "null"))
GoYamlLoader.add_constructor("tag:yaml.org,2002:timestamp", GoYamlLoader.construct_scalar)
GoYamlLoader.add_constructor("tag:yaml.org,2002:binary", _construct_binary)


def load(text: str) -> Any:
    """One YAML document, as kubectl and istioctl read it."""
    return yaml.load(text, Loader=GoYamlLoader)  # noqa: S506 - a SafeLoader subclass: plain data only


def load_with_node(text: str) -> tuple[Any, yaml.Node | None]:
    """``load``, and the node tree the value was built from (its marks say where each part was written)."""
    loader = GoYamlLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()
