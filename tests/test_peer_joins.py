"""A mover's ``join`` against the backhaul round it leads to, for real (trainer.transport.backhaul, handover).

Two servers and three devices on loopback with a tiny random GPT-2 (``tests/fixtures/runtime_handover_drop.yaml``:
mover goes from mec-a to mec-b at 0.8 s, stay-b is never online, so mec-b waits for its visitors while it answers
mec-a's rounds). A hook in the mover's process (a fault-injection role: :func:`trainer.run.launch.launch_local`'s
``targets``) holds its ``join`` back after its ``moved`` has left, or kills the process there, so that mec-a reads
the ``moved`` and opens a round while mec-b has not read the join: the order the race depends on, forced.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.emulation_guard import timed
from tests.test_handover import FIXTURES, _adapter, _scenario

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hooked_device(cfg_json: str, hook: str, master: str, world: int, rank: int, log: str) -> None:
    """A device role whose first handover stops after its ``moved`` is on the wire: it sleeps ``hook`` seconds
    before it sends its ``join`` (then goes on as any device), or (``die``) its process ends there."""
    from trainer.run.launch import exit_now, role_main
    from trainer.transport.distributed import DistTransport

    real = DistTransport.move

    def move(self, device: str, rank_to: int) -> None:
        self.flush()  # the moved has left
        if hook == "die":
            os._exit(0)  # killed: its connections close
        time.sleep(float(hook))
        DistTransport.move = real
        real(self, device, rank_to)

    DistTransport.move = move
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    exit_now(role_main(["--config-json", cfg_json, "--role", "device", "--rank", str(rank), "--world-size", str(world),
                        "--master", master]))


def _hook_mover(monkeypatch, hook: str, rank: int = 2) -> None:
    """Every local launch from now on runs device rank ``rank`` (mover) with ``hook``."""
    from trainer.run import launch

    real = launch.launch_local

    def hooked(cfg, resume=False, **kw):
        fn = functools.partial(_hooked_device, json.dumps(dataclasses.asdict(cfg)), hook)
        return real(cfg, resume=resume, targets={rank: fn})

    monkeypatch.setattr(launch, "launch_local", hooked)


def _validate(tiny_gpt2: str, tmp_path: Path, method: str, data: dict, *extra: str) -> tuple[dict, dict, Path]:
    from click.testing import CliRunner

    from sfsim.cli import main

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    out, samples = tmp_path / "val", str(sum(d["samples"] for d in data["devices"]))
    res = CliRunner().invoke(main, ["validate", "--devices", str(tmp_path / "s.yaml"), "--model", tiny_gpt2, "--method",
                                    method, "--split", "1", "--max-len", "48", "--train-samples", samples, "--data-dir",
                                    str(FIXTURES / "data"), "--out", str(out), "--server-order", "fifo", *extra])
    assert res.exit_code == 0, res.output
    return (json.loads((out / "report.json").read_text()), json.loads((out / "run" / "metrics.json").read_text()),
            out / "run")


def _splitlora(tmp_path: Path) -> dict:
    """The fixture with stay-a holding 4 micro-batches (sends at ~0.35, 1.5, 2.7 and 3.85 s, as mover's): mec-a
    steps after each, so its 4th step (~2.7 s) opens a round (every 2) after it read mover's ``moved`` (~1.45 s)."""
    data = yaml.safe_load(_scenario(tmp_path, "splitlora").read_text())
    data["devices"][1]["samples"] = 16
    return data


def test_a_splitlora_round_waits_for_the_join_announced_before_it(tiny_gpt2, tmp_path, monkeypatch):
    """mover's join reaches mec-b 3 s after its ``moved`` reached mec-a, so after mec-a's round at ~2.7 s invites
    mec-b. Before joins were announced, mec-b answered that round with zeros as a waiting server (the invitation came
    first) and trained mover later: a round more than the simulator, where a join arrives at once. Now the round carries
    the join mec-a announced, mec-b reads it first and joins the round from its own step: the simulator's rounds."""
    from sfsim.outputs.trace import read_chrome_trace
    from trainer.validate.compare import ValidateConfig, predict

    _hook_mover(monkeypatch, "3.0")
    data = _splitlora(tmp_path)
    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", data)
    moves = [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"]["measured"]]
    assert moves == [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"]["predicted"]]
    assert moves == [("mec-a", "mec-b", 1)]
    vc = ValidateConfig(devices=str(tmp_path / "s.yaml"), model=tiny_gpt2, method="splitlora", out=str(tmp_path / "v"),
                        split=1, max_len=48, data_dir=str(FIXTURES / "data"), train_samples=40, server_order="fifo")
    sim = predict(vc, m)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], sim.sync_rounds)
    assert m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    assert m["lost_devices"] == {} and m["missing_reports"] == []
    a, b = _adapter(run), _adapter(run / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    events = read_chrome_trace(run / "trace.json")
    opened = sorted(e.start for e in events if e.lane == "backhaul:mec-a" and e.op == "sync-send")[1]
    served = min(e.start for e in events if e.lane == "mec-b" and e.op == "F")
    assert opened < served  # the order forced: mec-a's second round was open before mec-b had mover's join


def test_a_splitlora_mover_killed_after_its_moved_is_lost_and_the_run_goes_on(tiny_gpt2, tmp_path, monkeypatch):
    """mover's process dies right after its ``moved`` left for mec-a (~1.9 s): mec-a announces its join in its round at
    ~3.3 s, while mec-b waits for stay-a (which hands over to it at 3.2 s, mid-way between its third send at ~2.6 s and
    its fourth at ~3.8 s: at 3.8 s the fourth send could start first, as it did under another test's warm caches). mec-b has lost mover (its connection
    closed), so it awaits none of its joins and answers that round; with the join awaited it could never answer, and
    every server would have waited for the backhaul's timeout (600 s). The run reports mover lost, with its trained
    micro-batch kept; stay-a trains all four, its last on mec-b; both servers end as one model."""
    from collections import Counter

    from sfsim.outputs.trace import read_chrome_trace

    _hook_mover(monkeypatch, "die")
    data = _splitlora(tmp_path)
    data["devices"][1]["handover"] = [{"at": "3.2 s", "to": "mec-b"}]
    t0 = time.monotonic()
    _, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", data)
    assert time.monotonic() - t0 < 300
    assert set(m["lost_devices"]) == {"mover"} and "connection" in m["lost_devices"]["mover"]["reason"]
    assert m["lost_devices"]["mover"]["untrained_samples"] == 12  # its first micro-batch trained (on mec-a)
    trained = Counter((e.device, e.mb, e.lane) for e in read_chrome_trace(run / "trace.json")
                      if e.op == "F" and e.lane.startswith("mec-"))
    assert trained == {("mover", 0, "mec-a"): 1, **{("stay-a", j, "mec-a"): 1 for j in range(3)},
                       ("stay-a", 3, "mec-b"): 1}
    rounds = {k: v["sync_rounds"] for k, v in m["servers"].items()}
    assert rounds["mec-a"] == rounds["mec-b"]
    a, b = _adapter(run), _adapter(run / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fedlora_mover_killed_after_its_moved_is_lost_and_the_run_goes_on(tiny_gpt2, tmp_path, monkeypatch):
    """FedLoRA (rounds of 2 micro-batches): mover's first upload (~1.2 s) reaches mec-a's round; at its second (~2.5 s,
    after its handover at 1.6 s) it sends ``moved`` to mec-a and dies before its ``join``. mec-a announces the join in
    its round, mec-b (waiting for mover) loses it instead of waiting for it: the run ends, mover reported lost with its
    first round trained, and both servers end as one model."""
    _hook_mover(monkeypatch, "die")
    data = yaml.safe_load(_scenario(tmp_path, "fedlora").read_text())
    t0 = time.monotonic()
    _, m, run = _validate(tiny_gpt2, tmp_path, "fedlora", data)
    assert time.monotonic() - t0 < 300
    assert set(m["lost_devices"]) == {"mover"} and "connection" in m["lost_devices"]["mover"]["reason"]
    assert m["lost_devices"]["mover"]["untrained_samples"] == 8  # its first upload's 2 micro-batches trained
    assert sum(len(s["train_loss_history"]) for s in m["servers"].values()) == 2 + 2  # mover's first round, stay-a's
    rounds = {k: v["sync_rounds"] for k, v in m["servers"].items()}
    assert rounds["mec-a"] == rounds["mec-b"]
    a, b = _adapter(run), _adapter(run / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_splitlora_handovers_without_sync_close_each_epoch_as_the_runtime(tiny_gpt2, tmp_path):
    """No ``training.sync``, backhaul links, 2 epochs, mover A -> B in epoch 0 and back to A in epoch 1: the runtime
    ends each epoch with the closing round (``ServerSync.finish``), a barrier, and the simulator now does too (it
    closed both epochs' rounds after the run, the epochs back to back): the same rounds, bytes, handovers, and the same
    order of steps and rounds on each server."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_sync_order import server_ops
    from trainer.validate.compare import ValidateConfig, predict

    data = yaml.safe_load(_scenario(tmp_path, "splitlora").read_text())
    del data["training"]["sync"]
    data["devices"][0]["handover"] = [{"at": "0.7 s", "to": "mec-b"}, {"at": "5.6 s", "to": "mec-a"}]
    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", data, "--epochs", "2")
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert moves["predicted"] == [("mec-a", "mec-b", 1), ("mec-b", "mec-a", 5)]
    vc = ValidateConfig(devices=str(tmp_path / "s.yaml"), model=tiny_gpt2, method="splitlora", out=str(tmp_path / "v"),
                        split=1, max_len=48, data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo",
                        epochs=2)
    sim = predict(vc, m)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 2)
    assert sim.sync_rounds == 2 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    measured = read_chrome_trace(run / "trace.json")
    for server in ("mec-a", "mec-b"):
        assert server_ops(measured, server) == server_ops(sim.events, server)
    # mec-a: mover's first micro-batch and stay-a's 2, the closing round; then stay-a's 2 and mover's last 3 of epoch 1
    assert server_ops(measured, "mec-a") == ["step"] * 3 + ["sync-send", "sync-recv"] + ["step"] * 5 + \
        ["sync-send", "sync-recv"]
