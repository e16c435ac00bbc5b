"""MeshTranslator: the shared, incremental translation gives exactly what translate() gives.

Every golden case's proxies are translated through one MeshTranslator and compared with a
translation of each proxy on its own; then endpoint changes take the incremental path and are
compared with a fresh translation of the changed mesh.
"""

from __future__ import annotations

import dataclasses

import pytest

from test_controlplane_translate_translate import CASES, GOLDEN, load_case
from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.push import MeshTranslator, MessageMemo, changed_hostnames
from tulle.controlplane.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    to_dicts,
    translate,
)
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TULLE_PROXY_TODAY
from tulle.controlplane.translate.registry import build_registry
from tulle.controlplane.xds.cache import Snapshot

SUFFIX = "cluster.local"


def as_dicts(sets: dict) -> dict:
    return to_dicts({type_url: {name: entry.message for name, entry in resource_set.entries.items()}
                     for type_url, resource_set in sets.items()})


def options_for(proxy: ProxyIdentity, sidecar_layout: bool):
    if not sidecar_layout:
        return ISTIO_DEFAULTS
    return dataclasses.replace(TULLE_PROXY_TODAY, workload_address=proxy.ip, outbound_bind_address=proxy.ip,
                               app_ports=((9080, 19080),), upstreams=(("reviews:9080", 19081),))


@pytest.mark.parametrize("sidecar_layout", [False, True], ids=["istio", "tulle-sidecar"])
@pytest.mark.parametrize("case", CASES)
def test_shared_translation_equals_translating_each_proxy(case: str, sidecar_layout: bool) -> None:
    snapshot, proxies = load_case(GOLDEN / case / "input.yaml")
    translator = MeshTranslator()
    translator.set_mesh(snapshot)
    for proxy in proxies.values():
        options = options_for(proxy, sidecar_layout)
        assert as_dicts(translator.resource_sets(proxy, options)) == to_dicts(translate(snapshot, proxy, options))


# --- a mesh made for sharing ---------------------------------------------------------------------


def service(name: str, namespace: str = "default") -> Service:
    return Service(hostname=f"{name}.{namespace}.svc.{SUFFIX}", namespace=namespace,
                   ports=[ServicePort("http", 9080, "HTTP", 9080)])


def instance(name: str, address: str, backs: str, locality: str = "", namespace: str = "default") -> WorkloadInstance:
    return WorkloadInstance(name=name, namespace=namespace, address=address, ports={"http": 9080},
                            labels={"app": name}, locality=locality,
                            service_hostnames=(f"{backs}.{namespace}.svc.{SUFFIX}",))


def client(number: int, namespace: str = "default", labels: dict[str, str] | None = None) -> ProxyIdentity:
    return ProxyIdentity(id=f"client-{number}.{namespace}", namespace=namespace,
                         labels=tuple(sorted((labels or {"app": f"client-{number}"}).items())),
                         workload_name=f"client-{number}", ip=f"127.0.1.{number}")


def mesh(instances: list[WorkloadInstance], resources: list[Resource] | None = None) -> MeshSnapshot:
    return MeshSnapshot(resources=resources or [], services=[service("a"), service("b"), service("c")],
                        instances=instances)


BASE = [instance("a-1", "10.0.0.1", "a"), instance("b-1", "10.0.0.2", "b"), instance("c-1", "10.0.0.3", "c")]


def test_proxies_with_different_labels_share_one_view_when_nothing_selects_by_label() -> None:
    translator = MeshTranslator()
    translator.set_mesh(mesh(BASE))
    first = translator.resource_sets(client(1), ISTIO_DEFAULTS)
    second = translator.resource_sets(client(2), ISTIO_DEFAULTS)
    assert translator.views_built == 1
    assert first[ENDPOINT_TYPE] is second[ENDPOINT_TYPE] and first[ROUTE_TYPE] is second[ROUTE_TYPE]
    assert first[LISTENER_TYPE] is not second[LISTENER_TYPE] or first[LISTENER_TYPE].entries == {}


