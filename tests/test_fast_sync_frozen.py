"""SplitFrozen with ``training.sync`` on the fast path (:mod:`sfsim.fast.synced`, :mod:`sfsim.fast.rounds`): every
server and its backhaul rounds in one compiled loop, in the SimPy engine's event order. On seeded random fleets of
2-4 servers (unequal speeds and backhaul links, one without a link sometimes), ``every`` 1 (in sync mode the
gradients averaged before each step), 2, 3 or 5 in both modes, pipelined or sequential, server or device credits,
fifo, round-robin, proportional or pool, static devices or handovers with pause, drop and varying uplinks: every
figure equals the SimPy engine's (makespan, per device and per server, mixing, pool peak, the rounds and each
server's backhaul bytes). What it does not replay stays on SimPy with one line."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.errors import SfsimError
from sfsim.fast import replay
from sfsim.fast.replay import uncovered
from sfsim.network.backhaul import PoolRounds, SyncSpec
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf
from tests.test_fast_handover import _motions
from tests.test_fast_handover import random_job as handover_job

POLICIES = ("fifo", "round-robin", "proportional", "pool")


def _t(rng: random.Random, ties: bool, scale: float) -> float:
    return rng.choice((0.25, 0.5, 1.0)) * scale if ties else rng.uniform(0.05, 1.0) * scale


def random_job(seed: int, ties: bool = False) -> tuple[Job, ReplayConfig, bool]:
    """A fleet of 2-4 servers, 0-9 devices (some with a partial last micro-batch, some with none), one epoch."""
    rng = random.Random(seed)
    ns = rng.randint(2, 4)
    servers = [ServerTimes(f"s{k}", 2 if rng.random() < 0.03 else 1, _t(rng, ties, 0.2) if rng.random() < 0.8 else 0.0)
               for k in range(ns)]  # several workers: SimPy only
    devices = []
    for i in range(rng.randint(0, 9)):
        n = rng.randint(0, 12)
        devices.append(DeviceTimes(
            f"d{i}", rng.randrange(ns), n=n, per_epoch=n, last=rng.choice((1.0, 1.0, 0.5)) if n else 1.0,
            f=_t(rng, ties, 1.0), warmup=_t(rng, ties, 0.5) if rng.random() < 0.2 else 0.0, up_s=_t(rng, ties, 1.0),
            up_l=_t(rng, ties, 0.2), srv_f=_t(rng, ties, 0.3), srv_b=_t(rng, ties, 0.3),
            srv_w=_t(rng, ties, 0.3) if rng.random() < 0.8 else 0.0, act_bytes=rng.choice((100.0, 250.0))))
    job = Job(devices, servers)
    every, mode = rng.choice([(1, "sync"), (1, "async"), (2, "sync"), (2, "async"), (3, "sync"), (3, "async"),
                              (5, "sync"), (5, "async")])
    links = tuple((s.name, float("inf"), 0.0) if rng.random() < 0.15 else (s.name, rng.uniform(20.0, 400.0),
                                                                              _t(rng, ties, 0.1)) for s in servers)
    job.sync = SyncSpec(links, every, mode, 10.0, 12.0, 1)
    policy = rng.choice(POLICIES)
    cfg = ReplayConfig(buffer=rng.randint(1, 4), accumulate=rng.randint(1, 3), policy=policy,
                       credits=rng.choice(("server", "device")), decompose=rng.random() < 0.7, seed=rng.randrange(99),
                       pool_memory=rng.choice((None, 300.0)) if policy == "pool" else None)
    return job, cfg, rng.random() < 0.3


def simpy_figures(job: Job, cfg: ReplayConfig, sequential: bool, epoch_end: dict | None = None) -> dict:
    """The SimPy engine's figures, as simulate() runs it (training.sync: its rounds; else each epoch's closing);
    ``epoch_end``: each server's wait at an epoch's end (``Engine.epoch_end``), and then who waited it."""
    engine = Engine()
    engine.epoch_end = dict(epoch_end or {})
    if job.sync.every is not None:
        PoolRounds(engine, job.sync, job.servers)
    sf.run(engine, job, cfg, sequential=sequential)
    makespan = engine.run()
    return {"makespan": makespan, "busy": engine.server_busy, "wait": engine.server_wait, "end": engine.server_end,
            "mixing": {k: (m.value, m.total) for k, m in engine.mixing.items()}, "device_busy": engine.device_busy,
            "up": engine.up_bytes, "peak": engine.pool_peak_bytes, "rounds": engine.sync.rounds,
            "backhaul": dict(engine.sync.bytes)} | ({"waited": engine.epoch_end_waited} if epoch_end else {})


def fast_figures(job: Job, cfg: ReplayConfig, sequential: bool, epoch_end: dict | None = None) -> dict:
    """The fast path's figures."""
    rec, makespan = replay(job, cfg, sequential, epoch_end=epoch_end)
    return ({"waited": rec.epoch_end_waited} if epoch_end else {}) | {"makespan": makespan, "busy": rec.server_busy, "wait": rec.server_wait, "end": rec.server_end,
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items()}, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "peak": rec.pool_peak_bytes, "rounds": rec.sync.rounds, "backhaul": rec.sync.bytes}


class _Scenario:
    """What uncovered() reads of a scenario beyond the job."""

    class training:  # noqa: N801
        sync = True

    servers = (1, 2)


