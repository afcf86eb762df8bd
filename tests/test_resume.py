"""``sfsim run --resume`` keeps what a run had: a finished run is left alone, the folder given is the one
resumed, contradicting options are refused, totals are cumulative; time-based checkpoints; step logs;
a run that trained nothing exits non-zero."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.outputs.trace import read_chrome_trace
from trainer.run import resume as resume_mod
from trainer.run.resume import CheckpointClock, add_totals, contradictions, trained_nothing

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_chrome_trace_ref(out: Path) -> list:
    """The optimizer steps of an uninterrupted run's trace."""
    return [e for e in read_chrome_trace(out / "trace.json") if e.op == "step"]


def _args(model, out, *extra):
    return ["run", "--quiet", "--devices", str(FIXTURES / "run_tiny.yaml"), "--model", model, "--task", "sst2",
            "--method", "splitfrozen", "--partition", "iid", "--split", "1", "--epochs", "2",
            "--train-samples", "24", "--eval-samples", "20", "--max-len", "48", "--lr", "0.01",
            "--data-dir", str(FIXTURES / "data"), "--launch", "inprocess", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def finished(tiny_gpt2, tmp_path_factory):
    """A finished two-epoch run (checkpoints every 3 steps) and its metrics."""
    out = tmp_path_factory.mktemp("resume") / "ref"
    res = CliRunner().invoke(main, _args(tiny_gpt2, out, "--checkpoint-every", "3"))
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "metrics.json").read_text())


def test_a_finished_run_has_nothing_to_resume_and_nothing_changes(finished):
    out, m = finished
    assert m["finished"] is True
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = CliRunner().invoke(main, ["run", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"{out}: the run finished (eval accuracy {m['eval_accuracy']:.4f}")
    assert "nothing to resume, nothing changed" in res.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_an_interrupted_copy_resumes_itself_with_cumulative_totals(tiny_gpt2, finished, tmp_path, monkeypatch):
    ref_out, ref = finished
    cut = tmp_path / "cut"

    def crash(self, step, *a):  # the run dies after its 5th optimizer step (checkpoint at step 3)
        if step == 5:
            raise KeyboardInterrupt
    monkeypatch.setattr("trainer.run.steplog.StepLog.step", crash)
    res = CliRunner().invoke(main, _args(tiny_gpt2, cut, "--checkpoint-every", "3"))
    assert res.exit_code == 130 and (cut / "checkpoint.safetensors").is_file() and not (cut / "metrics.json").exists()
    monkeypatch.undo()
    copy = tmp_path / "copy"
    shutil.copytree(cut, copy)
    kept = (cut / "checkpoint.safetensors").read_bytes()
    res = CliRunner().invoke(main, ["run", "--quiet", "--resume", str(copy)])
    assert res.exit_code == 0, res.output
    assert (cut / "checkpoint.safetensors").read_bytes() == kept and not (cut / "metrics.json").exists()
    m = json.loads((copy / "metrics.json").read_text())
    assert m["train_loss_history"] == ref["train_loss_history"] and m["eval_history"] == ref["eval_history"]
    # the server's 3 steps before the checkpoint + its 11 after = the 14 of one run
    assert (m["server_flops_total"], m["downlink_bytes"]) == (ref["server_flops_total"], ref["downlink_bytes"])
    # devices also count the forwards they had in flight at the checkpoint (buffer 4 each), redone after it
    for key in ("device_flops_total", "uplink_bytes"):
        assert ref[key] < m[key] <= 1.5 * ref[key], key
    before = m["resumed"]["totals_before"]
    assert m["wall_s"] == pytest.approx(before["wall_s"] + m["resumed"]["attempt_wall_s"], abs=2e-3)
    assert 0 < sum(before["flops"].values()) < ref["device_flops_total"] + ref["server_flops_total"]
    # trace.json is the whole run: the 3 steps saved with the checkpoint, the restart, the 11 steps after it
    events = read_chrome_trace(copy / "trace.json")
    (mark,) = [e for e in events if e.op == "resume"]
    steps = [e.start for e in events if e.op == "step"]
    assert len(steps) == len(read_chrome_trace_ref(ref_out)) == 14
    assert sum(t < mark.start for t in steps) == 3 and all(e.end <= mark.start for e in events if e.start < mark.start)
    assert json.loads((cut / "checkpoint_trace.json").read_text())["steps"] == 3


def test_options_that_contradict_the_recorded_run_are_refused(finished, tmp_path):
    out, _ = finished
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    (copy / "metrics.json").unlink()  # unfinished
    for extra, expect in ((["--lr", "0.1"], "--lr 0.1 (recorded: 0.01) contradicts the recorded run"),
                          (["--epochs", "3"], "--epochs 3 (recorded: 2) contradicts the recorded run"),
                          (["--method", "fedlora"], "--method fedlora (recorded: splitfrozen) contradicts"),
                          (["--out", str(out)], "continues that folder; --out")):
        res = CliRunner().invoke(main, ["run", "--resume", str(copy), *extra])
        assert res.exit_code == 2 and expect in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (copy / "metrics.json").exists()


def test_contradictions_ignore_what_a_resume_may_change():
    rec = {"lr": 0.002, "threads": 1, "epochs": 2, "out": "a", "checkpoint_s": 120.0}
    assert contradictions(rec, {"lr": 0.002, "threads": 4, "out": "b", "checkpoint_s": 5.0, "epochs": None}) == []
    assert contradictions(rec, {"epochs": 3}) == ["--epochs 3 (recorded: 2)"]


def test_checkpoint_clock_by_steps_and_by_time():
    c = CheckpointClock(every=4, seconds=10.0, last_time=0.0)
    got = [c.due(steps=s, now=t) for s, t in ((1, 1.0), (4, 2.0), (5, 3.0), (6, 12.5), (6, 30.0), (8, 31.0),
                                               (9, 32.0))]
    assert got == [False, True, False, True, False, True, False]  # (6, 30.0): time is up but no new step
    assert not CheckpointClock(every=0, seconds=0.0).active


def test_time_based_checkpoints_come_mid_epoch(tiny_gpt2, tmp_path, monkeypatch):
    saved = []
    real = resume_mod.save_checkpoint

    def spy(folder, tensors, optimizers, progress):
        saved.append((progress["epoch"], sum(progress["cursor"].values()), len(progress["losses"])))
        return real(folder, tensors, optimizers, progress)
    monkeypatch.setattr(resume_mod, "save_checkpoint", spy)
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "t", "--epochs", "1", "--checkpoint-interval", "1us"))
    assert res.exit_code == 0, res.output
    steps = len(json.loads((tmp_path / "t" / "metrics.json").read_text())["train_loss_history"])
    assert saved[:-1] == [(0, mb, mb) for mb in range(1, steps + 1)]  # one at every step (1 us apart at least)
    assert saved[-1] == (1, 0, steps)  # and the end-of-epoch one