def test_a_label_selector_splits_the_views_by_whether_it_matches() -> None:
    routed = Resource(kind="VirtualService", api_version="networking.istio.io/v1", name="a", namespace="default",
                      spec={"hosts": ["a"], "http": [
                          {"match": [{"sourceLabels": {"tier": "canary"}}], "route": [{"destination": {"host": "b"}}]},
                          {"route": [{"destination": {"host": "a"}}]}]})
    snapshot = mesh(BASE, [routed])
    translator = MeshTranslator()
    translator.set_mesh(snapshot)
    proxies = [client(1, labels={"app": "x", "tier": "canary"}), client(2, labels={"app": "y", "tier": "canary"}),
               client(3, labels={"app": "z"})]
    results = [translator.resource_sets(proxy, ISTIO_DEFAULTS) for proxy in proxies]
    assert translator.views_built == 2
    assert results[0][ROUTE_TYPE] is results[1][ROUTE_TYPE]
    assert as_dicts(results[0])[ROUTE_TYPE] != as_dicts(results[2])[ROUTE_TYPE]
    for proxy, result in zip(proxies, results, strict=True):
        assert as_dicts(result) == to_dicts(translate(snapshot, proxy, ISTIO_DEFAULTS))


def test_an_endpoint_change_rebuilds_only_that_service_and_only_eds() -> None:
    translator = MeshTranslator()
    before = mesh(BASE)
    translator.set_mesh(before)
    proxies = [client(1), client(2)]
    old = {proxy.id: translator.resource_sets(proxy, ISTIO_DEFAULTS) for proxy in proxies}
    parsed = translator.memo.parsed

    after = mesh([*BASE, instance("b-2", "10.0.0.4", "b")])
    translator.set_mesh(after, endpoints_only=True)
    for proxy in proxies:
        new = translator.resource_sets(proxy, ISTIO_DEFAULTS)
        assert as_dicts(new) == to_dicts(translate(after, proxy, ISTIO_DEFAULTS))
        previous = old[proxy.id]
        for type_url in (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE):
            assert new[type_url] is previous[type_url]
        changed = {name for name, entry in new[ENDPOINT_TYPE].entries.items()
                   if previous[ENDPOINT_TYPE].entries[name] is not entry}
        assert changed == {"outbound|9080||b.default.svc.cluster.local"}
        assert Snapshot.from_sets(new).changed_types(Snapshot.from_sets(previous)) == {ENDPOINT_TYPE}
    assert translator.memo.parsed == parsed + 1  # one ClusterLoadAssignment, parsed once for both proxies


def test_a_proxy_whose_own_workload_registers_gets_its_inbound_side() -> None:
    translator = MeshTranslator()
    translator.set_mesh(mesh(BASE))
    proxy = ProxyIdentity(id="a-2.default", namespace="default", labels=(("app", "a-2"),), workload_name="a-2",
                          ip="127.0.0.9")
    options = options_for(proxy, sidecar_layout=True)
    translator.resource_sets(proxy, options)
    after = mesh([*BASE, instance("a-2", "127.0.0.9", "a")])
    translator.set_mesh(after, endpoints_only=True)
    new = translator.resource_sets(proxy, options)
    assert as_dicts(new) == to_dicts(translate(after, proxy, options))
    assert "inbound|9080||" in new[CLUSTER_TYPE].entries


def test_a_full_change_drops_the_views() -> None:
    translator = MeshTranslator()
    translator.set_mesh(mesh(BASE))
    translator.resource_sets(client(1), ISTIO_DEFAULTS)
    rule = Resource(kind="DestinationRule", api_version="networking.istio.io/v1", name="b", namespace="default",
                    spec={"host": "b", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}})
    changed = mesh(BASE, [rule])
    translator.set_mesh(changed)
    result = translator.resource_sets(client(1), ISTIO_DEFAULTS)
    assert translator.views_built == 2
    assert as_dicts(result) == to_dicts(translate(changed, client(1), ISTIO_DEFAULTS))


