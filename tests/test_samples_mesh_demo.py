"""The README's main command: `tulle demo --duration N` brings up the mesh, splits, promotes, exits 0."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_mesh_demo_runs_unattended_and_reports_the_canary() -> None:
    result = subprocess.run([sys.executable, "-m", "tulle", "demo", "--duration", "10"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    canary = out.split("== canary")[1].split("==")[0]
    shares = {m[1]: float(m[2]) for m in re.finditer(r"^\s+reviews-(v\d)\s+\d+\s+([\d.]+)%", canary, re.M)}
    assert set(shares) <= {"v1", "v2", "v3"} and shares.get("v1", 0) >= 55, canary  # 80/10/10
    assert re.search(r"status codes: 200: \d+$", canary, re.M), canary  # no errors
    stats = dict(re.findall(r"^\s+(\S+-v\d)\s+(\d+)\s+\d+\s+(?:\d+)$", out, re.M))
    assert int(stats["productpage-v1"]) > 0 and int(stats["details-v1"]) == int(stats["productpage-v1"])
    # the commands it prints reach this mesh's control plane, whose API needs its token
    assert re.search(r"^  export TULLE_TOKEN_FILE=\S+/state/api-token ", out, re.M), out
    promoted = out.split("== after reviews-v3.yaml")[1]
    assert re.search(r"^\s+reviews-v3\s+\d+\s+100\.0%", promoted, re.M), promoted



def test_respawn_starts_a_process_again_as_it_first_started_in_its_place(tmp_path) -> None:  # noqa: ANN001
    from tulle.samples.mesh_demo import Demo

    demo = Demo(tmp_path, delta=False)
    # `python -m <missing module>` exits at once with an error naming it: a process to restart
    demo._spawn("first", ["tulle_no_such_module"])
    demo._spawn("running", ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(120)"])
    try:
        first = demo.process("first")
        assert first.wait(30) != 0
        with pytest.raises(RuntimeError, match="running is still running"):
            demo.respawn("running")
        again = demo.respawn("first")
        assert again is not first and again.wait(30) != 0
        assert [label for label, _ in demo.processes] == ["first", "running"]  # stop()'s order is kept
        assert demo.process("first") is again
        # the log keeps both incarnations' output
        assert (tmp_path / "first.log").read_text().count("No module named tulle_no_such_module") == 2
    finally:
        demo.stop()
