"""One server, several epochs, no ``training.eval_samples`` and no backhaul rounds (issue 21).

The runtime's server trains each epoch out (``trainer.run.runner``: one ``train_epoch`` per epoch) and only then sends
each device the next epoch's ``start`` over its shaped downlink; the device forwards nothing of the epoch before it.
The simulator now opens every multi-epoch SplitFrozen run's epochs one at a time (``by_epochs`` in
:func:`sfsim.schedules.splitfrozen.run`, with no wait when the scenario has no ``eval_samples``), so a device's first
forward of a later epoch starts at its server's end of the previous epoch plus its downlink latency; before, it
forwarded as soon as its credits allowed. The fast path replays these runs in its single-server kernel
(:mod:`sfsim.fast.opening`) and sends those with moving devices to the SimPy engine with one line; the planner's
per-server replays leave them out (they replay the epochs back to back).
"""

from __future__ import annotations

import dataclasses
import random

import pytest

import sfsim
from sfsim.cost.model import CostModel
from sfsim.engine.pool import Engine
from sfsim.fast.replay import replay, uncovered
from sfsim.network.availability import Windows
from sfsim.network.legs import Leg, Motion
from sfsim.planner import plan
from sfsim.planner.exhaustive import Catalogue, expand, type_plans
from sfsim.planner.model import build_table
from sfsim.planner.servers import ServerSim
from sfsim.scenario.planfile import Plan
from sfsim.schedules import Job
from sfsim.schedules import splitfrozen as sf
from tests import test_epoch_end_wait as wait
from tests import test_fast_epoch_end_alone as alone
from tests import test_planner_exhaustive as exhaustive
from tests.test_epoch_start_message import CFG, _forwards, _pair
from tests.test_fast_sync_frozen import compare


def _simulate(job: Job, sequential: bool = False) -> tuple[Engine, float]:
    engine = Engine(trace=True)
    sf.run(engine, job, CFG, sequential=sequential)
    return engine, engine.run()


def test_two_devices_two_epochs_by_hand():
    """``near`` (5 ms down) and ``far`` (50 ms down), 2 epochs of 2 micro-batches (f = upload = server = 0.125 s,
    uplink latency 5 ms). Epoch 1: both arrive at 0.255 s and 0.38 s; the server ends the epoch at 0.755 s. Epoch 2:
    near's ``start`` comes at 0.76 s (its micro-batches arrive at 1.015 s and 1.14 s), far's at 0.805 s (1.06 s and
    1.185 s); the server trains near 2 (1.015-1.14), far 2, near 3, far 3: done at 1.515 s. Back to back (before the
    fix) the server never idled after 0.255 s: 8 x 0.125 s, done at 1.255 s; the 0.26 s more is one refill: near's
    ``start`` latency, first forward, upload and uplink latency."""
    engine, makespan = _simulate(_pair(far_l=0.05))
    assert _forwards(engine, 2) == {"near": pytest.approx(0.76, abs=1e-12), "far": pytest.approx(0.805, abs=1e-12)}
    assert makespan == pytest.approx(1.515, abs=1e-12)
    assert engine.server_busy == {"s0": pytest.approx(1.0, abs=1e-12)}
    rec, fast = replay(_pair(far_l=0.05), CFG)  # the fast path's single-server kernel: the same figures
    assert fast == makespan and rec.server_busy == engine.server_busy


@pytest.mark.parametrize("sequential", [False, True])
def test_each_later_epoch_starts_at_the_servers_end_plus_the_latency(sequential):
    """3 epochs, pipelined and sequential: each device's first forward of epochs 2 and 3 starts at the end of the
    server's last op of the epoch before plus that device's downlink latency."""
    job = _pair(far_l=0.3)
    job.devices[:] = [dataclasses.replace(d, n=6, sent=6) for d in job.devices]
    engine, _ = _simulate(job, sequential)
    for e in (1, 2):
        starts = _forwards(engine, 2 * e)
        ended = max(x.start + x.dur for x in engine.events if x.lane == "s0" and x.start < min(starts.values()))
        assert starts == {"near": pytest.approx(ended + 0.005, abs=1e-12), "far": pytest.approx(ended + 0.3, abs=1e-12)}


