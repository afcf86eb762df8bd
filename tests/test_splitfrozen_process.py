"""SplitFrozen's one device process: random fleets against figures recorded before it, and its two branches.

Every device runs :func:`sfsim.schedules.splitfrozen.device_process`; a static pipelined device runs
its constant-rate branch as callbacks (``_Pipelined``). ``fixtures/splitfrozen_fleets.json`` holds a
digest of every figure and of the whole trace of each seeded fleet below (static and dynamic devices:
handovers, varying uplinks, pause and drop; pipelined and sequential; server and device credits),
recorded at main d600d89, when static sequential devices still had a process of their own. Ties at
one instant resolve in SimPy's scheduling order, so these fleets (few device kinds, round numbers)
fail on any change in the order a device schedules its events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.availability import Windows
from sfsim.network.legs import Leg, Motion
from sfsim.network.linkrate import Steps
from sfsim.schedules import Job, ReplayConfig, splitfrozen
from sfsim.schedules.splitfrozen import Network

RECORDED = Path(__file__).parent / "fixtures" / "splitfrozen_fleets.json"
SEEDS = 300


def _motion(rng: random.Random, d: DeviceTimes, servers: int) -> Motion:
    """Legs (a varying uplink, up to two handovers) and availability of a moving device."""
    rate = rng.choice([None, None, Steps([0.0, 2.0], [8.0, 4.0]), Steps([0.0, 1.0, 3.0], [8.0, 16.0, 8.0])])
    legs = [Leg(0.0, d.server, 8.0, d.up_s, d.up_l, rate)]  # 8 bit/s: up_bytes bytes take up_s seconds
    for at in sorted(rng.sample([0.5, 1.0, 2.5, 4.0, 6.0], rng.choice([0, 0, 1, 2]))):
        legs.append(Leg(at, rng.randrange(servers), 8.0, d.up_s, rng.choice([0.0, 0.5]),
                        rng.choice([None, Steps([0.0, 3.0], [4.0, 8.0])])))
    avail = rng.choice([None, None, Windows([(0.0, 3.0), (4.0, 9.0)]), Windows([(1.0, 5.0)]),
                        Windows([(0.0, 2.0), (2.5, 4.0), (6.0, 30.0)])])
    return Motion(legs, avail, rng.choice(["pause", "drop"]))


def fleet(seed: int) -> tuple[Job, ReplayConfig, dict[int, Motion]]:
    """A seeded fleet: 1-9 devices of three kinds (ties), 1-2 servers; six in ten have moving devices."""
    rng = random.Random(seed)
    servers = [ServerTimes(f"s{k}", count=rng.choice([1, 1, 2]), step=rng.choice([0.0, 0.1, 0.25]))
               for k in range(rng.choice([1, 2, 2]))]
    kinds = [dict(f=rng.choice([0.0, 0.5, 1.0, 2.0]), up_s=rng.choice([0.0, 0.25, 1.0]), up_l=rng.choice([0.0, 0.5]),
                  srv_f=rng.choice([0.25, 0.5]), srv_b=rng.choice([0.0, 0.25]), srv_w=rng.choice([0.0, 0.5]))
             for _ in range(3)]
    dynamic = rng.random() < 0.6
    devices, moving = [], {}
    for i in range(rng.randint(1, 9)):
        n, k = rng.randint(1, 7), rng.choice(kinds)
        sent = n if dynamic else rng.choice([n, n, max(1, n // 2)])  # fewer: replays from the cache
        d = DeviceTimes(f"d{i}", server=rng.randrange(len(servers)), n=n, sent=sent, per_epoch=n,
                        last=rng.choice([1.0, 1.0, 0.5]), warmup=rng.choice([0.0, 0.3]), up_bytes=k["up_s"], **k)
        devices.append(d)
        if dynamic and rng.random() < 0.5:
            moving[i] = _motion(rng, d, len(servers))
    policy = rng.choice(["fifo", "round-robin"] if moving else
                        ["fifo", "fifo", "round-robin", "proportional", "pool", "paced-proportional"])
    credits = "device" if policy.startswith("paced") else rng.choice(["server", "device"])
    cfg = ReplayConfig(buffer=rng.randint(1, 5), accumulate=rng.randint(1, 4), decompose=rng.random() < 0.8,
                       policy=policy, credits=credits, seed=rng.randrange(100))
    net = None
    if moving:  # each server sees a moving device with no send time and its smallest latency
        views = [[d if i not in moving else dataclasses.replace(d, up_s=0.0, up_l=min(g.up_l for g in moving[i].legs))
                  for i, d in enumerate(devices)] for _ in servers]
        net = Network(moving, views)
    return Job(devices, servers, network=net), cfg, moving


def figures(seed: int, sequential: bool, trace: bool) -> dict:
    """Every figure of one replay (and its whole trace, sorted), with each moving device's outcome."""
    job, cfg, moving = fleet(seed)
    engine = Engine(trace=trace)
    splitfrozen.run(engine, job, cfg, sequential=sequential)
    out = dict(makespan=engine.run(), busy=engine.device_busy, server_busy=engine.server_busy,
               end=engine.server_end, wait=engine.server_wait, up=engine.up_bytes, peak=engine.pool_peak_bytes,
               mixing={k: (m.value, m.tv) for k, m in engine.mixing.items()},
               moves={str(i): (m.sent, m.switched_at, m.send_s, m.busy) for i, m in moving.items()})
    if trace:
        out["trace"] = sorted((e.lane, e.op, e.start, e.dur, e.mb, e.device) for e in engine.events)
    return out


