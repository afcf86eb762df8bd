"""SplitFrozen's device waits for credits as the simulator's does (issue 21, idlefix21's list of mismatches).

- A pipelined device forwards its next micro-batch as soon as the link takes the previous one and then waits for a
  credit with it ready (the simulator's ``f_start = t0``); the runtime used to forward it only once the credit came,
  one forward later on every credit wait (``buffer: 1`` shows it on every micro-batch).
- A device waiting for a credit hands over at its handover time, the new server opening a full window (the
  simulator's ``_take_credit`` ends the wait at the next leg's time); the runtime used to move it only at its next
  send, after the old server's credit.
"""

from __future__ import annotations

import os

import pytest
import yaml

from tests.test_splitfrozen_moves import FIXTURES, _fixture


def _scenario() -> dict:
    """runtime_handover.yaml with mover alone, ``buffer: 1``, no training.sync: mover (8 micro-batches, a forward
    ~0.3 s, a send ~0.4 s) moves to mec-b at 0.1 s (before its first send) on an uplink of 1 s latency, so each credit
    comes ~1 s after its send ends, and back to mec-a at 2.6 s, in the middle of its wait for mb 1's credit
    (2.09 to 3.09 s in the simulator)."""
    data = _fixture("runtime_handover.yaml")
    data["training"]["buffer"] = 1
    data["training"].pop("sync")
    data["devices"] = [d for d in data["devices"] if d["name"] == "mover"]
    data["devices"][0]["handover"] = [
        {"at": "0.1 s", "to": "mec-b", "uplink": {"bandwidth": "0.5 Mbps", "latency": "1 s"}},
        {"at": "2.6 s", "to": "mec-a", "uplink": {"bandwidth": "1 Mbps", "latency": "5 ms"}}]
    return data


def _ops(events, op: str, lane: str) -> dict[int, float]:
    return {e.mb: e.start for e in events if e.op == op and e.lane == lane}


@pytest.mark.usefixtures("one_torch_thread")
def test_a_device_waiting_for_a_credit_forwards_ahead_and_hands_over_on_time(tiny_gpt2, tmp_path):
    """Both halves: every forward after the first starts when the previous send starts (before the fix the real one
    started when the credit came, >= 1 s later: margin 0.15 s); mover's send of mb 2 starts at the handover (2.6 s;
    the real one within 0.15 s: before the fix it waited for mec-b's credit at ~3.1 s); the same handovers with the
    same micro-batches sent before each, and each micro-batch trained on the same server."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_scenario()))
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=path, train_samples=32, epochs=1, emulate="all",
                 server_order="fifo"))
    vc = ValidateConfig(devices=str(path), model=tiny_gpt2, method="splitfrozen", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo", epochs=1)
    sim = predict(vc, m)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    for events, margin in ((sim.events, 0.0), (measured, 0.15)):
        fwd, send = _ops(events, "F", "mover"), _ops(events, "send", "link:mover")
        assert sorted(fwd) == sorted(send) == list(range(8))
        assert all(abs(fwd[n] - send[n - 1]) <= margin for n in range(1, 8)), (fwd, send)
        assert 2.6 <= send[2] <= 2.6 + margin, send
        trained = {e.mb: e.lane for e in events if e.op == "F" and e.device == "mover" and e.lane.startswith("mec")}
        assert trained == {0: "mec-b", 1: "mec-b", **{n: "mec-a" for n in range(2, 8)}}
    moves = [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]]
    assert moves == [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers]
    assert moves == [("mec-a", "mec-b", 0), ("mec-b", "mec-a", 2)]


@pytest.mark.usefixtures("one_torch_thread")
def test_an_old_servers_step_after_a_movers_last_micro_batch_is_its_last(tiny_gpt2, tmp_path):
    """The mover-only variant of ``tests/test_splitfrozen_idle.py``'s real case (mover alone, mec-a -> mec-b at
    1.25 s, 4 micro-batches an epoch, 2 epochs, ``training.sync`` every 1 in sync mode) with 300 ms of backhaul
    latency, so each round (~0.6 s) outlasts a send and the micro-batches queue at mec-a. mec-a's step after mover's
    last micro-batch there (mb 2, trained at ~2.3 s) is its last: the simulator's mec-a knows of the move from
    mover's next send (~1.5 s), and the runtime's reads the ``moved`` that came then (~0.8 s before) ahead of that
    step. Before, the runtime read it only after the step, which it did not mark last, and both servers made one
    more round (8 against the simulator's 7), with more backhaul bytes."""
    from tests.test_splitfrozen_moves import _real, _same

    data = _fixture("runtime_handover.yaml")
    data["devices"] = [d for d in data["devices"] if d["name"] == "mover"]
    data["devices"][0]["handover"][0]["at"] = "1.25 s"
    data["training"]["sync"] = {"every": 1, "mode": "sync"}
    for srv in data["servers"]:
        srv["backhaul"]["latency"] = "300 ms"
    m, sim = _real(tiny_gpt2, tmp_path, data, 16)
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == [("mec-a", "mec-b", 3)]
    _same(m, sim, tmp_path, 7)
