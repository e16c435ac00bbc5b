"""Multi-document YAML (or JSON) -> ``Resource`` objects, with per-document diagnostics.

Each ``---`` document is parsed on its own so that one broken document is reported (with its
file, document number and line) while the others still load. ``kind: List`` documents are
expanded into their items. YAML is read as kubectl and istioctl read it (``kubeyaml``). Only
the envelope is checked here (kind, apiVersion, metadata); whether the kind is supported and
what the spec says is ``validation``'s job.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from tulle.controlplane.istio import kubeyaml
from tulle.controlplane.istio.kinds import SPEC_REQUIRED
from tulle.controlplane.model import Diagnostic, Resource

DEFAULT_NAMESPACE = "default"
YAML_SUFFIXES = (".yaml", ".yml", ".json")
TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# Kubernetes ObjectMeta: anything else under metadata is a typo that would be silently lost.
METADATA_FIELDS = (
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
)
# A document marker is '---' at column 0 followed by whitespace or the end of the line; YAML
# forbids it inside any scalar, so splitting on it is exact.
_DOCUMENT_START = re.compile(r"^---(?=\s|$)")
_DOCUMENT_END = re.compile(r"^\.\.\.(?=\s|$)")


def _split_documents(text: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` per document, 0-based lines, in stream order.

    Content before the first ``---`` counts as a document only when it holds something other
    than blank lines, comments and directives (directives then belong to the next document).
    """
    documents: list[tuple[int, list[str]]] = []
    current_start, current = 0, []
    started = False
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(keepends=True)):
        if _DOCUMENT_START.match(line):
            if started or _has_content(current):
                documents.append((current_start, current))
            current = []
            started = True
            current_start = number
            # Keep the marker (and any inline content) so line numbers stay right.
            current.append(line)
        elif _DOCUMENT_END.match(line):
            current.append("\n")
        else:
            current.append(line)
    if started or _has_content(current):
        documents.append((current_start, current))
    return [(start, "".join(lines)) for start, lines in documents]


@dataclass(frozen=True)
class _Parsed:
    value: Any


def _documents(text: str) -> list[tuple[int, str | _Parsed]]:
    """The stream's documents; a JSON text is parsed whole (YAML rejects JSON's tab indentation)."""
    if text.lstrip().startswith(("{", "[")):
        try:
            return [(0, _Parsed(json.loads(text)))]
        except ValueError:
            pass  # not JSON after all: let the YAML parser report precisely
    return list(_split_documents(text))


def _has_content(lines: Iterable[str]) -> bool:
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "%")):
            return True
    return False


Positions = dict[tuple[str | int, ...], int]


def load_documents(
    text: str, source: str, default_namespace: str = DEFAULT_NAMESPACE, positions: bool = False,
) -> tuple[list[Resource], list[Diagnostic]]:
    """Parse every document of ``text``; ``source`` names the file in messages.

    With ``positions``, each YAML resource records the line of each of its fields
    (``Resource.positions``, for ``field_line``), as istioctl points its messages at lines.
    """
    resources: list[Resource] = []
    diagnostics: list[Diagnostic] = []
    for index, (first_line, document) in enumerate(_documents(text), start=1):
        where = f"{source}#{index}"
        lines: Positions = {}
        if isinstance(document, str):
            try:
                data, node = kubeyaml.load_with_node(document)  # as kubectl and istioctl read it
            except yaml.YAMLError as error:
                diagnostics.append(Diagnostic("error", "", "", _yaml_error_message(error, first_line), where))
                continue
            if positions and node is not None:
                lines = _positions(node, first_line)
        else:
            data = document.value
        if data is None:
            continue
        if not isinstance(data, dict):
            diagnostics.append(Diagnostic(
                "error", "", "", f"document is a {type_name(data)}, expected a mapping with apiVersion, "
                "kind and metadata", where))
            continue
        if data.get("kind") == "List" and "items" in data:
            _load_list(data, where, default_namespace, resources, diagnostics, lines)
            continue
        resource = _to_resource(data, where, "", default_namespace, diagnostics, lines)
        if resource is not None:
            resources.append(resource)
    return resources, diagnostics


