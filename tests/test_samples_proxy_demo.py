"""The README's main command: the demo runs unattended, routes by the canary rules and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_demo_runs_unattended_and_reports_the_split() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tulle.samples.proxy_demo", "--duration", "3"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    sections = out.split("== ")
    canary = next(s for s in sections if s.startswith("weighted canary"))
    shares = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(v[12])\s+\d+\s+([\d.]+)%", canary, re.M)}
    assert set(shares) == {"v1", "v2"}
    assert 60 <= shares["v1"] <= 95  # 80/20 split, with room for a short run's noise
    pinned = next(s for s in sections if s.startswith("header match"))
    assert re.search(r"^\s+v2\s+\d+\s+100\.0%", pinned, re.M)
    assert "status codes: 200:" in canary
    totals = dict(re.findall(r"^\s+(http\.ingress_http\.downstream_rq_total): (\d+)", out, re.M))
    assert int(totals["http.ingress_http.downstream_rq_total"]) > 10
