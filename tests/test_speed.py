"""Trainer speed features: the duration estimate, quiet runs, and the trainer benchmark's smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main
from trainer.run.estimate import DurationEstimate, eval_cost

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


# ---------------------------------------------------------------- length bucketing (opt-in)

def _gsm8k_role(bucket: int):
    from trainer.data.tasks import encode, load_task
    from trainer.model.loading import tiny_model
    from trainer.transport.runtime import DeviceRole

    lm = tiny_model("llama", n_layers=2)
    shard = encode(load_task("gsm8k", str(FIXTURES / "data"), "train"), lm.tokenizer, 4096)  # characters: no row is cut
    return DeviceRole("d", shard, 4, seed=7, bucket=bucket)


def test_bucketing_off_keeps_the_shuffled_micro_batches():
    import torch

    role = _gsm8k_role(0)
    perm = torch.randperm(role.n_samples, generator=torch.Generator().manual_seed(7 * 1000003 + 1))
    for got, start in zip(role.batches(1), range(0, role.n_samples, 4), strict=True):
        rows = perm[start:start + 4]
        assert torch.equal(got["labels"], role.shard["labels"][rows][:, :got["labels"].shape[1]])


def test_bucketing_trains_every_row_once_with_less_padding_and_one_order_per_seed():
    import torch

    plain, bucketed = _gsm8k_role(0).batches(0), _gsm8k_role(5).batches(0)
    again = _gsm8k_role(5).batches(0)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(bucketed, again, strict=True))
    assert sorted(len(b["input_ids"]) for b in bucketed) == sorted(len(b["input_ids"]) for b in plain)
    ids = sorted(tuple(r.tolist()) for b in bucketed for r in b["input_ids"])
    full = _gsm8k_role(0).shard
    assert len(ids) == len(full["input_ids"])  # 40 rows, each once (rows differ: ids identify them)
    tokens = lambda bs: sum(b["input_ids"].numel() for b in bs)  # noqa: E731
    real = int(full["attention_mask"].sum())
    assert real < tokens(bucketed) < tokens(plain)  # the padded tokens a micro-batch computes on


def test_a_bucketed_run_is_deterministic(tiny_gpt2, tmp_path):
    from trainer.run.launch import run
    from trainer.run.runner import RunConfig

    hist = []
    for k in range(2):
        cfg = RunConfig(devices=str(FIXTURES / "run_tiny.yaml"), model=tiny_gpt2, task="sst2", method="cenlora",
                        partition="iid", out=str(tmp_path / str(k)), epochs=1, train_samples=32, eval_samples=4,
                        data_dir=str(FIXTURES / "data"), progress=False, max_len=48, bucket=2, micro_batch=2)
        hist.append(run(cfg)["train_loss_history"])
    assert hist[0] == hist[1] and len(hist[0]) == 16
