"""What a proxy sees: Sidecar selection and imports, exportTo, VirtualService / DestinationRule lookup."""

from __future__ import annotations

from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.translate.scope import (
    EgressImport,
    build_scope,
    egress_imports,
    select_sidecar,
)

SUFFIX = "svc.cluster.local"


def service(name: str, namespace: str, port: int = 80, **kwargs: object) -> Service:
    return Service(f"{name}.{namespace}.{SUFFIX}", namespace, [ServicePort("http", port, "HTTP")], **kwargs)


def istio(kind: str, name: str, namespace: str, spec: dict) -> Resource:
    return Resource(kind, "networking.istio.io/v1", name, namespace, spec=spec)


def proxy(namespace: str = "app", **labels: str) -> ProxyIdentity:
    return ProxyIdentity(f"p.{namespace}", namespace, tuple(sorted(labels.items())), workload_name="p")


def hosts(snapshot: MeshSnapshot, who: ProxyIdentity) -> list[str]:
    return [s.hostname for s in build_scope(snapshot, who).services]


def test_sidecar_precedence_selector_then_namespace_then_root() -> None:
    selected = istio("Sidecar", "canary", "app", {"workloadSelector": {"labels": {"track": "canary"}}})
    namespace_default = istio("Sidecar", "default", "app", {})
    root = istio("Sidecar", "default", "istio-system", {})
    resources = [root, namespace_default, selected]
    assert select_sidecar(resources, proxy(track="canary"), "istio-system") is selected
    assert select_sidecar(resources, proxy(track="stable"), "istio-system") is namespace_default
    assert select_sidecar(resources, proxy("other"), "istio-system") is root
    assert select_sidecar([selected], proxy("other"), "istio-system") is None


def test_egress_imports_parse_namespace_and_host() -> None:
    sidecar = istio("Sidecar", "default", "istio-system", {"egress": [
        {"hosts": ["./*", "istio-system/*", "~/*", "prod/*.example.com"]}, {"hosts": ["api.example.com"]}]})
    imports = egress_imports(sidecar, "app")
    assert imports == [EgressImport("app", "*"), EgressImport("istio-system", "*"), EgressImport("~", "*"),
                       EgressImport("prod", "*.example.com"), EgressImport("*", "api.example.com")]
    assert egress_imports(None, "app") is None
    assert imports[3].matches("prod", "a.example.com") and not imports[3].matches("dev", "a.example.com")
    assert not imports[2].matches("~", "x")


def test_sidecar_limits_services_and_export_to_hides_them() -> None:
    services = [service("a", "app"), service("b", "backend"), service("c", "other"),
                service("hidden", "backend", export_to=(".",)), service("mine", "app", export_to=(".",))]
    sidecar = istio("Sidecar", "default", "app", {"egress": [{"hosts": ["./*", "backend/*"]}]})
    assert hosts(MeshSnapshot([sidecar], services, []), proxy()) == [
        f"a.app.{SUFFIX}", f"b.backend.{SUFFIX}", f"mine.app.{SUFFIX}"]
    assert len(hosts(MeshSnapshot([], services, []), proxy())) == 4  # no Sidecar: all exported services
    assert hosts(MeshSnapshot([], services, []), proxy("backend")).count(f"hidden.backend.{SUFFIX}") == 1


def test_one_service_per_hostname_preferring_the_proxy_namespace() -> None:
    first = Service("x.example.com", "aaa", [ServicePort("http", 80, "HTTP")])
    own = Service("x.example.com", "app", [ServicePort("http", 81, "HTTP")])
    scope = build_scope(MeshSnapshot([], [first, own], []), proxy())
    assert scope.services == [own]
    assert build_scope(MeshSnapshot([], [own, first], []), proxy("zzz")).services == [first]


def test_virtual_services_filtered_by_gateway_export_and_imports() -> None:
    mesh = istio("VirtualService", "mesh", "app", {"hosts": ["a"]})
    gateway_only = istio("VirtualService", "gw", "app", {"hosts": ["a"], "gateways": ["istio-system/ingress"]})
    both = istio("VirtualService", "both", "app", {"hosts": ["a"], "gateways": ["mesh", "ingress"]})
    private = istio("VirtualService", "private", "backend", {"hosts": ["b"], "exportTo": ["."]})
    unimported = istio("VirtualService", "far", "other", {"hosts": ["c"]})
    sidecar = istio("Sidecar", "default", "app", {"egress": [{"hosts": ["./*", "backend/*"]}]})
    snapshot = MeshSnapshot([mesh, gateway_only, both, private, unimported, sidecar],
                            [service("a", "app"), service("b", "backend"), service("c", "other")], [])
    scope = build_scope(snapshot, proxy())
    assert [r.name for r in scope.virtual_services] == ["both", "mesh"]


def test_imported_virtual_services_import_their_destinations() -> None:
    route = istio("VirtualService", "front", "app", {"hosts": ["front"], "http": [
        {"route": [{"destination": {"host": "back.backend.svc.cluster.local"}}],
         "mirror": {"host": "shadow.backend.svc.cluster.local"}}]})
    sidecar = istio("Sidecar", "default", "app", {"egress": [{"hosts": ["./*"]}]})
    services = [service("front", "app"), service("back", "backend"), service("shadow", "backend"),
                service("other", "backend")]
    assert hosts(MeshSnapshot([route, sidecar], services, []), proxy()) == [
        f"back.backend.{SUFFIX}", f"front.app.{SUFFIX}", f"shadow.backend.{SUFFIX}"]


