"""The HTTP API, every route, through aiohttp's test client (and once through a real loopback server)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.web
from aiohttp.test_utils import TestClient, TestServer
from envoy.config.cluster.v3 import cluster_pb2

from tulle.controlplane.api import ApiServer
from tulle.controlplane.istio import analyze
from tulle.controlplane.model import Diagnostic, Resource
from tulle.controlplane.registry import Registry
from tulle.controlplane.store import MemoryStore

REVIEWS_YAML = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: prod
  labels: {team: books}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


TOKEN = "test-token-0123456789abcdefghijklmnopqrstuvwxyz"
YAML = {"Content-Type": "application/yaml"}
JSON = {"Content-Type": "application/json"}


def make_api(**kwargs: Any) -> tuple[ApiServer, FakeClock]:
    clock = FakeClock()
    store = MemoryStore()
    kwargs.setdefault("token", TOKEN)
    return ApiServer(store, Registry(store, clock=clock), **kwargs), clock


def bearer(api: ApiServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}"}


def run(api: ApiServer, scenario: Callable[[TestClient], Awaitable[None]], *, token: bool = True) -> None:
    """``scenario`` with a client that sends the API's token on every request (``token=False``: none)."""
    async def main() -> None:
        async with TestClient(TestServer(api.app), headers=bearer(api) if token else None) as client:
            await scenario(client)

    asyncio.run(main())


def test_healthz() -> None:
    api, _ = make_api()

    async def scenario(client: TestClient) -> None:
        response = await client.get("/healthz")
        assert response.status == 200
        assert await response.text() == "ok"

    run(api, scenario)


