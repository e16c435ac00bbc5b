"""Admin routing and endpoint logic, called directly (the socket layer has its own tests)."""

from __future__ import annotations

import asyncio
import json

from test_admin_backend import FakeBackend
from tulle.admin.handlers import AdminHandlers, AdminResponse, QueryParams


def call(backend: FakeBackend, method: str, target: str) -> AdminResponse:
    return asyncio.run(AdminHandlers(backend).handle(method, target))


def test_unknown_path_is_404_with_help() -> None:
    response = call(FakeBackend(), "GET", "/nope")
    assert response.status == 404
    assert response.body.startswith("invalid path. admin commands are:\n")
    assert "  /stats: print server stats\n" in response.body


def test_paths_match_exactly() -> None:
    assert call(FakeBackend(), "GET", "/statsx").status == 404
    assert call(FakeBackend(), "GET", "/stats?x=1").status == 200


def test_help_lists_sorted_endpoints_and_post_markers() -> None:
    body = call(FakeBackend(), "GET", "/help").body
    paths = [line.split()[0].rstrip(":") for line in body.splitlines()[1:] if line.startswith("  /")]
    assert paths == sorted(paths)
    assert "  /quitquitquit (POST): exit the server\n" in body
    assert "      format: File format to use; One of (text, json)\n" in body


def test_mutating_endpoints_require_post() -> None:
    backend = FakeBackend()
    for path in ("/healthcheck/fail", "/healthcheck/ok", "/quitquitquit", "/drain_listeners", "/logging?level=debug"):
        response = call(backend, "GET", path)
        assert response.status == 405, path
        assert response.body == "Method GET not allowed, POST required."
    assert backend.hc_failed is False and backend.drains == [] and backend.levels["http"] == "info"


def test_ready_reflects_state() -> None:
    backend = FakeBackend()
    assert (call(backend, "GET", "/ready").status, call(backend, "GET", "/ready").body) == (200, "LIVE\n")
    backend.hc_failed = True
    assert (call(backend, "GET", "/ready").status, call(backend, "GET", "/ready").body) == (503, "DRAINING\n")
    backend.is_ready = False
    assert call(backend, "GET", "/ready").body == "INITIALIZING\n"


def test_stats_formats_and_parameters() -> None:
    backend = FakeBackend()
    text = call(backend, "GET", "/stats?filter=upstream_rq_2").body
    assert text == "cluster.foo.upstream_rq_200: 3\n"
    used = call(backend, "GET", "/stats?usedonly").body
    assert "downstream_rq_4xx" not in used and "downstream_rq_total: 4" in used
    as_json = call(backend, "GET", "/stats?format=json&type=Counters")
    assert as_json.content_type == "application/json"
    assert {stat["name"] for stat in json.loads(as_json.body)["stats"]} >= {"cluster.foo.upstream_rq_total"}
    prom = call(backend, "GET", "/stats?format=prometheus").body
    assert 'envoy_cluster_upstream_rq{envoy_response_code="503",envoy_cluster_name="foo"} 1' in prom
    assert call(backend, "GET", "/stats/prometheus?filter=server").body.startswith("# TYPE envoy_server_live gauge")


def test_prometheus_text_readouts_only_when_asked() -> None:
    backend = FakeBackend()
    backend.snapshot = {**backend.snapshot, "text_readouts": {"cluster_manager.cds.version_text": "c1"}}
    assert "version_text" not in call(backend, "GET", "/stats/prometheus").body
    shown = call(backend, "GET", "/stats/prometheus?text_readouts").body
    assert 'envoy_cluster_manager_cds_version_text{text_value="c1"} 0\n' in shown
    assert call(backend, "GET", "/stats").body.startswith('cluster_manager.cds.version_text: "c1"\n')


def test_stats_rejects_bad_parameters() -> None:
    backend = FakeBackend()
    assert call(backend, "GET", "/stats?filter=(").status == 400
    assert call(backend, "GET", "/stats?format=xml").status == 400
    assert call(backend, "GET", "/stats?type=Bogus").status == 400
    refused = call(backend, "GET", "/stats?histogram_buckets=detailed")
    assert refused.status == 400 and "histogram_buckets" in refused.body


def test_healthcheck_and_drain_and_quit() -> None:
    backend = FakeBackend()
    assert call(backend, "POST", "/healthcheck/fail").body == "OK\n"
    assert backend.hc_failed is True
    call(backend, "POST", "/healthcheck/ok")
    assert backend.hc_failed is False
    call(backend, "POST", "/drain_listeners?inboundonly&graceful")
    call(backend, "POST", "/drain_listeners")
    assert backend.drains == [(True, True), (False, False)]
    response = call(backend, "POST", "/quitquitquit")
    assert response.body == "OK\n" and response.after_send is not None
    assert backend.quits == 0  # the server quits only after the response is on the wire
    asyncio.run(response.after_send())
    assert backend.quits == 1


