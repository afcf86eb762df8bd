"""The fast path on the dynamic network (sfsim.fast.dynamic) against the SimPy engine: random fleets with
varying uplinks and pause/drop availability, every figure equal (==), the moving devices' outcomes too."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.errors import SfsimError
from sfsim.fast import replay
from sfsim.fast.replay import uncovered
from sfsim.network.availability import OnOff, Windows
from sfsim.network.legs import Leg, Motion
from sfsim.network.linkrate import Fading, FadingRate, GilbertElliott, GilbertElliottRate, Steps
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf

POLICIES = ("fifo", "round-robin", "proportional", "paced-proportional", "paced-round-robin", "pool")


def _t(rng: random.Random, ties: bool, scale: float) -> float:
    return rng.choice((0.0, 0.5, 1.0, 2.0)) * scale if ties else rng.uniform(0.05, 2.0) * scale


def _rate(rng: random.Random, ties: bool):
    """A random uplink rate (bit/s) or None (constant bandwidth)."""
    kind = rng.choice(("const", "steps", "periodic", "ge", "fading"))
    if kind == "const":
        return None
    if kind in ("steps", "periodic"):
        k = rng.randint(1, 5)
        times = [0.0] + sorted(rng.sample(range(1, 40), k - 1)) if ties else [0.0] + sorted(
            rng.uniform(0.1, 20.0) for _ in range(k - 1))
        rates = [rng.choice((0.0, 5e5, 1e6, 4e6)) if i else rng.choice((5e5, 1e6, 4e6)) for i in range(k)]
        period = times[-1] + rng.choice((1.0, 2.5)) if kind == "periodic" else None
        return Steps(times, rates, period)
    if kind == "ge":
        spec = GilbertElliott(good=4e6, bad=rng.choice((1e5, 2e5)), mean_good=rng.uniform(1, 10), mean_bad=rng.uniform(0.5, 3))
        return GilbertElliottRate(spec, random.Random(rng.random()))
    spec = Fading(sigma_db=rng.uniform(1, 8), coherence=rng.uniform(0.2, 3))
    return FadingRate(spec, random.Random(rng.random()))  # a factor around 1 on ... 1 bit/s: scaled below


def _avail(rng: random.Random, ties: bool):
    """Random availability: None, online windows or an on/off process; and the churn."""
    kind = rng.choice(("none", "none", "windows", "onoff"))
    if kind == "none":
        return None, "pause"
    churn = rng.choice(("pause", "drop"))
    if kind == "windows":
        edges = sorted(rng.sample(range(0, 80), 2 * rng.randint(1, 4))) if ties else sorted(
            rng.uniform(0, 60) for _ in range(2 * rng.randint(1, 4)))
        ivs = [(float(a), float(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b > a]
        return Windows(ivs or [(0.0, 1.0)]), churn
    return OnOff(rng.uniform(3, 30), rng.uniform(0.5, 5), random.Random(rng.random())), churn


def random_job(seed: int, ties: bool = False) -> tuple[Job, ReplayConfig, bool]:
    """A random SplitFrozen job with a dynamic network (no handover), its knobs and whether sequential."""
    rng = random.Random(seed)
    n_srv = rng.randint(1, 3)
    servers = [ServerTimes(f"s{k}", rng.choice((1, 1, 2, 3)), _t(rng, ties, 0.3) if rng.random() < 0.7 else 0.0)
               for k in range(n_srv)]
    devices, moving = [], {}
    for i in range(rng.randint(1, 8)):
        per_epoch, epochs = rng.randint(1, 5), rng.randint(1, 3)
        kw = dict(server=rng.randrange(n_srv), n=per_epoch * epochs, per_epoch=per_epoch, f=_t(rng, ties, 1.0),
                  up_s=_t(rng, ties, 1.0), up_l=_t(rng, ties, 0.3), srv_f=_t(rng, ties, 0.3) or 0.1,
                  srv_b=_t(rng, ties, 0.3), srv_w=_t(rng, ties, 0.3), last=rng.choice((1.0, 1.0, 0.5, 0.3)),
                  warmup=rng.choice((0.0, 0.0, 0.7)), up_bytes=rng.choice((1e5, 2.5e5, 5e5)),
                  act_bytes=rng.choice((1e5, 3e5, 1e6)))
        if rng.random() < 0.25:
            kw["sent"] = per_epoch
        d = DeviceTimes(f"d{i}", **kw)
        devices.append(d)
        if rng.random() < 0.7:
            rate = _rate(rng, ties)
            bw = rng.choice((1e6, 2e6, 4e6))
            if isinstance(rate, FadingRate):
                from sfsim.network.linkrate import Constant, Product
                rate = Product(Constant(bw), rate)
            avail, churn = _avail(rng, ties)
            moving[i] = Motion([Leg(0.0, d.server, bw, d.up_bytes * 8.0 / bw, d.up_l, rate)], avail, churn)
    job = Job(devices, servers)
    if moving:
        views = [[dataclasses.replace(d, up_s=0.0, up_l=moving[i].legs[0].up_l) if i in moving else d
                  for i, d in enumerate(devices)] for _ in servers]
        job.network = sf.Network(moving, views)
    policy = rng.choice(POLICIES + POLICIES[:3] + POLICIES[5:])  # paced with availability falls back: fewer of them
    credits = "device" if policy.startswith("paced") else rng.choice(("server", "device"))
    cfg = ReplayConfig(buffer=rng.randint(1, 5), accumulate=rng.randint(1, 4), decompose=rng.random() < 0.7,
                       policy=policy, credits=credits, seed=rng.randrange(1000), pool_memory=rng.choice((None, 2e6)))
    return job, cfg, rng.random() < 0.3


def _motions(job: Job) -> dict:
    net = job.network
    return {i: (m.sent, m.send_s, m.busy, m.up_bytes) for i, m in net.moving.items()} if net else {}


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


class _Scenario:
    """What uncovered() reads of a scenario: no backhaul sync."""

    class training:  # noqa: N801
        sync = None

    servers = ()


def check(seed: int, ties: bool) -> str:
    """Compare one random job; returns 'equal', 'both fail' or 'refused' (a setting the engine refuses)."""
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
def test_random_dynamic_fleets_equal(ties):
    outcomes = [check(seed, ties) for seed in range(600)]
    # cached jobs whose device may drop go to SimPy (its pool stops their replays at the drop, sfsim.engine.cacheparts;
    # a scenario's availability with the cache always did): 315 and 297 equal at ece04c5, 350+ before that rule;
    # moving devices over several epochs go to SimPy too since issue 21 (one epoch at a time, EpochBooks): 264 and 261
    assert outcomes.count("equal") >= 250


@pytest.mark.slow
def test_many_random_dynamic_fleets_equal():
    for ties in (False, True):
        outcomes = [check(seed, ties) for seed in range(600, 5600)]
        assert outcomes.count("equal") >= 2400  # as above: cached jobs that may drop go to SimPy


LINK = {"bandwidth": "100 Mbps", "latency": "5 ms"}
BASE = {
    "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "buffer": 4, "split": 2},
    "servers": [{"name": "a", "flops": "10 TFLOPS", "memory": "24 GiB"},
                {"name": "b", "flops": "20 TFLOPS", "memory": "24 GiB"}],
    "devices": [{"name": "car", "flops": "200 GFLOPS", "memory": "4 GiB", "samples": 120, "server": "a",
                 "uplink": dict(LINK), "downlink": dict(LINK)},
                {"name": "pi", "count": 3, "flops": "50 GFLOPS", "memory": "4 GiB", "samples": 60, "server": "b",
                 "uplink": dict(LINK), "downlink": dict(LINK)}],
}
GE = {"gilbert_elliott": {"good": "40 Mbps", "bad": "5 Mbps", "mean_good": "0.3 s", "mean_bad": "0.1 s"},
      "latency": "5 ms"}
CASES = {
    "trace": ({"uplink": {"trace": "t.csv", "latency": "5 ms"}}, {}),
    "ge and fading": ({"uplink": {**GE, "fading": {"sigma_db": 6, "coherence": "50 ms"}}}, {}),
    "pause windows": ({}, {"availability": {"file": "w.yaml"}}),
    "drop on/off": ({"uplink": {**GE}}, {"availability": {"mean_on": "1 s", "mean_off": "0.3 s", "churn": "drop"}}),
    "pause on/off, fading": ({"uplink": {**LINK, "fading": {"sigma_db": 4, "coherence": "0.1 s"}}},
                             {"availability": {"mean_on": "0.5 s", "mean_off": "0.5 s"}}),
}


def _simulated(tmp_path, car: dict, pi: dict, **kw):
    import copy

    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    (tmp_path / "t.csv").write_text("time_s,bandwidth\n0,100 Mbps\n0.2,10 Mbps\n0.5,0\n0.7,60 Mbps\n")
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.4], [1.5, 2.5], [3, 1000]]\n")
    data = copy.deepcopy(BASE)
    data["devices"][0].update(car)
    data["devices"][1].update(pi)
    out = []
    for engine in ("simpy", "fast"):
        sc = scenario_from_dict(copy.deepcopy(data), source=str(tmp_path / "s.yaml"))
        res = sfsim.simulate(sc, engine=engine, **kw)
        assert res.engine == engine
        out.append(res.to_dict())
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kw", [{}, {"schedule": "splitfrozen-sequential"}, {"policy": "round-robin"}])
def test_simulate_on_the_dynamic_network_gives_the_engines_result(tmp_path, case, kw):
    """Whole results through simulate(): makespan, per-device and per-server figures, samples not trained, energy."""
    simpy, fast = _simulated(tmp_path, *CASES[case], **kw)
    assert fast == simpy


def test_what_the_fast_path_leaves_to_simpy_on_the_dynamic_network_is_said(tmp_path):
    import copy

    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    data = copy.deepcopy(BASE)
    data["devices"][0]["handover"] = [{"at": 1, "to": "b"}]
    res = sfsim.simulate(scenario_from_dict(data, source=str(tmp_path / "s.yaml")))
    assert (res.engine, res.engine_note) == ("fast", None)  # handovers: every server in one loop (sfsim.fast.handover)
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.4], [1.5, 1000]]\n")
    data = copy.deepcopy(BASE)
    data["devices"][1]["availability"] = {"file": "w.yaml"}
    res = sfsim.simulate(scenario_from_dict(data, source=str(tmp_path / "s.yaml")), policy="fifo")
    assert res.engine == "fast"
