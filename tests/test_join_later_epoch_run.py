"""Issue 21 for real: a device hands over, in its second epoch, to a server that is still in its first (no
``training.sync``: no backhaul round during an epoch, so nothing but the epoch's closing round ties the servers).

``tests/fixtures/runtime_handover_drop.yaml`` (as tests/test_handover.py prepares it) with ``stay-b`` online and
slow, so that mec-b's first epoch lasts well past mec-a's: mover's first epoch ends on mec-a, its handover to mec-b
falls after mec-a has trained its first epoch and before mec-b has. Were epochs not closed together, mover would
start its second epoch on mec-a, send its ``join`` of epoch 1 to mec-b while mec-b is still in epoch 0, and mec-b
would throw it away (``Visits.joined``) and then wait in epoch 1 for a visitor that has already joined (a hang, or
a peer-timeout loss). The closing round keeps mec-a in epoch 0 until mec-b closes it too, so mover starts its
second epoch only then, and its join reaches mec-b in mec-b's epoch 1. The simulator predicts the same
(``trainer.validate.compare.predict``). Why, unit by unit: tests/test_join_later_epoch.py.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.emulation_guard import timed
from tests.test_handover import _scenario

FIXTURES = Path(__file__).parent / "fixtures"

# method -> (stay-b's flops, the handover instant): mec-a closes its epoch 0 well before it, mec-b well after
CASES = {"splitlora": ("5 MFLOPS", 5.3), "fedlora": ("20 MFLOPS", 3.5)}


def _slow_b(tmp_path: Path, method: str) -> Path:
    data = yaml.safe_load(_scenario(tmp_path, method).read_text())
    del data["training"]["sync"]
    flops, at = CASES[method]
    stay_b = data["devices"][2]
    del stay_b["availability"]
    stay_b["flops"] = flops
    data["devices"][0]["handover"] = [{"at": f"{at} s", "to": "mec-b"}]
    path = tmp_path / "slow_b.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow  # ~35 s a run on a loaded 2-core machine, with its prediction
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method", sorted(CASES))
def test_a_second_epoch_handover_to_a_server_still_in_its_first_waits_for_it(tiny_gpt2, tmp_path, method):
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = _slow_b(tmp_path, method)
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=dev, method=method, train_samples=32, epochs=2,
                 emulate="all", server_order="fifo", split=1, max_len=48))
    vc = ValidateConfig(devices=str(dev), model=tiny_gpt2, method=method, out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo", epochs=2, split=1)
    sim = predict(vc, m)
    at = CASES[method][1]
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
    assert [(h["from"], h["to"], h["epoch"], h["at_s"]) for h in m["handovers"]] == [("mec-a", "mec-b", 1, at)]
    # both count mover's whole first epoch (4 micro-batches) before the move
    assert [h["sent_before"] for h in m["handovers"]] == [h["sent_before"] for h in sim.handovers] == [4]
    assert m["samples_not_trained"] == sim.samples_not_trained == {}
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 2)
    assert sim.sync_rounds == 2 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    for name, events in (("measured", measured), ("predicted", sim.events)):
        closing = {s: sorted(e.start for e in events if e.lane == f"backhaul:{s}" and e.op == "sync-send")
                   for s in ("mec-a", "mec-b")}
        assert all(len(c) == 2 for c in closing.values()), (name, closing)
        # the scenario of the issue: the handover falls between the two servers' closing of epoch 0
        timed(closing["mec-a"][0] < at < closing["mec-b"][0], m["emulation"],
              f"{name}: closing rounds {closing}, handover at {at} s")
    if method == "splitlora":  # every micro-batch trained once an epoch; mover's second epoch all on mec-b
        trained = Counter((e.device, e.mb) for e in measured if e.op == "F" and e.lane.startswith("mec-"))
        assert trained == {(d, j): 2 for d, n in {"mover": 4, "stay-a": 2, "stay-b": 2}.items() for j in range(n)}
        on_b = sorted(e.start for e in measured if e.op == "F" and e.lane == "mec-b" and e.device == "mover")
        assert len(on_b) == 4
    else:  # every local step reached one server's round once: mover's 4, stay-a's 2 and stay-b's 2, twice
        assert sum(len(s["train_loss_history"]) for s in m["servers"].values()) == 2 * (4 + 2 + 2)
