"""bench/hot_path.py: the compiled and pure measurements and how they are reported side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import hot_path  # noqa: E402

MODULES = {"tulle.http.headers": True, "tulle.filters.http.base": True}
NONE = dict.fromkeys(MODULES, False)


def test_children_differ_only_in_the_pure_python_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TULLE_PURE_PYTHON", "1")
    monkeypatch.setenv("KEPT", "yes")
    assert "TULLE_PURE_PYTHON" not in hot_path.child_env("compiled")
    assert hot_path.child_env("pure")["TULLE_PURE_PYTHON"] == "1"
    assert hot_path.child_env("compiled")["KEPT"] == hot_path.child_env("pure")["KEPT"] == "yes"


def test_the_child_result_is_the_last_result_line() -> None:
    text = ("profile noise\n" + hot_path.RESULT_PREFIX + '{"us_per_request": 9.0, "compiled": {}}\n'
            + hot_path.RESULT_PREFIX + '{"us_per_request": 12.5, "compiled": {"m": true}}\n')
    assert hot_path.parse_child_output(text) == {"us_per_request": 12.5, "compiled": {"m": True}}
    with pytest.raises(RuntimeError, match="no result"):
        hot_path.parse_child_output("Traceback ...\n")


def test_best_is_the_fastest_run() -> None:
    runs = [{"us_per_request": 30.0}, {"us_per_request": 21.5}, {"us_per_request": 25.0}]
    assert hot_path.best_of(runs) == {"us_per_request": 21.5}


def test_report_shows_both_builds_their_modules_and_the_ratio() -> None:
    lines = hot_path.report({"pure": {"us_per_request": 80.0, "compiled": NONE},
                             "compiled": {"us_per_request": 20.0, "compiled": MODULES}})
    assert "80.00 us" in lines[0] and "0 of 2 hot-path modules compiled" in lines[0]
    assert "20.00 us" in lines[1] and "2 of 2" in lines[1] and "tulle.http.headers" in lines[1]
    assert "compiled/pure 0.25" in lines[2] and "4.00x" in lines[2]


def test_a_pure_run_that_loaded_compiled_modules_is_not_called_pure() -> None:
    lines = hot_path.report({"pure": {"us_per_request": 21.0, "compiled": MODULES},
                             "compiled": {"us_per_request": 20.0, "compiled": MODULES}})
    assert "NOT honoured" in lines[0]
    assert lines[-1].strip() == "ratio: none (the pure run loaded compiled modules)"


def test_a_compiled_run_without_compiled_modules_has_no_ratio() -> None:
    lines = hot_path.report({"pure": {"us_per_request": 80.0, "compiled": NONE},
                             "compiled": {"us_per_request": 79.0, "compiled": NONE}})
    assert "nothing compiled is loaded" in lines[1]
    assert "ratio: none" in lines[-1]


def test_a_real_run_of_both_builds_prints_them_side_by_side() -> None:
    import subprocess

    completed = subprocess.run([sys.executable, hot_path.__file__, "--requests", "300", "--repeat", "1"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "hot path, plain route, 300 requests per run, best of 1:"
    assert lines[1].lstrip().startswith("pure:") and lines[2].lstrip().startswith("compiled:")
    assert "ratio" in lines[3]
