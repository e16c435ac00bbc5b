"""bench/controlplane_scale.py: the mesh it builds, its summaries, and a tiny end-to-end run per mode."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import controlplane_scale as bench  # noqa: E402


def test_instances_make_exactly_the_endpoints_asked_for_spread_evenly() -> None:
    layout = bench.Layout(services=50, endpoints=430, streams=10, namespaces=4, services_per_instance=3)
    bodies = layout.instances()
    per_service = Counter(hostname for body in bodies for hostname in body["services"])
    assert sum(per_service.values()) == 430
    assert len(per_service) == 50
    assert max(per_service.values()) - min(per_service.values()) <= 1
    for body in bodies:
        assert len(body["services"]) == len(set(body["services"])) <= 3
        # an instance backs services of its own namespace only
        assert {hostname.split(".")[1] for hostname in body["services"]} == {body["namespace"]}
    assert len({body["address"] for body in bodies}) == len(bodies)
    assert all(body["ttlSeconds"] >= 3600 for body in bodies)


def test_resources_are_services_and_one_sidecar_per_application_namespace() -> None:
    layout = bench.Layout(services=7, endpoints=7, streams=3, namespaces=2)
    resources = layout.resources()
    kinds = Counter(resource["kind"] for resource in resources)
    assert kinds == {"Service": 7, "Sidecar": 2}
    sidecar = next(resource for resource in resources if resource["kind"] == "Sidecar")
    assert sidecar["spec"]["egress"][0]["hosts"] == ["./*", f"{bench.SHARED_NAMESPACE}/*"]
    namespaces = {resource["metadata"]["namespace"] for resource in resources if resource["kind"] == "Service"}
    assert namespaces == {"ns-0", "ns-1", bench.SHARED_NAMESPACE}


def test_node_ids_follow_istio_and_are_distinct() -> None:
    layout = bench.Layout(services=1, endpoints=1, streams=300, namespaces=3)
    ids = [layout.node_id(stream) for stream in range(300)]
    assert len(set(ids)) == 300
    kind, ip, workload, domain = ids[257].split("~")
    assert (kind, workload, domain) == ("sidecar", "client-257.ns-2", "ns-2.svc.cluster.local")
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert layout.streams_in("ns-2") == 100


def test_changes_alternate_add_and_remove_within_an_application_namespace() -> None:
    layout = bench.Layout(services=30, endpoints=60, streams=6, namespaces=3)
    changes = bench.plan_changes(layout, 4)
    assert [change.present for change in changes] == [True, False, True, False]
    assert changes[0].address == changes[1].address != changes[2].address
    assert changes[0].namespace != changes[2].namespace
    assert all(change.namespace.startswith("ns-") for change in changes)
    assert changes[2].cluster == f"outbound|{bench.SERVICE_PORT}||{layout.hostname(changes[2].service)}"


def test_a_change_without_a_service_in_its_namespace_is_refused() -> None:
    with pytest.raises(bench.BenchError):
        bench.plan_changes(bench.Layout(services=1, endpoints=1, streams=2, namespaces=3), 3)


def test_needle_finds_the_address_in_a_serialized_assignment_only() -> None:
    change = bench.plan_changes(bench.Layout(services=2, endpoints=2, streams=1, namespaces=1), 1)[0]

    def assignment(*addresses: str) -> bytes:
        message = endpoint_pb2.ClusterLoadAssignment(cluster_name=change.cluster)
        locality = message.endpoints.add()
        for address in addresses:
            socket = locality.lb_endpoints.add().endpoint.address.socket_address
            socket.address, socket.port_value = address, bench.SERVICE_PORT
        return message.SerializeToString(deterministic=True)

    assert change.needle in assignment("10.1.0.0", change.address)
    assert change.needle not in assignment("10.1.0.0", change.address + "0", "1" + change.address)


def test_summarize_change_measures_only_affected_streams() -> None:
    change = bench.Change(0, 1, "outbound|9080||a", "ns-0", "10.250.0.1", True)
    results = [
        {"affected": True, "seen_at": 101.0, "acked_at": 101.5, "by_type": {"EDS": [1, 300]}, "reconnects": 0},
        {"affected": True, "seen_at": 103.0, "acked_at": 103.5, "by_type": {"EDS": [1, 300]}, "reconnects": 0},
        {"affected": False, "seen_at": None, "acked_at": None, "by_type": {}, "reconnects": 0},
        {"affected": False, "seen_at": None, "acked_at": None, "by_type": {"CDS": [1, 50]}, "reconnects": 1},
    ]
    summary = bench.summarize_change(change, 100.0, results, 2, 1.5, 4.0)
    assert summary["affected_streams"] == summary["acked_streams"] == 2
    assert summary["ack_p50_s"] == 1.5 and summary["ack_p99_s"] == 3.5
    assert summary["unaffected_streams_receiving"] == 1
    assert summary["only_eds_pushed"] is False
    assert summary["bytes_total"] == 650 and summary["bytes_by_type"] == {"EDS": 600, "CDS": 50}
    assert summary["bytes_per_affected_stream"] == 325
    assert summary["reconnects"] == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert bench._percentile(values, 0.99) == 99.0
    assert bench._percentile(values, 0.5) == 50.0
    assert bench._percentile([], 0.5) is None


def test_profile_summary_merges_lines_of_one_function() -> None:
    collapsed = "\n".join([
        "main (tulle/cli.py:1);push_all (tulle/controlplane/server.py:138);parse (google/json_format.py:9) 6",
        "main (tulle/cli.py:1);push_all (tulle/controlplane/server.py:140) 2",
        "idle (threading.py:3) 2",
    ])
    summary = bench.summarize_profile(collapsed)
    assert summary["samples"] == 10
    assert summary["inclusive"] == [["push_all (tulle/controlplane/server.py)", 80.0]]
    assert summary["self"][0] == ["parse (google/json_format.py)", 60.0]


@pytest.mark.parametrize("mode", bench.MODES)
def test_a_tiny_run_acks_every_affected_stream(mode: str, tmp_path: Path) -> None:
    args = bench.parse_args(["--services", "5", "--endpoints", "20", "--streams", "10", "--namespaces", "2",
                             "--modes", mode, "--settle", "0.1", "--client-processes", "1",
                             "--phase-timeout", "30", "--no-save"])
    results = asyncio.run(bench.run(args, tmp_path))
    (outcome,) = results["modes"]
    assert outcome["mode"] == mode and "error" not in outcome
    assert outcome["populate"]["endpoints"] == 20
    assert outcome["connect"]["streams"] == 10
    assert outcome["connect"]["initial_bytes_per_stream_p50"] > 0
    assert [change["kind"] for change in outcome["changes"]] == ["add endpoint", "remove endpoint"]
    for change in outcome["changes"]:
        assert change["affected_streams"] == change["expected_affected_streams"] == 5
        assert change["acked_streams"] == 5 and change["missed_streams"] == 0
        assert change["ack_p50_s"] is not None and change["ack_p99_s"] >= change["ack_p50_s"]
        assert change["unaffected_streams_receiving"] == 0
        assert change["types_pushed_to_affected"] == ["EDS"] and change["only_eds_pushed"]
        assert change["bytes_total"] == sum(change["bytes_by_type"].values()) > 0
    assert 0 < outcome["rss_mib_connected"] <= outcome["rss_mib_peak"]
    report = bench.render_report(results)
    assert report.count(f"| {mode} | ") == 3  # two changes and the connect row