def test_without_the_token_nothing_is_read_or_written() -> None:
    """Issue 8: any local process could register an instance and take half of a service's traffic."""
    api, _ = make_api(validator=analyze)
    api.registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])
    intruder = {"name": "reviews-evil", "address": "127.0.0.66", "ports": {"http": 9080}, "services": ["reviews"]}

    async def scenario(client: TestClient) -> None:
        assert (await client.get("/healthz")).status == 200
        for method, path, body in (("POST", "/apis/v1/instances", intruder), ("POST", "/apis/v1/resources", []),
                                   ("POST", "/apis/v1/services", {"name": "x", "ports": []}),
                                   ("GET", "/apis/v1/resources", None), ("GET", "/apis/v1/services", None),
                                   ("GET", "/apis/v1/instances", None), ("GET", "/debug/proxies", None),
                                   ("GET", "/debug/config/any", None),
                                   ("DELETE", "/apis/v1/services/default/reviews", None),
                                   ("PUT", "/apis/v1/instances/any/heartbeat", None)):
            response = await client.request(method, path, json=body)
            assert response.status == 401, (method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")

    run(api, scenario, token=False)
    assert api.registry.leases() == [] and api.store.list() != []


def test_browser_requests_are_refused_even_with_the_token() -> None:
    api, _ = make_api()

    async def scenario(client: TestClient) -> None:
        # a page's form or fetch() without preflight can only send these types
        response = await client.post("/apis/v1/resources", data=REVIEWS_YAML, headers={"Content-Type": "text/plain"})
        assert response.status == 415
        response = await client.post("/apis/v1/resources", data=REVIEWS_YAML,
                                     headers={**YAML, "Origin": "http://evil.example"})
        assert response.status == 403
        rebound = f"evil.example:{client.server.port}"  # DNS rebinding: the page's own name, our address
        assert (await client.get("/apis/v1/resources", headers={"Host": rebound})).status == 421

    run(api, scenario)
    assert api.store.list() == []


def test_an_api_built_without_a_token_makes_a_random_one() -> None:
    store = MemoryStore()
    first, second = ApiServer(store, Registry(store)), ApiServer(store, Registry(store))
    assert len(first.token) >= 32 and first.token != second.token

    async def scenario(client: TestClient) -> None:
        assert (await client.get("/apis/v1/resources")).status == 200

    run(first, scenario)


def test_resource_lifecycle() -> None:
    api, _ = make_api(validator=analyze)

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources", data=REVIEWS_YAML, headers=YAML)
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert answer["created"] == ["DestinationRule default/reviews", "VirtualService prod/reviews"]
        assert answer["updated"] == []

        changed = REVIEWS_YAML.replace("version: v1}", "version: v1, track: stable}")
        answer = await (await client.post("/apis/v1/resources", data=changed, headers=YAML)).json()
        assert (answer["created"], answer["updated"]) == ([], ["DestinationRule default/reviews"])

        items = (await (await client.get("/apis/v1/resources")).json())["items"]
        assert [(i["kind"], i["metadata"]["namespace"]) for i in items] == [
            ("DestinationRule", "default"), ("VirtualService", "prod")]
        only = (await (await client.get("/apis/v1/resources?kind=VirtualService&namespace=prod")).json())["items"]
        assert [i["metadata"]["name"] for i in only] == ["reviews"]
        assert (await (await client.get("/apis/v1/resources?namespace=nowhere")).json())["items"] == []

        response = await client.get("/apis/v1/resources/DestinationRule/default/reviews")
        resource = await response.json()
        assert resource["apiVersion"] == "networking.istio.io/v1"
        assert resource["metadata"]["generation"] == 2
        assert resource["spec"]["subsets"][0]["labels"] == {"version": "v1", "track": "stable"}
        labelled = await (await client.get("/apis/v1/resources/virtualservice/prod/reviews")).json()
        assert labelled["metadata"]["labels"] == {"team": "books"}

        response = await client.delete("/apis/v1/resources/VirtualService/prod/reviews")
        assert (response.status, await response.json()) == (200, {"deleted": "VirtualService prod/reviews"})
        assert (await client.get("/apis/v1/resources/VirtualService/prod/reviews")).status == 404
        assert (await client.delete("/apis/v1/resources/VirtualService/prod/reviews")).status == 404

    run(api, scenario)


def test_json_list_body_and_namespace_query() -> None:
    api, _ = make_api()
    body = [{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
             "spec": {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "default"}, "spec": {}}]

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources?namespace=edge", data=json.dumps(body), headers=JSON)
        assert response.status == 200, await response.text()
        assert (await response.json())["created"] == ["Gateway edge/gw", "Sidecar edge/default"]

    run(api, scenario)
    assert api.store.get("Gateway", "edge", "gw") is not None


def test_bad_yaml_names_the_document_and_applies_nothing() -> None:
    api, _ = make_api()
    body = REVIEWS_YAML + "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw\n"

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources?source=mesh.yaml", data=body, headers=YAML)
        assert response.status == 400
        errors = (await response.json())["errors"]
        assert [e["source"] for e in errors] == ["mesh.yaml#3"]
        assert "invalid YAML" in errors[0]["message"]

    run(api, scenario)
    assert api.store.list() == []


def test_unknown_kind_is_named_and_the_batch_refused() -> None:
    api, _ = make_api()
    body = REVIEWS_YAML + "---\napiVersion: networking.istio.io/v1\nkind: VirtualServis\nmetadata: {name: typo}\n"

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources", data=body, headers=YAML)
        assert response.status == 400
        errors = (await response.json())["errors"]
        assert len(errors) == 1
        assert errors[0]["resource"] == "VirtualServis default/typo"
        assert "VirtualServis" in errors[0]["message"] and "VirtualService" in errors[0]["message"]

    run(api, scenario)
    assert api.store.list() == []


def test_validator_errors_block_and_warnings_are_returned() -> None:
    seen: list[list[str]] = []

    def validator(resources: list[Resource]) -> list[Diagnostic]:
        seen.append(sorted(r.ref for r in resources))
        found = []
        for resource in resources:
            if resource.spec.get("bad"):
                found.append(Diagnostic("error", resource.ref, "spec.bad", "bad is bad"))
            found.append(Diagnostic("warning", resource.ref, "", "just saying"))
        return found

    api, _ = make_api(validator=validator)
    gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: %s}\nspec: {bad: %s}\n"

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources", data=gateway % ("a", "false"), headers=YAML)
        answer = await response.json()
        assert response.status == 200
        assert [w["resource"] for w in answer["warnings"]] == ["Gateway default/a"]

        response = await client.post("/apis/v1/resources", data=gateway % ("b", "true"), headers=YAML)
        answer = await response.json()
        assert response.status == 400
        assert [(e["resource"], e["field"]) for e in answer["errors"]] == [("Gateway default/b", "spec.bad")]
        # The validator saw what is stored too, but only findings about the request come back.
        assert seen[-1] == ["Gateway default/a", "Gateway default/b"]
        assert [w["resource"] for w in answer["warnings"]] == ["Gateway default/b"]

    run(api, scenario)
    assert [r.name for r in api.store.list()] == ["a"]


