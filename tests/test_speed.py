"""Trainer speed features: the duration estimate, quiet runs, and the trainer benchmark's smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main
from trainer.estimate import DurationEstimate, eval_cost

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _estimate(lines: list[str], **over) -> DurationEstimate:
    kw = dict(samples_per_epoch=100, epochs=2, eval_rows=30, eval_cost=1 / 3, started=0.0, report=lines.append)
    kw.update(over)
    return DurationEstimate(**kw)


def test_estimate_extrapolates_from_steps_after_the_first():
    lines = []
    est = _estimate(lines)
    # first step (10 samples) ends at t=10 s after a slow start; then 1 s per sample
    for k, t in enumerate([10.0, 20.0, 30.0, 40.0]):
        est.step(10, now=t)
        assert (len(lines) == 1) == (k == 3)
    # at t=40 s: 40 of 200 samples done; 160 left at 1 s each; eval 2 x 30 rows x 1/3 s
    assert lines == ["estimate: this run takes about 3.7 min in all (2.7 min more training at 1.00 samples/s, "
                     "measured over 20 samples after the first step; about 20 s of evaluation, extrapolated); "
                     "an estimate, not a promise"]
    est.step(10, now=50.0)
    assert len(lines) == 1  # once


def test_estimate_measures_bursts_of_steps_between_their_ends():
    lines = []
    est = _estimate(lines, samples_per_epoch=80, epochs=1, eval_rows=0)
    # FedLoRA-like: two steps of 10 samples reported at once every 20 s (a round)
    for t in (20.0, 20.001, 40.0, 40.001, 60.0, 60.001, 80.0, 80.001):
        est.step(10, now=t)
    # burst ends at 20.001 (20 samples) and 60.001 (60 samples): 40 samples in 40 s; reported at t=80
    assert lines and "at 1.00 samples/s" in lines[0] and "(10 s more training" in lines[0]


def test_eval_cost_of_generation_counts_prompt_and_generated_tokens():
    assert eval_cost(False, 128) == pytest.approx(1 / 3)
    assert eval_cost(True, 100, prompt_tokens=50, gen_tokens=150) == pytest.approx(2 / 3)


def _run_args(model: str, out: Path, launch: str, quiet: bool) -> list[str]:
    return (["run"] + (["--quiet"] if quiet else []) +
            ["--devices", str(FIXTURES / "run_tiny.yaml"), "--model", model, "--task", "sst2", "--method", "fedlora",
             "--partition", "iid", "--split", "1", "--epochs", "1", "--train-samples", "16", "--eval-samples", "8",
             "--max-len", "32", "--data-dir", str(FIXTURES / "data"), "--out", str(out), "--launch", launch])


@pytest.mark.parametrize("launch", ["inprocess", pytest.param("local", marks=pytest.mark.slow)])
def test_quiet_run_prints_nothing(tiny_gpt2, tmp_path, capfd, launch):
    # fedlora with --split: a note that is not an error; weight loading: transformers' bars and logs
    capfd.readouterr()
    res = CliRunner().invoke(main, _run_args(tiny_gpt2, tmp_path / "q", launch, quiet=True))
    assert res.exit_code == 0, res.output
    assert res.output == ""
    assert capfd.readouterr() == ("", "")  # nothing at the file descriptors either (C libraries, children)
    assert json.loads((tmp_path / "q" / "metrics.json").read_text())["method"] == "fedlora"
    res = CliRunner().invoke(main, _run_args(tiny_gpt2, tmp_path / "loud", launch, quiet=False))
    assert res.exit_code == 0 and "note: fedlora trains the whole model" in res.output


def test_quiet_run_still_reports_errors(tiny_gpt2, tmp_path):
    args = _run_args(tiny_gpt2, tmp_path / "e", "inprocess", quiet=True)
    args[args.index("--data-dir") + 1] = str(tmp_path / "nowhere")
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and res.output.strip().startswith("error:") and "does not exist" in res.output


def test_bench_trainer_smoke(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_trainer.py"), "--smoke", "--launch", "inprocess",
                    "--methods", "splitfrozen,cenlora", "--json", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=600)
    res = json.loads(out.read_text())
    assert set(res["methods"]) == {"splitfrozen", "cenlora"}
    for method, rec in res["methods"].items():
        assert rec["inprocess"]["samples"] == rec["plain"][0]["samples"] == 32
        assert rec["inprocess"]["ratio"] == pytest.approx(rec["plain_samples_per_s"] / rec["inprocess"]["samples_per_s"],
                                                          abs=1e-3)
        assert rec["lora_blocks"] == ([2, 3] if method == "splitfrozen" else [0, 1, 2, 3])
