"""The control-plane commands of ``tulle``, run in-process against a fake HTTP API on 127.0.0.1.

The fake implements the rows of docs/control-plane.md's HTTP API that the commands use and
records every request, so the tests check what is sent, what is printed and the exit codes.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from tulle.cli import main
from tulle.config.loader import parse_message
from tulle.controlplane import cli
from tulle.controlplane.xds import types

# --- the fake control plane -----------------------------------------------------------------

TOKEN = "cli-test-token-0123456789abcdefghijklmnopq"


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every command finds this token ($TULLE_TOKEN) and both control planes below demand it."""
    for name in ("TULLE_TOKEN_FILE", "TULLE_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TULLE_TOKEN", TOKEN)
    return TOKEN


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str
    authorization: str


Answer = tuple[int, Any]
Route = Answer | Callable[[Recorded], Answer]


class FakeControlPlane:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[Recorded] = []
        self.token = TOKEN
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                request = Recorded(self.command, parts.path, dict(parse_qsl(parts.query)), body,
                                   self.headers.get("Content-Type", ""), self.headers.get("Authorization", ""))
                fake.requests.append(request)
                route = fake.routes.get((self.command, parts.path), (404, {"error": "not found"}))
                if request.authorization != f"Bearer {fake.token}":  # as the real API's guard
                    route = (401, {"error": "this API needs 'Authorization: Bearer <token>'"})
                status, answer = route(request) if callable(route) else route
                payload = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval keeps shutdown() (each test's teardown) quick.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def on(self, method: str, path: str, answer: Route) -> None:
        self.routes[(method, path)] = answer

    def sent(self, method: str) -> list[Recorded]:
        return [request for request in self.requests if request.method == method]


@pytest.fixture
def fake() -> Iterator[FakeControlPlane]:
    server = FakeControlPlane()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def run(capsys: pytest.CaptureFixture[str], fake: FakeControlPlane | None, *argv: str) -> tuple[int, str, str]:
    extra = ["--control-plane", fake.url] if fake is not None else []
    code = main([*argv, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


REVIEWS_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: prod
  labels: {team: books}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
"""


def write(tmp_path: Path, text: str, name: str = "mesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def item(kind: str, name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


# --- reaching the control plane -------------------------------------------------------------


@pytest.mark.parametrize("argv", [["get", "vs"], ["proxy-status"], ["delete", "dr", "reviews"],
                                  ["proxy-config", "clusters", "p1"]])
def test_unreachable_control_plane_is_explained(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    url = closed_port_url()
    code = main([*argv, "--control-plane", url])
    err = capsys.readouterr().err
    assert code == 1
    assert (f"cannot reach the control plane at {url} (is `tulle control-plane` running? "
            "set --control-plane or TULLE_CONTROL_PLANE)") in err
    assert err.startswith(f"tulle {argv[0]}: error: ")


def test_address_comes_from_flag_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    fake.on("GET", "/apis/v1/resources", (200, {"items": []}))
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, fake.url.removeprefix("http://"))  # scheme is optional
    assert main(["get", "gw"]) == 0
    assert fake.requests[-1].query == {"kind": "Gateway", "namespace": "default"}
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, closed_port_url())
    assert run(capsys, fake, "get", "gw")[0] == 0  # --control-plane wins over the environment
    assert len(fake.requests) == 2
    monkeypatch.delenv(cli.CONTROL_PLANE_ENV)
    assert cli.control_plane_url(None) == cli.DEFAULT_CONTROL_PLANE == "http://127.0.0.1:15014"


@pytest.mark.parametrize("argv", [["get", "vs"], ["apply", "-f", "-"], ["delete", "dr", "reviews"],
                                  ["proxy-status"], ["proxy-config", "clusters", "p1"],
                                  ["register", "service", "--name", "r", "--port", "http:9080"],
                                  ["register", "instance", "--name", "r-1", "--address", "10.0.0.1",
                                   "--port", "http:9080"]])
def test_every_command_sends_the_token_and_explains_a_missing_one(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(item("Gateway", "ingress"))))
    monkeypatch.chdir(tmp_path)  # no .tulle-state here
    monkeypatch.delenv("TULLE_TOKEN")
    code, out, err = run(capsys, fake, *argv)
    assert code == 1 and out == ""
    assert err == (f"tulle {argv[0]}: error: the control plane at {fake.url} refused the request: no API token "
                   f"was found ({tmp_path}/.tulle-state/api-token does not exist); give --token-file PATH (the "
                   "control plane's <state dir>/api-token or its --token-file), --state-dir DIR, or set "
                   "TULLE_TOKEN_FILE or TULLE_TOKEN\n")
    assert fake.requests[-1].authorization == ""

    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(item("Gateway", "ingress"))))
    monkeypatch.setenv("TULLE_TOKEN", "x" * 43)
    code, _, err = run(capsys, fake, *argv)
    assert code == 1
    assert err.endswith("refused the request: the API token from $TULLE_TOKEN was refused: it is not this "
                        "control plane's (its <state dir>/api-token or the file given to its --token-file)\n")

    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(item("Gateway", "ingress"))))
    monkeypatch.setenv("TULLE_TOKEN", TOKEN)
    run(capsys, fake, *argv)
    assert fake.requests[-1].authorization == f"Bearer {TOKEN}"


def test_the_token_comes_from_flags_then_environment_then_the_default_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    fake.on("GET", "/apis/v1/resources", (200, {"items": []}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TULLE_TOKEN")
    default = tmp_path / ".tulle-state"
    default.mkdir()
    (default / "api-token").write_text(TOKEN + "\n")
    assert run(capsys, fake, "get", "vs")[0] == 0  # ./.tulle-state/api-token, the control plane's default

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "api-token").write_text("o" * 40)
    monkeypatch.setenv("TULLE_STATE_DIR", str(tmp_path / "other"))
    assert run(capsys, fake, "get", "vs")[0] == 1  # $TULLE_STATE_DIR beats the default
    assert fake.requests[-1].authorization == "Bearer " + "o" * 40
    assert run(capsys, fake, "get", "vs", "--state-dir", str(default))[0] == 0
    monkeypatch.setenv("TULLE_TOKEN_FILE", str(default / "api-token"))
    assert run(capsys, fake, "get", "vs")[0] == 0
    monkeypatch.setenv("TULLE_TOKEN", "t" * 40)  # $TULLE_TOKEN beats $TULLE_TOKEN_FILE
    assert run(capsys, fake, "get", "vs")[0] == 1
    assert run(capsys, fake, "get", "vs", "--token-file", str(default / "api-token"))[0] == 0

    code, _, err = run(capsys, fake, "get", "vs", "--token-file", str(tmp_path / "nowhere"))
    assert code == 1
    assert err == (f"tulle get: error: cannot use the API token from --token-file {tmp_path}/nowhere: "
                   f"{tmp_path}/nowhere does not exist\n")
    requests = len(fake.requests)
    (tmp_path / "short").write_text("abc\n")
    code, _, err = run(capsys, fake, "get", "vs", "--token-file", str(tmp_path / "short"))
    assert code == 1 and "the API token is 3 characters long, fewer than 32" in err
    assert len(fake.requests) == requests  # nothing sent with a token known to be unusable


def test_unexpected_server_failure_shows_status_and_message(
    fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    fake.on("GET", "/apis/v1/resources", (500, {"error": "store is read-only"}))
    code, out, err = run(capsys, fake, "get", "dr")
    assert code == 1 and out == ""
    assert "500" in err and "store is read-only" in err


# --- apply ----------------------------------------------------------------------------------


def test_apply_sends_parsed_resources_and_reports_each(
    tmp_path: Path, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    fake.on("POST", "/apis/v1/resources", (200, {
        "created": ["VirtualService default/reviews"], "updated": ["DestinationRule prod/reviews"], "warnings": []}))
    code, out, err = run(capsys, fake, "apply", "-f", str(write(tmp_path, REVIEWS_VS)))
    assert code == 0, err
    assert out.splitlines() == ["VirtualService default/reviews created", "DestinationRule prod/reviews updated"]
    (request,) = fake.requests
    assert request.query == {} and request.content_type == "application/json"
    assert [entry["kind"] for entry in request.body] == ["VirtualService", "DestinationRule"]
    assert request.body[0]["metadata"] == {"name": "reviews", "namespace": "default"}
    assert request.body[1]["metadata"]["labels"] == {"team": "books"}
    assert request.body[1]["spec"]["subsets"][0]["labels"] == {"version": "v1"}


def test_apply_dry_run_directory_and_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    fake.on("POST", "/apis/v1/resources",
            lambda request: (200, {"created": [f"{e['kind']} {e['metadata']['namespace']}/{e['metadata']['name']}"
                                               for e in request.body], "updated": [], "warnings": []}))
    folder = tmp_path / "config"
    folder.mkdir()
    write(folder, REVIEWS_VS, "a.yaml")
    write(folder, "not config", "notes.txt")  # only *.yaml/*.yml/*.json are read from a directory
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(item("Gateway", "ingress"))))
    code, out, _ = run(capsys, fake, "apply", "-f", str(folder), "-", "--dry-run", "-n", "staging")
    assert code == 0
    assert fake.requests[0].query == {"dry_run": "true"}
    assert [e["metadata"]["namespace"] for e in fake.requests[0].body] == ["staging", "prod", "default"]
    assert out.splitlines()[-1] == "Gateway default/ingress created (dry run)"
    assert all(line.endswith("(dry run)") for line in out.splitlines())


def test_apply_refused_prints_each_diagnostic_at_its_file_and_document(
    tmp_path: Path, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, REVIEWS_VS)
    fake.on("POST", "/apis/v1/resources", (400, {
        "errors": [
            {"level": "error", "resource": "DestinationRule prod/reviews", "field": "spec.subsets[0].name",
             "message": "invalid subset name", "source": "request#2"},
            {"level": "error", "resource": "", "field": "spec", "message": "broken", "source": "request#1"},
        ],
        "warnings": [{"level": "warning", "resource": "VirtualService default/reviews", "field": "spec.hosts",
                      "message": "host not found", "source": ""}],
    }))
    code, out, err = run(capsys, fake, "apply", "-f", str(path))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert f"{path}#2: DestinationRule prod/reviews: spec.subsets[0].name: invalid subset name" in lines
    assert f"{path}#1: spec: broken" in lines  # no ref: the list position names the document
    assert f"Warning: {path}#1: VirtualService default/reviews: spec.hosts: host not found" in lines
    assert lines[-1] == "tulle apply: error: 2 errors; nothing was applied"


def test_apply_warnings_do_not_fail(tmp_path: Path, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("POST", "/apis/v1/resources", (200, {"created": ["VirtualService default/reviews"], "updated": [],
                                                 "warnings": [{"level": "warning", "resource": "VirtualService "
                                                               "default/reviews", "field": "spec",
                                                               "message": "deprecated", "source": ""}]}))
    code, out, err = run(capsys, fake, "apply", "-f", str(write(tmp_path, REVIEWS_VS)))
    assert code == 0
    assert "VirtualService default/reviews created" in out
    assert f"Warning: {tmp_path / 'mesh.yaml'}#1: VirtualService default/reviews: spec: deprecated" in err


def test_apply_broken_file_is_reported_locally_without_a_request(
    tmp_path: Path, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, REVIEWS_VS + "---\nkind: [unclosed\n")
    code, _, err = run(capsys, fake, "apply", "-f", str(path))
    assert code == 1
    assert fake.requests == []
    assert f"{path}#3: invalid YAML" in err
    assert "nothing was applied" in err


def test_apply_without_objects_fails(tmp_path: Path, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, fake, "apply", "-f", str(write(tmp_path, "# nothing here\n")))
    assert code == 1 and "no objects passed to apply" in err
    assert fake.requests == []


def test_apply_output_yaml_prints_the_answer(
    tmp_path: Path, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    answer = {"created": ["VirtualService default/reviews"], "updated": [], "warnings": []}
    fake.on("POST", "/apis/v1/resources", (200, answer))
    code, out, _ = run(capsys, fake, "apply", "-f", str(write(tmp_path, REVIEWS_VS)), "-o", "yaml")
    assert code == 0 and yaml.safe_load(out) == answer


# --- get ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("typed", "kind"), [
    ("vs", "VirtualService"), ("virtualservices", "VirtualService"), ("VirtualService", "VirtualService"),
    ("virtualservice.networking.istio.io", "VirtualService"), ("dr", "DestinationRule"),
    ("destinationrules", "DestinationRule"), ("gw", "Gateway"), ("gateway", "Gateway"), ("se", "ServiceEntry"),
    ("serviceentries", "ServiceEntry"), ("we", "WorkloadEntry"), ("workloadentry", "WorkloadEntry"),
    ("sidecar", "Sidecar"), ("sidecars", "Sidecar"),
])
def test_kind_names_short_names_and_plurals(typed: str, kind: str) -> None:
    assert cli.resolve_kind(typed).kind == kind


def test_unknown_kind_suggests_a_close_one(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, fake, "get", "virtualservise")
    assert code == 1
    assert "unknown kind 'virtualservise' (did you mean virtualservices?)" in err
    assert fake.requests == []


def test_get_lists_a_table_with_printer_columns(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/apis/v1/resources", (200, {"items": [
        item("VirtualService", "reviews", hosts=["reviews"], gateways=["mesh", "ingress"]),
        item("VirtualService", "bookinfo", hosts=["bookinfo.example.com"]),
    ]}))
    code, out, _ = run(capsys, fake, "get", "vs")
    assert code == 0
    assert fake.requests[0].query == {"kind": "VirtualService", "namespace": "default"}
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "GATEWAYS", "HOSTS"]
    assert rows[0].split() == ["bookinfo", "bookinfo.example.com"]  # sorted by name
    assert rows[1].split() == ["reviews", "mesh,ingress", "reviews"]
    # Aligned: each column starts at the same offset on every line.
    assert header.index("GATEWAYS") == rows[1].index("mesh,ingress")


def test_get_all_namespaces_adds_namespace_and_age(
    fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    entry = item("ServiceEntry", "httpbin", "prod", hosts=["httpbin.org"], location="MESH_EXTERNAL",
                 resolution="DNS")
    entry["metadata"]["creationTimestamp"] = "2000-01-01T00:00:00Z"
    fake.on("GET", "/apis/v1/resources", (200, {"items": [entry]}))
    code, out, _ = run(capsys, fake, "get", "se", "-A")
    assert code == 0
    assert fake.requests[0].query == {"kind": "ServiceEntry"}
    header, row = out.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "HOSTS", "LOCATION", "RESOLUTION", "AGE"]
    assert row.split()[:5] == ["prod", "httpbin", "httpbin.org", "MESH_EXTERNAL", "DNS"]
    assert row.split()[5].endswith("y")


def test_get_empty_list_says_so(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/apis/v1/resources", (200, {"items": []}))
    code, out, err = run(capsys, fake, "get", "sidecar", "-n", "prod")
    assert code == 0 and out == ""
    assert "No resources found in prod namespace." in err


def test_get_by_name_and_not_found(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/apis/v1/resources/DestinationRule/prod/reviews",
            (200, item("DestinationRule", "reviews", "prod", host="reviews")))
    code, out, _ = run(capsys, fake, "get", "dr", "reviews", "-n", "prod")
    assert code == 0
    assert out.splitlines()[1].split() == ["reviews", "reviews"]
    code, out, err = run(capsys, fake, "get", "dr", "ratings", "-n", "prod")
    assert code == 1 and out == ""
    assert "DestinationRule prod/ratings not found" in err
    assert fake.requests[-1].path == "/apis/v1/resources/DestinationRule/prod/ratings"


def test_get_name_across_all_namespaces_is_refused(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, fake, "get", "vs", "reviews", "-A")
    assert code == 1 and "-n NAMESPACE" in err and fake.requests == []


def test_get_yaml_output_can_be_applied_again(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    from tulle.controlplane.istio.documents import load_documents

    items = [item("Gateway", "ingress", selector={"istio": "ingressgateway"}),
             item("Gateway", "egress", selector={"istio": "egressgateway"})]
    fake.on("GET", "/apis/v1/resources", (200, {"items": items}))
    code, out, _ = run(capsys, fake, "get", "gw", "-o", "yaml")
    assert code == 0
    resources, diagnostics = load_documents(out, "got.yaml")
    assert diagnostics == []
    assert [(r.kind, r.name, r.spec) for r in resources] == [
        (i["kind"], i["metadata"]["name"], i["spec"]) for i in items]
    code, out, _ = run(capsys, fake, "get", "gw", "-o", "json")
    assert json.loads(out)["items"] == items


def test_get_registry_services_and_instances(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/apis/v1/services", (200, {"items": [
        {"name": "reviews", "namespace": "default", "hostname": "reviews.default.svc.cluster.local",
         "ports": [{"name": "http", "port": 9080, "protocol": "HTTP"}]},
        {"name": "other", "namespace": "prod", "hostname": "other.prod.svc.cluster.local", "ports": []}]}))
    fake.on("GET", "/apis/v1/instances", (200, {"items": [
        {"id": "i-1", "name": "reviews-1", "namespace": "default", "address": "10.0.0.5",
         "ports": {"http": 9080}, "services": ["reviews"], "expiresInSeconds": 12.4}]}))
    code, out, _ = run(capsys, fake, "get", "svc")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAMESPACE", "HOSTNAME", "PORTS", "ORIGIN"]
    assert out.splitlines()[1].split() == ["default", "reviews.default.svc.cluster.local", "http:9080/HTTP"]
    assert "other" not in out  # only the default namespace
    code, out, _ = run(capsys, fake, "get", "instances", "i-1")
    assert code == 0
    assert out.splitlines()[1].split() == ["default", "reviews-1", "i-1", "10.0.0.5", "http:9080", "reviews", "12s"]
    code, _, err = run(capsys, fake, "get", "instance", "i-2")
    assert code == 1 and "'i-2' not found" in err


# --- delete ---------------------------------------------------------------------------------


def _bulk_delete(existing: set[str]) -> Callable[[Recorded], tuple[int, dict[str, Any]]]:
    """The bulk delete endpoint over a set of "Kind ns/name" refs: all or nothing."""

    def answer(request: Recorded) -> tuple[int, dict[str, Any]]:
        refs = [f"{i['kind']} {i['namespace']}/{i['name']}" for i in request.body["items"]]
        missing = [ref for ref in refs if ref not in existing]
        if missing and not request.body["ignoreNotFound"]:
            return 404, {"error": "not found; nothing was deleted", "notFound": missing, "deleted": []}
        return 200, {"deleted": [ref for ref in refs if ref in existing], "notFound": missing}

    return answer


def test_delete_by_kind_and_names_is_one_request_all_or_nothing(
        fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("POST", "/apis/v1/resources:delete", _bulk_delete({"VirtualService prod/reviews"}))
    code, out, err = run(capsys, fake, "delete", "vs", "reviews", "ratings", "-n", "prod")
    assert code == 1 and out == ""  # ratings was missing: nothing was deleted
    assert "Error: VirtualService prod/ratings not found" in err and "nothing was deleted" in err
    assert [r.body for r in fake.sent("POST")] == [{"items": [
        {"kind": "VirtualService", "namespace": "prod", "name": "reviews"},
        {"kind": "VirtualService", "namespace": "prod", "name": "ratings"}], "ignoreNotFound": False}]
    code, out, err = run(capsys, fake, "delete", "vs", "reviews", "ratings", "-n", "prod", "--ignore-not-found")
    assert (code, out, err) == (0, "VirtualService prod/reviews deleted\n", "")


def test_delete_names_are_quoted_in_the_path(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, fake, "delete", "instance", "a/b c")
    assert fake.requests[0].path == "/apis/v1/instances/a%2Fb%20c"


def test_delete_from_file_is_one_request(tmp_path: Path, fake: FakeControlPlane,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("POST", "/apis/v1/resources:delete",
            _bulk_delete({"VirtualService default/reviews", "DestinationRule prod/reviews"}))
    code, out, _ = run(capsys, fake, "delete", "-f", str(write(tmp_path, REVIEWS_VS)))
    assert code == 0
    assert out.splitlines() == ["VirtualService default/reviews deleted", "DestinationRule prod/reviews deleted"]
    assert len(fake.requests) == 1


def test_delete_registry_service(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("DELETE", "/apis/v1/services/prod/reviews", (200, {}))
    code, out, _ = run(capsys, fake, "delete", "service", "reviews", "-n", "prod")
    assert code == 0 and out == "service prod/reviews deleted\n"


def test_delete_needs_names_or_files(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, fake, "delete", "vs")
    assert code == 1 and "KIND NAME" in err and fake.requests == []


# --- analyze (offline) ----------------------------------------------------------------------


def test_analyze_clean_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same_namespace = REVIEWS_VS.replace("namespace: prod", "namespace: default")
    path = write(tmp_path, same_namespace)
    code, out, err = run(capsys, None, "analyze", "-f", str(path))
    assert code == 0
    # istioctl: messages on stdout (none here), the verdict on stderr.
    assert (out, err) == ("", f"\u2714 No validation issues found when analyzing {path}.\n")


def test_analyze_prints_istioctl_messages_with_codes_and_the_line_of_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    broken = REVIEWS_VS.replace("hosts: [reviews]", "hosts: [reviews]\n  htp: []").replace("namespace: prod",
                                                                                          "namespace: default")
    path = write(tmp_path, broken)
    code, out, err = run(capsys, None, "analyze", str(path))
    assert code == cli.EXIT_ANALYZER_FOUND_ISSUES == 79
    assert out.splitlines() == [
        f"Error [IST0106] (VirtualService default/reviews {path}:7) Schema validation error: spec.htp: unknown field "
        "'htp' in VirtualService; did you mean 'http'?"]
    assert err.startswith(f"Error: Analyzers found issues when analyzing {path}.\nSee https://istio.io/")
    code, out, _ = run(capsys, None, "analyze", "-f", str(path), "-o", "json")
    assert code == 79  # istioctl exits 0 with -o json (istio/istio#35054); Tulle does not
    assert json.loads(out) == [{
        "code": "IST0106", "level": "Error", "origin": "VirtualService default/reviews", "reference": f"{path}:7",
        "message": "Schema validation error: spec.htp: unknown field 'htp' in VirtualService; did you mean 'http'?",
        "field": "spec.htp",
        "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0106/?ref=tulle-analyze"}]


def test_analyze_missing_subset_is_an_error_as_in_istioctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # IST0101 ReferencedResourceNotFound is an Error in istioctl's messages.yaml.
    path = write(tmp_path, REVIEWS_VS.replace("subset: v1}", "subset: v9}").replace("namespace: prod",
                                                                                      "namespace: default"))
    code, out, _ = run(capsys, None, "analyze", "-f", str(path))
    assert code == 79
    assert out.splitlines() == [f'Error [IST0101] (VirtualService default/reviews {path}:9) Referenced host+subset in '
                                'destinationrule not found: "reviews+v9"']


def test_analyze_warnings_pass_unless_the_failure_threshold_says_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    twice = REVIEWS_VS.replace("namespace: prod", "namespace: default").replace(
        "  - route:\n    - destination: {host: reviews, subset: v1}",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n  - route:\n    - destination: {host: reviews}")
    path = write(tmp_path, twice)
    code, out, err = run(capsys, None, "analyze", "-f", str(path), "-o", "log")
    assert code == 0 and err == ""
    assert out.splitlines() == [f"Warning [IST0130] (VirtualService default/reviews {path}:10) VirtualService rule #1 "
                                "not used (only the last rule can have no matches)."]
    code, _, _ = run(capsys, None, "analyze", "--failure-threshold", "warning", "-f", str(path))
    assert code == 79


def test_analyze_reports_unreadable_documents_in_the_same_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, None, "analyze", "-f", str(tmp_path / "missing.yaml"))
    assert code == cli.EXIT_FILE_PARSE_ERROR == 65
    assert out.startswith(f"Error ({tmp_path / 'missing.yaml'}) cannot read file:")
    assert err == "Error: 1 document could not be read.\n"


def test_analyze_lists_each_conflicting_virtual_service_once_in_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Istio's samples directory holds several versions of VirtualService "reviews"; it counts once.
    vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: %s}\nspec:\n  hosts: [reviews]\n" \
         "  http:\n  - route:\n    - destination: {host: reviews}\n"
    for index in range(3):
        write(tmp_path, vs % "reviews", f"reviews-{index}.yaml")
    write(tmp_path, vs % "reviews-canary", "canary.yaml")
    code, out, _ = run(capsys, None, "analyze", str(tmp_path))
    conflicts = [line for line in out.splitlines() if "[IST0109]" in line]
    assert code == 79
    assert [line.split(" (")[1].split()[1] for line in conflicts] == ["default/reviews-canary", "default/reviews"]
    assert all("The VirtualServices default/reviews,default/reviews-canary associated with mesh gateway" in line
               for line in conflicts)


def test_analyze_says_what_tulle_does_not_act_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(__file__).parent / "data" / "istio"
    code, out, _ = run(capsys, None, "analyze", str(data / "destination-rule-all-mtls.yaml"))
    assert code == 0
    assert (f"Warning [TUL0001] (DestinationRule default/reviews {data / 'destination-rule-all-mtls.yaml'}:23) "
            "spec.trafficPolicy.tls: Tulle does not translate TLS origination (tls) yet: clusters get no transport "
            "socket, so traffic to this host is sent in plaintext") in out.splitlines()


# --- proxy-status ---------------------------------------------------------------------------


def test_sync_states() -> None:
    assert cli.sync_state({}) == "NOT SENT"
    assert cli.sync_state({"sent": "v2", "acked": "v2"}) == "SYNCED"
    assert cli.sync_state({"sent": "v2", "acked": "v1"}) == "STALE"
    assert cli.sync_state({"sent": "v2"}) == "STALE (Never Acknowledged)"
    assert cli.sync_state({"sent": "v2", "acked": "v1", "nack": {"version": "v2", "error": "bad"}}) == "NACKED"
    # An old rejection does not taint a version the proxy accepted later.
    assert cli.sync_state({"sent": "v3", "acked": "v3", "nack": {"version": "v2", "error": "bad"}}) == "SYNCED"
    assert cli.sync_state({"sent": "v3", "acked": "v2", "state": "NACKED"}) == "NACKED"


def test_proxy_status_table(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/debug/proxies", (200, {"proxies": [
        {"id": "sidecar~10.0.0.7~reviews-1.default~default.svc.cluster.local", "connected_since": 0,
         "types": {types.CLUSTER: {"sent": "3", "acked": "3"},
                   types.LISTENER: {"sent": "3", "acked": "2", "nack": {"version": "3", "error": "port in use"}},
                   types.ENDPOINT: {"sent": "4", "acked": "3"}}},
        {"id": "grpc-client", "connected_since": "2000-01-01T00:00:00Z", "types": {"SDS": {"sent": "1", "acked": "1"}}},
    ]}))
    code, out, _ = run(capsys, fake, "proxy-status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CDS", "LDS", "EDS", "RDS", "SDS", "CONNECTED"]
    assert lines[1].split()[:2] == ["grpc-client", "NOT"]  # sorted by id; no CDS sent
    assert lines[1].split()[-2] == "SYNCED"
    reviews = lines[2].split()
    assert reviews[1:5] == ["SYNCED", "NACKED", "STALE", "NOT"]
    assert "sidecar~10.0.0.7~reviews-1.default~default.svc.cluster.local LDS rejected version 3: port in use" in out
    code, out, _ = run(capsys, fake, "ps", "grpc-client", "-o", "json")
    assert code == 0 and [p["id"] for p in json.loads(out)["proxies"]] == ["grpc-client"]
    code, _, err = run(capsys, fake, "proxy-status", "nobody")
    assert code == 1 and "'nobody' is not connected" in err


def test_proxy_status_reads_the_xds_cache_status_form(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    from envoy.config.core.v3 import base_pb2

    from tulle.controlplane.xds.cache import NodeStatus, StreamStatus

    node = NodeStatus("sidecar-1", base_pb2.Node(id="sidecar-1"), connected_at=0.0)
    old, new = StreamStatus(1, "sidecar-1", "sotw", 0.0), StreamStatus(2, "sidecar-1", "delta", 0.0)
    node.streams = {1: old, 2: new}
    old.record_sent(types.CLUSTER, "1", "n1", 3)  # superseded by the newer stream's CDS below
    new.record_sent(types.CLUSTER, "2", "n2", 3)
    new.record_ack(types.CLUSTER, "2", "n2")
    new.record_sent(types.LISTENER, "2", "n3", 1)
    new.record_nack(types.LISTENER, "2", "n3", "bad listener")
    fake.on("GET", "/debug/proxies", (200, {"proxies": [node.to_dict()]}))
    code, out, _ = run(capsys, fake, "proxy-status")
    assert code == 0
    assert out.splitlines()[1].split()[:4] == ["sidecar-1", "SYNCED", "NACKED", "NOT"]
    assert "sidecar-1 LDS rejected version 2: bad listener" in out


def test_proxy_status_shows_an_update_too_large_to_send(fake: FakeControlPlane,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from envoy.config.core.v3 import base_pb2

    from tulle.controlplane.xds.cache import NodeStatus, StreamStatus

    node = NodeStatus("sidecar-1", base_pb2.Node(id="sidecar-1"), connected_at=0.0)
    stream = StreamStatus(1, "sidecar-1", "sotw", 0.0)
    node.streams = {1: stream}
    stream.record_sent(types.ROUTE, "1", "n1", 2)
    stream.record_ack(types.ROUTE, "1", "n1")
    stream.record_refused(types.ROUTE, "2", 70_000_000, 67_108_864, "RDS version 2 for node sidecar-1 was not sent")
    contract_form = {"id": "sidecar-2", "connected_since": 0, "types": {types.ROUTE: {
        "sent": "1", "acked": "1", "state": "TOO LARGE",
        "refused": {"version": "2", "bytes": 70_000_000, "limit": 67_108_864, "error": "too large"}}}}
    fake.on("GET", "/debug/proxies", (200, {"proxies": [node.to_dict(), contract_form]}))
    code, out, _ = run(capsys, fake, "proxy-status")
    assert code == 0
    lines = out.splitlines()
    for line, proxy in zip(lines[1:3], ("sidecar-1", "sidecar-2"), strict=True):
        # CDS, LDS and EDS were never sent; RDS (the fourth column) was refused
        assert line.split()[:9] == [proxy, "NOT", "SENT", "NOT", "SENT", "NOT", "SENT", "TOO", "LARGE"]
    for proxy in ("sidecar-1", "sidecar-2"):
        assert f"{proxy} RDS version 2: 70000000 bytes, limit 67108864" in out
    assert "over the control plane's xDS message limit (--xds-max-message-bytes)" in out


# --- proxy-config ---------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["json-names", "proto-names"])
def proto_names(request: pytest.FixtureRequest) -> bool:
    """xDS JSON may use camelCase JSON names or the proto's snake_case names; both must read."""
    return bool(request.param)


def xds_json(message_class: Any, data: dict[str, Any], proto_names: bool) -> dict[str, Any]:
    """xDS JSON as the HTTP API serves it: a real message through protobuf's JSON mapping."""
    return json_format.MessageToDict(parse_message(data, message_class), preserving_proto_field_name=proto_names)


def config_route(fake: FakeControlPlane, resources: list[dict[str, Any]]) -> None:
    fake.on("GET", "/debug/config/sidecar-1", (200, {"resources": resources}))


def test_proxy_config_clusters(
    fake: FakeControlPlane, capsys: pytest.CaptureFixture[str], proto_names: bool,
) -> None:
    config_route(fake, [
        xds_json(cluster_pb2.Cluster, {
            "name": "outbound|9080|v1|reviews.default.svc.cluster.local", "type": "EDS",
            "eds_cluster_config": {"service_name": "outbound|9080|v1|reviews.default.svc.cluster.local"},
            "metadata": {"filter_metadata": {"istio": {
                "config": "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews"}}}}, proto_names),
        xds_json(cluster_pb2.Cluster, {"name": "BlackHoleCluster"}, proto_names),
    ])
    code, out, _ = run(capsys, fake, "proxy-config", "c", "sidecar-1")
    assert code == 0
    assert fake.requests[0].query == {"type": "clusters"}
    lines = out.splitlines()
    assert lines[0].split() == ["SERVICE", "FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION", "RULE"]
    assert lines[1].split() == ["BlackHoleCluster", "STATIC"]
    assert lines[2].split() == ["reviews.default.svc.cluster.local", "9080", "v1", "outbound", "EDS", "reviews.default"]


def test_proxy_config_listeners(
    fake: FakeControlPlane, capsys: pytest.CaptureFixture[str], proto_names: bool,
) -> None:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    tcp = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    config_route(fake, [xds_json(listener_pb2.Listener, {
        "name": "0.0.0.0_9080",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
        "filter_chains": [
            {"filter_chain_match": {"server_names": ["a.example.com"]},
             "filters": [{"name": "tcp", "typed_config": {"@type": tcp, "stat_prefix": "t", "cluster": "db"}}]},
            {"filters": [{"name": "hcm", "typed_config": {"@type": hcm, "stat_prefix": "h",
                                                          "rds": {"route_config_name": "9080",
                                                                  "config_source": {"ads": {}}}}}]},
        ]}, proto_names)])
    code, out, _ = run(capsys, fake, "pc", "listeners", "sidecar-1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION"]
    assert lines[1].split() == ["0.0.0.0_9080", "0.0.0.0", "9080", "SNI:", "a.example.com", "Cluster:", "db"]
    assert lines[2].split() == ["0.0.0.0_9080", "0.0.0.0", "9080", "ALL", "Route:", "9080"]


def test_proxy_config_routes(
    fake: FakeControlPlane, capsys: pytest.CaptureFixture[str], proto_names: bool,
) -> None:
    config_route(fake, [xds_json(route_pb2.RouteConfiguration, {
        "name": "9080",
        "virtual_hosts": [{
            "name": "reviews.default.svc.cluster.local:9080",
            "domains": ["reviews.default.svc.cluster.local", "reviews", "reviews.default"],
            "routes": [
                {"match": {"path": "/health"}, "direct_response": {"status": 200}},
                {"match": {"prefix": "/"}, "route": {"cluster": "outbound|9080|v1|reviews.default.svc.cluster.local"},
                 "metadata": {"filter_metadata": {"istio": {
                     "config": "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"}}}},
            ]}]}, proto_names)])
    code, out, _ = run(capsys, fake, "proxy-config", "routes", "sidecar-1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VHOST", "NAME", "DOMAINS", "MATCH", "VIRTUAL", "SERVICE"]
    assert "reviews.default.svc.cluster.local, reviews + 1 more..." in lines[1]
    assert lines[1].split()[-1] == "/health"
    assert lines[2].split()[-2:] == ["/*", "reviews.default"]


def test_proxy_config_endpoints(
    fake: FakeControlPlane, capsys: pytest.CaptureFixture[str], proto_names: bool,
) -> None:
    config_route(fake, [xds_json(endpoint_pb2.ClusterLoadAssignment, {
        "cluster_name": "outbound|9080||reviews.default.svc.cluster.local",
        "endpoints": [{"locality": {"region": "eu", "zone": "eu-1"}, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.6", "port_value": 9080}}}},
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.5", "port_value": 9080}}},
             "health_status": "UNHEALTHY"},
        ]}]}, proto_names)])
    code, out, _ = run(capsys, fake, "proxy-config", "ep", "sidecar-1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ENDPOINT", "STATUS", "LOCALITY", "CLUSTER"]
    assert lines[1].split() == ["10.0.0.5:9080", "UNHEALTHY", "eu/eu-1", "outbound|9080||reviews.default.svc.cluster.local"]
    assert lines[2].split()[:2] == ["10.0.0.6:9080", "HEALTHY"]
    code, out, _ = run(capsys, fake, "proxy-config", "endpoints", "sidecar-1", "-o", "json")
    served = json.loads(out)["resources"][0]
    assert served["cluster_name" if proto_names else "clusterName"].startswith("outbound|9080||")


def test_proxy_config_unknown_proxy_and_bad_type(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("GET", "/debug/proxies", (200, {"proxies": []}))
    code, _, err = run(capsys, fake, "proxy-config", "clusters", "ghost")
    assert code == 1 and "proxy 'ghost' is not connected (see `tulle proxy-status`)" in err
    with pytest.raises(SystemExit) as exited:
        main(["proxy-config", "secrets", "ghost"])
    assert exited.value.code == 2


REVIEWS_V2 = "sidecar~127.0.10.4~reviews-v2.default~default.svc.cluster.local"
REVIEWS_V2_PROD = "sidecar~10.0.0.9~reviews-v2.prod~prod.svc.cluster.local"
RATINGS = "sidecar~127.0.10.6~ratings-v1.default~default.svc.cluster.local"


def test_proxy_config_and_status_take_a_short_proxy_name(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    """istioctl takes pod.namespace (or a pod name with -n), not only the node id."""
    fake.on("GET", "/debug/proxies", (200, {"proxies": [
        {"id": proxy_id, "connected_since": 0, "types": {}} for proxy_id in (REVIEWS_V2, REVIEWS_V2_PROD, RATINGS)]}))
    for proxy_id in (REVIEWS_V2, REVIEWS_V2_PROD, RATINGS):
        cluster = {"name": f"outbound|9080||{proxy_id.split('~')[2]}", "type": "EDS"}
        fake.on("GET", f"/debug/config/{proxy_id}", (200, {"resources": [cluster]}))
    for argv, proxy_id in ((["reviews-v2.default"], REVIEWS_V2), (["reviews-v2", "-n", "prod"], REVIEWS_V2_PROD),
                           (["ratings-v1"], RATINGS), ([RATINGS], RATINGS)):
        code, out, err = run(capsys, fake, "proxy-config", "clusters", *argv)
        assert code == 0, err
        assert out.splitlines()[1].split()[0] == proxy_id.split("~")[2]
        assert fake.requests[-1].path == f"/debug/config/{proxy_id}"
    code, _, err = run(capsys, fake, "pc", "clusters", "reviews-v2")
    assert code == 1
    assert (f"tulle proxy-config: error: proxy 'reviews-v2' is ambiguous: it names {REVIEWS_V2_PROD}, {REVIEWS_V2}; "
            "give NAME.NAMESPACE, -n NAMESPACE or the full id") in err
    code, _, err = run(capsys, fake, "pc", "clusters", "ratings-v1", "-n", "prod")
    assert code == 1 and "proxy 'ratings-v1' is not connected in namespace prod" in err
    code, out, _ = run(capsys, fake, "proxy-status", "ratings-v1.default")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["NAME", RATINGS]


def test_proxy_status_columns_read_the_control_planes_own_status(
        fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    """The API keys each type by its message name ("Cluster"): those are the CDS/LDS/EDS/RDS columns,
    not extra columns with a mangled type name next to four reading NOT SENT."""
    from envoy.config.core.v3 import base_pb2

    from tulle.controlplane.server import ControlPlane
    from tulle.controlplane.xds.cache import SnapshotCache

    control_plane = ControlPlane(None)
    control_plane.cache = SnapshotCache()
    try:
        stream = control_plane.cache.stream_opened(base_pb2.Node(id=REVIEWS_V2), "sotw")
        for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER):
            stream.record_sent(type_url, "7", f"n-{type_url}", 1)
            stream.record_ack(type_url, "7", f"n-{type_url}")
        stream.record_sent(types.ROUTE, "7", "n-rds", 1)  # sent, not answered yet
        fake.on("GET", "/debug/proxies", (200, json.loads(json.dumps(control_plane._xds_status()))))
    finally:
        control_plane.registry.close()
        control_plane.store.close()
    code, out, _ = run(capsys, fake, "proxy-status")
    assert code == 0
    header, row = (line.split() for line in out.splitlines())
    assert header == ["NAME", "CDS", "LDS", "EDS", "RDS", "CONNECTED"]
    assert row[:5] == [REVIEWS_V2, "SYNCED", "SYNCED", "SYNCED", "STALE"]


def test_proxy_config_clusters_names_the_destination_rule_that_applies(
        fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    """The DESTINATION RULE column, from what the translation records on each cluster (as istiod does)."""
    from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Resource, Service, ServicePort
    from tulle.controlplane.translate.translate import CLUSTER_TYPE, translate

    rule = Resource("DestinationRule", "networking.istio.io/v1", "reviews", "default", spec={
        "host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]})
    services = [Service("reviews.default.svc.cluster.local", "default", [ServicePort("http", 9080, "HTTP")]),
                Service("ratings.default.svc.cluster.local", "default", [ServicePort("http", 9080, "HTTP")])]
    translated = translate(MeshSnapshot([rule], services, []), ProxyIdentity(REVIEWS_V2, "default"))
    fake.on("GET", f"/debug/config/{REVIEWS_V2}", (200, {"resources": [
        json_format.MessageToDict(cluster, preserving_proto_field_name=True)
        for cluster in translated[CLUSTER_TYPE].values()]}))
    code, out, _ = run(capsys, fake, "proxy-config", "clusters", REVIEWS_V2)
    assert code == 0
    rows = {tuple(line.split()[:3]): line.split() for line in out.splitlines()[1:]}
    assert rows[("reviews.default.svc.cluster.local", "9080", "outbound")][-1] == "reviews.default"
    assert rows[("reviews.default.svc.cluster.local", "9080", "v1")][-1] == "reviews.default"
    assert rows[("ratings.default.svc.cluster.local", "9080", "outbound")][-1] == "EDS"  # no rule: empty


def test_proxy_config_clusters_says_which_rule_tls_is_not_applied(
        fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Resource, Service, ServicePort
    from tulle.controlplane.translate.translate import CLUSTER_TYPE, translate

    rule = Resource("DestinationRule", "networking.istio.io/v1", "reviews", "default", spec={
        "host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}})
    services = [Service("reviews.default.svc.cluster.local", "default", [ServicePort("http", 9080, "HTTP")])]
    translated = translate(MeshSnapshot([rule], services, []), ProxyIdentity(REVIEWS_V2, "default"))
    fake.on("GET", f"/debug/config/{REVIEWS_V2}", (200, {"resources": [
        json_format.MessageToDict(cluster) for cluster in translated[CLUSTER_TYPE].values()]}))
    code, out, _ = run(capsys, fake, "proxy-config", "clusters", REVIEWS_V2)
    assert code == 0
    assert out.splitlines()[-1] == (
        "Not applied: outbound|9080||reviews.default.svc.cluster.local: DestinationRule reviews.default: "
        "tls (mode ISTIO_MUTUAL): no transport socket yet, this cluster's traffic is plaintext")


# --- register -------------------------------------------------------------------------------


def test_register_service(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("POST", "/apis/v1/services",
            lambda request: (200, {**request.body, "hostname": "reviews.prod.svc.cluster.local"}))
    code, out, _ = run(capsys, fake, "register", "service", "--name", "reviews", "--namespace", "prod",
                       "--port", "http:9080", "--port", "api:8080:grpc", "--label", "team=books")
    assert code == 0
    assert out == "service reviews.prod.svc.cluster.local registered\n"
    assert fake.requests[0].body == {
        "name": "reviews", "namespace": "prod", "labels": {"team": "books"},
        "ports": [{"name": "http", "port": 9080}, {"name": "api", "port": 8080, "protocol": "GRPC"}]}


@pytest.mark.parametrize("port", ["http", "http:0", "http:70000", ":80", "http:x", "a:1:b:c"])
def test_register_service_rejects_bad_ports(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["register", "service", "--name", "reviews", "--port", port])
    assert exited.value.code == 2
    assert "port" in capsys.readouterr().err


def instance_argv(*extra: str) -> list[str]:
    return ["register", "instance", "--name", "reviews-1", "--address", "10.0.0.5", "--port", "http:9080",
            "--label", "version=v1", "--service", "reviews", "--ttl", "9", *extra]


def test_register_instance_prints_its_id(fake: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on("POST", "/apis/v1/instances", (200, {"id": "inst-1", "ttlSeconds": 9}))
    code, out, _ = run(capsys, fake, *instance_argv("--locality", "eu/eu-1"))
    assert code == 0 and out == "inst-1\n"
    assert fake.requests[0].body == {
        "name": "reviews-1", "namespace": "default", "address": "10.0.0.5", "ports": {"http": 9080},
        "labels": {"version": "v1"}, "services": ["reviews"], "locality": "eu/eu-1", "ttlSeconds": 9}


def stop_after(calls: int, delays: list[float]) -> Callable[[float], None]:
    """A sleep that records its delays and raises KeyboardInterrupt (Ctrl-C) on call ``calls``."""

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) >= calls:
            raise KeyboardInterrupt

    return sleep


def test_heartbeat_renews_until_ctrl_c_then_deregisters(
    monkeypatch: pytest.MonkeyPatch, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    fake.on("POST", "/apis/v1/instances", (200, {"id": "inst-1", "ttlSeconds": 9}))
    fake.on("PUT", "/apis/v1/instances/inst-1/heartbeat", (200, {}))
    fake.on("DELETE", "/apis/v1/instances/inst-1", (200, {}))
    delays: list[float] = []
    monkeypatch.setattr(cli, "_sleep", stop_after(4, delays))
    code, out, err = run(capsys, fake, *instance_argv("--heartbeat"))
    assert code == 0
    assert out == "inst-1\n"
    assert delays == [3.0] * 4  # a third of the lease the server granted
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/apis/v1/instances"), *[("PUT", "/apis/v1/instances/inst-1/heartbeat")] * 3,
        ("DELETE", "/apis/v1/instances/inst-1")]
    assert "instance inst-1 deregistered" in err


def test_heartbeat_registers_again_when_the_lease_expired(
    monkeypatch: pytest.MonkeyPatch, fake: FakeControlPlane, capsys: pytest.CaptureFixture[str],
) -> None:
    ids = iter(["inst-1", "inst-2"])
    fake.on("POST", "/apis/v1/instances", lambda request: (200, {"id": next(ids), "ttlSeconds": 30}))
    # inst-1's heartbeat answers 404 (unknown route): its lease is gone.
    fake.on("PUT", "/apis/v1/instances/inst-2/heartbeat", (200, {}))
    fake.on("DELETE", "/apis/v1/instances/inst-2", (200, {}))
    monkeypatch.setattr(cli, "_sleep", stop_after(3, []))
    code, out, err = run(capsys, fake, *instance_argv("--heartbeat"))
    assert code == 0
    assert out.split() == ["inst-1", "inst-2"]
    assert "lease expired; registered again as inst-2" in err
    posts = fake.sent("POST")
    assert len(posts) == 2 and posts[0].body == posts[1].body
    assert fake.requests[-1].path == "/apis/v1/instances/inst-2" and fake.requests[-1].method == "DELETE"


# --- formatting helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (5, "5s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (10 * 3600, "10h"),
    (3 * 86400 + 3600, "3d1h"), (30 * 86400, "30d"), (3 * 365 * 86400, "3y"), (-1, "<invalid>"),
])
def test_human_duration_follows_kubectl(seconds: float, text: str) -> None:
    assert cli.human_duration(seconds) == text


def test_age_reads_epoch_and_rfc3339() -> None:
    now = cli.parse_timestamp("2024-05-01T12:00:00Z")
    assert now is not None
    assert cli.age("2024-05-01T11:59:00Z", now) == "60s"
    assert cli.age(now - 7200, now) == "120m"
    assert cli.age(None, now) == cli.age("yesterday", now) == "<unknown>"


def test_render_table_aligns_columns() -> None:
    text = cli.render_table(["A", "LONG HEADER"], [["wide value", "x"], ["b", ""]])
    lines = text.splitlines()
    assert lines[0].index("LONG HEADER") == lines[1].index("x") == len("wide value") + 3
    assert lines[2] == "b"  # trailing blanks trimmed


# --- against the real HTTP API ----------------------------------------------------------------


@pytest.fixture
def real_api() -> Iterator[str]:
    """The control plane's own HTTP API (in-memory store) on a loopback port, in a thread."""
    api = pytest.importorskip("tulle.controlplane.api.server", reason="the HTTP API is written by another engineer")
    from tulle.controlplane.istio.validation import review
    from tulle.controlplane.registry.registry import Registry
    from tulle.controlplane.store.memory import MemoryStore

    store = MemoryStore()
    server = api.ApiServer(store, Registry(store), validator=review, token=TOKEN)  # as the control plane does
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(timeout=5)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def test_resource_commands_against_the_real_api(
    tmp_path: Path, real_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, real_api)
    path = write(tmp_path, REVIEWS_VS.replace("namespace: prod", "namespace: default"))
    assert main(["apply", "-f", str(path), "--dry-run"]) == 0
    assert "VirtualService default/reviews created (dry run)" in capsys.readouterr().out
    assert main(["apply", "-f", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["VirtualService default/reviews created",
                                                    "DestinationRule default/reviews created"]

    broken = write(tmp_path, REVIEWS_VS.replace("hosts: [reviews]", "hosts: [reviews]\n  htp: []"), "broken.yaml")
    assert main(["apply", "-f", str(broken)]) == 1
    err = capsys.readouterr().err
    assert any(line.startswith(f"{broken}#1: VirtualService default/reviews: spec.htp: ") for line in err.splitlines())

    assert main(["get", "virtualservices"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["reviews", "reviews"]
    assert main(["get", "dr", "reviews", "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["host"] == "reviews"

    assert main(["delete", "-f", str(path)]) == 0
    assert main(["get", "vs", "reviews"]) == 1
    assert "VirtualService default/reviews not found" in capsys.readouterr().err


def test_registry_commands_against_the_real_api(
    real_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, real_api)
    assert main(["register", "service", "--name", "reviews", "--port", "http:9080"]) == 0
    assert capsys.readouterr().out == "service reviews.default.svc.cluster.local registered\n"
    assert main(instance_argv()) == 0
    instance_id = capsys.readouterr().out.strip()
    assert main(["get", "instances"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:5] == ["default", "reviews-1", instance_id, "10.0.0.5", "http:9080"]
    assert main(["get", "svc"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == [
        "default", "reviews.default.svc.cluster.local", "http:9080/HTTP"]
    assert main(["delete", "instance", instance_id]) == 0
    assert main(["delete", "svc", "reviews"]) == 0
    assert main(["get", "svc"]) == 0
    assert "No services found" in capsys.readouterr().err


def test_a_wrong_token_against_the_real_api_is_explained(
    real_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, real_api)
    monkeypatch.setenv("TULLE_TOKEN", TOKEN.upper())
    assert main(["register", "service", "--name", "reviews", "--port", "http:9080"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tulle register: error: the control plane at {real_api} refused the request: the API "
                          "token from $TULLE_TOKEN was refused")
    assert "Traceback" not in err


def test_apply_says_at_apply_time_what_tulle_does_not_act_on(
    real_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, real_api)
    data = Path(__file__).parent / "data" / "istio"
    assert main(["apply", "-f", str(data / "bookinfo-gateway.yaml"), "-f", str(data / "egress-rule-google-apis.yaml")]) == 0
    captured = capsys.readouterr()
    assert "Gateway default/bookinfo-gateway created" in captured.out
    warnings = captured.err.splitlines()
    gateway = data / "bookinfo-gateway.yaml"
    assert (f"Warning: {gateway}#1: Gateway default/bookinfo-gateway: spec.servers: [TUL0001] Tulle does not serve "
            "Gateway resources yet: no gateway proxy receives listeners for this Gateway") in warnings
    assert (f"Warning: {gateway}#2: VirtualService default/bookinfo: spec.gateways: [TUL0001] this VirtualService is "
            "bound only to gateways (bookinfo-gateway), which Tulle does not serve yet: no proxy receives its routes"
            ) in warnings
    assert any("DestinationRule default/originate-tls-for-googleapis: spec.trafficPolicy.portLevelSettings[0].tls: "
               "[TUL0001] Tulle does not translate TLS origination (tls) yet" in line for line in warnings)


def test_apply_admits_what_only_the_analyzers_flag_and_says_so(
    tmp_path: Path, real_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # kubectl apply admits a VirtualService whose subset is defined later; only istioctl analyze flags it.
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, real_api)
    path = write(tmp_path, REVIEWS_VS.split("---")[0])
    assert main(["apply", "-f", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "VirtualService default/reviews created\n"
    assert captured.err == (f"Warning: {path}#1: VirtualService default/reviews: spec.http[0].route[0].destination."
                            'subset: [IST0101] Referenced host+subset in destinationrule not found: "reviews+v1"\n')


def test_analyze_and_apply_say_the_same_about_a_kubernetes_service(
    tmp_path: Path, real_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(cli.CONTROL_PLANE_ENV, real_api)
    path = write(tmp_path, "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\n"
                           "spec:\n  type: ClusterIP\n  ports: [{name: http, port: 9080}]\n")
    expected = ("Service (v1) is a Kubernetes kind Tulle does not read: register services with `tulle register "
                "service` or use a ServiceEntry")
    assert main(["analyze", str(path)]) == cli.EXIT_FILE_PARSE_ERROR
    assert capsys.readouterr().out == f"Error (Service default/reviews {path}:2) kind: {expected}\n"
    assert main(["apply", "-f", str(path)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == f"{path}#1: Service default/reviews: kind: {expected}"


# --- state ----------------------------------------------------------------------------------


def test_state_check_restore_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tulle.controlplane.model import Resource
    from tulle.controlplane.store import SqliteStore

    state_dir = tmp_path / "state"
    store = SqliteStore(state_dir)
    store.apply([Resource("VirtualService", "networking.istio.io/v1", "reviews", "prod",
                          spec={"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]})])
    store.close()
    code, out, _ = run(capsys, None, "state", "check", "--state-dir", str(state_dir))
    assert code == 0 and out.startswith(f"{state_dir}/config.db: ok, 1 resources")

    (state_dir / "config.db").write_bytes(b"")
    code, _, err = run(capsys, None, "state", "check", "--state-dir", str(state_dir))
    assert code == 1 and err.startswith(f"DAMAGED: {state_dir}/config.db: the file is empty")
    code, out, err = run(capsys, None, "state", "export", "--state-dir", str(state_dir), "--last-good")
    assert code == 0 and "1 resource exported" in err
    (exported,) = list(yaml.safe_load_all(out))
    assert (exported["kind"], exported["metadata"], exported["spec"]["hosts"]) == (
        "VirtualService", {"name": "reviews", "namespace": "prod"}, ["reviews"])

    code, out, _ = run(capsys, None, "state", "restore", "--state-dir", str(state_dir))
    assert code == 0 and out.startswith(f"restored {state_dir}/config.db from {state_dir}/config.db.last-good")
    code, out, _ = run(capsys, None, "state", "check", "--state-dir", str(state_dir))
    assert code == 0 and "ok, 1 resources" in out
    code, _, err = run(capsys, None, "state", "restore", "--state-dir", str(state_dir))
    assert code == 1 and "add --force" in err
