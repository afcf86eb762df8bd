"""bench/validate_network.py's short cases: the row is the run with the median measured total (its own prediction
beside it), runs that fell behind their emulation are no candidates, and --repeats must be odd."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("validate_network", ROOT / "bench" / "validate_network.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rep(measured: float, predicted: float, note: str | None = None) -> dict:
    return {"total": {"measured_s": measured, "predicted_s": predicted, "error": (predicted - measured) / measured},
            "emulation_note": note}


def test_the_row_is_the_median_measured_run_with_its_own_prediction():
    bench = _bench()
    row = bench.median_run([_rep(0.252, 0.181), _rep(0.195, 0.182), _rep(0.220, 0.174)])
    assert row["total"] == {"measured_s": 0.220, "predicted_s": 0.174, "error": (0.174 - 0.220) / 0.220}
    assert row["measured_runs_s"] == [0.252, 0.195, 0.220] and row["predicted_runs_s"] == [0.181, 0.182, 0.174]
    assert row["emulation_note"] is None


def test_runs_that_fell_behind_are_no_candidates():
    bench = _bench()
    row = bench.median_run([_rep(0.9, 0.5, "behind"), _rep(0.6, 0.5), _rep(0.7, 0.5)])
    assert row["total"]["measured_s"] == 0.6  # the lower of the two that kept up (the median of an even count)
    every = bench.median_run([_rep(0.9, 0.5, "behind by 1 s"), _rep(0.6, 0.5, "behind by 2 s")])
    assert every["total"]["measured_s"] == 0.9 and every["emulation_note"] == "behind by 1 s"  # the first, marked


def test_repeats_must_be_odd():
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "validate_network.py"), "--repeats", "2"],
                         capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert res.returncode == 2 and "--repeats must be an odd number >= 1 (got 2)" in res.stderr


def test_table_json_keeps_every_row():
    bench = _bench()  # the median's count used to overwrite the rows under "runs"
    rows = {"a": {"error": -0.01, "emulation_note": None}, "b": {"error": 0.5, "emulation_note": "fell behind"},
            "c": {"error": 0.03, "emulation_note": None}}
    assert bench.summarise(rows) == {"median_abs_error": 0.02, "in_median": 2, "left_out": {"b": "fell behind"},
                                     "runs": rows}
