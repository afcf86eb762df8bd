"""SplitFrozen's old server waits for a mover's ``moved`` before the step it would make its last (issue 21, join21's
item 2: ``trainer.methods.splitfrozen_waits.WaitingServer._await_move``), in a real run.

The case: the mover's handover falls between the end of its last send to the old server and that micro-batch's
arrival there (one uplink latency), while the device waits for a credit (``buffer: 1``, its next micro-batch
forwarded). The device's credit wait ends at the handover (its local ``due`` timer): it sends ``moved`` to the old
server and ``join`` to the new one then. The simulator's old server knows of the move from that instant, so its step
after the micro-batch is its last; the runtime's ``moved`` arrives one uplink latency later, after that micro-batch.
Without the wait the runtime's step was not marked last, and the rounds went on for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.test_splitfrozen_moves import FIXTURES, _fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def await_fleet() -> dict:
    """runtime_handover.yaml with mover alone, ``buffer: 1`` and sync every step; mover starts on mec-b and moves to
    mec-a at 0.1 s (before its first send) over an uplink of 1 s latency, and back to mec-b at 2.6 s.

    mover (3 micro-batches, a forward ~0.3 s, a send ~0.4 s) sends mb 0 to mec-a at ~0.3-0.7 s and waits for its
    credit, which comes after mb 0 reaches mec-a (~1.7 s); it sends mb 1 at ~1.7-2.1 s, forwards mb 2 (its last) and
    waits again: mb 1 reaches mec-a only at ~3.1 s. Its handover at 2.6 s (0.5 s from either end of that gap) ends the
    wait; its ``moved`` (stamped 2.6 s) reaches mec-a at ~3.6 s, after mb 1. mec-a's step after mb 1 is its last and,
    with mec-b's step after mb 2 in the same joint round, the run's last: so whether mec-a marks it last decides
    whether the rounds end there; mec-a waits for the moved to know it.
    (mover starts on the 5 ms link: a device whose first leg has 1 s of latency starts ~1 s late in the runtime.)"""
    data = _fixture("runtime_handover.yaml")
    data["devices"] = [d for d in data["devices"] if d["name"] == "mover"]
    mover = data["devices"][0]
    mover["server"], mover["samples"] = "mec-b", 12
    mover["handover"] = [{"at": "0.1 s", "to": "mec-a", "uplink": {"bandwidth": "0.5 Mbps", "latency": "1 s"}},
                         {"at": "2.6 s", "to": "mec-b", "uplink": {"bandwidth": "1 Mbps", "latency": "5 ms"}}]
    data["training"]["buffer"] = 1
    data["training"]["sync"] = {"every": 1, "mode": "sync"}
    return data


def _run(tiny_gpt2: str, tmp_path: Path, data: dict) -> tuple[dict, object, list]:
    """A real 1-epoch SplitFrozen run (fifo, every process emulated), the simulator's prediction, the run's trace."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=path, train_samples=12, epochs=1, emulate="all",
                 server_order="fifo"))
    vc = ValidateConfig(devices=str(path), model=tiny_gpt2, method="splitfrozen", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=12, server_order="fifo", epochs=1)
    return m, predict(vc, m), read_chrome_trace(tmp_path / "run" / "trace.json")


@pytest.mark.slow
def test_the_old_server_awaits_the_moved_of_a_device_blocked_on_a_credit(tiny_gpt2, tmp_path):
    """Both halves: mover's mb 0 and 1 trained on mec-a, mb 2 on mec-b (``sent_before`` 0 and 2); the wait fired (a
    ``wait`` on mec-a's lane from mb 1's step instant to the read of the moved, ~0.5 s, traced by ``_await_move``); the
    same rounds (2 a server), backhaul bytes and order of steps and rounds on each server as the simulator. With the
    wait removed (``_await_move`` returning at once) the runtime's mec-a marked that step as still training: 3 rounds a
    server against the simulator's 2, a round of zeros more at the end of both servers' order."""
    from tests.test_splitfrozen_moves import _same

    m, sim, measured = _run(tiny_gpt2, tmp_path, await_fleet())
    moves = [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]]
    assert moves == [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers]
    assert moves == [("mec-b", "mec-a", 0), ("mec-a", "mec-b", 2)]
    for events in (measured, sim.events):
        trained = {e.mb: e.lane for e in events if e.op == "F" and e.device == "mover" and e.lane.startswith("mec")}
        assert trained == {0: "mec-a", 1: "mec-a", 2: "mec-b"}
    _same(m, sim, tmp_path, 2)  # the wait removed: 3 rounds a server (a round of zeros more), more bytes
    waits = [e for e in measured if e.lane == "mec-a" and e.op == "wait" and e.device == "mover"]
    assert len(waits) == 1 and 0.1 < waits[0].dur < 1.05, waits  # ~0.46 s at load 10-12