def test_async_validator_and_real_analyze_reports() -> None:
    async def validator(resources: list[Resource]) -> list[Diagnostic]:
        return analyze(resources)

    api, _ = make_api(validator=validator)
    broken = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hostz: [a]}\n"

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources", data=broken, headers=YAML)
        assert response.status == 400
        assert "spec.hostz" in [e["field"] for e in (await response.json())["errors"]]

    run(api, scenario)


def test_dry_run_applies_nothing() -> None:
    api, _ = make_api()

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources?dry_run=true", data=REVIEWS_YAML, headers=YAML)
        answer = await response.json()
        assert response.status == 200
        assert answer["created"] == ["DestinationRule default/reviews", "VirtualService prod/reviews"]
        assert answer["dryRun"] is True
        assert api.store.list() == []
        await client.post("/apis/v1/resources", data=REVIEWS_YAML, headers=YAML)
        changed = REVIEWS_YAML.replace("team: books", "team: films")
        answer = await (await client.post("/apis/v1/resources?dry_run=1", data=changed, headers=YAML)).json()
        assert (answer["created"], answer["updated"]) == ([], ["VirtualService prod/reviews"])
        stored = api.store.get("VirtualService", "prod", "reviews")
        assert stored is not None and stored.labels == {"team": "books"}

    run(api, scenario)


def test_empty_and_non_text_bodies() -> None:
    api, _ = make_api()

    async def scenario(client: TestClient) -> None:
        for body in (b"", b"  \n", b"---\n# nothing\n", b"\xff\xfe\x00"):
            response = await client.post("/apis/v1/resources", data=body, headers=YAML)
            assert response.status == 400, body
            assert (await response.json())["error"]

    run(api, scenario)


def test_registry_services_through_resources_and_services_routes() -> None:
    api, _ = make_api(validator=analyze)
    service_yaml = ("apiVersion: registry.tulle.dev/v1\nkind: Service\nmetadata: {name: ratings}\n"
                    "spec:\n  ports: [{name: grpc, port: 9090}]\n")

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/resources", data=service_yaml, headers=YAML)
        assert response.status == 200, await response.text()

        response = await client.post("/apis/v1/services", json={
            "name": "reviews", "namespace": "prod", "labels": {"app": "reviews"},
            "ports": [{"name": "http", "port": 9080, "targetPort": 8080}, {"name": "x", "port": 81, "protocol": "HTTP2"}]})
        service = await response.json()
        assert response.status == 200, service
        assert service["hostname"] == "reviews.prod.svc.cluster.local"
        assert service["ports"] == [{"name": "http", "port": 9080, "protocol": "HTTP", "targetPort": 8080},
                                    {"name": "x", "port": 81, "protocol": "HTTP2", "targetPort": 0}]

        items = (await (await client.get("/apis/v1/services")).json())["items"]
        assert [(i["hostname"], i["ports"][0]["protocol"]) for i in items] == [
            ("ratings.default.svc.cluster.local", "GRPC"), ("reviews.prod.svc.cluster.local", "HTTP")]
        assert [i["name"] for i in (await (await client.get("/apis/v1/services?namespace=prod")).json())["items"]] \
            == ["reviews"]

        response = await client.delete("/apis/v1/services/prod/reviews")
        assert (response.status, await response.json()) == (200, {"deleted": "Service prod/reviews"})
        assert (await client.delete("/apis/v1/services/prod/reviews")).status == 404

    run(api, scenario)


