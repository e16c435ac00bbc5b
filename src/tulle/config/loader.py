"""Read an Envoy v3 bootstrap (YAML or JSON) into the official protobuf messages.

``json_format`` does the strict part: unknown fields, wrong types and bad enum
values are refused with the field path. ``google.protobuf.Any`` payloads name
their type by URL; xds-protos registers a message type only when its module is
imported, so before giving up on an unknown type URL we import the modules of
that proto package (the package maps one-to-one to a directory) and retry.
Importing only what a config names keeps the proxy's memory small (importing
all ~600 Envoy modules costs ~15 MB of RSS).
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import any_pb2, json_format, message, symbol_database

from tulle.config.errors import ConfigError, join

M = TypeVar("M", bound=message.Message)

_TYPE_URL_MISSING = re.compile(r"Can not find message descriptor by type_url: (\S+?)(?: at |$)")
_imported_packages: set[str] = set()


def _import_proto_package(type_name: str) -> bool:
    """Import every generated module of the package holding ``type_name``.

    Returns False when no such package exists in the installed protos.
    """
    package = type_name.rsplit(".", 1)[0]
    if package in _imported_packages:
        return False
    _imported_packages.add(package)
    try:
        root = importlib.import_module(package.split(".", 1)[0])
    except ImportError:
        return False
    base = os.path.dirname(os.path.dirname(root.__file__ or ""))
    directory = os.path.join(base, *package.split("."))
    if not os.path.isdir(directory):
        return False
    found = False
    for file_name in sorted(os.listdir(directory)):
        if file_name.endswith("_pb2.py"):
            importlib.import_module(f"{package}.{file_name[:-3]}")
            found = True
    return found


def ensure_type(type_url: str) -> bool:
    """Make the message type behind ``type_url`` known to the default pool."""
    type_name = type_url.rsplit("/", 1)[-1]
    try:
        symbol_database.Default().pool.FindMessageTypeByName(type_name)
        return True
    except KeyError:
        pass
    _import_proto_package(type_name)
    try:
        symbol_database.Default().pool.FindMessageTypeByName(type_name)
        return True
    except KeyError:
        return False


_AT_PATH = re.compile(r' at "?([A-Za-z0-9_]+(?:\.[A-Za-z0-9_@]+|\[\d+\])*)"?[.\s]*$')
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_AVAILABLE = re.compile(r'Available Fields\(except extensions\): "\[(.*)\]"', re.S)
_BAD_ENUM = re.compile(r"Invalid enum value (\S+) for enum type (\S+)")


def _clean_parse_error(text: str) -> tuple[str, str]:
    """Turn json_format's nested message into (field path, reason)."""
    # "Failed to parse a field: Failed to parse b field: <reason> at Bootstrap.a.b[0]"
    available = _AVAILABLE.search(text)
    head = text[: available.start()].strip() if available else text
    path = ""
    at = _AT_PATH.search(head)
    if at:
        path = at.group(1)
        head = head[: at.start()]
        path = path.split(".", 1)[1] if "." in path else ""  # drop the message type name
    reason = re.sub(r"(Failed to parse \w+ field: )+", "", head).strip()
    unknown = _NO_FIELD.search(reason)
    if unknown:
        name = unknown.group(2)
        reason = f"unknown field {name!r} in {unknown.group(1)}"
        if available:
            fields = [re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), f.strip(" '"))
                      for f in available.group(1).split(",")]
            close = difflib.get_close_matches(name, fields, n=1)
            if close:
                reason += f" (did you mean {close[0]!r}?)"
    return path, reason


_MISSING = object()


def _json_key(node: dict[str, Any], name: str) -> str | None:
    """The key a proto field ``name`` has in a JSON/YAML mapping: as written, or in lowerCamelCase."""
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    return name if name in node else camel if camel in node else None


def _node_at(data: Any, segments: list[tuple[str, str]]) -> Any:
    """The value at a parse error's path (``a.b[2].c`` as findall segments), or _MISSING."""
    node = data
    for name, position in segments:
        if position:
            if not isinstance(node, list) or int(position) >= len(node):
                return _MISSING
            node = node[int(position)]
            continue
        key = _json_key(node, name) if isinstance(node, dict) else None
        if key is None:
            return _MISSING
        node = node[key]
    return node


def _path_segments(path: str) -> list[tuple[str, str]]:
    return re.findall(r"([A-Za-z0-9_@]+)|\[(\d+)\]", path)


def _uppercase_enum_at(data: Any, path: str) -> bool:
    """Envoy parses enum names case-insensitively ("auto" is AUTO); json_format does not."""
    segments = _path_segments(path)
    if not segments or segments[-1][1]:
        return False
    parent = _node_at(data, segments[:-1])
    key = _json_key(parent, segments[-1][0]) if isinstance(parent, dict) else None
    if key is None:
        return False
    value = parent[key]
    if isinstance(value, str) and value != value.upper():
        parent[key] = value.upper()
        return True
    if isinstance(value, list):
        changed = False
        for i, item in enumerate(value):
            if isinstance(item, str) and item != item.upper():
                value[i] = item.upper()
                changed = True
        return changed
    return False


