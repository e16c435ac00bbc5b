"""translate(): golden files (Istio YAML in, xDS YAML out), determinism, strict round trips.

Each tests/golden/translate/<case>/input.yaml holds Istio resources plus the registry written
as small Kubernetes-like fixture documents (kind Service / Pod in apiVersion v1) and one or more
``kind: Proxy`` documents; expected/<proxy>.yaml is the translation for that proxy. Nothing is
regenerated silently: run with UPDATE_GOLDEN=1 to rewrite the expected files after a deliberate
change, then review the diff.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from tulle.config.loader import parse_message
from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TULLE_PROXY_TODAY,
    TYPE_URLS,
    to_dicts,
    translate,
    translate_json,
)
from tulle.controlplane.translate.translate import MESSAGE_CLASSES

GOLDEN = pathlib.Path(__file__).parent / "golden" / "translate"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SHORT_TYPE_NAMES = {LISTENER_TYPE: "listeners", ROUTE_TYPE: "routes", CLUSTER_TYPE: "clusters",
                    ENDPOINT_TYPE: "endpoints"}
ISTIO_PORT_PREFIXES = ("http2", "https", "http", "grpc-web", "grpc", "tcp", "tls", "mongo", "mysql", "redis")


# --- fixture documents -> MeshSnapshot ------------------------------------------------------


def port_protocol(port: dict[str, Any]) -> str:
    """Istio's protocol selection: appProtocol, else the port name's prefix ("http-web" -> HTTP)."""
    if port.get("appProtocol"):
        return str(port["appProtocol"]).upper()
    name = str(port.get("name") or "")
    for prefix in ISTIO_PORT_PREFIXES:
        if name == prefix or name.startswith(prefix + "-"):
            return prefix.upper()
    return "TCP"


def load_case(path: pathlib.Path) -> tuple[MeshSnapshot, dict[str, ProxyIdentity]]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    resources, services, pods, proxies = [], [], [], {}
    suffix = "cluster.local"
    for index, doc in enumerate(documents):
        metadata = doc.get("metadata") or {}
        namespace = metadata.get("namespace", "default")
        kind = doc["kind"]
        if kind == "Service" and doc["apiVersion"] == "v1":
            ports = [ServicePort(str(p.get("name") or p["port"]), int(p["port"]), port_protocol(p),
                                 int(p.get("targetPort") or p["port"])) for p in doc["spec"]["ports"]]
            services.append((Service(
                hostname=f"{metadata['name']}.{namespace}.svc.{suffix}", namespace=namespace, ports=ports,
                labels=dict(metadata.get("labels") or {}),
                resolution="NONE" if doc["spec"].get("clusterIP") == "None" else "STATIC",
                export_to=tuple((metadata.get("annotations") or {}).get("networking.istio.io/exportTo", "*")
                                .split(",")),
                addresses=tuple(filter(None, [doc["spec"].get("clusterIP")])),
            ), dict(doc["spec"].get("selector") or {})))
        elif kind == "Pod":
            pods.append(doc)
        elif kind == "Proxy":
            spec = doc["spec"]
            proxies[metadata["name"]] = ProxyIdentity(
                id=f"{metadata['name']}.{namespace}", namespace=namespace,
                labels=tuple(sorted((spec.get("labels") or {}).items())),
                workload_name=spec.get("workloadName", ""), ip=spec.get("ip", "127.0.0.1"),
            )
        else:
            resources.append(Resource(
                kind=kind, api_version=doc["apiVersion"], name=metadata["name"], namespace=namespace,
                spec=doc.get("spec") or {}, labels=dict(metadata.get("labels") or {}),
                source=f"{path.name}#{index}",
            ))
    instances = []
    for pod in pods:
        metadata, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        namespace = metadata.get("namespace", "default")
        labels = dict(metadata.get("labels") or {})
        backed = [(service, service_ports) for service, selector in services
                  if service.namespace == namespace and selector
                  and all(labels.get(k) == v for k, v in selector.items())
                  for service_ports in [service.ports]]
        instances.append(WorkloadInstance(
            name=metadata["name"], namespace=namespace, address=status["podIP"],
            ports={port.name: port.target_port for _, ports in backed for port in ports},
            labels=labels, service_account=spec.get("serviceAccountName", "default"),
            locality=spec.get("locality", ""), healthy=status.get("ready", True),
            weight=int(spec.get("weight", 1)), service_hostnames=tuple(service.hostname for service, _ in backed),
        ))
    snapshot = MeshSnapshot(resources=resources, services=[service for service, _ in services], instances=instances)
    return snapshot, proxies


def golden_yaml(resources: dict[str, dict[str, Any]]) -> str:
    body = {SHORT_TYPE_NAMES[type_url]: sorted_structs(resources[type_url]) for type_url in TYPE_URLS}
    return yaml.safe_dump(body, sort_keys=False, width=120)


def sorted_structs(value: Any, in_struct: bool = False) -> Any:
    """Metadata values are protobuf Structs, maps whose JSON keys come in no set order (it changes
    from run to run): sorted, so that a golden file reads the same every time."""
    if isinstance(value, dict):
        items = sorted(value.items()) if in_struct else value.items()
        return {name: sorted_structs(item, in_struct or name == "filter_metadata") for name, item in items}
    if isinstance(value, list):
        return [sorted_structs(item, in_struct) for item in value]
    return value


CASES = sorted(path.name for path in GOLDEN.iterdir() if (path / "input.yaml").exists())


def golden_targets() -> list[tuple[str, str]]:
    targets = []
    for case in CASES:
        _, proxies = load_case(GOLDEN / case / "input.yaml")
        targets += [(case, name) for name in sorted(proxies)]
    return targets


@pytest.mark.parametrize(("case", "proxy_name"), golden_targets())
def test_golden(case: str, proxy_name: str) -> None:
    snapshot, proxies = load_case(GOLDEN / case / "input.yaml")
    actual = golden_yaml(to_dicts(translate(snapshot, proxies[proxy_name])))
    expected_path = GOLDEN / case / "expected" / f"{proxy_name}.yaml"
    if UPDATE:
        expected_path.parent.mkdir(parents=True, exist_ok=True)
        expected_path.write_text(actual)
    assert expected_path.exists(), f"no golden file {expected_path}; run with UPDATE_GOLDEN=1 and review it"
    assert actual == expected_path.read_text(), f"{case}/{proxy_name} differs from its golden file"


def test_every_case_has_a_proxy_and_each_golden_file_a_case() -> None:
    assert len(CASES) >= 6
    targets = {f"{case}/{proxy}" for case, proxy in golden_targets()}
    files = {f"{path.parent.parent.name}/{path.stem}" for path in GOLDEN.glob("*/expected/*.yaml")}
    assert files == targets  # a stale golden file would be compared with nothing


@pytest.mark.parametrize(("case", "proxy_name"), golden_targets())
def test_every_message_round_trips_strictly(case: str, proxy_name: str) -> None:
    snapshot, proxies = load_case(GOLDEN / case / "input.yaml")
    resources = translate(snapshot, proxies[proxy_name])
    for type_url, by_name in resources.items():
        for name, msg in by_name.items():
            as_json = json_format.MessageToDict(msg, preserving_proto_field_name=True)
            again = parse_message(as_json, MESSAGE_CLASSES[type_url])
            assert again == msg, name
            assert name == (msg.cluster_name if type_url == ENDPOINT_TYPE else msg.name)


@pytest.mark.parametrize("case", CASES)
def test_translation_is_deterministic(case: str) -> None:
    snapshot, proxies = load_case(GOLDEN / case / "input.yaml")
    for proxy in proxies.values():
        first = translate_json(snapshot, proxy)
        reordered = MeshSnapshot(
            resources=list(reversed(snapshot.resources)), services=list(reversed(snapshot.services)),
            instances=list(reversed(snapshot.instances)),
        )
        second = translate_json(reordered, proxy)
        assert yaml.safe_dump(first, sort_keys=False) == yaml.safe_dump(second, sort_keys=False)
        for by_name in first.values():
            assert list(by_name) == sorted(by_name)
        # the xDS cache versions resources by their serialized bytes: those must be stable too
        serialized = [
            {type_url: {name: msg.SerializeToString(deterministic=True) for name, msg in by_name.items()}
             for type_url, by_name in translate(candidate, proxy).items()}
            for candidate in (snapshot, reordered)
        ]
        assert serialized[0] == serialized[1]


def values_of(tree: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a JSON tree."""
    found = []
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key:
                found.append(value)
            found += values_of(value, key)
    elif isinstance(tree, list):
        for item in tree:
            found += values_of(item, key)
    return found