def compare(make, label: str, epoch_end: dict | None = None, scenario=None, simpy=None, fast=None) -> str:
    """Compare the job ``make()`` builds (called afresh for each engine): 'equal', 'both fail', 'refused' (the engine
    refuses the setting) or 'uncovered'. ``epoch_end``: each server's wait at an epoch's end (both engines).
    ``scenario``: what :func:`uncovered` reads (default :class:`_Scenario`); ``simpy``/``fast``: the figure functions
    (default :func:`simpy_figures`/:func:`fast_figures`), each called as ``(job, cfg, sequential, epoch_end)``."""
    simpy, fast = simpy or simpy_figures, fast or fast_figures
    job, cfg, sequential = make()
    if uncovered(scenario or _Scenario(), "splitfrozen", cfg, job) is not None:
        return "uncovered"
    try:
        want = simpy(job, cfg, sequential, epoch_end)
    except ValueError:  # a pool memory bound on a server with no device
        return "refused"
    except RuntimeError:
        with pytest.raises(RuntimeError):
            fast(make()[0], cfg, sequential, epoch_end)
        return "both fail"
    got = fast(make()[0], cfg, sequential, epoch_end)
    assert got == want, f"{label} cfg={cfg} sequential={sequential} sync={job.sync} epoch_end={epoch_end}"
    return "equal"


def check(seed: int, ties: bool) -> str:
    """Compare one random job (:func:`compare`)."""
    return compare(lambda: random_job(seed, ties), f"seed {seed} ties={ties}")


@pytest.mark.parametrize("ties", [False, True])
def test_random_synced_fleets_equal(ties):
    outcomes = [check(seed, ties) for seed in range(300)]
    assert outcomes.count("equal") >= 240, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.slow
def test_many_random_synced_fleets_equal():
    for ties in (False, True):
        outcomes = [check(seed, ties) for seed in range(300, 3300)]
        assert outcomes.count("equal") >= 2400, {o: outcomes.count(o) for o in set(outcomes)}


def moving_job(seed: int, ties: bool, pinned: bool = True) -> tuple[Job, ReplayConfig, bool]:
    """tests/test_fast_handover.py's random fleet (handovers, pause, drop, varying uplinks) over one epoch, one
    worker a server, with random rounds. ``pinned``: every leg on the device's own server (a handover between servers
    with training.sync stays on SimPy since issue 21's waiting-server rule: its legs change links only)."""
    job, cfg, sequential = handover_job(seed, ties, epochs=1, workers=(1,))
    if pinned:
        for i, m in job.network.moving.items():
            m.legs = [dataclasses.replace(leg, server=job.devices[i].server) for leg in m.legs]
    rng = random.Random(-seed - 1)
    every, mode = rng.choice([(1, "sync"), (1, "async"), (2, "sync"), (2, "async"), (3, "sync"), (5, "async")])
    links = tuple((s.name, rng.uniform(20.0, 400.0), _t(rng, ties, 0.1)) for s in job.servers)
    job.sync = SyncSpec(links, every, mode, 10.0, 12.0, 1)
    return job, cfg, sequential


def check_moving(seed: int, ties: bool) -> str:
    """:func:`check` on :func:`moving_job` (the motions' outcomes compared too)."""
    job, cfg, sequential = moving_job(seed, ties)
    if uncovered(_Scenario(), "splitfrozen", cfg, job) is not None:
        return "uncovered"
    try:
        want = simpy_figures(job, cfg, sequential) | {"motions": _motions(job)}
    except (SfsimError, ValueError):
        return "refused"
    except RuntimeError:
        with pytest.raises(RuntimeError):
            fast_figures(moving_job(seed, ties)[0], cfg, sequential)
        return "both fail"
    job = moving_job(seed, ties)[0]
    got = fast_figures(job, cfg, sequential) | {"motions": _motions(job)}
    assert got == want, f"seed {seed} ties={ties} cfg={cfg} sequential={sequential} sync={job.sync}"
    return "equal"


@pytest.mark.parametrize("ties", [False, True])
def test_random_synced_handover_fleets_equal(ties):
    outcomes = [check_moving(seed, ties) for seed in range(150)]
    assert outcomes.count("equal") >= 100, {o: outcomes.count(o) for o in set(outcomes)}


def test_a_handover_between_servers_with_training_sync_stays_on_simpy():
    """Issue 21: a SplitFrozen server waiting only for a visitor answers the rounds others open (SimPy's
    ``PoolRounds.wait_for_visitor``), which the fast path does not replay: every such fleet goes to SimPy, in one line."""
    why = ("training.sync with a handover between servers (a server waiting for its visitor answers rounds) is "
           "replayed by the SimPy engine only")
    for seed in range(50):
        job, cfg, _ = moving_job(seed, False, pinned=False)
        assert uncovered(_Scenario(), "splitfrozen", cfg, job) == why


@pytest.mark.slow
def test_many_random_synced_handover_fleets_equal():
    for ties in (False, True):
        outcomes = [check_moving(seed, ties) for seed in range(150, 1650)]
        assert outcomes.count("equal") >= 1000, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.parametrize(("every", "mode", "epochs", "policy", "why"), [
    (2, "sync", 1, "paced-proportional", "training.sync under policy 'paced-proportional'"),
    (2, "async", 1, "paced-round-robin", "training.sync under policy 'paced-round-robin'"),
])
def test_what_stays_on_simpy_is_said(every, mode, epochs, policy, why):
    job, cfg, _ = random_job(1)
    job.sync = SyncSpec(job.sync.servers, every, mode, 10.0, 12.0, epochs)
    cfg = ReplayConfig(policy=policy, credits="device")
    assert uncovered(_Scenario(), "splitfrozen", cfg, job) == f"{why} is replayed by the SimPy engine only"