def test_invalid_service_requests() -> None:
    api, _ = make_api()

    async def scenario(client: TestClient) -> None:
        cases = [
            "not json",
            json.dumps(["a list"]),
            json.dumps({"namespace": "default", "ports": [{"name": "http", "port": 80}]}),  # no name
            json.dumps({"name": "a", "ports": "80"}),
            json.dumps({"name": "a", "ports": [{"name": "http", "port": 70000}]}),
            json.dumps({"name": "a", "ports": [{"name": "http", "port": 80}], "portz": []}),
        ]
        for body in cases:
            response = await client.post("/apis/v1/services", data=body, headers=JSON)
            assert response.status == 400, body
            answer = await response.json()
            assert answer["error"] and answer["errors"] and {"level", "resource", "field", "message"} <= set(
                answer["errors"][0]), body
        bad_version = ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n"
                       "spec: {ports: [{name: http, port: 80}]}\n")
        errors = (await (await client.post("/apis/v1/resources", data=bad_version, headers=YAML)).json())["errors"]
        # A Kubernetes Service: one message, the one `tulle analyze` gives (istio.kinds.check_kind).
        assert [(e["field"], e["message"]) for e in errors] == [
            ("kind", "Service (v1) is a Kubernetes kind Tulle does not read: register services with "
                     "`tulle register service` or use a ServiceEntry")]

    run(api, scenario)
    assert api.store.list() == []


def test_instance_lifecycle() -> None:
    api, clock = make_api()
    api.registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/instances", json={
            "name": "reviews-1", "namespace": "default", "address": "10.0.0.1", "ports": {"http": 8080},
            "labels": {"version": "v1"}, "serviceAccount": "bookinfo", "locality": "eu/west/a",
            "services": ["reviews"], "ttlSeconds": 10})
        answer = await response.json()
        assert response.status == 200, answer
        lease_id = answer["id"]
        assert answer["ttlSeconds"] == 10

        items = (await (await client.get("/apis/v1/instances")).json())["items"]
        assert [(i["id"], i["address"], i["hostnames"], i["serviceAccount"]) for i in items] == [
            (lease_id, "10.0.0.1", ["reviews.default.svc.cluster.local"], "bookinfo")]

        clock.now += 8
        response = await client.put(f"/apis/v1/instances/{lease_id}/heartbeat")
        assert (response.status, (await response.json())["id"]) == (200, lease_id)
        clock.now += 8
        assert (await client.put(f"/apis/v1/instances/{lease_id}/heartbeat")).status == 200
        clock.now += 11
        response = await client.put(f"/apis/v1/instances/{lease_id}/heartbeat")
        assert response.status == 404
        assert "register again" in (await response.json())["error"]
        assert (await (await client.get("/apis/v1/instances")).json())["items"] == []

        second = (await (await client.post("/apis/v1/instances", json={
            "name": "reviews-2", "address": "10.0.0.2"})).json())["id"]
        response = await client.delete(f"/apis/v1/instances/{second}")
        assert (response.status, await response.json()) == (200, {"deregistered": second})
        assert (await client.delete(f"/apis/v1/instances/{second}")).status == 404

    run(api, scenario)


def test_invalid_instance_requests() -> None:
    api, _ = make_api()

    async def scenario(client: TestClient) -> None:
        for body, field in (({"name": "a"}, "address"), ({"name": "a", "address": "10.0.0.1", "ttlSeconds": 0},
                                                         "ttlSeconds"),
                            ({"name": "a", "address": "10.0.0.1", "ports": {"http": "80"}}, "ports[http]"),
                            ({"name": "a", "address": "10.0.0.1", "servics": ["x"]}, "servics")):
            response = await client.post("/apis/v1/instances", json=body)
            assert response.status == 400, body
            answer = await response.json()
            assert answer["error"] and [e["field"] for e in answer["errors"]] == [field], answer

    run(api, scenario)
    assert api.registry.leases() == []


def test_an_instance_that_is_not_an_ip_is_refused_with_a_diagnostic_naming_the_field() -> None:
    api, _ = make_api()
    api.registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])

    async def scenario(client: TestClient) -> None:
        response = await client.post("/apis/v1/instances", json={
            "name": "reviews-1", "address": "not-an-ip", "ports": {"http": 9080}, "services": ["reviews"]})
        assert response.status == 400
        (error,) = (await response.json())["errors"]
        assert (error["level"], error["resource"], error["field"]) == ("error", "instance default/reviews-1", "address")
        assert "'not-an-ip' is not an IP address" in error["message"]

    run(api, scenario)
    assert api.registry.leases() == []