def _positions(root: yaml.Node, first_line: int) -> Positions:
    """The file line of every mapping key and list item under ``root``, by path."""
    found: Positions = {(): first_line + root.start_mark.line + 1}
    pending: list[tuple[tuple[str | int, ...], yaml.Node]] = [((), root)]
    visited: set[int] = set()
    while pending:
        path, node = pending.pop()
        if id(node) in visited:  # an alias: its lines are those of the anchor, recorded already
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children = [((*path, key.value), key, value) for key, value in node.value if isinstance(key, yaml.ScalarNode)]
        elif isinstance(node, yaml.SequenceNode):
            children = [((*path, position), item, item) for position, item in enumerate(node.value)]
        else:
            continue
        for child_path, marker, child in children:
            found.setdefault(child_path, first_line + marker.start_mark.line + 1)
            pending.append((child_path, child))
    return found


_PATH_PART = re.compile(r"\.?([^.\[\]]+)|\[([^\]]*)\]")


def field_line(resource: Resource, field: str) -> int | None:
    """The line where ``field`` (``spec.http[0].route``) or its nearest written parent is, if known."""
    if not resource.positions:
        return None
    path: list[str | int] = []
    line = resource.positions.get(())
    for match in _PATH_PART.finditer(field):
        name, key = match.groups()
        part = name if name is not None else key
        candidates = [int(part), part] if part.isdigit() else [part]
        found = next(((*path, c) for c in candidates if (*path, c) in resource.positions), None)
        if found is None:
            break
        path = list(found)
        line = resource.positions[found]
    return line


def _load_list(
    data: dict[str, Any], where: str, default_namespace: str,
    resources: list[Resource], diagnostics: list[Diagnostic], lines: Positions,
) -> None:
    items = data.get("items")
    if not isinstance(items, list):
        diagnostics.append(Diagnostic("error", "", "items", f"List items must be a list, not a {type_name(items)}",
                                      where))
        return
    for position, item in enumerate(items):
        prefix = f"items[{position}]"
        if not isinstance(item, dict):
            diagnostics.append(Diagnostic("error", "", prefix, f"list item is a {type_name(item)}, expected a mapping",
                                          where))
            continue
        item_lines = {path[2:]: line for path, line in lines.items() if path[:2] == ("items", position)}
        resource = _to_resource(item, f"{where}.{prefix}", "", default_namespace, diagnostics, item_lines)
        if resource is not None:
            resources.append(resource)


