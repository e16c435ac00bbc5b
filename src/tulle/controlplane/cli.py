"""The control-plane commands of ``tulle``: kubectl/istioctl-style verbs over the HTTP API.

``apply``, ``get``, ``delete``, ``proxy-status``, ``proxy-config`` and ``register`` talk to a
running ``tulle control-plane`` through its HTTP API (docs/control-plane.md, "HTTP API");
``analyze`` works offline on files, like ``istioctl analyze`` with local files. Stdlib HTTP only,
so the CLI starts fast and needs nothing the proxy does not.

Files are parsed here (``istio.documents``) before ``apply`` sends them as a JSON list: a broken
document is reported with its file and document number without a round trip, and the server's
diagnostics are mapped back to the ``file#doc`` each resource came from.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tulle.controlplane.api_token import ClientToken, add_client_arguments, find_client_token

DEFAULT_CONTROL_PLANE = "http://127.0.0.1:15014"
CONTROL_PLANE_ENV = "TULLE_CONTROL_PLANE"
DEFAULT_NAMESPACE = "default"
DEFAULT_STATE_DIR = ".tulle-state"  # as `tulle control-plane --state-dir`
REQUEST_TIMEOUT_S = 30.0
DEFAULT_TTL_S = 30.0  # the registry's default lease (docs/control-plane.md, "Store and registry")
STDIN_SOURCE = "<stdin>"
# `tulle analyze` exits as `istioctl analyze` does (istioctl/pkg/root: ExitAnalyzerFoundIssues for
# AnalyzerFoundIssuesError, ExitDataError for FileParseError).
EXIT_ANALYZER_FOUND_ISSUES = 79
EXIT_FILE_PARSE_ERROR = 65
ANALYSIS_LEVELS = ("Info", "Warning", "Error")  # istioctl's levels, least severe first
ANALYSIS_DOCS = "https://istio.io/latest/docs/reference/config/analysis"
# The webhook's own findings: `tulle apply` shows them as kubectl shows webhook answers, without a code.
WEBHOOK_CODES = ("IST0106", "IST0133")

# Patched by tests to end a heartbeat loop deterministically (a KeyboardInterrupt stands in for Ctrl-C).
_sleep: Callable[[float], None] = time.sleep


# --- errors -------------------------------------------------------------------------------


class CommandError(Exception):
    """A failure to report as ``tulle <command>: error: <message>`` with exit code 1."""


class Unreachable(CommandError):
    def __init__(self, url: str, reason: object) -> None:
        detail = "" if isinstance(reason, ConnectionRefusedError) else f": {reason}"
        super().__init__(
            f"cannot reach the control plane at {url}{detail} (is `tulle control-plane` running? "
            f"set --control-plane or {CONTROL_PLANE_ENV})")


# --- HTTP client --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    data: Any  # parsed JSON, or the body text when it is not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_text(self) -> str:
        if isinstance(self.data, dict):
            for key in ("error", "message", "detail"):
                if isinstance(self.data.get(key), str):
                    return self.data[key]
        text = self.data if isinstance(self.data, str) else json.dumps(self.data)
        return text.strip() or "(empty answer)"


def control_plane_url(flag: str | None) -> str:
    """--control-plane, else $TULLE_CONTROL_PLANE, else the default; "host:port" gets http://."""
    url = flag or os.environ.get(CONTROL_PLANE_ENV) or DEFAULT_CONTROL_PLANE
    if "://" not in url:
        url = f"http://{url}"
    return url.rstrip("/")


def segment(text: str) -> str:
    """One URL path segment: names with '/', '|' or spaces must not change the path's shape."""
    return urllib.parse.quote(text, safe="")


class ControlPlaneClient:
    """Every command's requests: the bearer token goes on each, and a 401 becomes a message
    saying how to give the right one."""

    def __init__(self, base_url: str, timeout: float = REQUEST_TIMEOUT_S, token: ClientToken | None = None) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.token = token if token is not None else ClientToken(None, "")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ControlPlaneClient:
        """The API and its token as ``--control-plane``, ``--token-file``, ``--state-dir`` and the
        environment name them (api_token.find_client_token); a token named but unreadable is an error."""
        token = find_client_token(getattr(args, "token_file", None), getattr(args, "state_dir", None))
        if token.problem and token.explicit:
            raise CommandError(f"cannot use the API token from {token.source}: {token.problem}")
        return cls(control_plane_url(args.control_plane), token=token)

    def request(
        self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None,
    ) -> Reply:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {"Accept": "application/json", **self.token.headers()}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Reply(response.status, _decode(response.read()))
        except urllib.error.HTTPError as error:  # a status the server chose: the caller decides, but 401
            with error:
                reply = Reply(error.code, _decode(error.read()))
            if reply.status == 401:
                raise CommandError(f"the control plane at {self.base_url} refused the request: "
                                   f"{self.token.refused()}") from None
            return reply
        except urllib.error.URLError as error:
            raise Unreachable(self.base_url, error.reason) from None
        except (TimeoutError, ConnectionError) as error:
            raise Unreachable(self.base_url, error) from None

    def expect_ok(self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None) -> Any:
        reply = self.request(method, path, query, body)
        if not reply.ok:
            raise CommandError(f"the control plane answered {reply.status} to {method} {path}: "
                               f"{reply.error_text()}")
        return reply.data


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- kinds --------------------------------------------------------------------------------

Column = tuple[str, Callable[[dict[str, Any]], str]]


def _spec(item: dict[str, Any], key: str) -> Any:
    spec = item.get("spec")
    return spec.get(key) if isinstance(spec, dict) else None


def _joined(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(entry) for entry in value)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class KindInfo:
    kind: str  # as in apiVersion/kind and in the HTTP API's paths
    plural: str
    aliases: tuple[str, ...]
    columns: tuple[Column, ...] = ()  # the CRD's printer columns, as `kubectl get` shows them


# Registry objects are not Istio resources; `get`/`delete` reach them through their own endpoints.
REGISTRY_SERVICE = "Service"
REGISTRY_INSTANCE = "Instance"

KINDS: tuple[KindInfo, ...] = (
    KindInfo("VirtualService", "virtualservices", ("vs",), (
        ("GATEWAYS", lambda item: _joined(_spec(item, "gateways"))),
        ("HOSTS", lambda item: _joined(_spec(item, "hosts"))),
    )),
    KindInfo("DestinationRule", "destinationrules", ("dr",), (
        ("HOST", lambda item: _joined(_spec(item, "host"))),
    )),
    KindInfo("Gateway", "gateways", ("gw",)),
    KindInfo("ServiceEntry", "serviceentries", ("se",), (
        ("HOSTS", lambda item: _joined(_spec(item, "hosts"))),
        ("LOCATION", lambda item: _joined(_spec(item, "location"))),
        ("RESOLUTION", lambda item: _joined(_spec(item, "resolution"))),
    )),
    KindInfo("WorkloadEntry", "workloadentries", ("we",), (
        ("ADDRESS", lambda item: _joined(_spec(item, "address"))),
    )),
    KindInfo("Sidecar", "sidecars", ()),
    KindInfo(REGISTRY_SERVICE, "services", ("svc",)),
    KindInfo(REGISTRY_INSTANCE, "instances", ("inst",)),
)