def test_registry_bodies_are_bounded_and_strict_json() -> None:
    api, _ = make_api()

    async def scenario(client: TestClient) -> None:
        huge = {"name": "a", "address": "10.0.0.1", "labels": {"x": "y" * 70_000}}
        response = await client.post("/apis/v1/instances", json=huge)
        assert response.status == 413
        assert "larger than 65536 bytes" in (await response.json())["errors"][0]["message"]

        async def chunked() -> Any:
            yield json.dumps(huge).encode()

        assert (await client.post("/apis/v1/instances", data=chunked(), headers=JSON)).status == 413
        for constant in ("NaN", "Infinity"):
            response = await client.post("/apis/v1/instances", data=f'{{"name": "a", "address": "10.0.0.1", '
                                                                     f'"ttlSeconds": {constant}}}', headers=JSON)
            assert response.status == 400
            assert f"{constant} is not a JSON number" in (await response.json())["error"]

    run(api, scenario)
    assert api.registry.leases() == []


def test_a_heartbeat_is_answered_while_a_big_apply_is_being_validated() -> None:
    """Validation (and parsing, and the commit) run off the event loop: the loop keeps serving."""
    validating, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def slow_validator(resources: list[Resource]) -> list[Diagnostic]:
        validating.set()
        released.append(release.wait(10))  # False: the loop was blocked until it gave up
        return []

    api, _ = make_api(validator=slow_validator)
    lease_id = api.registry.register("reviews-1", "default", "10.0.0.1", ttl=30)

    async def scenario(client: TestClient) -> None:
        apply = asyncio.create_task(client.post("/apis/v1/resources", data=REVIEWS_YAML, headers=YAML))
        assert await asyncio.to_thread(validating.wait, 10)
        response = await client.put(f"/apis/v1/instances/{lease_id}/heartbeat")
        assert response.status == 200
        assert not apply.done()  # answered while the apply was still being validated
        release.set()
        assert (await apply).status == 200

    run(api, scenario)
    assert released == [True]
    assert len(api.store.list()) == 2


def test_concurrent_applies_are_committed_in_arrival_order() -> None:
    order: list[str] = []
    first_in, release = threading.Event(), threading.Event()

    def validator(resources: list[Resource]) -> list[Diagnostic]:
        hosts = [r.spec["hosts"][0] for r in resources if r.kind == "VirtualService"]
        order.append(hosts[0])
        if hosts[0] == "first":
            first_in.set()
            release.wait(10)
        return []

    api, _ = make_api(validator=validator)
    second_arrived = asyncio.Event()

    @aiohttp.web.middleware
    async def notice_second(request: aiohttp.web.Request, handler: Any) -> Any:
        if request.query.get("source") == "second":
            second_arrived.set()
        return await handler(request)

    api.app.middlewares.append(notice_second)
    vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec: {{hosts: [{}]}}\n"

    async def scenario(client: TestClient) -> None:
        first = asyncio.create_task(client.post("/apis/v1/resources?source=first", data=vs.format("first"), headers=YAML))
        assert await asyncio.to_thread(first_in.wait, 10)
        second = asyncio.create_task(client.post("/apis/v1/resources?source=second", data=vs.format("second"), headers=YAML))
        await second_arrived.wait()  # the second apply is in the server while the first is validated
        release.set()
        assert [(await first).status, (await second).status] == [200, 200]

    run(api, scenario)
    assert order == ["first", "second"]
    stored = api.store.get("VirtualService", "default", "r")
    assert stored is not None and stored.spec["hosts"] == ["second"]