@pytest.mark.parametrize(("case", "proxy_name"), golden_targets())
def test_references_resolve(case: str, proxy_name: str) -> None:
    """Every EDS cluster has an assignment, every RDS name a route, every routed cluster exists
    (a subset no DestinationRule defines is the one allowed dangling reference, as in Istio)."""
    snapshot, proxies = load_case(GOLDEN / case / "input.yaml")
    resources = translate_json(snapshot, proxies[proxy_name])
    clusters = resources[CLUSTER_TYPE]
    eds = {name for name, cluster in clusters.items() if cluster["type"] == "EDS"}
    assert eds == set(resources[ENDPOINT_TYPE])
    assert set(values_of(resources[LISTENER_TYPE], "route_config_name")) == set(resources[ROUTE_TYPE])
    routed = set(values_of(resources[ROUTE_TYPE], "cluster")) | set(values_of(resources[LISTENER_TYPE], "cluster"))
    routed |= {entry["name"] for clusters_list in values_of(resources, "weighted_clusters")
               for entry in clusters_list["clusters"]}
    assert routed
    assert {name for name in routed if "||" in name} <= set(clusters)


def test_messages_are_the_envoy_types() -> None:
    snapshot, proxies = load_case(GOLDEN / "bookinfo" / "input.yaml")
    resources = translate(snapshot, proxies["sleep"])
    for type_url, by_name in resources.items():
        assert by_name
        for msg in by_name.values():
            assert isinstance(msg, MESSAGE_CLASSES[type_url])
            assert type_url.endswith(msg.DESCRIPTOR.full_name)