def _exact(x):
    """``x`` with every number as its exact float (hex) and tuples as lists: a canonical form to hash."""
    if isinstance(x, dict):
        return {str(k): _exact(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_exact(v) for v in x]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x).hex()
    return x


def digest(seed: int, sequential: bool, trace: bool) -> str:
    """A short hash of :func:`figures`, exact to the last bit."""
    text = json.dumps(_exact(figures(seed, sequential, trace)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _key(seed: int, sequential: bool, trace: bool) -> str:
    return f"{seed}|{'sequential' if sequential else 'pipelined'}|{'trace' if trace else 'figures'}"


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("trace", [False, True])
def test_random_fleets_equal_the_recorded_figures(sequential, trace):
    recorded = json.loads(RECORDED.read_text())
    bad = [seed for seed in range(SEEDS) if digest(seed, sequential, trace) != recorded[_key(seed, sequential, trace)]]
    assert bad == [], f"{len(bad)} of {SEEDS} fleets differ from the recorded figures, seeds {bad[:10]}"


def test_fleets_cover_what_they_claim():
    fleets = [fleet(seed) for seed in range(SEEDS)]
    moving = [m for _, _, mv in fleets for m in mv.values()]
    assert sum(1 for _, _, mv in fleets if mv) > SEEDS // 3
    assert any(len(m.legs) > 1 for m in moving) and any(m.churn == "drop" and m.avail for m in moving)
    assert any(m.churn == "pause" and m.avail for m in moving) and any(m.legs[0].rate for m in moving)
    assert {cfg.credits for _, cfg, _ in fleets} == {"server", "device"}


@pytest.mark.parametrize("seed", range(0, SEEDS, 3))
def test_constant_rate_callbacks_are_the_process(seed, monkeypatch):
    """A static pipelined device run by the general process gives what its callback branch gives, trace included."""
    want = figures(seed, False, True)

    def as_process(engine, pool, i, d):
        engine.env.process(splitfrozen.device_process(engine, {d.server: pool}, i, d, None))
    monkeypatch.setattr(splitfrozen, "_Pipelined", as_process)
    assert _exact(figures(seed, False, True)) == _exact(want)


def record() -> dict[str, str]:
    """The digests of every case (run on the commit to record from: ``python tests/test_splitfrozen_process.py``)."""
    return {_key(s, q, t): digest(s, q, t) for s in range(SEEDS) for q in (False, True) for t in (False, True)}


if __name__ == "__main__":
    RECORDED.write_text(json.dumps(record(), indent=0) + "\n")
