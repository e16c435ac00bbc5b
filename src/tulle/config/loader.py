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

import importlib
import json
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from google.protobuf import any_pb2, json_format, message, symbol_database

from envoy.config.bootstrap.v3 import bootstrap_pb2
from tulle.config.errors import ConfigError

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


def _clean_parse_error(text: str) -> tuple[str, str]:
    """Turn json_format's nested message into (field path, reason)."""
    # json_format reports "Failed to parse a field: Failed to parse b field: ... reason at Bootstrap.a.b[0]"
    path = ""
    at = re.search(r" at ([A-Za-z0-9_.]+(?:\[\d+\]|\.[A-Za-z0-9_@]+)*)\.?$", text)
    reason = text
    if at:
        path = at.group(1)
        reason = text[: at.start()]
        # drop the message type name that json_format puts first
        path = path.split(".", 1)[1] if "." in path else ""
    reason = re.sub(r"(Failed to parse \w+ field: )+", "", reason).strip()
    return path, reason


def parse_message(data: dict[str, Any], msg_class: type[M], *, source: str = "") -> M:
    """Strictly parse a dict into ``msg_class``, importing Any payload types on demand."""
    for _ in range(64):  # each retry makes at least one more package known
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
            if missing:
                reason = f"unknown type {missing.group(1)!r} (not an Envoy v3 API type)"
            raise ConfigError(reason, field=path, source=source) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc), source=source) from None
    raise ConfigError("too many nested Any types", source=source)


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