def test_options_change_the_defaults_only() -> None:
    snapshot, proxies = load_case(GOLDEN / "bookinfo" / "input.yaml")
    istio = yaml.safe_dump(translate_json(snapshot, proxies["sleep"]))
    tulle = yaml.safe_dump(translate_json(snapshot, proxies["sleep"], TULLE_PROXY_TODAY))
    # Tulle proxies get Istio's defaults too, minus what they lack (TULLE_PROXY_TODAY,
    # tests/test_controlplane_translate_options.py)
    assert "circuit_breakers" in tulle and "retry_policy" in tulle
    # bookinfo asks for nothing a Tulle proxy lacks (max_grpc_timeout and HTTP/2 upstreams it has now)
    assert "max_grpc_timeout" in tulle and tulle == istio


def test_gateways_get_clusters_and_endpoints_only() -> None:
    snapshot, proxies = load_case(GOLDEN / "bookinfo" / "input.yaml")
    sidecar = translate_json(snapshot, proxies["sleep"])
    router = translate_json(snapshot, ProxyIdentity("ingress", "istio-system", kind="router"))
    assert router[LISTENER_TYPE] == {} and router[ROUTE_TYPE] == {}
    outbound = {name for name in sidecar[CLUSTER_TYPE] if name.startswith("outbound|")}
    assert set(router[CLUSTER_TYPE]) == outbound
    assert router[ENDPOINT_TYPE] == sidecar[ENDPOINT_TYPE]
