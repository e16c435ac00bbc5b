"""The proxy demo runs unattended, routes by the canary rules and exits 0, on other ports if its own are taken."""

from __future__ import annotations

import re
import socket
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


@pytest.mark.integration
def test_demo_takes_free_ports_when_front_proxy_yaml_s_are_taken() -> None:
    held = []
    for port in (10000, 19901, 18081):  # the quick tour's front proxy and a backend still running
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from an earlier run is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:  # someone else listens there: taken all the same
            sock.close()
            continue
        sock.listen()
        held.append(sock)
    try:
        result = subprocess.run([sys.executable, "-m", "tulle.samples.proxy_demo", "--duration", "2"],
                                capture_output=True, text=True, timeout=60)
    finally:
        for sock in held:
            sock.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for port, what in ((10000, "the proxy's HTTP listener"), (19901, "the proxy's admin"), (18081, "the v1 backend")):
        assert f"127.0.0.1:{port} ({what}) is taken: Address already in use; this demo uses" in result.stdout
    canary = result.stdout.split("== weighted canary")[1].split("==")[0]
    assert re.search(r"^\s+v1\s+\d+", canary, re.M) and "status codes: 200:" in canary, canary
