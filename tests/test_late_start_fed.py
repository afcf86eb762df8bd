"""A far device in FedLoRA's later rounds and epochs, and CenLoRA's epochs, in both halves (issue 21, fed21).

``tests/test_late_start.py``'s fleet (``near``: 5 ms links, ``far``: 1 s each way), run for real and predicted by the
simulator, compared phase by phase so that no error carries from one round to the next:

* FedLoRA, one micro-batch a round (2 rounds an epoch), 1 and 2 epochs: each upload of each device, from the start
  of its round on the server's side (the run's 0, the previous round's FedAvg, or the epoch-end wait between two
  epochs: the runtime's server sends the next ``round`` after it). A later epoch's ``start`` is shaped (the
  protocol's) but carries no payload and goes down just before the ``round``, so it adds nothing the ``round``'s
  latency does not.
* CenLoRA, 1 and 2 epochs: the devices send nothing the scenario holds (their shards are the data at the server
  before training, unshaped: ``trainer.transport.distributed``), so the comparable instant is the server's first
  forward of each epoch, from the run's 0 (the far device's shard must not delay it) or from the epoch-end wait.
"""

from __future__ import annotations

import pytest

from tests import test_late_start as late
from tests.test_late_start import TOLERANCE_S, late_fleet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fleet(method: str, local_steps: int | None = None) -> dict:
    """The late fleet, with ``local_steps`` micro-batches a FedLoRA round."""
    data = late_fleet(method)
    if local_steps is not None:
        data["training"] = {**data["training"], "local_steps": local_steps}
    return data


def _run(tiny_gpt2, tmp_path, monkeypatch, method: str, epochs: int, local_steps: int | None = None):
    """``test_late_start._run`` on :func:`_fleet`: the real run's trace and the simulator's events."""
    monkeypatch.setattr(late, "late_fleet", lambda m: _fleet(m, local_steps))
    return late._run(tiny_gpt2, tmp_path, method, epochs=epochs)


def round_sends(events) -> dict[str, list[float]]:
    """Per device: each upload's start (lane ``link:<device>``), from the end of the server's last FedAvg or epoch-end
    wait before it (the run's 0 for the first round)."""
    marks = sorted(e.start + e.dur for e in events if e.op in ("aggregate", "epoch_end"))
    out: dict[str, list[float]] = {}
    for e in sorted(events, key=lambda e: e.start):
        if e.op == "send" and e.lane == f"link:{e.device}":
            since = max([0.0] + [t for t in marks if t <= e.start])
            out.setdefault(e.device, []).append(e.start - since)
    return out


def epoch_forwards(events, server: str = "srv") -> list[float]:
    """The server's first forward of each epoch, from the run's 0 (the first) or the end of the epoch-end wait before
    it."""
    ends = sorted(e.start + e.dur for e in events if e.op == "epoch_end")
    forwards = sorted(e.start for e in events if e.lane == server and e.op == "F")
    out = [forwards[0]]
    for t in ends:
        out.append(min(f for f in forwards if f >= t) - t)
    return out


def _close(measured, predicted) -> None:
    """Every figure within :data:`TOLERANCE_S`, the same count."""
    assert len(measured) == len(predicted), (measured, predicted)
    for m, p in zip(measured, predicted, strict=True):
        assert abs(m - p) < TOLERANCE_S, (measured, predicted)


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [1, 2])
def test_fedlora_rounds_of_a_far_device(tiny_gpt2, tmp_path, monkeypatch, epochs):
    """FedLoRA, 2 rounds an epoch: every upload of near and far starts where the simulator puts it from its round's
    start (far one downlink latency later than near: it trains on the ``round``'s adapter once it has it)."""
    measured, predicted = (round_sends(t) for t in _run(tiny_gpt2, tmp_path, monkeypatch, "fedlora", epochs, 1))
    assert set(measured) == set(predicted) == {"near", "far"}
    assert [len(predicted[d]) for d in ("near", "far")] == [2 * epochs, 2 * epochs]
    for q in range(2 * epochs):  # the simulator's phase: far one downlink latency after near, every round
        assert predicted["far"][q] - predicted["near"][q] == pytest.approx(1.0 - 0.005, abs=1e-9), predicted
    for name in ("near", "far"):
        _close(measured[name], predicted[name])


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [1, 2])
def test_cenlora_epochs_do_not_wait_for_a_far_device(tiny_gpt2, tmp_path, monkeypatch, epochs):
    """CenLoRA: the server's first forward of each epoch starts where the simulator puts it (at once: its data is
    there before training), the far device's 1 s links notwithstanding."""
    measured, predicted = (epoch_forwards(t) for t in _run(tiny_gpt2, tmp_path, monkeypatch, "cenlora", epochs))
    assert len(predicted) == epochs
    _close(measured, predicted)
