"""bench/controlplane_bulk.py: the file it generates is N distinct, valid ServiceEntries."""

from __future__ import annotations

import sys
from pathlib import Path

from tulle.controlplane.istio.documents import load_documents
from tulle.controlplane.istio.validation import analyze

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import controlplane_bulk as bench  # noqa: E402


def test_the_generated_file_holds_that_many_valid_service_entries() -> None:
    resources, diagnostics = load_documents(bench.service_entries(25), "bulk.yaml", "default")
    assert diagnostics == []
    assert [r.kind for r in resources] == ["ServiceEntry"] * 25
    assert len({r.name for r in resources}) == len({r.spec["hosts"][0] for r in resources}) == 25
    assert [d for d in analyze(resources, known_services=set()) if d.level == "error"] == []
    assert bench.WITNESS["ttlSeconds"] == bench.LEASE_TTL_SECONDS == bench.HEARTBEAT_INTERVAL_SECONDS * 3
