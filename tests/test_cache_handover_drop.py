"""The activation cache with a device that hands over and drops for good (issue 21), in the simulator.

A cached micro-batch is replayed by the server that received it, so a mover leaves a part of its first epoch on each
server of its legs. The rule (``sfsim.engine.cacheparts``): a replay trains only if its server starts it before the
device's departure (its drop instant, or the instant it finds it cannot send its next micro-batch of the first epoch);
the replays not started count as its untrained samples, on every server that holds a part. Both halves used to refuse
the combination with one line (``cache_with_handover``).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import yaml

from tests.test_cache_handover import _handover_fleet, _simulate, random_base, random_moves


def _mover_drops(tmp_path: Path, drop: float, sync: bool = True) -> dict:
    """runtime_handover.yaml with the cache over 3 epochs (gpt2 at 20 MFLOPS: ~91 s a forward), mover handing over at
    200 s after 2 of its 4 sends, and dropping for good at ``drop`` s."""
    data = _handover_fleet(sync)
    data["devices"][0]["handover"][0]["at"] = "200 s"
    (tmp_path / "w.yaml").write_text(f"mover: [[0, {drop}]]\n")
    data["devices"][0]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "drop"}
    return data


def _replays(res, device: str) -> list[tuple[str, int]]:
    """(server, micro-batch) of each F of ``device`` on a server, by start."""
    return [(e.lane, e.mb) for e in sorted(res.events, key=lambda e: e.start)
            if e.op == "F" and e.device == device and e.lane.startswith("mec-")]


def test_a_mover_that_drops_in_a_cached_epoch_stops_replaying_on_every_server(tmp_path):
    """mover sends 0-1 to mec-a and 2-3 to mec-b in epoch 1 (the last at ~368.06 s); epochs 2 and 3 are replays at
    ~368.26 s (4 on mec-a, 6 on mec-b), ~368.36 s (5, 7), then epoch 3. Dropping at 368.35 s: each server replays the
    mover's first micro-batch of epoch 2 (started before) and nothing after, so it trains 4 + 2 of its 12 and leaves
    24 samples untrained; at 368.2 s (before any replay) 4 of 12; after the run, all 12. The fast path leaves the case
    to SimPy, with the same figures."""
    late = _simulate(_mover_drops(tmp_path, 5000.0), tmp_path)
    assert late.samples_not_trained == {"mover": 0} and late.micro_batches == 24
    mid = _simulate(_mover_drops(tmp_path, 368.35), tmp_path)
    assert sorted(_replays(mid, "mover")) == [("mec-a", 0), ("mec-a", 1), ("mec-a", 4), ("mec-b", 2), ("mec-b", 3),
                                               ("mec-b", 6)]
    assert all(e.start < 368.35 for e in mid.events if e.op == "F" and e.device == "mover")
    assert mid.samples_not_trained == {"mover": 4 * (12 - 6)} and mid.micro_batches == 6 + 6 + 6
    early = _simulate(_mover_drops(tmp_path, 368.2), tmp_path)
    assert sorted(_replays(early, "mover")) == [("mec-a", 0), ("mec-a", 1), ("mec-b", 2), ("mec-b", 3)]
    assert early.samples_not_trained == {"mover": 32} and early.micro_batches == 4 + 6 + 6
    fast = _simulate(_mover_drops(tmp_path, 368.35), tmp_path, "auto", trace=False)
    assert fast.engine == "simpy" and "cached activations" in fast.engine_note
    assert (fast.makespan_s, fast.micro_batches, fast.samples_not_trained) == (
        mid.makespan_s, mid.micro_batches, mid.samples_not_trained)


def test_a_mover_that_drops_in_its_first_epoch_replays_nothing_anywhere(tmp_path):
    """Dropping at 300 s, mover cannot send its last micro-batch (its forward would end at ~364 s): the part it left on
    mec-a (0, 1) is never replayed, nor the one on mec-b (2); it trains the 3 it sent, 36 samples untrained."""
    res = _simulate(_mover_drops(tmp_path, 300.0), tmp_path)
    assert sorted(_replays(res, "mover")) == [("mec-a", 0), ("mec-a", 1), ("mec-b", 2)]
    assert res.samples_not_trained == {"mover": 36} and res.micro_batches == 3 + 6 + 6


def drop_fleet(seed: int, tmp_path: Path) -> tuple[dict, dict[str, int], int]:
    """Seeded fleet ``seed`` of :func:`test_random_cached_fleets_with_handovers_and_drops_conserve_micro_batches`:
    (scenario, micro-batches an epoch per device, epochs). 2-3 servers with a backhaul (training.sync or not) or none,
    2-4 devices of 1-3 micro-batches an epoch, 2-3 epochs, handovers at random times (some back and forth), fifo or
    round-robin, buffer 1-3; each device drops for good with probability 0.6, at a random instant of the fleet's run
    without drops: half of them inside its cached epochs (where the replays are), the others anywhere."""
    rng = random.Random(seed)
    data, servers, epochs = random_base(rng)
    per = {}
    for d in data["devices"]:
        per[d["name"]] = rng.randint(1, 3)
        d["samples"] = 4 * per[d["name"]]
        random_moves(rng, d, servers, 0.8)
    base = _simulate(data, tmp_path)
    replays = [e.start for e in base.events if e.op == "F" and e.lane.startswith("mec-")
               and e.mb >= per[e.device]]
    windows = {}
    for d in data["devices"]:
        if rng.random() < 0.6:
            if replays and rng.random() < 0.5:
                t = rng.uniform(min(replays), max(replays) + 1e-3)
            else:
                t = rng.uniform(1.0, base.makespan_s)
            windows[d["name"]] = [[0, round(t, 4)]]
            d["availability"] = {"file": str(tmp_path / f"w{seed}.yaml"), "churn": "drop"}
    (tmp_path / f"w{seed}.yaml").write_text(yaml.safe_dump(windows))
    return data, per, epochs


def test_random_cached_fleets_with_handovers_and_drops_conserve_micro_batches(tmp_path):
    """200 seeded fleets (:func:`drop_fleet`; every fourth one splitfrozen-sequential): SimPy ends each run; every
    device sends at most its first epoch, each micro-batch once; the servers train each micro-batch a device sent and
    each replay on the server the micro-batch was sent to; a device that drops trains no replay started at or after
    its drop instant; and the micro-batches are conserved: the result's count is the servers' F's, and each device's
    untrained samples are 4 x (its epochs' micro-batches - those trained)."""
    dropped = cut = 0
    for seed in range(200):
        data, per, epochs = drop_fleet(seed, tmp_path)
        schedule = "splitfrozen-sequential" if seed % 4 == 3 else "splitfrozen"
        res = _simulate(data, tmp_path, schedule=schedule)
        sends = {(e.device, e.mb): e.lane for e in res.events if e.op == "send"}
        assert all(mb < per[n] for n, mb in sends), seed
        trained = [e for e in res.events if e.op == "F" and e.lane.startswith("mec-")]
        assert res.micro_batches == len(trained), seed
        assert len({(e.device, e.mb) for e in trained}) == len(trained), seed
        count = Counter(e.device for e in trained)
        server_of: dict[tuple[str, int], set[str]] = {}
        for e in trained:
            server_of.setdefault((e.device, e.mb % per[e.device]), set()).add(e.lane)
            if e.mb >= per[e.device]:
                assert (e.device, e.mb % per[e.device]) in sends, seed  # a replay of what it sent
        assert all(len(s) == 1 for s in server_of.values()), seed
        windows = yaml.safe_load((tmp_path / f"w{seed}.yaml").read_text()) or {}
        for d in data["devices"]:
            n = d["name"]
            if n in windows:
                drop = windows[n][0][1]
                assert all(e.start < drop for e in trained if e.device == n and e.mb >= per[n]), (seed, n)
                assert res.samples_not_trained[n] == 4 * (epochs * per[n] - count[n]), (seed, n)
                dropped += 1
                cut += count[n] < epochs * per[n]
            else:
                assert count[n] == epochs * per[n], (seed, n)
    assert dropped > 150 and cut > 50, (dropped, cut)  # the fleets do drop, many of them mid-run