_LONE_REPEATED = re.compile(r"repeated field (\w+) must be in \[\]")


def _wrap_lone_value_at(data: Any, path: str, name: str) -> bool:
    """Envoy's JSON parser takes a single value for a repeated field as a one-element list (its own
    dynamic-config-fs example writes ``filters:`` as one object); json_format does not."""
    parent = _node_at(data, _path_segments(path))
    key = _json_key(parent, name) if isinstance(parent, dict) else None
    if key is None or isinstance(parent[key], list):
        return False
    parent[key] = [parent[key]]
    return True


def parse_message(data: dict[str, Any], msg_class: type[M], *, source: str = "") -> M:
    """Strictly parse a dict into ``msg_class``, importing Any payload types on demand."""
    for _ in range(256):  # each retry makes one more type known or fixes one enum's case
        msg = msg_class()
        try:
            json_format.ParseDict(data, msg)
            return msg
        except json_format.ParseError as exc:
            text = str(exc)
            missing = _TYPE_URL_MISSING.search(text)
            if missing and ensure_type(missing.group(1)):
                continue
            path, reason = _clean_parse_error(text)
            if _BAD_ENUM.search(reason) and _uppercase_enum_at(data, path):
                continue
            lone = _LONE_REPEATED.search(reason)
            if lone and _wrap_lone_value_at(data, path, lone.group(1)):
                continue
            if missing:
                reason = f"unknown type {missing.group(1)!r} (not an Envoy v3 API type)"
            if not path:
                # Some type errors come without a path: find the field by parsing piecewise.
                path = _locate_bad_field(data, msg_class.DESCRIPTOR, "")
                reason = f"wrong type of value: {reason.rstrip('.')}"
            raise ConfigError(reason, field=path, source=source) from None
        except (TypeError, ValueError) as exc:
            # Raised past json_format without a path: find the field by parsing piecewise.
            path = _locate_bad_field(data, msg_class.DESCRIPTOR, "")
            raise ConfigError(f"wrong type of value: {str(exc).rstrip('.')}", field=path, source=source) from None
    raise ConfigError("too many nested Any types", source=source)


def _locate_bad_field(data: Any, descriptor: Any, path: str) -> str:
    """The path of the first field of ``data`` that does not parse into ``descriptor``'s message."""
    if not isinstance(data, dict):
        return path
    by_name = {}
    for field_descriptor in descriptor.fields:
        by_name[field_descriptor.name] = field_descriptor
        by_name[field_descriptor.json_name] = field_descriptor
    for key, value in data.items():
        field_descriptor = by_name.get(key)
        if field_descriptor is None:
            continue
        child = join(path, field_descriptor.name)
        probe_class = _message_class(descriptor)
        try:
            json_format.ParseDict({key: value}, probe_class())
            continue
        except Exception:  # noqa: BLE001 - any failure means this field holds the problem
            pass
        sub = field_descriptor.message_type
        if sub is None or sub.full_name == "google.protobuf.Any":
            return child
        if isinstance(value, list):
            for index, item in enumerate(value):
                try:
                    json_format.ParseDict({key: [item]}, probe_class())
                except Exception:  # noqa: BLE001
                    return _locate_bad_field(item, sub, f"{child}[{index}]")
            return child
        return _locate_bad_field(value, sub, child)
    return path


def _message_class(descriptor: Any) -> Any:
    return symbol_database.Default().GetSymbol(descriptor.full_name)


def read_document(path: str) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with a clear error naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", source=path) from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not valid YAML/JSON: {exc}", source=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the document must be a mapping (an Envoy v3 Bootstrap)", source=path)
    return data


def load_bootstrap(path: str) -> bootstrap_pb2.Bootstrap:
    """Load and strictly parse a bootstrap file (unsupported features are checked elsewhere)."""
    return parse_message(read_document(path), bootstrap_pb2.Bootstrap, source=path)


def unpack_any(value: any_pb2.Any, *, field: str = "") -> message.Message:
    """Unpack a typed_config into its message, importing the type if needed."""
    if not ensure_type(value.type_url):
        raise ConfigError(f"unknown type {value.type_url!r}", field=field)
    msg_class: Callable[[], message.Message] = symbol_database.Default().GetSymbol(
        value.type_url.rsplit("/", 1)[-1]
    )
    msg = msg_class()
    if not value.Unpack(msg):
        raise ConfigError(f"cannot unpack {value.type_url!r}", field=field)
    return msg


def type_name_of(value: any_pb2.Any) -> str:
    return value.type_url.rsplit("/", 1)[-1]
