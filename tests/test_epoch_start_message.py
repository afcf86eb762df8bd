"""A later epoch's ``start`` takes the device's downlink latency (issue 21, gate21).

The runtime's SplitFrozen server opens epoch ``e >= 1`` (after its epoch's rounds and its epoch-end wait) and sends
each of its devices a ``start`` (the epoch, its credits: ``trainer.methods.splitfrozen.server_epoch``); the message
has no payload, so the shaped downlink holds it for its latency only (``trainer.transport.distributed``), and the
device forwards nothing of the epoch before it comes. The simulator's device now starts the epoch's first forward at
its server's epoch start plus its downlink's latency (:func:`sfsim.schedules.splitfrozen._started`), in SimPy's
pipelined and sequential branches, a moving device's process (the latency of the leg holding it) and the fast path
(:func:`sfsim.fast.joint._go`). The run's first epoch needs no ``start`` (setup: both halves begin at 0), and a
cached epoch none (no device sends: the server replays from its epoch's start).
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf
from tests import test_fast_epoch_end_alone as alone
from tests import test_fast_sync_epochs as synced
from tests.test_fast_sync_frozen import compare

CFG = ReplayConfig(buffer=2, accumulate=1, decompose=False, policy="fifo", credits="device")
WAIT = {"s0": 0.25}  # the server's epoch-end wait (training.eval_samples): it opens its epochs one at a time


def _pair(far_l: float = 1.0) -> Job:
    """One server; ``near`` (5 ms down) and ``far`` (``far_l`` down), 2 epochs of 2 micro-batches each."""
    times = dict(n=4, per_epoch=2, f=0.125, up_s=0.125, up_l=0.005, srv_f=0.0625, srv_b=0.0625, up_bytes=1e4,
                 act_bytes=1e4)
    return Job([DeviceTimes("near", 0, down_l=0.005, **times), DeviceTimes("far", 0, down_l=far_l, **times)],
               [ServerTimes("s0", 1, 0.0)])


def _simulate(job: Job, sequential: bool = False) -> tuple[Engine, float]:
    engine = Engine(trace=True)
    engine.epoch_end = dict(WAIT)
    sf.run(engine, job, CFG, sequential=sequential)
    return engine, engine.run()


def _opened(engine: Engine) -> float:
    """When the server's second epoch opened: its epoch-end wait's end."""
    (end,) = [e for e in engine.events if e.op == "epoch_end"]
    return end.start + end.dur


def _forwards(engine: Engine, mb: int) -> dict[str, float]:
    """Per device: when its forward of micro-batch ``mb`` starts."""
    return {e.device: e.start for e in engine.events if e.op == "F" and e.mb == mb and e.lane == e.device}


@pytest.mark.parametrize("sequential", [False, True])
def test_a_later_epoch_starts_one_downlink_latency_after_its_opening(sequential):
    """Each device's first forward of epoch 2 (micro-batch 2) starts at the opening plus its own downlink latency:
    near 5 ms after it, far 1 s (before the fix both at the opening). Its first epoch starts at 0 for both."""
    engine, _ = _simulate(_pair(), sequential)
    opened = _opened(engine)
    assert _forwards(engine, 0) == {"near": 0.0, "far": 0.0}
    assert _forwards(engine, 2) == {"near": opened + 0.005, "far": opened + 1.0}


def test_the_far_device_sets_the_makespan():
    """By hand: epoch 1's four micro-batches arrive at 0.255 s (two) and 0.38 s (two); the server (0.125 s each) ends
    the epoch at 0.755 s and opens the next at 1.005 s (0.25 s wait). The far device's ``start`` comes at 2.005 s: its
    micro-batch 2 arrives at 2.005 + 0.125 + 0.125 + 0.005 = 2.26 s, micro-batch 3 at 2.385 s, trained by 2.51 s
    (the near device's were done by 1.515 s). Opening both at 1.005 s, as before the fix, ended at 1.765 s."""
    engine, makespan = _simulate(_pair(far_l=1.0))
    assert _opened(engine) == pytest.approx(1.005, abs=1e-12)
    assert makespan == pytest.approx(2.51, abs=1e-12)
    assert engine.server_busy == {"s0": pytest.approx(1.0, abs=1e-12)}


def test_a_cached_epoch_waits_for_no_start():
    """With the activation cache the devices send their first epoch only; the server replays the second from its
    opening (the runtime sends no ``start`` then): the downlink latency changes nothing."""
    def cached(far_l: float) -> tuple[Engine, float]:
        job = _pair(far_l)
        job.devices[:] = [dataclasses.replace(d, sent=2) for d in job.devices]
        return _simulate(job)
    (e1, m1), (e2, m2) = cached(0.005), cached(1.0)
    assert m1 == m2
    assert [(e.lane, e.op, e.start) for e in e1.events] == [(e.lane, e.op, e.start) for e in e2.events]


def _moving_job() -> Job:
    """``mover`` (2 epochs of 2 on s0) hands over to s1 at 0.2 s (before its second send, at 0.25 s), where the downlink's latency is 0.75 s (0.01 s on
    its first leg); both servers open their epochs one at a time for their epoch-end wait."""
    mover = DeviceTimes("mover", 0, 4, per_epoch=2, f=0.125, up_s=0.125, srv_f=0.125, srv_b=0.125,
                        up_bytes=15_625.0, act_bytes=1e5, down_l=0.01)  # 125 000 bits at 1 Mbit/s: 0.125 s
    stay = DeviceTimes("stay", 1, 2, per_epoch=1, f=0.125, up_s=0.125, srv_f=0.125, up_bytes=1e5, act_bytes=1e5)
    legs = [Leg(0.0, 0, 1e6, 0.125, 0.0, down_l=0.01), Leg(0.2, 1, 1e6, 0.125, 0.0, down_l=0.75)]
    job = Job([mover, stay], [ServerTimes("s0", 1, 0.0), ServerTimes("s1", 1, 0.0)])
    view = [dataclasses.replace(mover, up_s=0.0), stay]
    job.network = sf.Network({0: Motion(legs)}, [view, view])
    return job


def test_a_moving_device_waits_the_latency_of_the_leg_holding_it():
    """The mover sends epoch 1's second micro-batch on s1 (its leg from 0.2 s); s1 opens epoch 2 after its wait and
    the mover's first forward of it starts 0.75 s later (that leg's downlink), not 0.01 s (its first leg's)."""
    engine = Engine(trace=True)
    engine.epoch_end = {"s0": 0.25, "s1": 0.25}
    sf.run(engine, _moving_job(), CFG)
    engine.run()
    ends = sorted(e.start + e.dur for e in engine.events if e.op == "epoch_end" and e.lane == "epoch-end:s1")
    assert _forwards(engine, 2)["mover"] == ends[0] + 0.75


def _with_latency(make, seed: int):
    """``make()``'s job with a random downlink latency on most devices (a draw of its own: the fleet is the same)."""
    def build():
        job, cfg, sequential = make()
        rng = random.Random(seed + 31_000)
        job.devices[:] = [dataclasses.replace(d, down_l=rng.choice((0.0, 0.05, 0.5, rng.uniform(0.0, 2.0))))
                          for d in job.devices]
        return job, cfg, sequential
    return build


def test_random_fleets_with_epoch_end_waits_equal_on_the_fast_path():
    """test_fast_epoch_end_alone's fleets (1-3 servers, no backhaul, an epoch-end wait) with downlink latencies:
    every figure the fast path gives equals SimPy's."""
    outcomes = []
    for seed in range(120):
        waits = alone.random_job(seed, seed % 2 == 1, seed % 3 == 0)[3]
        make = _with_latency(lambda seed=seed: alone.random_job(seed, seed % 2 == 1, seed % 3 == 0)[:3], seed)
        outcomes.append(compare(make, f"seed {seed}", waits, scenario=alone._Evaluated(), simpy=alone._simpy,
                                fast=alone._fast))
    assert outcomes.count("equal") >= 105, {o: outcomes.count(o) for o in set(outcomes)}


def test_random_synced_fleets_over_epochs_equal_on_the_fast_path():
    """test_fast_sync_epochs' fleets (2-4 servers, backhaul rounds, 2-4 epochs) with downlink latencies: equal."""
    outcomes = [compare(_with_latency(lambda seed=seed: synced.random_job(seed, seed % 2 == 1), seed), f"seed {seed}")
                for seed in range(120)]
    assert outcomes.count("equal") >= 90, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.parametrize("sequential", [False, True])
def test_without_an_epoch_end_wait_a_later_epoch_still_waits_for_its_start(sequential):
    """The runtime's server always trains its epoch out before it sends the next epoch's ``start``
    (``trainer.run.runner``: one ``train_epoch`` per epoch), so a device's epoch 2 starts at the epoch's end plus
    its downlink latency (plus the evaluation, whose size the scenario does not know without ``eval_samples``). The
    simulator opens the epochs of every multi-epoch run one at a time (:func:`sfsim.schedules.splitfrozen.run`:
    ``by_epochs``), with no wait between them here; before issue 21's fix it did so only for an epoch-end wait or
    backhaul rounds, and the near device forwarded epoch 2 at 0.25 s, before its server ended epoch 1 at 0.755 s."""
    engine = Engine(trace=True)
    sf.run(engine, _pair(), CFG, sequential=sequential)
    engine.run()
    ended = max(e.start + e.dur for e in engine.events if e.lane == "s0" and e.mb in (0, 1))
    assert _forwards(engine, 2) == {"near": ended + 0.005, "far": ended + 1.0}