def _to_resource(
    data: dict[str, Any], where: str, prefix: str, default_namespace: str, diagnostics: list[Diagnostic],
    positions: Positions | None = None,
) -> Resource | None:
    """The Resource of one object, or None after reporting why its envelope is unusable."""
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in TOP_LEVEL_FIELDS:
            problems.append((_join(prefix, str(key)), _unknown_field_message(key, TOP_LEVEL_FIELDS)))
    kind, api_version = data.get("kind"), data.get("apiVersion")
    for name, value in (("apiVersion", api_version), ("kind", kind)):
        if value is None or value == "":
            problems.append((_join(prefix, name), "required field missing"))
        elif not isinstance(value, str):
            problems.append((_join(prefix, name), f"expected a string, got {type_name(value)}"))
    metadata = data.get("metadata")
    name = namespace = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if metadata is None:
        problems.append((_join(prefix, "metadata"), "required field missing (metadata.name is required)"))
    elif not isinstance(metadata, dict):
        problems.append((_join(prefix, "metadata"), f"expected a mapping, got {type_name(metadata)}"))
    else:
        meta_path = _join(prefix, "metadata")
        for key in metadata:
            if key not in METADATA_FIELDS:
                problems.append((f"{meta_path}.{key}", _unknown_field_message(key, METADATA_FIELDS)))
        name = _metadata_text(metadata, "name", meta_path, problems, required=True)
        namespace = _metadata_text(metadata, "namespace", meta_path, problems) or default_namespace
        labels = _string_map(metadata, "labels", meta_path, problems)
        annotations = _string_map(metadata, "annotations", meta_path, problems)
    spec = data.get("spec")
    if spec is None:
        if kind in SPEC_REQUIRED:  # their CRDs require it (an empty one is a different error)
            problems.append((_join(prefix, "spec"), "required field missing"))
        spec = {}
    if not isinstance(spec, dict):
        problems.append((_join(prefix, "spec"), f"expected a mapping, got {type_name(spec)}"))
    ref = f"{kind} {namespace}/{name}" if isinstance(kind, str) and name else ""
    if problems:
        diagnostics.extend(Diagnostic("error", ref, path, message, where) for path, message in problems)
        return None
    return Resource(kind=kind, api_version=api_version, name=name, namespace=namespace, spec=spec,
                    labels=labels, annotations=annotations, source=where, positions=positions or {})


def _metadata_text(
    metadata: dict[str, Any], key: str, meta_path: str, problems: list[tuple[str, str]], required: bool = False,
) -> str:
    value = metadata.get(key)
    if value is None or value == "":
        if required:
            problems.append((f"{meta_path}.{key}", "required field missing"))
        return ""
    if not isinstance(value, str):
        problems.append((f"{meta_path}.{key}", f"expected a string, got {type_name(value)}"))
        return ""
    return value


def _string_map(
    metadata: dict[str, Any], key: str, meta_path: str, problems: list[tuple[str, str]],
) -> dict[str, str]:
    value = metadata.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append((f"{meta_path}.{key}", f"expected a mapping of strings, got {type_name(value)}"))
        return {}
    result: dict[str, str] = {}
    for entry_key, entry_value in value.items():
        if not isinstance(entry_value, str):
            # Kubernetes refuses `version: 1`; the value has to be quoted.
            problems.append((f"{meta_path}.{key}[{entry_key}]",
                             f"expected a string, got {type_name(entry_value)} (quote the value)"))
            continue
        result[str(entry_key)] = entry_value
    return result


def load_files(
    paths: Iterable[str | os.PathLike[str]], default_namespace: str = DEFAULT_NAMESPACE, positions: bool = False,
) -> tuple[list[Resource], list[Diagnostic]]:
    """Load every file; a directory contributes its ``*.yaml``/``*.yml``/``*.json`` files, sorted."""
    resources: list[Resource] = []
    diagnostics: list[Diagnostic] = []
    for path in _expand(paths):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as error:
            diagnostics.append(Diagnostic("error", "", "", f"cannot read file: {error}", path))
            continue
        file_resources, file_diagnostics = load_documents(text, path, default_namespace, positions)
        resources.extend(file_resources)
        diagnostics.extend(file_diagnostics)
    return resources, diagnostics


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    files: list[str] = []
    for entry in paths:
        path = os.fspath(entry)
        if os.path.isdir(path):
            for root, _dirs, names in sorted(os.walk(path)):
                files.extend(os.path.join(root, name) for name in sorted(names) if name.endswith(YAML_SUFFIXES))
        else:
            files.append(path)
    return files


def _yaml_error_message(error: yaml.YAMLError, first_line: int) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}: {problem}" if context and problem else problem
    if mark is None:
        return f"invalid YAML: {detail}"
    return f"invalid YAML at line {first_line + mark.line + 1}, column {mark.column + 1}: {detail}"


def _unknown_field_message(key: object, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {str(key)!r}{hint}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def type_name(value: object) -> str:
    """The YAML-level name of a value's type, for messages ("expected a mapping, got a list")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__
