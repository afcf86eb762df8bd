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

from tests.test_late_start import FAR_S, TOLERANCE_S, _run
from tests.test_multiserver import FIXTURES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def second_epoch_sends(events) -> dict[str, float]:
    """Per device: its first micro-batch sent after the server's epoch-end wait (lane ``epoch-end:srv``), from that
    wait's end. SplitLoRA's clients upload adapters too (``mb`` -1: not counted), and the runtime numbers micro-batches
    per epoch, the simulator over the run: the first send after the wait, whatever its number."""
    opened = min(e.start + e.dur for e in events if e.op == "epoch_end")
    out: dict[str, float] = {}
    for e in events:
        if e.op == "send" and e.lane == f"link:{e.device}" and e.mb >= 0 and e.start >= opened:
            out[e.device] = min(out.get(e.device, e.start), e.start)
    return {d: t - opened for d, t in out.items()}


@pytest.mark.slow
def test_a_far_splitlora_client_starts_its_second_epoch_when_the_simulator_says(tiny_gpt2, tmp_path):
    """Two epochs on one server (``near``: 5 ms links, ``far``: 1 s each way): each device's first micro-batch of the
    second epoch, from the end of the server's epoch-end wait, within :data:`TOLERANCE_S` of the simulator's, and the
    far one a downlink latency (less the near one's) after the near one in the simulator. Measured at load 11: near
    0.472 s and far 1.459 s against 0.463 s and 1.458 s predicted: the epoch's ``start`` and ``fwd`` go down together
    in the runtime, and the simulator's ``fwd`` takes the downlink's latency (unlike SplitFrozen's second epoch,
    :mod:`tests.test_late_start`'s xfail)."""
    measured, predicted = (second_epoch_sends(t) for t in _run(tiny_gpt2, tmp_path, "splitlora", epochs=2))
    assert set(measured) == set(predicted) == {"near", "far"}, (measured, predicted)
    assert predicted["far"] - predicted["near"] == pytest.approx(FAR_S - 0.005, abs=1e-6), predicted
    for name in ("near", "far"):
        assert abs(measured[name] - predicted[name]) < TOLERANCE_S, (name, measured, predicted)


def far_handover_fleet() -> dict:
    """runtime_handover.yaml (sync every 2 steps) whose mover hands over at 1.0 s onto a far leg: mec-b over 1 s links
    each way. mec-a's ``fwd`` for micro-batch 1 goes ~0.75 s (after it served micro-batch 0), mover's backward runs
    till ~1.1 s, its upload starts ~1.5 s on the far leg, to mec-b. (At 0.8 s the handover fell within 0.1 s of mec-a's
    look after serving micro-batch 0: at load 11 the runtime's server looked after 0.8 s and released mover, whose
    release, join and fwd then crossed the far leg (mover's forward at 3.20 s), where the simulator's look came at
    0.71 s, its fwd queued behind the gradient onto the far leg (forward at 1.81 s): a knife edge on the server's
    compute under load, not on the far leg.)"""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    far = {"bandwidth": "1 Mbps", "latency": f"{FAR_S} s"}
    data["devices"][0]["handover"] = [{"at": "1.0 s", "to": "mec-b", "uplink": far, "downlink": dict(far)}]
    return data


def far_legs(events) -> list[tuple[int, float, float]]:
    """Per micro-batch of mover's after the first: (micro-batch, its upload's start to mec-b's forward of it: the far
    uplink and its latency, its gradient's send to mover's next upload: the far downlink, its latency and mover's
    backward, step and forward). Neither holds the server's compute, which a loaded machine slows (the emulation does
    not pace the server: its profile is measured quiet)."""
    up = {e.mb: e.start for e in events if e.lane == "link:mover" and e.op == "send" and e.mb >= 0}
    down = {e.mb: e.start for e in events if e.lane == "downlink:mover" and e.op == "send" and e.mb >= 0}
    fwd = {e.mb: e.start for e in events if e.lane == "mec-b" and e.op == "F" and e.device == "mover"}
    return [(j, fwd[j] - up[j], up[j + 1] - down[j] if j + 1 in up else 0.0) for j in sorted(fwd)]


@pytest.mark.slow
def test_a_splitlora_handover_onto_a_far_leg_sends_when_the_simulator_says(tiny_gpt2, tmp_path):
    """After mover's handover onto a 1 s leg, each of its micro-batches crosses the far uplink (upload start to mec-b's
    forward) and comes back (gradient sent to mover's next upload) in the simulator's times, within
    :data:`TOLERANCE_S`; handovers, what each server trained and the order of mover's sends agree. (Its absolute send
    times drift by the server's compute, which load slows: at load 12 its micro-batch 3 went up 0.36 s after the
    simulator's, ~80 ms a micro-batch on mec-b's forward and backward, where the quiet profile says ~1 ms.)"""
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
        [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers] == [("mec-a", "mec-b", 1)]

    def trained(events) -> Counter:
        return Counter((e.lane, e.device, e.mb) for e in events if e.op == "F" and e.lane.startswith("mec-"))

    def sends(events) -> list[int]:
        return [e.mb for e in sorted(events, key=lambda e: e.start) if e.lane == "link:mover" and e.op == "send"]

    assert trained(measured) == trained(sim.events) and sends(measured) == sends(sim.events) == [0, 1, 2, 3, -1]
    got, want = far_legs(measured), far_legs(sim.events)
    assert [j for j, _, _ in got] == [j for j, _, _ in want] == [1, 2, 3]
    assert all(u > FAR_S and (d > FAR_S or j == 3) for j, u, d in want), want
    timed(all(abs(a - b) < TOLERANCE_S for g, w in zip(got, want, strict=True) for a, b in zip(g[1:], w[1:], strict=True)),
          rep["emulation"], f"mover's far legs measured {got}, simulated {want}")