def test_steps_csv_has_a_row_per_step_and_per_evaluation(finished):
    out, m = finished
    rows = list(csv.DictReader((out / "steps.csv").open()))
    train = [r for r in rows if r["loss"]]
    evals = [r for r in rows if r["eval_accuracy"]]
    assert [float(r["loss"]) for r in train] == pytest.approx(m["train_loss_history"], abs=1e-5)
    assert [int(r["step"]) for r in train] == list(range(1, len(train) + 1))
    assert [float(r["eval_accuracy"]) for r in evals] == m["eval_history"]
    assert [r["epoch"] for r in evals] == ["1", "2"] and train[-1]["samples"] == "24"


def test_tensorboard_without_the_package_warns_and_logs_csv(tiny_gpt2, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_tb)
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "tb", "--epochs", "1", "--log-to", "tensorboard"))
    assert res.exit_code == 0, res.output
    assert "warning: --log-to tensorboard needs the tensorboard package" in res.stderr
    assert (tmp_path / "tb" / "steps.csv").is_file()
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "x", "--log-to", "wandb"))
    assert res.exit_code == 2 and "--log-to 'wandb'" in res.stderr


def test_a_run_that_trained_nothing_exits_1(tmp_path, monkeypatch):
    m = {"method": "splitfrozen", "task": "sst2", "eval_accuracy": 0.5, "train_loss_history": [],
         "samples_by_device": {"a": 4, "b": 4}, "lost_devices": {}}
    assert trained_nothing(m) == "no training sample reached the server (0 optimizer steps)"
    lost = dict(m, train_loss_history=[0.7], lost_devices={"a": {}, "b": {}})
    assert trained_nothing(lost) == "every device was lost (a, b)"
    assert trained_nothing(dict(m, train_loss_history=[0.7])) is None
    monkeypatch.setattr("trainer.run.runner.run", lambda cfg, resume=False: lost)
    res = CliRunner().invoke(main, _args("gpt2", tmp_path / "n"))
    assert res.exit_code == 1 and "error: the run trained nothing: every device was lost (a, b)" in res.stderr


