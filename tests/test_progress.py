"""Runs that speak: a line for every phase, an estimate that counts start-up, skips the credit burst and
times evaluation from the server's forward passes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from sfsim.cli import main
from trainer.run.estimate import DurationEstimate, _timed_eval, launch_started, record_start

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_phase_of_an_inprocess_run_has_a_line(tiny_gpt2, tmp_path):
    args = ["run", "--devices", str(FIXTURES / "run_tiny.yaml"), "--model", tiny_gpt2, "--task", "sst2",
            "--method", "splitfrozen", "--partition", "iid", "--split", "1", "--epochs", "2", "--train-samples", "16",
            "--eval-samples", "8", "--max-len", "32", "--data-dir", str(FIXTURES / "data"), "--launch", "inprocess",
            "--out", str(tmp_path / "p")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = [x.strip() for x in res.stderr.replace("\r", "\n").splitlines() if x.strip()]
    order = [next(i for i, x in enumerate(lines) if x.startswith(p)) for p in (
        "loading the scenario, data and model ...", "loading the scenario, data and model: done in",
        "epoch 1: evaluating on 8 dev rows ...", "epoch 1: evaluating on 8 dev rows: done in",
        "epoch 2: evaluating on 8 dev rows ...", "epoch 2: evaluating on 8 dev rows: done in")]
    assert order == sorted(order)
    assert any(x.startswith("epoch 1:") and "sample/s" in x for x in lines)  # the bar: its epoch, rate and ETA


def test_the_estimate_starts_when_the_launcher_started(tmp_path):
    record_start(tmp_path)
    time.sleep(0.05)
    now = time.perf_counter()
    assert now - 1.0 < launch_started(tmp_path, now) <= now - 0.05
    assert launch_started(tmp_path / "none", 7.0) == 7.0
    (tmp_path / "logs" / "started.json").write_text(json.dumps({"unix": time.time() - 3600}))  # an earlier launch's
    assert launch_started(tmp_path, 7.0) == 7.0


def test_the_rate_leaves_out_the_credit_burst():
    lines = []
    est = DurationEstimate(samples_per_epoch=400, epochs=1, eval_rows=0, eval_cost=1 / 3, started=0.0,
                           report=lines.append, skip_samples=100, window_s=10.0)
    t = 10.0
    for k in range(40):  # the first 100 samples (credits filling) at 0.01 s each, then 0.1 s per sample
        t += 0.1 if k < 10 else 1.0
        est.step(10, now=t)
        if lines:
            break
    assert lines and "at 10.00 samples/s, measured over" in lines[0] and "after the first 100 (credits filling)" \
        in lines[0]


def test_evaluation_is_timed_from_the_server_forward_passes():
    meter = SimpleNamespace(phase_s={"server_forward": 6.0})
    setup = SimpleNamespace(meter=meter, lm=SimpleNamespace(n_layers=6), cuts={"a": 2, "b": 2})
    est = SimpleNamespace(_n=300)
    # 6 s for 300 samples over 4 of 6 blocks: 0.03 s per row of the whole model; 500 rows: 15 s
    assert _timed_eval(setup, 500, est) == pytest.approx(15.0)
    assert _timed_eval(SimpleNamespace(meter=SimpleNamespace(phase_s={}), lm=setup.lm, cuts=setup.cuts), 500, est) \
        is None
