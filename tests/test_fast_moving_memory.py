"""The fast path with moving devices: its memory grows with devices, not the run.

A server whose devices pause, leave or hand over measures its stream mixing against what it received in the
end: the fast path measures the stream it kept while all streams fit ``handover.STREAM_CAP``, else replays
once more with those totals (:mod:`sfsim.fast.dynamic`, :mod:`sfsim.fast.handover`). The event heap keeps room
for live soft timers only (``events.soft_room``). Figures against SimPy: ``test_fast_dynamic.py`` and
``test_fast_handover.py``, and here with the least soft-timer room and with no stream kept.
"""

from __future__ import annotations

import dataclasses
import random
import tracemalloc

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.fast import handover, replay
from sfsim.network.availability import OnOff, Windows
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf
from tests.test_fast_dynamic import check as dynamic_check
from tests.test_fast_handover import check as handover_check

CFG = ReplayConfig(buffer=4, accumulate=2, decompose=True)
BW = 4e6


def job(devices: int, mb: int, kind: str) -> Job:
    """``devices`` unequal devices on two servers, ``mb`` micro-batches each; ``kind``: every device pauses
    (``pause``: long on/off periods, so few are drawn), or the first leaves half-way (``drop``), or every
    device hands over to the other server a quarter of the way through (``handover``)."""
    devs = [DeviceTimes(f"d{i}", i % 2, mb, f=0.01 * (1 + i % 3), up_s=0.02, up_l=0.001, srv_f=0.002, srv_b=0.003,
                        srv_w=0.001, up_bytes=0.02 * BW / 8) for i in range(devices)]
    run_s = 0.06 * mb  # about how long the run lasts
    moving = {}
    for i, d in enumerate(devs):
        legs = [Leg(0.0, d.server, BW, d.up_s, d.up_l)]
        if kind == "handover":
            legs.append(Leg(0.25 * run_s, 1 - d.server, BW, d.up_s, d.up_l))
        avail = {"pause": OnOff(run_s, 0.5, random.Random(i)), "drop": Windows([(0.0, 0.5 * run_s)]) if i == 0 else None,
                 "handover": None}[kind]
        moving[i] = Motion(legs, avail, "drop" if kind == "drop" else "pause")
    views = [[dataclasses.replace(d, up_s=0.0, up_l=min(leg.up_l for leg in moving[i].legs))
              for i, d in enumerate(devs)] for _ in range(2)]
    out = Job(devs, [ServerTimes("s0", 1, 0.001), ServerTimes("s1", 1, 0.001)])
    out.network = sf.Network(moving, views)
    return out


def _peak(devices: int, mb: int, kind: str) -> tuple[int, dict]:
    """Peak bytes traced while the fast path replays the job (after a small replay that loads its kernels) and its
    per-server mixing and totals."""
    replay(job(2, 3, kind), CFG)
    j = job(devices, mb, kind)
    tracemalloc.start()
    try:
        rec, _ = replay(j, CFG)
        return tracemalloc.get_traced_memory()[1], {k: (m.value, m.total) for k, m in rec.mixing.items()}
    finally:
        tracemalloc.stop()


def _engine_mixing(devices: int, mb: int, kind: str) -> dict:
    engine = Engine()
    sf.run(engine, job(devices, mb, kind), CFG)
    engine.run()
    return {k: (m.value, m.total) for k, m in engine.mixing.items()}


def test_mixing_of_moving_devices_is_the_engines():
    for kind in ("pause", "drop", "handover"):
        _, fast = _peak(6, 40, kind)
        assert fast == _engine_mixing(6, 40, kind), kind


def test_peak_memory_grows_with_devices_not_micro_batches(monkeypatch):
    monkeypatch.setattr(handover, "STREAM_CAP", 0)  # above the cap: no stream kept, a second replay instead
    short, _ = _peak(8, 200, "pause")
    long, mix = _peak(8, 20_000, "pause")  # 160,000 micro-batches: 1.3 MB per server as a kept stream
    assert long - short < 64 * 1024, (short, long)
    assert all(total > 0 for _, total in mix.values())
    # the event heap's room for soft timers no longer grows with the run (a superseded timer went only at its
    # time: 16 bytes a micro-batch of a device that may leave or hand over); from 80,000 micro-batches on, the
    # handover loop's ring of pushes is at its largest
    for kind in ("drop", "handover"):
        short, _ = _peak(8, 10_000, kind)
        long, _ = _peak(8, 20_000, kind)
        assert long - short < 64 * 1024, (kind, short, long)


def test_superseded_soft_timers_cleared_at_least_room(monkeypatch):
    """With room for one soft timer more than the live ones, superseded timers are cleared at almost every
    wait (events.soft_room): random fleets that drop and hand over still give the SimPy engine's figures."""
    monkeypatch.setattr(handover, "soft_cap", lambda timers, devices: timers + 1)
    outcomes = [dynamic_check(seed, seed % 2 == 1) for seed in range(120)]
    outcomes += [handover_check(seed, seed % 2 == 1) for seed in range(120)]
    assert outcomes.count("equal") >= 140, {o: outcomes.count(o) for o in set(outcomes)}  # 150 at 7ba62e3 (cache + drop, and
    # several epochs with moving devices and no backhaul rounds, opened one at a time since session 12: SimPy)


def test_replayed_again_above_the_stream_cap(monkeypatch):
    """Below :data:`handover.STREAM_CAP` a server measures the stream it kept; above, the run is replayed with the
    totals found: random fleets that pause, drop and hand over give the SimPy engine's figures either way."""
    monkeypatch.setattr(handover, "STREAM_CAP", 0)
    outcomes = [dynamic_check(seed, seed % 2 == 1) for seed in range(120)]
    outcomes += [handover_check(seed, seed % 2 == 1) for seed in range(120)]
    assert outcomes.count("equal") >= 140, {o: outcomes.count(o) for o in set(outcomes)}  # 150 at 7ba62e3 (cache + drop, and
    # several epochs with moving devices and no backhaul rounds, opened one at a time since session 12: SimPy)


def test_stream_kept_below_the_cap_only():
    small, big = job(8, 200, "handover"), job(8, 20_000, "handover")
    assert handover.stream_room(small) == 8 * 200  # every device may come to either server
    assert 8 * handover.stream_room(big) * 2 <= handover.STREAM_CAP
    assert handover.stream_room(job(4_000, 2_000, "handover")) == 0  # 2 x 8 M micro-batches: 128 MiB