def test_logging_list_and_change() -> None:
    backend = FakeBackend()
    listing = call(backend, "GET", "/logging")
    assert listing.status == 200
    assert listing.body.startswith("active loggers:\n  admin: info\n")
    assert call(backend, "POST", "/logging?level=debug").status == 200
    assert set(backend.levels.values()) == {"debug"}
    call(backend, "POST", "/logging?http=trace")
    assert backend.levels["http"] == "trace"
    call(backend, "POST", "/logging?paths=admin:error,config:warning")
    assert backend.levels["admin"] == "error" and backend.levels["config"] == "warning"


def test_logging_errors() -> None:
    backend = FakeBackend()
    unknown = call(backend, "POST", "/logging?nosuch=debug")
    assert unknown.status == 400 and unknown.body.startswith("error: unknown logger name\n")
    assert call(backend, "POST", "/logging?level=loud").status == 400
    assert call(backend, "POST", "/logging?a=debug&b=info").body.startswith("error: invalid number of parameters")
    assert set(backend.levels.values()) == {"info"}


def test_config_dump_resource_and_mask() -> None:
    backend = FakeBackend()
    full = json.loads(call(backend, "GET", "/config_dump").body)
    assert full == backend.dump
    clusters = json.loads(call(backend, "GET", "/config_dump?resource=static_clusters").body)["configs"]
    assert [c["cluster"]["name"] for c in clusters] == ["foo", "bar"]
    assert clusters[0]["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"
    assert call(backend, "GET", "/config_dump?resource=nothing").status == 404
    masked = json.loads(call(backend, "GET", "/config_dump?mask=bootstrap.node").body)["configs"]
    assert masked[0] == {"@type": backend.dump["configs"][0]["@type"], "bootstrap": {"node": {"id": "n"}}}
    assert masked[1] == {"@type": backend.dump["configs"][1]["@type"]}
    refused = call(backend, "GET", "/config_dump?include_eds")
    assert refused.status == 400 and "include_eds" in refused.body


def test_json_endpoints() -> None:
    backend = FakeBackend()
    info = call(backend, "GET", "/server_info")
    assert info.content_type == "application/json" and json.loads(info.body) == asyncio.run(backend.server_info())
    clusters = json.loads(call(backend, "GET", "/clusters?format=json").body)
    assert clusters["cluster_statuses"][0]["name"] == "foo"
    assert "foo::127.0.0.1:8080::rq_total::4" in call(backend, "GET", "/clusters").body
    assert call(backend, "GET", "/listeners").body == "ingress::0.0.0.0:10000\n"
    listeners = json.loads(call(backend, "GET", "/listeners?format=json").body)
    assert listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"] == 10000
    memory = json.loads(call(backend, "GET", "/memory").body)
    assert int(memory["allocated"]) > 0


def test_query_params() -> None:
    params = QueryParams("usedonly&filter=a%2Bb&filter=second&regex=rq_%5Cd+")
    assert "usedonly" in params and params.get("usedonly") == ""
    assert params.get("filter") == "a+b"
    assert params.get("regex") == "rq_\\d+"
    assert params.get("missing") is None


def test_runtime_lists_layers_and_entries_as_envoy_does() -> None:
    backend = FakeBackend()
    assert call(backend, "POST", "/runtime_modify?fault.http.abort.abort_percent=50&new.key=x").body == "OK\n"
    response = call(backend, "GET", "/runtime")
    assert response.status == 200 and response.content_type == "application/json"
    assert json.loads(response.body) == {
        "layers": ["base", "admin"],
        "entries": {
            "fault.http.abort.abort_percent": {"layer_values": ["10", "50"], "final_value": "50"},
            "new.key": {"layer_values": ["", "x"], "final_value": "x"},
        },
    }
    assert response.body.startswith('{\n "layers": [\n  "base",')  # Envoy's one-space pretty JSON


def test_runtime_modify_removes_an_override_with_an_empty_value() -> None:
    backend = FakeBackend()
    call(backend, "POST", "/runtime_modify?a=1&b=2")
    assert call(backend, "POST", "/runtime_modify?a=").status == 200
    entries = json.loads(call(backend, "GET", "/runtime").body)["entries"]
    assert "a" not in entries and entries["b"]["final_value"] == "2"


def test_runtime_modify_needs_post_parameters_and_an_admin_layer() -> None:
    from tulle.runtime import Runtime

    backend = FakeBackend()
    assert call(backend, "GET", "/runtime_modify?a=1").status == 405
    usage = call(backend, "POST", "/runtime_modify")
    assert usage.status == 400 and usage.body.startswith("usage: /runtime_modify?key1=value1")
    backend.layered_runtime = Runtime()  # no layered_runtime: no admin layer, as in Envoy
    refused = call(backend, "POST", "/runtime_modify?a=1")
    assert (refused.status, refused.body) == (503, "No admin layer specified")
    assert json.loads(call(backend, "GET", "/runtime").body) == {"layers": [], "entries": {}}
