"""SplitFrozen handovers on the fast path (sfsim.fast.handover) against the SimPy engine: random fleets whose
devices move between 2-4 servers (1-3 legs each, random times and links), with varying uplinks, pause and
drop, every covered policy and both credit kinds; every figure equal (==), the moving devices' outcomes too."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.errors import SfsimError
from sfsim.fast import replay
from sfsim.fast.replay import uncovered
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf
from tests.test_fast_dynamic import _avail, _rate, _Scenario, _t

POLICIES = ("fifo", "fifo", "round-robin", "round-robin", "proportional", "pool")
"""fifo and round-robin are what a scenario with handovers may use (sfsim.schedules.network); proportional and
pool run on the engine too (pool often deadlocks there, as the schedule's docstring says: both must fail)."""


def _legs(rng: random.Random, d: DeviceTimes, n_srv: int, ties: bool) -> list[Leg]:
    """1-3 legs: the device's server first, then handovers at increasing random times to other servers."""
    legs, srv, at = [], d.server, 0.0
    for j in range(rng.choice((1, 2, 2, 3, 3))):
        if j:
            at += rng.choice((0.5, 1.0, 2.0, 4.0)) if ties else rng.uniform(0.05, 6.0)
            srv = rng.choice([k for k in range(n_srv) if k != srv])
        bw = rng.choice((1e6, 2e6, 4e6))
        rate = _rate(rng, ties)
        if rate is not None and rate.__class__.__name__ == "FadingRate":
            from sfsim.network.linkrate import Constant, Product
            rate = Product(Constant(bw), rate)
        legs.append(Leg(at, srv, bw, d.up_bytes * 8.0 / bw, _t(rng, ties, 0.3), rate))
    return legs


def random_job(seed: int, ties: bool = False, epochs: int = 3, workers: tuple = (1, 1, 2)) -> tuple[Job, ReplayConfig, bool]:
    """A random SplitFrozen job whose devices hand over (over 1 to ``epochs`` epochs, each server's workers one of
    ``workers``), its knobs and whether sequential."""
    rng = random.Random(seed)
    n_srv = rng.randint(2, 4)
    speed = [rng.choice((0.5, 1.0, 1.0, 2.0)) for _ in range(n_srv)]  # a server's seconds per unit of work
    servers = [ServerTimes(f"s{k}", rng.choice(workers), _t(rng, ties, 0.3) if rng.random() < 0.7 else 0.0)
               for k in range(n_srv)]
    devices, moving, work = [], {}, []
    for i in range(rng.randint(1, 8)):
        per_epoch, epochs_i = rng.randint(1, 5), rng.randint(1, epochs)
        w = (_t(rng, ties, 0.3) or 0.1, _t(rng, ties, 0.3), _t(rng, ties, 0.3))
        srv = rng.randrange(n_srv)
        d = DeviceTimes(f"d{i}", server=srv, n=per_epoch * epochs_i, per_epoch=per_epoch, f=_t(rng, ties, 1.0),
                        up_s=_t(rng, ties, 1.0), up_l=_t(rng, ties, 0.3), srv_f=w[0] * speed[srv],
                        srv_b=w[1] * speed[srv], srv_w=w[2] * speed[srv], last=rng.choice((1.0, 1.0, 0.5, 0.3)),
                        warmup=rng.choice((0.0, 0.0, 0.7)), up_bytes=rng.choice((1e5, 2.5e5, 5e5)),
                        act_bytes=rng.choice((1e5, 3e5, 1e6)))
        devices.append(d)
        work.append(w)
        if rng.random() < 0.75:
            avail, churn = _avail(rng, ties) if rng.random() < 0.5 else (None, "pause")
            moving[i] = Motion(_legs(rng, d, n_srv, ties), avail, churn)
    if not any(len(m.legs) > 1 for m in moving.values()):  # at least one handover
        i = rng.randrange(len(devices))
        legs = _legs(rng, devices[i], n_srv, ties)
        while len(legs) < 2:
            legs = _legs(rng, devices[i], n_srv, ties)
        moving[i] = Motion(legs, *((_avail(rng, ties)) if rng.random() < 0.4 else (None, "pause")))
    views = []
    for k in range(n_srv):  # as sf.pool_views: a visitor at its own server speed, uplink 0 and its least latency
        row = []
        for i, d in enumerate(devices):
            m = moving.get(i)
            if m is None:
                row.append(d)
                continue
            if any(leg.server == k for leg in m.legs):
                d = dataclasses.replace(d, srv_f=work[i][0] * speed[k], srv_b=work[i][1] * speed[k],
                                        srv_w=work[i][2] * speed[k])
            row.append(dataclasses.replace(d, up_s=0.0, up_l=min(leg.up_l for leg in m.legs)))
        views.append(row)
    job = Job(devices, servers)
    job.network = sf.Network(moving, views)
    policy = rng.choice(POLICIES)
    cfg = ReplayConfig(buffer=rng.randint(1, 5), accumulate=rng.randint(1, 4), decompose=rng.random() < 0.7,
                       policy=policy, credits=rng.choice(("server", "device")), seed=rng.randrange(1000),
                       pool_memory=rng.choice((None, 2e6)))
    return job, cfg, rng.random() < 0.3


def _motions(job: Job) -> dict:
    return {i: (m.sent, m.send_s, m.busy, m.up_bytes, tuple(m.switched_at)) for i, m in job.network.moving.items()}


def simpy_figures(job: Job, cfg: ReplayConfig, sequential: bool) -> dict:
    """The SimPy engine's figures (the schedule's run, as simulate() calls it)."""
    engine = Engine()
    sf.run(engine, job, cfg, sequential=sequential)
    makespan = engine.run()
    return {"makespan": makespan, "busy": engine.server_busy, "wait": engine.server_wait, "end": engine.server_end,
            "mixing": {k: (m.value, m.total) for k, m in engine.mixing.items()}, "device_busy": engine.device_busy,
            "up": engine.up_bytes, "motions": _motions(job), "peak": engine.pool_peak_bytes}


def fast_figures(job: Job, cfg: ReplayConfig, sequential: bool) -> dict:
    """The fast path's figures."""
    rec, makespan = replay(job, cfg, sequential)
    return {"makespan": makespan, "busy": rec.server_busy, "wait": rec.server_wait, "end": rec.server_end,
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items()}, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "motions": _motions(job), "peak": rec.pool_peak_bytes}