def test_bulk_delete_is_one_transaction_all_or_nothing() -> None:
    api, _ = make_api()
    api.store.apply([Resource("VirtualService", "networking.istio.io/v1", name, spec={"hosts": [name]})
                     for name in ("a", "b")])

    async def scenario(client: TestClient) -> None:
        items = [{"kind": "virtualservice", "namespace": "default", "name": "a"},
                 {"kind": "VirtualService", "name": "missing"}, {"kind": "VirtualService", "name": "b"}]
        response = await client.post("/apis/v1/resources:delete", json={"items": items})
        answer = await response.json()
        assert response.status == 404
        assert (answer["notFound"], answer["deleted"]) == (["VirtualService default/missing"], [])
        assert "nothing was deleted" in answer["error"]
        assert [r.name for r in api.store.list()] == ["a", "b"]

        response = await client.post("/apis/v1/resources:delete", json={"items": items, "ignoreNotFound": True})
        assert (response.status, await response.json()) == (200, {
            "deleted": ["VirtualService default/a", "VirtualService default/b"],
            "notFound": ["VirtualService default/missing"]})
        assert api.store.list() == []

        for body, field in (({"items": []}, "items"), ({"items": [{"kind": "VirtualService"}]}, "items[0]"),
                            ({"items": [{"kind": "vs", "name": "a", "nmae": "b"}]}, "items[0]"),
                            ({"items": [{"kind": "vs", "name": "a"}], "ignoreNotFound": "yes"}, "ignoreNotFound"),
                            ({"item": []}, "item")):
            response = await client.post("/apis/v1/resources:delete", json=body)
            assert response.status == 400, body
            assert field in [e["field"] for e in (await response.json())["errors"]], body

    run(api, scenario)


def test_debug_proxies() -> None:
    proxy = {"id": "sidecar~10.0.0.1~reviews.default~default.svc.cluster.local", "connected_since": 1.0,
             "types": {"clusters": {"sent": "v1", "acked": "v1"}}}

    async def xds_status() -> list[dict[str, Any]]:
        return [proxy]

    api, _ = make_api(xds_status=xds_status)
    empty, _ = make_api()

    async def scenario(client: TestClient) -> None:
        assert await (await client.get("/debug/proxies")).json() == {"proxies": [proxy]}

    async def empty_scenario(client: TestClient) -> None:
        assert await (await client.get("/debug/proxies")).json() == {"proxies": []}

    run(api, scenario)
    run(empty, empty_scenario)


def test_debug_config() -> None:
    asked: list[tuple[str, str]] = []

    def config_view(proxy_id: str, config_type: str) -> list[Any] | None:
        asked.append((proxy_id, config_type))
        if proxy_id != "known":
            return None
        if config_type == "clusters":
            return [cluster_pb2.Cluster(name="outbound|9080||reviews.default.svc.cluster.local")]
        return [{"name": f"a {config_type[:-1]}"}]

    api, _ = make_api(config_view=config_view)

    async def scenario(client: TestClient) -> None:
        answer = await (await client.get("/debug/config/known?type=clusters")).json()
        assert answer == {"resources": [{"name": "outbound|9080||reviews.default.svc.cluster.local"}]}
        everything = await (await client.get("/debug/config/known")).json()
        assert [r["name"] for r in everything["resources"]] == [
            "a listener", "a route", "outbound|9080||reviews.default.svc.cluster.local", "a endpoint"]
        assert (await client.get("/debug/config/unknown?type=listeners")).status == 404
        response = await client.get("/debug/config/known?type=secrets")
        assert response.status == 400
        assert "listeners" in (await response.json())["error"]

    run(api, scenario)
    assert ("unknown", "listeners") in asked


def test_a_failing_callable_answers_json_500() -> None:
    def xds_status() -> list[Any]:
        raise RuntimeError("cache exploded")

    api, _ = make_api(xds_status=xds_status)

    async def scenario(client: TestClient) -> None:
        response = await client.get("/debug/proxies")
        assert response.status == 500
        assert "cache exploded" in (await response.json())["error"]

    run(api, scenario)


def test_real_loopback_server_start_and_stop() -> None:
    api, _ = make_api()

    async def main() -> None:
        port = await api.start("127.0.0.1", 0)
        assert port > 0
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert (response.status, await response.text()) == (200, "ok")
                async with session.post(f"http://127.0.0.1:{port}/apis/v1/resources", data=REVIEWS_YAML,
                                        headers={**YAML, **bearer(api)}) as response:
                    assert response.status == 200
        finally:
            await api.stop()
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz"):
                    raise AssertionError("still listening after stop()")
            except aiohttp.ClientConnectionError:
                pass

    asyncio.run(main())
    assert len(api.store.list()) == 2
