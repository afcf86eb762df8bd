"""SplitFrozen's epoch-end wait without backhaul rounds on the fast path (:func:`sfsim.fast.synced.covers_alone`): with
``training.eval_samples`` over several epochs and no backhaul (one server, or servers without one) each server opens
its epochs one at a time for the wait alone (:func:`sfsim.schedules.splitfrozen.run`, ``WorkerLoop._final`` ->
``_epoch_end`` -> ``_next_epoch``); its devices wait for each epoch's start. On seeded random fleets of 1-3 servers
over 2-4 epochs, random waits (0 on some servers, ties with the fleet's times on some), pipelined or sequential,
server or device credits, fifo, round-robin, proportional or pool, with or without the activation cache: every
figure equals the SimPy engine's (makespan, per device and per server, wait, end, mixing, pool peak, who waited)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.fast.replay import replay, uncovered
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf
from tests.test_fast_sync_epochs import random_job as synced_job
from tests.test_fast_sync_frozen import compare


class _Evaluated:
    """What uncovered() reads of a scenario: training.eval_samples over several epochs."""

    class training:  # noqa: N801
        sync, eval_samples, epochs = False, 8, 2


def random_job(seed: int, ties: bool, cache: bool, big: bool = False) -> tuple[Job, ReplayConfig, bool, dict]:
    """One of test_fast_sync_epochs' fleets without its backhaul (``job.sync`` None), one server in a third of them
    (every device on it), and random waits at each epoch's end."""
    job, cfg, sequential = synced_job(seed, ties, big=big, cache=cache)
    job.sync = None
    rng = random.Random(seed + 20_000)
    if rng.random() < 0.33:
        job.servers = job.servers[:1]
        job.devices[:] = [dataclasses.replace(d, server=0) for d in job.devices]
    waits = {s.name: rng.choice((0.0, 0.5, 1.0, rng.uniform(0.01, 2.0))) for s in job.servers}
    return job, cfg, sequential, waits


def _simpy(job: Job, cfg: ReplayConfig, sequential: bool, waits: dict) -> dict:
    engine = Engine()
    engine.epoch_end = dict(waits)
    sf.run(engine, job, cfg, sequential=sequential)
    makespan = engine.run()
    return {"makespan": makespan, "busy": engine.server_busy, "wait": engine.server_wait, "end": engine.server_end,
            "mixing": {k: (m.value, m.total) for k, m in engine.mixing.items()}, "device_busy": engine.device_busy,
            "up": engine.up_bytes, "peak": engine.pool_peak_bytes, "waited": engine.epoch_end_waited}


def _fast(job: Job, cfg: ReplayConfig, sequential: bool, waits: dict) -> dict:
    rec, makespan = replay(job, cfg, sequential, epoch_end=waits)
    return {"makespan": makespan, "busy": rec.server_busy, "wait": rec.server_wait, "end": rec.server_end,
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items()}, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "peak": rec.pool_peak_bytes, "waited": rec.epoch_end_waited}


def check(seed: int, ties: bool, cache: bool, big: bool = False) -> str:
    """'equal', 'refused' (SimPy refuses the setting), 'both fail' or 'uncovered' (:func:`compare`)."""
    waits = random_job(seed, ties, cache, big)[3]
    return compare(lambda: random_job(seed, ties, cache, big)[:3], f"seed {seed} ties={ties} cache={cache}", waits,
                   scenario=_Evaluated(), simpy=_simpy, fast=_fast)


@pytest.mark.parametrize("ties", [False, True])
def test_epoch_end_wait_without_rounds_equal(ties):
    outcomes = [check(seed, ties, seed % 3 == 0) for seed in range(300)]
    assert outcomes.count("equal") >= 270, {o: outcomes.count(o) for o in set(outcomes)}


def test_bigger_fleets_epoch_end_wait_without_rounds_equal():
    outcomes = [check(seed, seed % 2 == 1, seed % 3 == 0, big=True) for seed in range(60)]
    assert outcomes.count("equal") >= 54, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.slow
def test_many_fleets_epoch_end_wait_without_rounds_equal():
    for ties in (False, True):
        outcomes = [check(seed, ties, cache) for seed in range(300, 2300) for cache in (False, True)]
        assert outcomes.count("equal") >= 3600, {o: outcomes.count(o) for o in set(outcomes)}
        outcomes = [check(seed, ties, seed % 3 == 0, big=True) for seed in range(60, 660)]
        assert outcomes.count("equal") >= 540, {o: outcomes.count(o) for o in set(outcomes)}


def test_what_stays_on_simpy_is_said():
    """The single-server kernel replays a paced policy and several workers (sfsim.fast.opening, issue 21); a moving
    device over several epochs stays on SimPy (tests/test_one_server_epochs.py says it)."""
    job = Job([DeviceTimes("d0", 0, n=4, per_epoch=2, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5)], [ServerTimes("s0", 1)])
    assert uncovered(_Evaluated(), "splitfrozen", ReplayConfig(), job) is None
    cfg = ReplayConfig(policy="paced-round-robin", credits="device")
    assert uncovered(_Evaluated(), "splitfrozen", cfg, job) is None
    job.servers[0] = ServerTimes("s0", 2)
    assert uncovered(_Evaluated(), "splitfrozen", ReplayConfig(), job) is None


@pytest.mark.parametrize(("servers", "training"), [(1, {}), (1, {"cache_activations": True}), (2, {}),
                                                   (2, {"epochs": 2, "cache_activations": True})])
def test_simulate_replays_the_wait_without_rounds_on_the_fast_path(servers, training):
    """sfsim.simulate on a fresh fleet with training.eval_samples over several epochs, one server or two without a
    backhaul: the fast path replays it (the wait from the cost model) and every figure equals the SimPy engine's."""
    import sfsim
    from sfsim.cost.epochend import epoch_end_seconds
    from tests.test_epoch_end_wait import fleet, sc_of, two_servers

    sc = sc_of(fleet(**training) if servers == 1 else two_servers(**training))
    fast, slow = (sfsim.simulate(sc, "splitfrozen", splits=2, engine=e) for e in ("auto", "simpy"))
    assert (fast.engine, fast.engine_note, slow.engine) == ("fast", None, "simpy")
    assert fast.to_dict() == slow.to_dict() and fast.server_end_s == slow.server_end_s
    assert fast.epoch_end_s == epoch_end_seconds(sc, assignment=fast.assignment) and min(fast.epoch_end_s.values()) > 0