def test_add_totals_adds_the_checkpoints_to_the_attempts():
    m = {"device_flops": {"a": 10}, "server_flops": {"s": 100}, "uplink_bytes_by_device": {"a": 5},
         "downlink_bytes_by_device": {"a": 0}, "wall_s": 2.0}
    base = {"wall_s": 3.5, "flops": {"a": 1, "s": 20}, "uplink_bytes": {"a": 7}, "downlink_bytes": {}}
    got = add_totals(m, base, distributed=False)
    assert (got["device_flops_total"], got["server_flops_total"], got["uplink_bytes"], got["downlink_bytes"],
            got["wall_s"]) == (11, 120, 12, 0, 5.5)
    assert add_totals(m, None, distributed=False) is m


def test_a_resume_keeps_the_recorded_settings_it_is_not_given(finished, tmp_path, monkeypatch):
    out, _ = finished
    copy = tmp_path / "k"
    shutil.copytree(out, copy)
    (copy / "metrics.json").unlink()
    cfg = json.loads((copy / "run_config.json").read_text())
    cfg.update(count_flops=False, checkpoint_s=5.0, checkpoint_every=3)
    (copy / "run_config.json").write_text(json.dumps(cfg))
    seen = {}
    monkeypatch.setattr("trainer.run.runner.run", lambda c, resume=False: seen.update(cfg=c, resume=resume) or
                        {"method": "splitfrozen", "task": "sst2", "eval_accuracy": 0.5, "train_loss_history": [0.1],
                         "samples_by_device": {"a": 1}, "lost_devices": {}})
    res = CliRunner().invoke(main, ["run", "--quiet", "--resume", str(copy), "--threads", "1", "--log-to", "none"])
    assert res.exit_code == 0, res.output
    c = seen["cfg"]
    assert seen["resume"] and c.out == str(copy) and not c.progress
    assert (c.count_flops, c.checkpoint_s, c.checkpoint_every, c.log_to, c.lr) == (False, 5.0, 3, "none", 0.01)


def test_tensorboard_writes_the_steps_csv_holds(tiny_gpt2, tmp_path):
    """With the package installed (the dev extra), the event file holds one train/loss point per step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    res = CliRunner().invoke(main, _args(tiny_gpt2, out, "--epochs", "1", "--log-to", "csv,tensorboard"))
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    rows = [r.split(",") for r in (out / "steps.csv").read_text().strip().splitlines()[1:]]
    steps = [r for r in rows if r[3]]  # evaluation rows have no loss
    assert [e.step for e in acc.Scalars("train/loss")] == [int(r[0]) for r in steps] and steps
    assert [round(e.value, 4) for e in acc.Scalars("train/loss")] == [round(float(r[3]), 4) for r in steps]
    assert len(acc.Scalars("eval/accuracy")) == len(rows) - len(steps) == 1


class _SilentTransport:
    """A transport whose device never answers ``save`` (it only waits until the device is dropped)."""

    peer_timeout = 0.05

    def __init__(self):
        import threading

        self.sent, self.dropped, self.gone = [], {}, threading.Event()

    def send_down(self, msg):
        self.sent.append((msg.device, msg.kind, msg.aux))

    def recv_up(self, name, kinds):
        from trainer.transport.runtime import PeerLost

        assert self.gone.wait(5.0)
        raise PeerLost(name, self.why)

    def drop(self, name, why):
        self.why = why
        self.gone.set()


def test_a_device_that_never_answers_a_checkpoint_is_lost_not_waited_for():
    from types import SimpleNamespace

    from trainer.run.resume import REPORT_S, device_reports

    tr, lost = _SilentTransport(), {}
    method = SimpleNamespace(live=lambda: ["d"], device_stateful=True, lose=lambda n, why: lost.update({n: why}))
    assert device_reports(SimpleNamespace(transport=tr, server="s"), method, 3) == {}
    assert tr.sent == [("d", "save", 3)]
    assert lost == {"d": f"no answer to checkpoint 3 within {REPORT_S * 0.05:g} s"}


def test_device_state_keeps_the_previous_generation_for_a_server_one_checkpoint_behind(tmp_path):
    """Killed after the devices saved checkpoint 6 but before the server wrote it: the device resumes from 3."""
    import torch

    from trainer.methods.checkpoint import load_device_state, save_device_state

    for ckpt, value in ((3, 1.0), (6, 2.0)):
        save_device_state(tmp_path, "dev-0", {"w": torch.full((2,), value)}, {}, ckpt)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["dev-0.prev.safetensors", "dev-0.safetensors"]
    got, tensors = load_device_state(tmp_path, "dev-0", {}, want=3)
    assert got == 3 and tensors["w"].tolist() == [1.0, 1.0]
    got, tensors = load_device_state(tmp_path, "dev-0", {})
    assert got == 6 and tensors["w"].tolist() == [2.0, 2.0]
    assert load_device_state(tmp_path, "dev-0", {}, want=9)[0] == 6  # neither matches: the server refuses it