def resolve_kind(text: str) -> KindInfo:
    """Istio's kind names, plurals and short names, any case; "virtualservice.networking.istio.io" too."""
    wanted = text.lower().split(".", 1)[0]
    names: dict[str, KindInfo] = {}
    for info in KINDS:
        for name in (info.kind.lower(), info.plural, *info.aliases):
            names[name] = info
    if wanted in names:
        return names[wanted]
    close = difflib.get_close_matches(wanted, list(names), n=1, cutoff=0.6)
    hint = f" (did you mean {names[close[0]].plural}?)" if close else ""
    known = ", ".join(f"{info.plural} ({', '.join((info.kind.lower(), *info.aliases))})" for info in KINDS)
    raise CommandError(f"unknown kind {text!r}{hint}; known kinds: {known}")


# --- output -------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns three spaces apart, like kubectl's tabwriter."""
    table = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[column]) for row in table) for column in range(len(headers))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in table]
    return "\n".join(lines) + "\n"


def dump(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration ("45s", "5m12s", "3h", "12d", ...)."""
    if seconds < 0:
        return "<invalid>"
    total = int(seconds)
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if total < 120:
        return f"{total}s"
    if minutes < 10:
        return f"{minutes}m{total % 60}s" if total % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    return f"{years}y{days % 365}d" if years < 8 and days % 365 else f"{years}y"


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a number or an RFC 3339 text; None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    return None


def age(value: Any, now: float | None = None) -> str:
    started = parse_timestamp(value)
    if started is None:
        return "<unknown>"
    return human_duration((time.time() if now is None else now) - started)


def print_diagnostics(diagnostics: Iterable[dict[str, Any]], stream: Any) -> tuple[int, int]:
    """Errors as ``file#doc: Kind ns/name: field: message``; warnings prefixed ``Warning:``, info ``Info:``.

    An analyzer's message (IST0101, TUL0001, ...) shows its code before the message.
    """
    errors = warnings = 0
    for diagnostic in diagnostics:
        line = diagnostic_text(diagnostic)
        level = diagnostic.get("level")
        if level == "error":
            errors += 1
            print(line, file=stream)
        else:
            warnings += 1
            print(f"{'Info' if level == 'info' else 'Warning'}: {line}", file=stream)
    return errors, warnings


def diagnostic_text(diagnostic: dict[str, Any]) -> str:
    """``Diagnostic.__str__`` for the JSON form the HTTP API sends, with an analyzer's code."""
    where = ": ".join(str(diagnostic.get(key) or "") for key in ("source", "resource", "field")
                      if diagnostic.get(key))
    message = str(diagnostic.get("message") or "")
    code = str(diagnostic.get("code") or "")
    if code and code not in WEBHOOK_CODES:
        message = f"[{code}] {message}"
    return f"{where}: {message}" if where else message


def diagnostic_dict(diagnostic: Any) -> dict[str, Any]:
    return {"level": diagnostic.level, "resource": diagnostic.resource, "field": diagnostic.field,
            "message": diagnostic.message, "source": diagnostic.source, "code": diagnostic.code}


def ref_text(ref: Any) -> str:
    """A ref as the API sends it: "Kind ns/name", or a mapping with kind/namespace/name."""
    if isinstance(ref, dict):
        metadata = ref.get("metadata") if isinstance(ref.get("metadata"), dict) else ref
        return f"{ref.get('kind', '')} {metadata.get('namespace', '')}/{metadata.get('name', '')}".strip()
    return str(ref)


# --- reading files ------------------------------------------------------------------------


@dataclass
class LoadedFiles:
    resources: list[Any]  # model.Resource
    diagnostics: list[Any]  # model.Diagnostic


def load_inputs(paths: Sequence[str], default_namespace: str, positions: bool = False) -> LoadedFiles:
    """Files, directories (their *.yaml/*.yml/*.json) and "-" for stdin, in the order given.

    ``positions``: record the line of every field, for messages that point at lines.
    """
    try:
        from tulle.controlplane.istio import documents
    except ImportError as error:  # pragma: no cover - only while the istio package is being written
        raise CommandError(f"reading Istio YAML is not available in this build ({error})") from None
    loaded = LoadedFiles([], [])
    for path in paths:
        if path == "-":
            resources, diagnostics = documents.load_documents(sys.stdin.read(), STDIN_SOURCE, default_namespace,
                                                              positions)
        else:
            resources, diagnostics = documents.load_files([path], default_namespace, positions)
        loaded.resources.extend(resources)
        loaded.diagnostics.extend(diagnostics)
    return loaded


def resource_json(resource: Any) -> dict[str, Any]:
    """A model.Resource in the HTTP API's JSON form."""
    metadata: dict[str, Any] = {"name": resource.name, "namespace": resource.namespace}
    if resource.labels:
        metadata["labels"] = dict(resource.labels)
    if resource.annotations:
        metadata["annotations"] = dict(resource.annotations)
    return {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": metadata,
            "spec": resource.spec}


_TRAILING_INDEX = re.compile(r"(?:items)?\[(\d+)\]$|#(\d+)$")


def localize(diagnostic: dict[str, Any], sent: Sequence[Any]) -> dict[str, Any]:
    """Point a server diagnostic at the file#doc the resource was read from.

    The server only saw a JSON list, so its ``source`` (if any) names a list position; the
    resource ref identifies the document better, the position is the fallback.
    """
    by_ref = {resource.ref: resource.source for resource in reversed(sent)}
    local = by_ref.get(str(diagnostic.get("resource") or ""))
    if local is None:
        match = _TRAILING_INDEX.search(str(diagnostic.get("source") or ""))
        if match:
            index = int(match.group(1)) if match.group(1) is not None else int(match.group(2)) - 1
            if 0 <= index < len(sent):
                local = sent[index].source
    return {**diagnostic, "source": local} if local else diagnostic


# --- commands: resources ------------------------------------------------------------------


def run_apply(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    loaded = load_inputs(args.filename, args.namespace or DEFAULT_NAMESPACE)
    if loaded.diagnostics:
        errors, _ = print_diagnostics(map(diagnostic_dict, loaded.diagnostics), sys.stderr)
        if errors:
            raise CommandError(f"{_count(errors, 'error')} reading the files; nothing was applied")
    if not loaded.resources:
        raise CommandError("no objects passed to apply")
    query = {"dry_run": "true"} if args.dry_run else None
    reply = client.request("POST", "/apis/v1/resources", query, [resource_json(r) for r in loaded.resources])
    answer = reply.data if isinstance(reply.data, dict) else {}
    warnings = [localize(d, loaded.resources) for d in answer.get("warnings", []) if isinstance(d, dict)]
    errors = [localize(d, loaded.resources) for d in answer.get("errors", []) if isinstance(d, dict)]
    if reply.status == 400 and errors:
        print_diagnostics(errors + warnings, sys.stderr)
        raise CommandError(f"{_count(len(errors), 'error')}; nothing was applied")
    if not reply.ok:
        raise CommandError(f"the control plane answered {reply.status}: {reply.error_text()}")
    print_diagnostics(warnings, sys.stderr)
    if args.output:
        sys.stdout.write(dump(answer, args.output))
        return 0
    suffix = " (dry run)" if args.dry_run else ""
    for verb in ("created", "updated"):
        for ref in answer.get(verb, []):
            print(f"{ref_text(ref)} {verb}{suffix}")
    return 0


def run_get(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    info = resolve_kind(args.kind)
    namespace = None if args.all_namespaces else (args.namespace or DEFAULT_NAMESPACE)
    if info.kind in (REGISTRY_SERVICE, REGISTRY_INSTANCE):
        return _get_registry(args, client, info, namespace)
    if args.name and namespace is None:
        raise CommandError("a resource cannot be retrieved by name across all namespaces; use -n NAMESPACE")
    if args.name:
        path = f"/apis/v1/resources/{segment(info.kind)}/{segment(namespace or DEFAULT_NAMESPACE)}/{segment(args.name)}"
        reply = client.request("GET", path)
        if reply.status == 404:
            raise CommandError(f"{info.kind} {namespace or DEFAULT_NAMESPACE}/{args.name} not found")
        if not reply.ok:
            raise CommandError(f"the control plane answered {reply.status}: {reply.error_text()}")
        items = [reply.data]
        if args.output:
            sys.stdout.write(dump(reply.data, args.output))
            return 0
    else:
        query = {"kind": info.kind}
        if namespace is not None:
            query["namespace"] = namespace
        answer = client.expect_ok("GET", "/apis/v1/resources", query)
        items = [item for item in _items(answer, "items") if isinstance(item, dict)]
        if args.output:
            sys.stdout.write(dump({"apiVersion": "v1", "kind": "List", "items": items}, args.output))
            return 0
    if not items:
        where = "any namespace" if namespace is None else f"{namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
        return 0
    sys.stdout.write(resource_table(info, items, show_namespace=namespace is None))
    return 0


def resource_table(info: KindInfo, items: list[dict[str, Any]], show_namespace: bool, now: float | None = None) -> str:
    def metadata(item: dict[str, Any]) -> dict[str, Any]:
        value = item.get("metadata")
        return value if isinstance(value, dict) else {}

    # AGE only when the server keeps creation times: a column of "<unknown>" tells nothing.
    with_age = any(metadata(item).get("creationTimestamp") for item in items)
    headers = ["NAMESPACE"] if show_namespace else []
    headers += ["NAME", *(title for title, _ in info.columns)] + (["AGE"] if with_age else [])
    rows = []
    ordered = sorted(items, key=lambda item: (str(metadata(item).get("namespace", "")),
                                              str(metadata(item).get("name", ""))))
    for item in ordered:
        meta = metadata(item)
        row = [str(meta.get("namespace", ""))] if show_namespace else []
        row += [str(meta.get("name", "")), *(render(item) for _, render in info.columns)]
        if with_age:
            row.append(age(meta.get("creationTimestamp"), now))
        rows.append(row)
    return render_table(headers, rows)


def _items(answer: Any, *keys: str) -> list[Any]:
    """The list in an answer: the answer itself, or under the first of ``keys`` it has."""
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        for key in keys:
            if isinstance(answer.get(key), list):
                return answer[key]
    raise CommandError(f"unexpected answer from the control plane: {json.dumps(answer)[:200]}")


def _get_registry(args: argparse.Namespace, client: ControlPlaneClient, info: KindInfo, namespace: str | None) -> int:
    if info.kind == REGISTRY_SERVICE:
        entries = _items(client.expect_ok("GET", "/apis/v1/services"), "items", "services")
    else:
        entries = _items(client.expect_ok("GET", "/apis/v1/instances"), "items", "instances")
    entries = [entry for entry in entries if isinstance(entry, dict)]
    if namespace is not None:
        entries = [entry for entry in entries if entry.get("namespace", DEFAULT_NAMESPACE) == namespace]
    if args.name:
        entries = [entry for entry in entries if args.name in (entry.get("name"), entry.get("id"),
                                                              entry.get("hostname"))]
        if not entries:
            raise CommandError(f"{info.kind.lower()} {args.name!r} not found"
                               + ("" if namespace is None else f" in namespace {namespace}"))
    if args.output:
        sys.stdout.write(dump({"items": entries}, args.output))
        return 0
    if not entries:
        where = "any namespace" if namespace is None else f"{namespace} namespace"
        print(f"No {info.plural} found in {where}.", file=sys.stderr)
        return 0
    if info.kind == REGISTRY_SERVICE:
        # ServiceEntries contribute services too; ORIGIN tells them from registered ones.
        headers = ["NAMESPACE", "HOSTNAME", "PORTS", "ORIGIN"]
        rows = [[str(e.get("namespace", "")), str(e.get("hostname") or e.get("name", "")),
                 ",".join(_port_text(port) for port in e.get("ports") or [] if isinstance(port, dict)),
                 str(e.get("origin", ""))]
                for e in entries]
    else:
        headers = ["NAMESPACE", "NAME", "ID", "ADDRESS", "PORTS", "SERVICES", "EXPIRES IN"]
        rows = [[str(e.get("namespace", "")), str(e.get("name", "")), str(e.get("id", "")),
                 str(e.get("address", "")),
                 ",".join(f"{name}:{port}" for name, port in (e.get("ports") or {}).items())
                 if isinstance(e.get("ports"), dict) else "",
                 _joined(e.get("hostnames") or e.get("services")),
                 _seconds(e.get("expiresInSeconds"))]
                for e in entries]
    sys.stdout.write(render_table(headers, sorted(rows)))
    return 0


def _seconds(value: Any) -> str:
    return f"{value:.0f}s" if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _port_text(port: dict[str, Any]) -> str:
    text = f"{port.get('name', '')}:{port.get('port', '')}"
    return f"{text}/{port['protocol']}" if port.get("protocol") else text


def run_delete(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    if args.filename:
        if args.kind:
            raise CommandError("give either KIND NAME... or -f FILE, not both")
        loaded = load_inputs(args.filename, args.namespace or DEFAULT_NAMESPACE)
        errors, _ = print_diagnostics(map(diagnostic_dict, loaded.diagnostics), sys.stderr)
        if errors:
            raise CommandError(f"{_count(errors, 'error')} reading the files; nothing was deleted")
        targets = [(r.kind, r.namespace, r.name) for r in loaded.resources]
    else:
        if not args.kind or not args.names:
            raise CommandError("give KIND NAME... (e.g. `tulle delete vs reviews`) or -f FILE")
        info = resolve_kind(args.kind)
        namespace = args.namespace or DEFAULT_NAMESPACE
        if info.kind == REGISTRY_SERVICE:
            return _delete_each(client, [(f"service {namespace}/{name}",
                                          f"/apis/v1/services/{segment(namespace)}/{segment(name)}")
                                         for name in args.names], args.ignore_not_found)
        if info.kind == REGISTRY_INSTANCE:
            return _delete_each(client, [(f"instance {name}", f"/apis/v1/instances/{segment(name)}")
                                         for name in args.names], args.ignore_not_found)
        targets = [(info.kind, namespace, name) for name in args.names]
    return _delete_resources(client, targets, args.ignore_not_found)


def _delete_resources(client: ControlPlaneClient, targets: list[tuple[str, str, str]], ignore_not_found: bool) -> int:
    """One request, one transaction: all of them are deleted, or (one missing) none unless ignored."""
    body = {"items": [{"kind": kind, "namespace": namespace, "name": name} for kind, namespace, name in targets],
            "ignoreNotFound": ignore_not_found}
    reply = client.request("POST", "/apis/v1/resources:delete", body=body)
    answer = reply.data if isinstance(reply.data, dict) else {}
    if reply.status == 404 and isinstance(answer.get("notFound"), list):
        for ref in answer["notFound"]:
            print(f"Error: {ref_text(ref)} not found", file=sys.stderr)
        raise CommandError(f"{_count(len(answer['notFound']), 'resource')} not found; nothing was deleted "
                           "(--ignore-not-found deletes the others)")
    if not reply.ok:
        raise CommandError(f"the control plane answered {reply.status} deleting: {reply.error_text()}")
    for ref in answer.get("deleted", []):
        print(f"{ref_text(ref)} deleted")
    return 0


def _delete_each(client: ControlPlaneClient, targets: list[tuple[str, str]], ignore_not_found: bool) -> int:
    """Delete registry entries one by one, even when one is missing (like kubectl); exit 1 if any was."""
    missing = 0
    for label, path in targets:
        reply = client.request("DELETE", path)
        if reply.status == 404:
            if not ignore_not_found:
                missing += 1
                print(f"Error: {label} not found", file=sys.stderr)
            continue
        if not reply.ok:
            raise CommandError(f"the control plane answered {reply.status} deleting {label}: {reply.error_text()}")
        print(f"{label} deleted")
    return 1 if missing else 0


# --- commands: offline analysis -----------------------------------------------------------


def run_analyze(args: argparse.Namespace) -> int:
    """``istioctl analyze`` on files: messages on stdout, one a line; the verdict on stderr.

    Exit codes as istioctl's: 79 when a message reaches --failure-threshold (Error by default),
    else 65 when a document could not be read (invalid YAML, a kind Tulle does not read), else
    0. istioctl exits 0 with ``-o json``/``yaml`` whatever it finds (istio/istio#35054, a bug);
    Tulle exits the same way for every format.
    """
    paths = [*(args.filename or []), *args.files]
    if not paths:
        raise CommandError("give the files to analyze: tulle analyze -f FILE|DIR|- ...")
    loaded = load_inputs(paths, args.namespace or DEFAULT_NAMESPACE, positions=True)
    try:
        from tulle.controlplane.istio import documents, validation
    except ImportError as error:  # pragma: no cover - only while validation is being written
        raise CommandError(f"analysis is not available in this build ({error})") from None
    by_ref = {resource.ref: resource for resource in loaded.resources}
    messages = [analysis_message(d, by_ref.get(d.resource), documents.field_line)
                for d in [*loaded.diagnostics, *validation.analyze(loaded.resources)]]
    threshold = ANALYSIS_LEVELS.index(args.failure_threshold)
    found_issues = any(m.get("code") and ANALYSIS_LEVELS.index(m["level"]) >= threshold for m in messages)
    unreadable = sum(1 for m in messages if not m.get("code") and m["level"] == "Error")
    if args.output in ("json", "yaml"):
        sys.stdout.write(dump(messages, args.output))
    else:
        for message in messages:
            print(analysis_line(message))
    target = ", ".join(paths)
    if not messages:
        print(f"\u2714 No validation issues found when analyzing {target}.", file=sys.stderr)
    if found_issues:
        print(f"Error: Analyzers found issues when analyzing {target}.\nSee {ANALYSIS_DOCS} for more information "
              "about causes and resolutions.", file=sys.stderr)
        return EXIT_ANALYZER_FOUND_ISSUES
    if unreadable:
        print(f"Error: {_count(unreadable, 'document')} could not be read.", file=sys.stderr)
        return EXIT_FILE_PARSE_ERROR
    return 0


def analysis_message(diagnostic: Any, resource: Any, field_line: Callable[[Any, str], int | None]) -> dict[str, Any]:
    """A finding in istioctl's JSON form (code, level, origin, reference, message, documentationUrl),
    plus Tulle's field path. The reference is ``file:line`` of the field when the line is known."""
    source = diagnostic.source or ""
    line = field_line(resource, diagnostic.field) if resource is not None else None
    message: dict[str, Any] = {}
    if diagnostic.code:
        message["code"] = diagnostic.code
    message["level"] = diagnostic.level.capitalize()
    if diagnostic.resource:
        message["origin"] = diagnostic.resource
    if source:
        message["reference"] = f"{source.split('#')[0]}:{line}" if line else source
    message["message"] = analysis_text(diagnostic)
    if diagnostic.field:
        message["field"] = diagnostic.field
    if diagnostic.code.startswith("IST"):
        message["documentationUrl"] = f"{ANALYSIS_DOCS}/{diagnostic.code.lower()}/?ref=tulle-analyze"
    return message


def analysis_text(diagnostic: Any) -> str:
    """The message as istioctl words it: the webhook's findings wrapped as IST0106/IST0133 wrap them."""
    where = f"{diagnostic.field}: " if diagnostic.field else ""
    if diagnostic.code == "IST0106":
        return f"Schema validation error: {where}{diagnostic.message}"
    if diagnostic.code == "IST0133":
        return f"Schema validation warning: {where}{diagnostic.message}"
    if diagnostic.code.startswith("IST"):
        return diagnostic.message  # the analyzer's own text; the reference points at the field
    return f"{where}{diagnostic.message}"


def analysis_line(message: dict[str, Any]) -> str:
    """``Error [IST0101] (VirtualService default/reviews file.yaml:12) Referenced ...``, as istioctl prints."""
    code = f" [{message['code']}]" if message.get("code") else ""
    origin = " ".join(str(message[key]) for key in ("origin", "reference") if message.get(key))
    return f"{message['level']}{code}{f' ({origin})' if origin else ''} {message['message']}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# --- commands: proxies --------------------------------------------------------------------

STATUS_COLUMNS = ("CDS", "LDS", "EDS", "RDS")


def sync_state(status: dict[str, Any]) -> str:
    """istioctl proxy-status's words, plus NACKED when the proxy rejected what it was last sent."""
    if isinstance(status.get("state"), str):  # the server knows nonces; trust its verdict
        return status["state"]
    sent, acked = str(status.get("sent") or ""), str(status.get("acked") or "")
    nack = status.get("nack")
    if not sent:
        return "NOT SENT"
    if sent == acked:
        return "SYNCED"
    if isinstance(nack, dict) and str(nack.get("version") or "") == sent:
        return "NACKED"
    return "STALE (Never Acknowledged)" if not acked else "STALE"


def type_column(type_key: str) -> str:
    """"CDS" for the Cluster type URL, its message name ("Cluster", as the control plane's API keys
    its types) or "CDS"; other types by their message name."""
    from tulle.controlplane.xds import types

    if type_key.upper() in types.SHORT_NAMES.values():
        return type_key.upper()
    if "/" in type_key:
        return types.short_name(type_key)
    by_message = {url.rsplit(".", 1)[-1]: short for url, short in types.SHORT_NAMES.items()}
    return by_message.get(type_key, type_key)


def normalize_proxy(proxy: dict[str, Any]) -> dict[str, Any]:
    """The contract's proxy entry; the xDS cache's own status form (``NodeStatus.to_dict``) is mapped to it.

    In the cache's form each stream lists its types; a type on a later stream wins, as in
    ``NodeStatus.types()``.
    """
    if "streams" not in proxy or "types" in proxy:
        return proxy
    merged: dict[str, dict[str, Any]] = {}
    for stream in sorted((s for s in proxy.get("streams") or [] if isinstance(s, dict)),
                         key=lambda s: s.get("stream_id", 0)):
        for status in stream.get("types") or []:
            if not isinstance(status, dict):
                continue
            entry: dict[str, Any] = {"sent": status.get("sent_version", ""), "acked": status.get("acked_version", "")}
            if status.get("state"):
                entry["state"] = status["state"]
            nack = status.get("last_nack")
            if isinstance(nack, dict):
                entry["nack"] = {"version": nack.get("version", ""), "error": nack.get("message", "")}
            refused = status.get("refused")
            if isinstance(refused, dict):
                entry["refused"] = {**refused, "error": refused.get("message", "")}
            merged[str(status.get("type_url") or status.get("type", ""))] = entry
    return {"id": proxy.get("node_id", ""), "connected_since": proxy.get("connected_at"), "types": merged}


def connected_proxies(client: ControlPlaneClient) -> list[dict[str, Any]]:
    return [normalize_proxy(p) for p in _items(client.expect_ok("GET", "/debug/proxies"), "proxies")
            if isinstance(p, dict)]


def proxy_names(proxy_id: str) -> tuple[str, str] | None:
    """(name, namespace) of an Istio node id ``<type>~<ip>~<name>.<namespace>~<domain>``."""
    parts = proxy_id.split("~")
    if len(parts) != 4 or "." not in parts[2]:
        return None
    name, namespace = parts[2].rsplit(".", 1)
    return name, namespace


def resolve_proxy(wanted: str, proxy_ids: Iterable[str], namespace: str | None = None) -> str:
    """The node id ``wanted`` names: itself, ``NAME.NAMESPACE`` or ``NAME`` (as istioctl takes
    ``pod.namespace`` or a pod name with -n). CommandError when none or several match."""
    ids = sorted(set(proxy_ids))
    if wanted in ids:
        return wanted
    matches = []
    for proxy_id in ids:
        names = proxy_names(proxy_id)
        if names is None:
            continue
        name, proxy_namespace = names
        if wanted == f"{name}.{proxy_namespace}" or (wanted == name and namespace in (None, proxy_namespace)):
            matches.append(proxy_id)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CommandError(f"proxy {wanted!r} is ambiguous: it names {', '.join(matches)}; give NAME.NAMESPACE, "
                           "-n NAMESPACE or the full id")
    where = f" in namespace {namespace}" if namespace else ""
    raise CommandError(f"proxy {wanted!r} is not connected{where} (see `tulle proxy-status`)")


def run_proxy_status(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    proxies = connected_proxies(client)
    if args.proxy:
        wanted = resolve_proxy(args.proxy, (str(proxy.get("id", "")) for proxy in proxies), args.namespace)
        proxies = [proxy for proxy in proxies if proxy.get("id") == wanted]
    if args.output:
        sys.stdout.write(dump({"proxies": proxies}, args.output))
        return 0
    if not proxies:
        print("No proxies connected.", file=sys.stderr)
        return 0
    sys.stdout.write(proxy_status_table(proxies))
    return 0


def proxy_status_table(proxies: list[dict[str, Any]], now: float | None = None) -> str:
    per_proxy: list[tuple[dict[str, Any], dict[str, dict[str, Any]]]] = []
    extra: list[str] = []
    for proxy in proxies:
        statuses = {type_column(key): value for key, value in (proxy.get("types") or {}).items()
                    if isinstance(value, dict)}
        extra += [column for column in statuses if column not in STATUS_COLUMNS and column not in extra]
        per_proxy.append((proxy, statuses))
    columns = [*STATUS_COLUMNS, *sorted(extra)]
    rows = []
    rejections: list[str] = []
    too_large: list[str] = []
    for proxy, statuses in sorted(per_proxy, key=lambda entry: str(entry[0].get("id", ""))):
        row = [str(proxy.get("id", ""))]
        for column in columns:
            status = statuses.get(column)
            row.append(sync_state(status) if status is not None else "NOT SENT")
            nack = status.get("nack") if status is not None else None
            if isinstance(nack, dict):
                rejections.append(f"{proxy.get('id', '')} {column} rejected version {nack.get('version', '')}: "
                                  f"{nack.get('error', '')}")
            refused = status.get("refused") if status is not None else None
            if isinstance(refused, dict):
                too_large.append(f"{proxy.get('id', '')} {column} version {refused.get('version', '')}: "
                                 f"{refused.get('bytes', '?')} bytes, limit {refused.get('limit', '?')}")
        row.append(age(proxy.get("connected_since"), now))
        rows.append(row)
    text = render_table(["NAME", *columns, "CONNECTED"], rows)
    if rejections:
        text += "\nLast rejections:\n" + "".join(f"  {line}\n" for line in rejections)
    if too_large:
        text += ("\nNot sent, over the control plane's xDS message limit (--xds-max-message-bytes):\n"
                 + "".join(f"  {line}\n" for line in too_large))
    return text


CONFIG_TYPES = {
    "listeners": ("listener", "listeners", "l", "lds"),
    "routes": ("route", "routes", "r", "rds"),
    "clusters": ("cluster", "clusters", "c", "cds"),
    "endpoints": ("endpoint", "endpoints", "ep", "eds"),
}


def config_type(text: str) -> str:
    for canonical, names in CONFIG_TYPES.items():
        if text.lower() in names:
            return canonical
    raise argparse.ArgumentTypeError(f"{text!r}: choose listeners, routes, clusters or endpoints")


def run_proxy_config(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    proxy_id = args.proxy
    reply = client.request("GET", f"/debug/config/{segment(proxy_id)}", {"type": args.type})
    if reply.status == 404:  # not a connected node id: perhaps NAME or NAME.NAMESPACE
        proxy_id = resolve_proxy(args.proxy, (str(p.get("id", "")) for p in connected_proxies(client)),
                                 args.namespace)
        reply = client.request("GET", f"/debug/config/{segment(proxy_id)}", {"type": args.type})
        if reply.status == 404:
            raise CommandError(f"proxy {proxy_id!r} is not connected (see `tulle proxy-status`)")
    if not reply.ok:
        raise CommandError(f"the control plane answered {reply.status}: {reply.error_text()}")
    resources = [r for r in _items(reply.data, "resources") if isinstance(r, dict)]
    if args.output:
        sys.stdout.write(dump({"resources": resources}, args.output))
        return 0
    headers, rows = CONFIG_TABLES[args.type](resources)
    if not rows:
        print(f"No {args.type} for proxy {proxy_id}.", file=sys.stderr)
        return 0
    sys.stdout.write(render_table(headers, rows))
    for note in not_applied_notes(resources):
        print(note)
    return 0


def not_applied_notes(resources: list[dict[str, Any]]) -> list[str]:
    """One line per cluster whose DestinationRule sets what Tulle accepts but does not act on yet."""
    notes = []
    for resource in resources:
        for what in _path(resource, "metadata", "filterMetadata", "tulle", "not_applied") or ():
            rule = _istio_config(resource)
            notes.append(f"Not applied: {_field(resource, 'name')}: DestinationRule {rule}: {what}")
    return sorted(notes)


def _field(message: Any, name: str) -> Any:
    """A field of xDS JSON in its JSON name (camelCase) or its proto name (snake_case)."""
    if not isinstance(message, dict):
        return None
    if name in message:
        return message[name]
    return message.get(re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), name))


def _path(message: Any, *names: str) -> Any:
    for name in names:
        message = _field(message, name)
    return message


def _istio_config(message: Any) -> str:
    """"reviews.default" from Istio's filter metadata ".../namespaces/default/virtual-service/reviews"."""
    config = _path(message, "metadata", "filterMetadata", "istio", "config")
    if not isinstance(config, str):
        return ""
    parts = config.strip("/").split("/")
    if len(parts) >= 4 and parts[-4] == "namespaces":
        return f"{parts[-1]}.{parts[-3]}"
    return config


def _socket_address(address: Any) -> tuple[str, str]:
    socket = _field(address, "socketAddress")
    if isinstance(socket, dict):
        port = _field(socket, "portValue")
        return str(_field(socket, "address") or ""), "" if port is None else str(port)
    pipe = _field(address, "pipe")
    return (str(_field(pipe, "path") or ""), "") if isinstance(pipe, dict) else ("", "")


def cluster_rows(resources: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for cluster in resources:
        name = str(_field(cluster, "name") or "")
        parts = name.split("|")
        if len(parts) == 4 and parts[0] in ("outbound", "inbound"):
            direction, port, subset, fqdn = parts
        else:
            direction, port, subset, fqdn = "", "", "", name
        kind = _field(cluster, "type")
        if kind is None:
            custom = _field(cluster, "clusterType")
            kind = _field(custom, "name") if custom else ("EDS" if _field(cluster, "edsClusterConfig") else "STATIC")
        rows.append([fqdn, port, subset, direction, str(kind), _istio_config(cluster)])
    return ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"], sorted(rows)


def _chain_match(chain: dict[str, Any]) -> str:
    match = _field(chain, "filterChainMatch") or {}
    parts = []
    if _field(match, "destinationPort") is not None:
        parts.append(f"port {_field(match, 'destinationPort')}")
    for field_name, label in (("serverNames", "SNI"), ("transportProtocol", "transport"),
                              ("applicationProtocols", "ALPN"), ("prefixRanges", "dst")):
        value = _field(match, field_name)
        if value:
            if field_name == "prefixRanges":
                value = [f"{_field(r, 'addressPrefix')}/{_field(r, 'prefixLen') or 0}" for r in value]
            parts.append(f"{label}: {_joined(value)}")
    return "; ".join(parts) or "ALL"


def _chain_destination(chain: dict[str, Any]) -> str:
    for network_filter in _field(chain, "filters") or []:
        config = _field(network_filter, "typedConfig") or {}
        route_name = _path(config, "rds", "routeConfigName")
        if route_name:
            return f"Route: {route_name}"
        if _field(config, "routeConfig"):
            return "Inline Route: " + str(_field(_field(config, "routeConfig"), "name") or "")
        if _field(config, "cluster"):
            return f"Cluster: {_field(config, 'cluster')}"
    names = [str(_field(f, "name") or "") for f in _field(chain, "filters") or []]
    return ",".join(name for name in names if name)


def listener_rows(resources: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for listener in resources:
        address, port = _socket_address(_field(listener, "address"))
        chains = list(_field(listener, "filterChains") or [])
        if _field(listener, "defaultFilterChain"):
            chains.append(_field(listener, "defaultFilterChain"))
        name = str(_field(listener, "name") or "")
        for chain in chains or [{}]:
            rows.append([name, address, port, _chain_match(chain), _chain_destination(chain)])
    return ["NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION"], rows


def _route_match(route: dict[str, Any]) -> str:
    match = _field(route, "match") or {}
    if _field(match, "prefix") is not None:
        return f"{_field(match, 'prefix')}*"
    if _field(match, "path") is not None:
        return str(_field(match, "path"))
    if _field(match, "pathSeparatedPrefix") is not None:
        return f"{_field(match, 'pathSeparatedPrefix')}/*"
    regex = _path(match, "safeRegex", "regex")
    return str(regex) if regex is not None else ""


def _domains(domains: list[Any]) -> str:
    shown = ", ".join(str(domain) for domain in domains[:2])
    return f"{shown} + {len(domains) - 2} more..." if len(domains) > 2 else shown


def route_rows(resources: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for config in resources:
        config_name = str(_field(config, "name") or "")
        for host in _field(config, "virtualHosts") or []:
            host_name = str(_field(host, "name") or "")
            domains = _domains(list(_field(host, "domains") or []))
            for route in _field(host, "routes") or []:
                rows.append([config_name, host_name, domains, _route_match(route), _istio_config(route)])
    return ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"], rows


def endpoint_rows(resources: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for assignment in resources:
        cluster = str(_field(assignment, "clusterName") or "")
        for group in _field(assignment, "endpoints") or []:
            locality = _field(group, "locality") or {}
            where = "/".join(str(_field(locality, key) or "") for key in ("region", "zone", "subZone")).strip("/")
            for endpoint in _field(group, "lbEndpoints") or []:
                address, port = _socket_address(_path(endpoint, "endpoint", "address"))
                health = str(_field(endpoint, "healthStatus") or "UNKNOWN")
                # Envoy routes to UNKNOWN endpoints as healthy (no health checking told it otherwise).
                status = "HEALTHY" if health in ("UNKNOWN", "HEALTHY") else health
                rows.append([f"{address}:{port}" if port else address, status, where, cluster])
    return ["ENDPOINT", "STATUS", "LOCALITY", "CLUSTER"], sorted(rows, key=lambda row: (row[3], row[0]))


CONFIG_TABLES: dict[str, Callable[[list[dict[str, Any]]], tuple[list[str], list[list[str]]]]] = {
    "clusters": cluster_rows, "listeners": listener_rows, "routes": route_rows, "endpoints": endpoint_rows,
}


# --- commands: registration ---------------------------------------------------------------


def parse_service_port(text: str) -> dict[str, Any]:
    """"http:9080" or "http:9080:HTTP" -> the HTTP API's port object."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected name:port[:protocol], e.g. http:9080")
    port: dict[str, Any] = {"name": parts[0], "port": _port_number(parts[1], text)}
    if len(parts) == 3 and parts[2]:
        port["protocol"] = parts[2].upper()
    return port


def parse_instance_port(text: str) -> tuple[str, int]:
    """"http:9080": the service port name (or number) -> the port this instance listens on."""
    name, sep, number = text.rpartition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected name:port, e.g. http:9080")
    return name, _port_number(number, text)


def _port_number(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{whole!r}: port must be a number from 1 to 65535")
    return int(text)


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    return key, value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def run_register(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    if args.what == "service":
        body: dict[str, Any] = {"name": args.name, "namespace": args.namespace, "ports": args.ports}
        if args.labels:
            body["labels"] = dict(args.labels)
        answer = client.expect_ok("POST", "/apis/v1/services", body=body)
        if args.output:
            sys.stdout.write(dump(answer, args.output))
        else:
            hostname = answer.get("hostname") if isinstance(answer, dict) else None
            print(f"service {hostname or f'{args.name}.{args.namespace}'} registered")
        return 0
    return _register_instance(args, client)


def instance_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": args.name, "namespace": args.namespace, "address": args.address,
        "ports": dict(args.ports), "labels": dict(args.labels or []), "services": list(args.services or []),
    }
    if args.service_account:
        body["serviceAccount"] = args.service_account
    if args.locality:
        body["locality"] = args.locality
    if args.ttl is not None:
        body["ttlSeconds"] = int(args.ttl) if float(args.ttl).is_integer() else args.ttl
    return body


def _register_once(client: ControlPlaneClient, body: dict[str, Any]) -> tuple[str, float]:
    answer = client.expect_ok("POST", "/apis/v1/instances", body=body)
    if not isinstance(answer, dict) or not answer.get("id"):
        raise CommandError(f"unexpected answer from the control plane: {json.dumps(answer)[:200]}")
    ttl = answer.get("ttlSeconds", body.get("ttlSeconds", DEFAULT_TTL_S))
    return str(answer["id"]), float(ttl) if isinstance(ttl, int | float) and ttl > 0 else DEFAULT_TTL_S


def _register_instance(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    body = instance_body(args)
    instance_id, ttl = _register_once(client, body)
    print(instance_id, flush=True)
    if not args.heartbeat:
        return 0
    # A third of the lease: two heartbeats can be lost before the instance expires.
    interval = ttl / 3
    print(f"heartbeat every {interval:g}s (lease {ttl:g}s); Ctrl-C deregisters {instance_id}",
          file=sys.stderr, flush=True)
    try:
        while True:
            _sleep(interval)
            try:
                reply = client.request("PUT", f"/apis/v1/instances/{segment(instance_id)}/heartbeat")
                if reply.status == 404:  # the lease expired (or the control plane restarted): start over
                    instance_id, ttl = _register_once(client, body)
                    interval = ttl / 3
                    print(f"lease expired; registered again as {instance_id}", file=sys.stderr, flush=True)
                    print(instance_id, flush=True)
                elif not reply.ok:
                    print(f"heartbeat refused ({reply.status}): {reply.error_text()}", file=sys.stderr, flush=True)
            except CommandError as error:  # keep trying: the control plane may come back in time
                print(f"heartbeat failed: {error}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        try:
            reply = client.request("DELETE", f"/apis/v1/instances/{segment(instance_id)}")
        except CommandError as error:
            print(f"could not deregister {instance_id}: {error}", file=sys.stderr)
            return 1
        if reply.ok or reply.status == 404:
            print(f"instance {instance_id} deregistered", file=sys.stderr)
            return 0
        print(f"could not deregister {instance_id}: {reply.status} {reply.error_text()}", file=sys.stderr)
        return 1


# --- commands: the state directory --------------------------------------------------------


def run_state(args: argparse.Namespace) -> int:
    """``tulle state check|restore|export``: work on a state directory's files directly."""
    from tulle.controlplane.store import state  # sqlite3 only: the other commands need none of it

    if args.action == "check":
        healthy, lines = state.describe(args.state_dir)
        print("\n".join(lines), file=sys.stdout if healthy else sys.stderr)
        return 0 if healthy else 1
    if args.action == "restore":
        try:
            print(state.restore(args.state_dir, force=args.force))
        except state.StateError as error:
            raise CommandError(str(error)) from None
        return 0
    path = state.last_good_path(args.state_dir) if args.last_good else state.database_path(args.state_dir)
    resources, problem = state.read_resources(path)
    items = [resource_json(resource) for resource in resources]
    if args.output == "json":
        sys.stdout.write(dump({"apiVersion": "v1", "kind": "List", "items": items}, "json"))
    else:
        sys.stdout.write(yaml.safe_dump_all(items, sort_keys=False, default_flow_style=False, allow_unicode=True))
    if problem:
        raise CommandError(f"only {_count(len(items), 'resource')} could be read: {problem}")
    print(f"{_count(len(items), 'resource')} exported from {path}", file=sys.stderr)
    return 0


# --- argument parsing ---------------------------------------------------------------------


def _runner(
    command: str, handler: Callable[[argparse.Namespace, ControlPlaneClient], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args, ControlPlaneClient.from_args(args))
        except CommandError as error:
            return _fail(command, error)

    return run


def _offline_runner(command: str, handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CommandError as error:
            return _fail(command, error)

    return run


def _fail(command: str, error: CommandError) -> int:
    print(f"tulle {command}: error: {error}", file=sys.stderr)
    return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add apply, get, delete, analyze, proxy-status, proxy-config, register and state to ``tulle``."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--control-plane", metavar="URL",
                        help=f"the control plane's HTTP API (default ${CONTROL_PLANE_ENV} or {DEFAULT_CONTROL_PLANE})")
    add_client_arguments(remote)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=("yaml", "json"), help="print the answer as YAML or JSON")
    namespace = argparse.ArgumentParser(add_help=False)
    namespace.add_argument("-n", "--namespace", help=f"namespace (default {DEFAULT_NAMESPACE})")

    apply = subparsers.add_parser("apply", parents=[remote, output, namespace],
                                  help="create or update Istio resources from files (all or nothing)")
    apply.add_argument("-f", "--filename", action="extend", nargs="+", required=True, metavar="FILE|DIR|-",
                       help="YAML/JSON file, directory of them, or - for stdin (repeatable)")
    apply.add_argument("--dry-run", action="store_true", help="validate on the server without storing anything")
    apply.set_defaults(func=_runner("apply", run_apply))

    get = subparsers.add_parser("get", parents=[remote, output, namespace],
                                help="list resources (vs, dr, gw, se, we, sidecar; services, instances)")
    get.add_argument("kind", metavar="KIND")
    get.add_argument("name", metavar="NAME", nargs="?")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    get.set_defaults(func=_runner("get", run_get))

    delete = subparsers.add_parser("delete", parents=[remote, namespace],
                                   help="delete resources by kind and name, or those named in files")
    delete.add_argument("kind", metavar="KIND", nargs="?")
    delete.add_argument("names", metavar="NAME", nargs="*")
    delete.add_argument("-f", "--filename", action="extend", nargs="+", metavar="FILE|DIR|-",
                        help="delete the resources these files define")
    delete.add_argument("--ignore-not-found", action="store_true", help="a missing resource is not an error")
    delete.set_defaults(func=_runner("delete", run_delete))

    analyze = subparsers.add_parser("analyze", parents=[namespace],
                                    help="validate Istio files offline, like istioctl analyze")
    analyze.add_argument("-o", "--output", choices=("log", "json", "yaml"), default="log",
                         help="one line per message (log, the default), or istioctl's JSON/YAML messages")
    analyze.add_argument("files", metavar="FILE", nargs="*", help="files or directories to analyze")
    analyze.add_argument("-f", "--filename", action="extend", nargs="+", metavar="FILE|DIR|-",
                         help="files or directories to analyze, - for stdin (repeatable)")
    analyze.add_argument("--failure-threshold", type=str.capitalize, choices=ANALYSIS_LEVELS, default="Error",
                         help="the level of message that makes the exit code non-zero (default Error, as istioctl)")
    analyze.set_defaults(func=_offline_runner("analyze", run_analyze))

    proxy_help = "a connected proxy: NAME, NAME.NAMESPACE (as istioctl's pod.namespace) or its node id"
    status = subparsers.add_parser("proxy-status", aliases=["ps"], parents=[remote, output, namespace],
                                   help="xDS sync state of every connected proxy")
    status.add_argument("proxy", metavar="PROXY", nargs="?", help=f"only this proxy: {proxy_help}")
    status.set_defaults(func=_runner("proxy-status", run_proxy_status))

    config = subparsers.add_parser("proxy-config", aliases=["pc"], parents=[remote, output, namespace],
                                   help="the xDS configuration the control plane serves to one proxy")
    config.add_argument("type", type=config_type, metavar="(listeners|routes|clusters|endpoints)")
    config.add_argument("proxy", metavar="PROXY", help=proxy_help)
    config.set_defaults(func=_runner("proxy-config", run_proxy_config))

    registration = subparsers.add_parser("register", help="add a service or a workload instance to the registry")
    what = registration.add_subparsers(dest="what", required=True, metavar="(service|instance)")
    service = what.add_parser("service", parents=[remote, output], help="a durable service (name, ports)")
    service.add_argument("--name", required=True)
    service.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE)
    service.add_argument("--port", dest="ports", action="append", type=parse_service_port, required=True,
                         metavar="NAME:PORT[:PROTOCOL]", help="e.g. http:9080 or api:8080:GRPC (repeatable)")
    service.add_argument("--label", dest="labels", action="append", type=parse_label, metavar="KEY=VALUE")
    service.set_defaults(func=_runner("register", run_register))

    instance = what.add_parser("instance", parents=[remote],
                               help="a workload instance with a TTL lease; prints its id")
    instance.add_argument("--name", required=True)
    instance.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE)
    instance.add_argument("--address", required=True, help="the IP the instance listens on")
    instance.add_argument("--port", dest="ports", action="append", type=parse_instance_port, required=True,
                          metavar="NAME:PORT", help="service port name -> instance port (repeatable)")
    instance.add_argument("--label", dest="labels", action="append", type=parse_label, metavar="KEY=VALUE")
    instance.add_argument("--service", dest="services", action="append", metavar="HOST",
                          help="a service this instance backs, FQDN or short name (repeatable)")
    instance.add_argument("--service-account")
    instance.add_argument("--locality", metavar="REGION/ZONE/SUBZONE")
    instance.add_argument("--ttl", type=positive_seconds, metavar="SECONDS",
                          help=f"lease length (server default {DEFAULT_TTL_S:g}s)")
    instance.add_argument("--heartbeat", action="store_true",
                          help="renew the lease until Ctrl-C, then deregister")
    instance.set_defaults(func=_runner("register", run_register))

    state_dir = argparse.ArgumentParser(add_help=False)
    state_dir.add_argument("--state-dir", default=os.environ.get("TULLE_STATE_DIR", DEFAULT_STATE_DIR),
                           help=f"the control plane's state directory (default {DEFAULT_STATE_DIR}, or $TULLE_STATE_DIR)")
    state = subparsers.add_parser("state", help="check, restore or export a control plane's state directory")
    action = state.add_subparsers(dest="action", required=True, metavar="(check|restore|export)")
    action.add_parser("check", parents=[state_dir],
                      help="is config.db whole? (and its last good copy); exit 1 when damaged")
    restore = action.add_parser("restore", parents=[state_dir],
                                help="replace a damaged config.db with config.db.last-good (the damaged file is kept)")
    restore.add_argument("--force", action="store_true", help="restore even though config.db is whole")
    export = action.add_parser("export", parents=[state_dir],
                               help="print the stored resources as YAML that `tulle apply -f` takes")
    export.add_argument("--last-good", action="store_true", help="export config.db.last-good instead")
    export.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    state.set_defaults(func=_offline_runner("state", run_state))
