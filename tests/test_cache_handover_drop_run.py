"""The activation cache with a mover that hands over in epoch 1 and drops for good in epoch 2, run for real (issue 21):
every server that holds a part of its cache stops replaying it at its drop instant, as the simulator's
(``sfsim.engine.cacheparts``; the runtime's ``gone``: ``trainer.transport.departure``)."""

from __future__ import annotations

import pytest

from sfsim.outputs.trace import read_chrome_trace
from tests.test_cache_handover import _caches, _handover_fleet, _real, _sends, _trained
from tests.test_splitfrozen_moves import _same

DROP_S = 3.75  # mover's drop instant: between its first and second replay of epoch 2 on each server, in both halves


def _fleet(tmp_path, drop: float = DROP_S, backhaul: str = "0.1 Mbps") -> dict:
    """runtime_handover.yaml with the cache over 3 epochs and a slow backhaul (0.1 Mbps: a round takes ~0.5 s, so
    epoch 2's replays are ~1 s apart in both halves): mover sends 2 micro-batches to mec-a, hands over at 0.8 s,
    sends 2 to mec-b, and drops for good at ``drop`` (churn drop)."""
    data = _handover_fleet(True)
    for srv in data["servers"]:
        srv["backhaul"]["bandwidth"] = backhaul
    (tmp_path / "w.yaml").write_text(f"mover: [[0, {drop}]]\n")
    data["devices"][0]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "drop"}
    return data


def _mover_replays(events) -> list[tuple[str, float]]:
    """(server, start) of each F of mover's after epoch 1 (its replays), by start."""
    first = min(e.start for e in events if e.op == "epoch_end") if any(e.op == "epoch_end" for e in events) else 0.0
    return sorted(((e.lane, e.start) for e in events if e.op == "F" and e.device == "mover"
                   and e.lane.startswith("mec-") and e.start > first), key=lambda x: x[1])


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_mover_that_drops_in_a_cached_epoch_equals_a_real_run(tiny_gpt2, tmp_path):
    """Epoch 1 on the wire: mover sends 0-1 to mec-a and 2-3 to mec-b. Epoch 2 from the caches: each server replays
    mover's first micro-batch (~3.2 s simulated, ~3.3 s measured), mover drops at 3.75 s, and neither server replays
    it again (its ``gone`` reaches both). Both halves: mover trains 4 + 2 of its 12 micro-batches (2 on each server),
    24 samples untrained in metrics.json as in the simulator's result; each server's replays are bit for bit what it
    holds, mover's one per server; the same micro-batches per server and device, uplink sends, rounds and order of
    steps and rounds."""
    m, sim = _real(tiny_gpt2, tmp_path, _fleet(tmp_path), 32, 3)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    for events in (measured, sim.events):  # the drop falls between mover's first and second replay of epoch 2
        assert sorted(s for s, t in _mover_replays(events) if t < DROP_S) == ["mec-a", "mec-b"]
    assert not [t for _, t in _mover_replays(measured) if t >= DROP_S]
    assert m["samples_not_trained"] == sim.samples_not_trained == {"mover": 4 * (12 - 6)}
    assert not m["lost_devices"] and not m.get("dropped_peers")  # its gone came: no server waited it out
    want = {("mec-a", "mover"): 3, ("mec-a", "stay-a"): 6, ("mec-b", "mover"): 3, ("mec-b", "stay-b"): 6}
    assert _trained(measured) == _trained(sim.events) == want
    assert sim.micro_batches == 18
    assert _sends(measured) == _sends(sim.events) == {"mover": [0, 1, 2, 3], "stay-a": [0, 1], "stay-b": [0, 1]}
    caches = _caches(tmp_path, ["mec-a", "mec-b"])
    assert {s: {n: len(c["held"]) for n, c in d.items()} for s, d in caches.items()} == {
        "mec-a": {"mover": 2, "stay-a": 2}, "mec-b": {"mover": 2, "stay-b": 2}}
    for server, devices in caches.items():
        for name, c in devices.items():
            assert set(c["replayed"]) <= set(c["held"]), (server, name)  # bit for bit what it received
            assert len(c["replayed"]) == (1 if name == "mover" else 2 * 2), (server, name)
    _same(m, sim, tmp_path, m["servers"]["mec-a"]["sync_rounds"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_mover_that_drops_after_its_handover_in_epoch_1_is_replayed_nowhere(tiny_gpt2, tmp_path):
    """The backhaul at 100 Mbps: mover sends 0-1 to mec-a and 2 to mec-b (~1.3 s); dropping at 1.42 s it cannot send 3
    (its send would end ~1.57 s): its leave goes to mec-b, its gone to mec-a (before its join of 0). Neither server
    replays it in epochs 2 and 3 (mec-a's part included, which the refusal was about): both halves train its 3 sent
    micro-batches only, 4 + 2 x 16 samples untrained; the same micro-batches per server and device and rounds."""
    m, sim = _real(tiny_gpt2, tmp_path, _fleet(tmp_path, 1.42, "100 Mbps"), 32, 3)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    assert _sends(measured) == _sends(sim.events) == {"mover": [0, 1, 2], "stay-a": [0, 1], "stay-b": [0, 1]}
    assert m["samples_not_trained"] == sim.samples_not_trained == {"mover": 4 + 2 * 16}
    assert not m["lost_devices"] and not m.get("dropped_peers")
    want = {("mec-a", "mover"): 2, ("mec-a", "stay-a"): 6, ("mec-b", "mover"): 1, ("mec-b", "stay-b"): 6}
    assert _trained(measured) == _trained(sim.events) == want
    caches = _caches(tmp_path, ["mec-a", "mec-b"])
    assert not caches["mec-a"]["mover"]["replayed"] and len(caches["mec-a"]["mover"]["held"]) == 2
    _same(m, sim, tmp_path, m["servers"]["mec-a"]["sync_rounds"])
