"""FedLoRA: a server waits in an epoch only for a visitor that may still send there (the leg holding now or a later
one is on it), in both halves (trainer.transport.handover.Visits.start_epoch, the simulator's
``Membership.awaited``). The runtime used to wait, from the visitor's second epoch on, for every device that ever
had a leg on it, until the device's epoch was over (its ``join`` of 0), which put its closing round late."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.test_fedlora_sync import server_ops

FIXTURES = Path(__file__).parent / "fixtures"


def _scenario(tmp_path: Path) -> Path:
    """runtime_handover_drop.yaml for FedLoRA without training.sync (stay-b never online, so mec-b holds no device
    that trains): mover (rounds of 2 micro-batches, uploads at ~1.2 and ~2.5 s, then in epoch 2 at ~3.8 and ~5.1 s)
    is on mec-b from 0.3 s to 2.0 s only: its first upload goes to mec-b, everything after to mec-a."""
    data = yaml.safe_load((FIXTURES / "runtime_handover_drop.yaml").read_text())
    for d in data["devices"]:
        d["flops"] = "100 MFLOPS"
        if "availability" in d:
            d["availability"]["file"] = str(FIXTURES / d["availability"]["file"])
    del data["training"]["sync"]
    data["devices"][0]["handover"] = [{"at": "0.3 s", "to": "mec-b"}, {"at": "2.0 s", "to": "mec-a"}]
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.usefixtures("one_torch_thread")
def test_a_visitor_whose_visits_are_over_is_not_waited_for_in_the_next_epoch(tiny_gpt2, tmp_path):
    """2 epochs: mec-b averages mover's first round in epoch 1 and closes it; in epoch 2 mover can never come back,
    so mec-b sends its closing part at once (before mover's last upload of epoch 2) in both halves; before, the
    runtime's mec-b waited for mover's ``join`` of 0 after that upload. The same rounds, backhaul bytes, untrained
    samples, handovers and order of backhaul sends, receives and FedAvg aggregates on each server."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = _scenario(tmp_path)
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=dev, method="fedlora", train_samples=32, epochs=2,
                 emulate="all", server_order="fifo"))
    vc = ValidateConfig(devices=str(dev), model=tiny_gpt2, method="fedlora", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo", epochs=2)
    sim = predict(vc, m)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == [("mec-a", "mec-b", 0),
                                                                                 ("mec-b", "mec-a", 2)]
    for events in (measured, sim.events):
        uploads = sorted(e.start for e in events if e.lane == "link:mover" and e.op == "send")
        closing = sorted(e.start for e in events if e.lane == "backhaul:mec-b" and e.op == "sync-send")
        assert len(uploads) == 4 and len(closing) == 2
        assert closing[1] < uploads[3] - 0.5  # mec-b does not wait for mover in epoch 2
    for server in ("mec-a", "mec-b"):
        assert server_ops(measured, server) == server_ops(sim.events, server)
    assert server_ops(measured, "mec-b") == "ASRSR"
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 2)
    assert sim.sync_rounds == 2 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    assert m["samples_not_trained"] == sim.samples_not_trained == {"stay-b": 16}
    assert m["downlink_bytes_by_device"] == sim.downlink_bytes_by_device
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