def check(seed: int, ties: bool) -> str:
    """Compare one random job; returns 'equal', 'both fail', 'refused' or 'uncovered'."""
    job, cfg, sequential = random_job(seed, ties)
    try:
        want = simpy_figures(job, cfg, sequential)
    except (SfsimError, ValueError):  # ValueError: a pool memory bound on a server with no device
        return "refused"
    except RuntimeError:
        with pytest.raises(RuntimeError):
            fast_figures(random_job(seed, ties)[0], cfg, sequential)
        return "both fail"
    if uncovered(_Scenario(), "splitfrozen", cfg, job) is not None:
        return "uncovered"
    got = fast_figures(random_job(seed, ties)[0], cfg, sequential)
    assert got == want, f"seed {seed} ties={ties} cfg={cfg} sequential={sequential}"
    return "equal"


@pytest.mark.parametrize("ties", [False, True])
def test_random_handover_fleets_equal(ties):
    outcomes = [check(seed, ties) for seed in range(300)]
    assert outcomes.count("equal") >= 210, {o: outcomes.count(o) for o in set(outcomes)}  # 222 and 224 at 7ba62e3: several epochs
    # with moving devices and no backhaul rounds open one at a time in SimPy (session 12), and go there


@pytest.mark.slow
def test_many_random_handover_fleets_equal():
    for ties in (False, True):
        outcomes = [check(seed, ties) for seed in range(300, 3300)]
        assert outcomes.count("equal") >= 2500


@pytest.mark.parametrize("schedule", ["splitfrozen", "splitfrozen-sequential"])
@pytest.mark.parametrize("policy", ["fifo", "round-robin"])
def test_simulate_mobile_profile_on_the_fast_path(schedule, policy):
    """profiles/mobile.yaml (cars hand over at 60 s, phones drop, boards pause): the whole SimResult is SimPy's."""
    import sfsim
    from sfsim.scenario.config import load_scenario

    fast = sfsim.simulate(load_scenario("profiles/mobile.yaml"), schedule, policy=policy)
    simpy = sfsim.simulate(load_scenario("profiles/mobile.yaml"), schedule, policy=policy, engine="simpy")
    assert (fast.engine, fast.engine_note) == ("fast", None)
    assert fast.to_dict() == simpy.to_dict()
    assert [(h["device"], h["sent_before"] > 0, h["sent_after"] > 0) for h in fast.handovers] == [
        ("car-0", True, True), ("car-1", True, True)]


def test_there_and_back_with_pauses_through_simulate(tmp_path):
    """A device goes a -> b -> a with a new uplink each time while another pauses: fast == SimPy, every figure."""
    import copy

    from tests.test_fast_dynamic import _simulated

    car = {"handover": [{"at": 0.4, "to": "b", "uplink": {"bandwidth": "20 Mbps", "latency": "30 ms"}},
                        {"at": 0.9, "to": "a", "uplink": {"bandwidth": "60 Mbps", "latency": "2 ms"}}]}
    pi = {"availability": {"file": "w.yaml"}}
    for kw in ({}, {"schedule": "splitfrozen-sequential"}, {"policy": "round-robin"}):
        simpy, fast = _simulated(tmp_path, copy.deepcopy(car), copy.deepcopy(pi), **kw)
        assert fast == simpy
        assert [(h["from"], h["to"]) for h in fast["handovers"]] == [("a", "b"), ("b", "a")]
        assert all(h["sent_after"] > 0 for h in fast["handovers"]) and fast["handovers"][0]["sent_before"] > 0


def test_what_handover_leaves_to_simpy_is_said():
    """Paced orders and cached activations with handovers stay on the SimPy engine, each with its reason."""
    job, cfg, _ = random_job(1)
    assert uncovered(_Scenario(), "splitfrozen", dataclasses.replace(cfg, policy="paced-round-robin",
                                                                    credits="device"), job) == (
        "the dynamic network's handover under policy 'paced-round-robin' is replayed by the SimPy engine only")
    cached = dataclasses.replace(job.devices[0], n=2 * job.devices[0].n, sent=job.devices[0].n)
    job.network.views[0][0] = cached
    assert uncovered(_Scenario(), "splitfrozen", dataclasses.replace(cfg, policy="fifo"), job) == (
        "the dynamic network's handover with cached activations is replayed by the SimPy engine only")