def test_virtual_service_lookup_exact_before_wildcard_then_namespace() -> None:
    wildcard = istio("VirtualService", "wild", "app", {"hosts": ["*.app.svc.cluster.local"]})
    exact_other = istio("VirtualService", "exact", "zzz", {"hosts": ["a.app.svc.cluster.local"]})
    exact_own = istio("VirtualService", "own", "app", {"hosts": ["a"]})
    snapshot = MeshSnapshot([wildcard, exact_other], [service("a", "app"), service("b", "app")], [])
    scope = build_scope(snapshot, proxy())
    assert scope.virtual_service_for(f"a.app.{SUFFIX}") is exact_other
    assert scope.virtual_service_for(f"b.app.{SUFFIX}") is wildcard
    assert scope.virtual_service_for("nothing.example.com") is None
    scope = build_scope(MeshSnapshot([exact_other, exact_own], snapshot.services, []), proxy())
    assert scope.virtual_service_for(f"a.app.{SUFFIX}") is exact_own


def test_destination_rule_lookup_order() -> None:
    in_proxy_ns = istio("DestinationRule", "local", "client", {"host": "a.app.svc.cluster.local"})
    in_service_ns = istio("DestinationRule", "svc", "app", {"host": "a"})
    wildcard_in_service_ns = istio("DestinationRule", "wild", "app", {"host": "*.app.svc.cluster.local"})
    in_root = istio("DestinationRule", "root", "istio-system", {"host": "*.svc.cluster.local"})
    private_elsewhere = istio("DestinationRule", "priv", "app", {"host": "b", "exportTo": ["."]})
    services = [service("a", "app"), service("b", "app"), service("c", "zzz")]
    every = [in_proxy_ns, in_service_ns, wildcard_in_service_ns, in_root, private_elsewhere]
    scope = build_scope(MeshSnapshot(every, services, []), proxy("client"))
    assert scope.destination_rule_for(f"a.app.{SUFFIX}", "app") is in_proxy_ns
    assert scope.destination_rule_for(f"b.app.{SUFFIX}", "app") is wildcard_in_service_ns  # priv is not exported
    assert scope.destination_rule_for(f"c.zzz.{SUFFIX}", "zzz") is in_root
    scope = build_scope(MeshSnapshot(every[1:], services, []), proxy("client"))
    assert scope.destination_rule_for(f"a.app.{SUFFIX}", "app") is in_service_ns  # exact beats wildcard


def test_destination_rules_with_a_workload_selector_apply_to_selected_workloads_only() -> None:
    selected = istio("DestinationRule", "sel", "app", {"host": "a", "workloadSelector": {"matchLabels": {"x": "1"}}})
    plain = istio("DestinationRule", "plain", "app", {"host": "a"})
    services = [service("a", "app")]
    assert build_scope(MeshSnapshot([plain, selected], services, []), proxy(x="1")).destination_rule_for(
        f"a.app.{SUFFIX}", "app") is selected
    assert build_scope(MeshSnapshot([plain, selected], services, []), proxy(x="2")).destination_rule_for(
        f"a.app.{SUFFIX}", "app") is plain
    assert build_scope(MeshSnapshot([selected], services, []), proxy("other", x="1")).destination_rule_for(
        f"a.app.{SUFFIX}", "app") is None


def test_own_instances_locality_and_inbound_ports() -> None:
    web = Service(f"web.app.{SUFFIX}", "app", [ServicePort("http", 80, "HTTP", 8080), ServicePort("grpc", 90, "GRPC")])
    alias = Service(f"alias.app.{SUFFIX}", "app", [ServicePort("web", 8000, "HTTP", 8080)])
    mine = WorkloadInstance("p", "app", "10.0.0.1", {"http": 8080, "grpc": 9090}, locality="r/z/s",
                            service_hostnames=(web.hostname, alias.hostname))
    someone_else = WorkloadInstance("q", "app", "10.0.0.2", {}, locality="x/y/z", service_hostnames=(web.hostname,))
    scope = build_scope(MeshSnapshot([], [web, alias], [someone_else, mine]), proxy())
    assert scope.own_instances == [mine]
    assert scope.locality == "r/z/s"
    # the workload port 8080 is named once, by the first service (hostname order) that maps to it
    assert [(p.workload_port, p.port.port, p.service.hostname) for p in scope.inbound_ports()] == [
        (8080, 8000, alias.hostname), (9090, 90, web.hostname)]
    by_ip = ProxyIdentity("ip", "app", ip="10.0.0.2")
    assert build_scope(MeshSnapshot([], [web], [someone_else, mine]), by_ip).own_instances == [someone_else]


def test_namespace_qualified_names_resolve_for_known_namespaces_only() -> None:
    scope = build_scope(MeshSnapshot([], [service("b", "backend")], []), proxy())
    assert scope.resolve("b.backend", "app") == f"b.backend.{SUFFIX}"
    assert scope.resolve("b.example", "app") == "b.example"
    assert scope.resolve("b", "app") == f"b.app.{SUFFIX}"