def test_a_count_one_type_waits_for_each_start():
    """test_epoch_end_wait's fleet (3 cameras and a ``count: 1`` device, one server) over 3 epochs without
    ``eval_samples``: every device's first forward of epochs 2 and 3 starts at the server's end of the epoch before
    plus its downlink latency (5 ms, the solo device's 10 ms); the fast path (auto) gives SimPy's figures."""
    sc = wait.sc_of(wait.fleet(eval_samples=None))
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    per_epoch = {d.name: d.samples // 4 for d in sc.devices}
    latency = {d.name: d.downlink.latency for d in sc.devices}
    assert latency["solo"] == pytest.approx(0.01) and len(per_epoch) == 4
    for k in (1, 2):
        first = {e.lane: e.start for e in res.events if e.op == "F" and e.lane in per_epoch
                 and e.mb == k * per_epoch[e.lane]}
        ended = max(e.start + e.dur for e in res.events if e.lane == "edge" and e.start < min(first.values()))
        assert first == {n: pytest.approx(ended + latency[n], abs=1e-12) for n in per_epoch}
    fast, slow = (sfsim.simulate(sc, "splitfrozen", splits=2, engine=e) for e in ("auto", "simpy"))
    assert fast.engine == "fast" and slow.engine == "simpy"
    assert fast.makespan_s == pytest.approx(slow.makespan_s, rel=1e-9) and fast.makespan_s == res.makespan_s


def _paused() -> Job:
    """:func:`_pair` (far 50 ms down) with ``near`` offline from 0.7 s to 0.9 s (availability, pause churn)."""
    job = _pair(far_l=0.05)
    near = job.devices[0]
    legs = [Leg(0.0, 0, near.up_bytes * 8 / near.up_s, near.up_s, near.up_l, down_l=near.down_l)]
    view = [dataclasses.replace(near, up_s=0.0), job.devices[1]]
    job.network = sf.Network({0: Motion(legs, Windows([(0.0, 0.7), (0.9, 1e9)]), "pause")}, [view])
    return job


def test_a_device_paused_across_the_epoch_boundary():
    """The server ends epoch 1 at 0.755 s; near's ``start`` comes at 0.76 s while it is offline, so its forward of
    micro-batch 2 runs 0.9-1.025 s (arrives 1.155 s), of 3 1.025-1.15 s (arrives 1.28 s); far's arrive at 1.06 s and
    1.185 s. The server: far 2 (1.06-1.185), near 2, far 3, near 3: done at 1.56 s."""
    engine, makespan = _simulate(_paused())
    assert _forwards(engine, 2) == {"near": pytest.approx(0.9, abs=1e-12), "far": pytest.approx(0.805, abs=1e-12)}
    assert makespan == pytest.approx(1.56, abs=1e-12)


POLICIES = ("fifo", "round-robin", "proportional", "pool", "paced-proportional", "paced-round-robin")


def _one_server(seed: int):
    """test_fast_epoch_end_alone's fleets (2-4 epochs, partial last micro-batches, warm-ups, pipelined or sequential,
    server or device credits, with or without the activation cache) on one server of 1-3 workers, every device on it
    with a random downlink latency, under any policy (the paced ones with device credits, as SimPy asks)."""
    job, cfg, sequential, _ = alone.random_job(seed, seed % 2 == 1, seed % 3 == 0)
    rng = random.Random(seed + 77)
    job.servers = [dataclasses.replace(job.servers[0], count=rng.choice((1, 1, 2, 3)))]
    job.devices[:] = [dataclasses.replace(d, server=0, down_l=rng.choice((0.0, 0.05, rng.uniform(0.0, 1.5))))
                      for d in job.devices]
    policy = rng.choice(POLICIES)
    cfg = dataclasses.replace(cfg, policy=policy, pool_memory=cfg.pool_memory if policy == "pool" else None,
                              credits="device" if policy.startswith("paced") else cfg.credits)
    return job, cfg, sequential


def _wait(seed: int) -> dict[str, float]:
    """No epoch-end wait in half the runs (no ``eval_samples``), else a random one."""
    rng = random.Random(seed + 99)
    return {"s0": rng.choice((0.0, 0.0, 0.5, rng.uniform(0.01, 2.0)))}


def test_random_one_server_fleets_equal_on_the_fast_path():
    """Seeded random one-server fleets over several epochs (:func:`_one_server`), with or without an epoch-end wait:
    every figure the single-server kernel gives equals SimPy's (makespan, busy, wait, end, mixing, per device busy
    and bytes, pool peak, who waited)."""
    outcomes = [compare(lambda seed=seed: _one_server(seed), f"seed {seed}", _wait(seed), simpy=alone._simpy,
                        fast=alone._fast) for seed in range(60)]
    assert outcomes.count("equal") == 60, {o: outcomes.count(o) for o in set(outcomes)}


def test_only_moving_devices_go_to_simpy_with_one_line():
    """Several workers and a paced policy: the kernel replays them; a moving device (its epoch books): one line."""
    job = _pair()
    job.servers = [dataclasses.replace(job.servers[0], count=2)]
    assert uncovered(None, "splitfrozen", dataclasses.replace(CFG, policy="paced-round-robin"), job) is None
    assert uncovered(None, "splitfrozen", CFG, _paused()) == \
        "several epochs opened one at a time with moving devices is replayed by the SimPy engine only"


def _two_epochs(seed: int):
    sc = exhaustive.random_fleet(seed, 3, 1, 3)
    sc.training = dataclasses.replace(sc.training, epochs=2)
    return sc


@pytest.mark.parametrize("schedule", ["splitfrozen", "splitfrozen-sequential"])
def test_the_planners_server_replays_open_the_epochs_as_simulate(schedule):
    """A one-server fleet over 2 epochs: the planner's catalogue (every plan) and its server yardstick replay the
    server with its epochs one at a time (before the fix: back to back, faster than ``simulate``), so each plan's
    time is simulate's, and so is the chosen plan's."""
    sc = _two_epochs(11)
    cm = CostModel(sc)
    table = build_table(cm, sc, 3, 1, schedule)
    cat, sim = Catalogue(sc, cm, table, schedule), ServerSim(sc, cm, table, schedule)
    assert cat.why is None and sim.why is None and cat.epochs == 2
    rng = random.Random(0)
    for _ in range(6):
        groups = [g for t in range(len(table.types)) for g in rng.choice(type_plans(table, t))]
        splits, assignment = expand(table, groups)
        want = sfsim.simulate(sc, schedule, plan=Plan(splits=splits, lora_start=3, assignment=assignment))
        assert cat.makespan(groups) == want.makespan_s == sim.completion(0, tuple(groups))
    res = plan(sc, schedule)
    assert res.makespan_s == sfsim.simulate(sc, schedule, plan=res).makespan_s


def test_one_epoch_is_unchanged():
    """One epoch: no ``start`` to wait for; the run is the single-server kernel's, as before."""
    job = _pair(far_l=0.05)
    job.devices[:] = [dataclasses.replace(d, n=2, sent=2) for d in job.devices]
    engine, makespan = _simulate(job)
    assert makespan == pytest.approx(0.755, abs=1e-12)
    assert replay(job, CFG)[1] == makespan


@pytest.mark.parametrize("seed", [146, 381])
@pytest.mark.parametrize("wait_s", [0.0, 0.1])
def test_moving_devices_beside_the_cache_open_their_epochs_one_at_a_time(seed, wait_s):
    """Moving devices (a varying uplink) sharing a server with cached devices, over several epochs (issue 21): the
    epochs open one at a time, with or without an epoch-end wait, and every micro-batch is trained exactly once (the
    server's cached epochs used to count an uncached mover's sends of every epoch as cache replays: 'never processed').
    """
    from tests.test_fast_dynamic import _Scenario, random_job

    job, cfg, sequential = random_job(seed)
    assert job.network.moving and any(d.sent < d.n for d in job.devices) and sf.whole_epochs(job) > 1
    engine = Engine(trace=True)
    engine.epoch_end = {s.name: wait_s for s in job.servers}
    sf.run(engine, job, cfg, sequential=sequential)
    engine.run()
    names = {s.name for s in job.servers}
    ops = [e for e in engine.events if e.lane.split(":")[0].split("/")[0] in names]
    moving = job.network.moving
    dropped = {i: moving[i].sent for i, d in enumerate(job.devices)  # drop churn: what it never sent is lost
               if i in moving and moving[i].churn == "drop" and d.sent == d.n}
    assert sorted((e.device, e.mb) for e in ops if e.op == "F") == \
        sorted((d.name, n) for i, d in enumerate(job.devices) for n in range(dropped.get(i, d.n)))
    per = {d.name: d.per_epoch for d in job.devices}
    for server in names:  # one epoch at a time: a server starts no micro-batch of an epoch before its last one ended
        mine = [e for e in ops if e.lane.startswith(server) and e.device]
        for k in range(1, sf.whole_epochs(job)):
            ends = [e.start + e.dur for e in mine if e.mb // per[e.device] == k - 1]
            starts = [e.start for e in mine if e.mb // per[e.device] == k]
            assert not ends or not starts or max(ends) <= min(starts) + 1e-9
    why = {146: "several epochs opened one at a time with moving devices",  # the fast path: SimPy, one line
           381: "the dynamic network's availability with cached activations"}[seed]
    assert uncovered(_Scenario(), "splitfrozen", cfg, job) == f"{why} is replayed by the SimPy engine only"
