"""The baselines' closing backhaul rounds (no ``training.sync``, servers with backhaul links) on the fast path:
SplitLoRA's servers wait for each epoch's closing round before the next epoch (:func:`sfsim.fast.closing.replay_closing`;
with handovers between servers ``tests/test_fast_split_closing.py``). Every figure equals the SimPy engine's on seeded
random fleets of 2-4 servers."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.fast import replay
from sfsim.network.backhaul import SyncSpec
from sfsim.schedules import Job, ReplayConfig, get


def _stage(rng: random.Random, ties: bool, scale: float) -> float:
    return rng.choice((0.25, 0.5, 1.0)) * scale if ties else rng.uniform(0.05, 1.0) * scale


def random_job(seed: int, ties: bool = False) -> tuple[Job, ReplayConfig]:
    """2-4 servers with backhaul links (one may have none: it sends in no time), 1-8 devices of unequal times and
    samples (some none, epochs unlike the run's), a closing round per epoch of the run's 1-3."""
    rng = random.Random(seed)
    n_srv = rng.randint(2, 4)
    servers = [ServerTimes(f"s{k}", 1, _stage(rng, ties, 0.3) if rng.random() < 0.7 else 0.0, _stage(rng, ties, 0.2))
               for k in range(n_srv)]
    devices = []
    for i in range(rng.randint(1, 8)):
        per_epoch, epochs = rng.randint(1, 6), rng.randint(1, 3)
        up = rng.uniform(1e3, 1e6)
        devices.append(DeviceTimes(
            f"d{i}", server=rng.randrange(n_srv), n=per_epoch * epochs if rng.random() < 0.9 else 0,
            per_epoch=per_epoch, f=_stage(rng, ties, 1.0), b=_stage(rng, ties, 1.0), w=_stage(rng, ties, 1.0),
            step=_stage(rng, ties, 0.2), up_s=_stage(rng, ties, 1.0), up_l=_stage(rng, ties, 0.3),
            down_s=_stage(rng, ties, 0.5), down_l=_stage(rng, ties, 0.3), sync_up_s=_stage(rng, ties, 1.0),
            sync_down_s=_stage(rng, ties, 1.0), srv_f=_stage(rng, ties, 0.3), srv_b=_stage(rng, ties, 0.3),
            srv_w=_stage(rng, ties, 0.3), up_bytes=up, down_bytes=up / 2, sync_bytes=rng.uniform(1e3, 1e7),
            last=rng.choice((1.0, 1.0, 0.5, 0.3)), warmup=rng.choice((0.0, 0.0, 0.7))))
    links = tuple((s.name, math.inf, 0.0) if rng.random() < 0.15 else
                  (s.name, rng.choice((1e6, 1e7, 1e8, 1e9)), rng.choice((0.0, 0.001, 0.02, 0.3))) for s in servers)
    payload = rng.uniform(1e4, 1e7)
    job = Job(devices, servers)
    job.sync = SyncSpec(links, None, "sync", payload, payload + rng.uniform(0.0, 1e6), rng.randint(1, 3))
    cfg = ReplayConfig(accumulate=rng.randint(1, 4), decompose=rng.random() < 0.7, fedavg_every=rng.randint(1, 4),
                       client_order=rng.choice(("interleaved", "interleaved", "sequential")),
                       policy=rng.choice(("fifo", "proportional", "round-robin")))
    return job, cfg


def _figures(rec, makespan: float) -> dict:
    return {"makespan": makespan, "server_busy": rec.server_busy, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "down": rec.down_bytes, "rounds": rec.sync.rounds, "backhaul": dict(rec.sync.bytes),
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items() if m.value is not None}}


def simpy_figures(job: Job, cfg: ReplayConfig, schedule: str) -> dict:
    """The SimPy engine's figures (every schedule closes each epoch with its rounds inside the run)."""
    engine = Engine()
    get(schedule).run(engine, job, cfg)
    makespan = engine.run()
    return _figures(engine, makespan)


def check(seed: int, ties: bool = False) -> None:
    job, cfg = random_job(seed, ties)
    ref = simpy_figures(job, cfg, "splitlora")
    rec, makespan = replay(job, cfg, schedule="splitlora")
    assert _figures(rec, makespan) == ref, seed


@pytest.mark.parametrize("ties", [False, True])
def test_splitlora_closing_rounds_random_fleets_equal(ties):
    for seed in range(150):
        check(seed, ties)


def _links(seed: int, job: Job) -> SyncSpec:
    rng = random.Random(seed + 10_000)
    links = tuple((s.name, rng.choice((1e6, 1e8, 1e9, math.inf)), rng.choice((0.0, 0.002, 0.3))) for s in job.servers)
    payload = rng.uniform(1e4, 1e7)
    return SyncSpec(links, None, "sync", payload, payload + rng.uniform(0.0, 1e6), rng.randint(1, 3))


def moving_pair(seed: int, availability: bool):
    """Two copies (the runs leave figures on the motions) of a random SplitLoRA job with handovers between 2-4
    servers, with each epoch's closing round."""
    from tests.test_fast_lora_dynamic import moving_job

    (a, cfg), (b, _) = moving_job(seed, availability), moving_job(seed, availability)
    for job in (a, b):
        job.sync = _links(seed, job)
    return a, b, cfg


def _scenario(epochs: int, seed: int) -> dict:
    rng = random.Random(seed)
    link = {"bandwidth": f"{rng.choice([20, 80, 400])} Mbps", "latency": f"{rng.choice([1, 5, 30])} ms"}
    return {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "accumulate": rng.randint(1, 3), "splitlora_cut": 2, "epochs": epochs,
                         "fedavg_every": rng.randint(1, 3)},
            "servers": [{"name": f"s{k}", "flops": f"{10 + 7 * k} TFLOPS", "memory": "24 GiB",
                         "backhaul": {"bandwidth": f"{rng.choice([1, 10, 100])} Mbps", "latency": "3 ms"}}
                        for k in range(rng.randint(2, 3))],
            "devices": [{"name": f"d{t}", "count": 1 + t, "flops": f"{50 + 40 * t} GFLOPS", "memory": "4 GiB",
                         "samples": 8 + 12 * rng.randint(0, 4) + t, "uplink": dict(link), "downlink": dict(link)}
                        for t in range(3)]}


