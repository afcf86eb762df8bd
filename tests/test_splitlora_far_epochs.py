"""SplitLoRA with a far device (1 s link latency) after its first send: its second epoch, and a handover onto a far leg
(issue 21; the first send is :mod:`tests.test_late_start`'s).

SplitLoRA's server drives its clients with commands: each epoch opens with ``start`` and the segment's ``fwd``, both
protocol messages on the emulated downlink, and the simulator's ``fwd`` takes the downlink's latency too
(:mod:`sfsim.schedules.splitlora`), so a far client forwards one latency after the epoch opens in both halves. A
handover's ``release`` and ``join`` (with ``training.sync``) go over the legs holding when each is sent, and the
simulator times them so (``InTime._join_arrival``)."""

from __future__ import annotations

import pytest
import yaml

from tests.test_late_start import FAR_S, TOLERANCE_S, _run, second_epoch_sends
from tests.test_multiserver import FIXTURES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_a_far_splitlora_client_starts_its_second_epoch_when_the_simulator_says(tiny_gpt2, tmp_path):
    """Two epochs on one server (``near``: 5 ms links, ``far``: 1 s each way): each device's first send of the second
    epoch, from the end of the server's epoch-end wait, within :data:`TOLERANCE_S` of the simulator's, and the far one
    a downlink latency (less the near one's) after the near one in the simulator."""
    measured, predicted = (second_epoch_sends(t) for t in _run(tiny_gpt2, tmp_path, "splitlora", epochs=2))
    assert set(measured) == set(predicted) == {"near", "far"}, (measured, predicted)
    assert predicted["far"] - predicted["near"] == pytest.approx(FAR_S - 0.005, abs=1e-6), predicted
    for name in ("near", "far"):
        assert abs(measured[name] - predicted[name]) < TOLERANCE_S, (name, measured, predicted)


def far_handover_fleet() -> dict:
    """runtime_handover.yaml (sync every 2 steps) whose mover hands over at 0.8 s onto a far leg: mec-b over 1 s links
    each way."""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    far = {"bandwidth": "1 Mbps", "latency": f"{FAR_S} s"}
    data["devices"][0]["handover"] = [{"at": "0.8 s", "to": "mec-b", "uplink": far, "downlink": dict(far)}]
    return data


@pytest.mark.slow
def test_a_splitlora_handover_onto_a_far_leg_sends_when_the_simulator_says(tiny_gpt2, tmp_path):
    """The mover's sends (micro-batches and adapters) after its handover onto a 1 s leg start where the simulator puts
    them, within :data:`TOLERANCE_S`; handovers and what each server trained agree."""
    from collections import Counter

    from sfsim.outputs.trace import read_chrome_trace
    from tests.emulation_guard import timed
    from tests.test_handover import _validate
    from trainer.validate.compare import ValidateConfig, predict

    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", far_handover_fleet())
    vc = ValidateConfig(devices=str(tmp_path / "s.yaml"), model=tiny_gpt2, method="splitlora", out=str(tmp_path / "v"),
                        split=1, max_len=48, data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo")
    sim = predict(vc, m)
    measured = read_chrome_trace(run / "trace.json")
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == \
        [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers]

    def sends(events) -> list[tuple[int, float]]:
        return sorted((e.mb, e.start) for e in events if e.lane == "link:mover" and e.op == "send")

    def trained(events) -> Counter:
        return Counter((e.lane, e.device, e.mb) for e in events if e.op == "F" and e.lane.startswith("mec-"))

    assert trained(measured) == trained(sim.events)
    got, want = sends(measured), sends(sim.events)
    assert [mb for mb, _ in got] == [mb for mb, _ in want], (got, want)
    timed(all(abs(a - b) < TOLERANCE_S for (_, a), (_, b) in zip(got, want, strict=True)), rep["emulation"],
          f"mover's sends measured {got}, simulated {want}")