def test_changed_hostnames_names_services_whose_instances_differ() -> None:
    before = build_registry(mesh(BASE))
    after = build_registry(mesh([BASE[0], BASE[1], dataclasses.replace(BASE[2], healthy=False)]))
    assert changed_hostnames(before, after) == {f"c.default.svc.{SUFFIX}"}
    assert changed_hostnames(before, before) == set()


def test_the_memo_keeps_only_what_the_last_full_push_used() -> None:
    memo = MessageMemo()
    body = {"name": "x", "type": "STATIC", "connect_timeout": "1s"}
    first = memo.entry(CLUSTER_TYPE, body, "x")
    memo.new_generation()
    assert memo.entry(CLUSTER_TYPE, dict(body), "x") is first  # carried over
    memo.new_generation()
    memo.new_generation()
    assert memo.entry(CLUSTER_TYPE, body, "x") is not first  # unused for a generation: dropped
    assert memo.parsed == 2


# --- ServiceEntries reach only the proxies that may see them ---------------------------------------


def service_entry(name: str, namespace: str, host: str, export_to: list[str] | None = None) -> Resource:
    spec = {"hosts": [host], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC", "endpoints": [{"address": "10.9.0.1"}]}
    if export_to is not None:
        spec["exportTo"] = export_to
    return Resource("ServiceEntry", "networking.istio.io/v1", name, namespace, spec=spec)


@pytest.mark.parametrize("sidecar_layout", [False, True], ids=["istio", "tulle-sidecar"])
def test_service_entries_are_scoped_by_export_to_and_sidecar_egress_hosts(sidecar_layout: bool) -> None:
    entries = [service_entry("public", "ext", "public.example.com"),
               service_entry("private", "ext", "private.example.com", ["."]),
               service_entry("for-app", "ext", "for-app.example.com", ["app"]),
               service_entry("own", "app", "own.example.com")]
    narrow = Resource("Sidecar", "networking.istio.io/v1", "default", "narrow",
                      spec={"egress": [{"hosts": ["./*", "ext/for-app.example.com"]}]})
    translator = MeshTranslator()
    translator.set_mesh(MeshSnapshot(resources=[*entries, narrow], services=[], instances=[]))

    def seen(namespace: str) -> dict[str, set[str]]:
        proxy = client(1, namespace)
        sets = translator.resource_sets(proxy, options_for(proxy, sidecar_layout))
        clusters = {name.rsplit("|", 1)[-1] for name in sets[CLUSTER_TYPE].entries if name.startswith("outbound|")}
        domains = {domain for entry in sets[ROUTE_TYPE].entries.values() for host in entry.message.virtual_hosts
                   for domain in host.domains if "example.com" in domain}
        return {"clusters": clusters, "routes": {domain.split(":")[0] for domain in domains}}

    # No Sidecar: whatever is exported to the proxy's namespace.
    expected = {"public.example.com", "for-app.example.com", "own.example.com"}
    assert seen("app") == {"clusters": expected, "routes": expected}
    assert seen("ext")["clusters"] == {"public.example.com", "private.example.com", "own.example.com"}
    assert seen("other")["clusters"] == {"public.example.com", "own.example.com"}
    # A Sidecar's egress hosts narrow that further.
    assert seen("narrow") == {"clusters": set(), "routes": set()}  # for-app is not exported to "narrow"
    narrow_app = Resource("Sidecar", "networking.istio.io/v1", "default", "app",
                          spec={"egress": [{"hosts": ["./*", "ext/for-app.example.com"]}]})
    translator.set_mesh(MeshSnapshot(resources=[*entries, narrow_app], services=[], instances=[]))
    expected = {"for-app.example.com", "own.example.com"}
    assert seen("app") == {"clusters": expected, "routes": expected}