@pytest.mark.parametrize("schedule", ["splitlora", "cenlora", "fedlora"])
@pytest.mark.parametrize(("epochs", "seed"), [(1, 0), (2, 1), (3, 2), (2, 3)])
def test_simulate_closing_rounds_on_the_fast_path(schedule, epochs, seed):
    """Through simulate(): auto takes the fast path and every figure of the result equals the SimPy engine's."""
    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    res = {e: sfsim.simulate(scenario_from_dict(_scenario(epochs, seed), source="s.yaml"), schedule, engine=e)
           for e in ("simpy", "auto")}
    assert (res["auto"].engine, res["auto"].engine_note, res["auto"].sync_rounds) == ("fast", None, epochs)
    assert res["auto"].to_dict() == res["simpy"].to_dict()


def test_cenlora_closing_rounds_random_fleets_equal():
    """CenLoRA's servers (1-3 workers) wait for each epoch's closing round: the fast path equals SimPy."""
    for seed in range(150):
        job, cfg = random_job(seed, ties=seed % 2 == 1)
        rng = random.Random(seed)
        job.servers = [replace(s, count=rng.choice((1, 1, 2, 3))) for s in job.servers]
        ref = simpy_figures(job, cfg, "cenlora")
        rec, makespan = replay(job, cfg, schedule="cenlora")
        assert _figures(rec, makespan) == ref, seed


@pytest.mark.slow
@pytest.mark.parametrize("ties", [False, True])
def test_many_closing_round_fleets_equal(ties):
    """1,000 SplitLoRA and 1,000 CenLoRA fleets per tie setting (the default run takes 150)."""
    for seed in range(1000, 2000):
        check(seed, ties)
        job, cfg = random_job(seed, ties)
        job.servers = [replace(s, count=random.Random(seed).choice((1, 2, 3))) for s in job.servers]
        rec, makespan = replay(job, cfg, schedule="cenlora")
        assert _figures(rec, makespan) == simpy_figures(job, cfg, "cenlora"), seed


def test_what_stays_on_simpy_is_said():
    """training.sync (backhaul sync every N steps) takes the fast path (tests/test_fast_split_sync.py) but with
    handovers between servers (SplitLoRA, FedLoRA), several workers a server (CenLoRA):
    those stay on SimPy, in one line."""
    from sfsim.fast.replay import uncovered
    from sfsim.schedules.splitlora.moves import hands_over
    from tests.test_fast_lora_dynamic import dynamic_network

    job, cfg = random_job(0)
    assert uncovered(None, "splitlora", cfg, job) is None and uncovered(None, "cenlora", cfg, job) is None
    job.sync = replace(job.sync, every=2)
    assert all(uncovered(None, name, cfg, job) is None for name in ("splitlora", "fedlora", "cenlora"))
    job.servers[0] = replace(job.servers[0], count=2)
    assert uncovered(None, "cenlora", cfg, job) == (
        "cenlora's backhaul sync with several workers a server is replayed by the SimPy engine only")
    job.network = dynamic_network(random.Random(0), job, True, handover=True)
    assert uncovered(None, "fedlora", cfg, job) == (
        "fedlora's backhaul sync with handovers between servers is replayed by the SimPy engine only")
    assert hands_over(job.network.motions) and uncovered(None, "splitlora", cfg, job) == (
        "splitlora's backhaul sync with handovers between servers is replayed by the SimPy engine only")


def varying_pair(seed: int, availability: bool):
    """Two copies of a random SplitLoRA job on 2-4 servers with closing rounds, its devices on varying links
    (and availability when asked), none handing over."""
    from tests.test_fast_lora_dynamic import dynamic_network

    out = []
    for _ in range(2):
        job, cfg = random_job(seed, ties=seed % 2 == 1)
        job.network = dynamic_network(random.Random(seed + 20_000), job, availability)
        out.append(job)
    return (*out, cfg)


@pytest.mark.parametrize("availability", [False, True])
@pytest.mark.parametrize("seeds", [range(150), pytest.param(range(150, 1150), marks=pytest.mark.slow)])
def test_splitlora_closing_rounds_on_varying_links_equal(availability, seeds):
    """No handover, time-varying links (and availability: pause, drop): every server waits for each epoch's
    closing round; the fast path replays it epoch by epoch from what the motions held, every figure == SimPy's."""
    from sfsim.fast.replay import uncovered
    from tests.test_fast_lora_dynamic import motions

    for seed in seeds:
        a, b, cfg = varying_pair(seed, availability)
        assert uncovered(None, "splitlora", cfg, b) is None, seed
        want = simpy_figures(a, cfg, "splitlora")
        rec, makespan = replay(b, cfg, schedule="splitlora")
        assert (_figures(rec, makespan), motions(b)) == (want, motions(a)), seed
