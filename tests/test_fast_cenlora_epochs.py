"""CenLoRA's epoch-end waits (``training.eval_samples`` over several epochs, no backhaul rounds) on the fast path
(:func:`sfsim.fast.cenlora.replay_epochs`): each server trains one epoch at a time and waits its
:mod:`sfsim.cost.epochend` seconds between two, as ``sfsim.schedules.cenlora._by_epochs``. On seeded random fleets of
1-4 servers with 1-3 workers, devices of 0-4 epochs (some partial last micro-batches, some without data), random waits
(0 on some servers, ties with the fleet's times on some): every figure equals the SimPy engine's (``==``). With
backhaul rounds between 2-4 servers (each epoch's closing round, 1-3 workers a server; or ``training.sync``, one
worker a server) each server waits after its epoch's closing rounds (:func:`sfsim.fast.closing.replay_cenlora`,
:func:`sfsim.fast.censync.replay`): the same figures, the rounds and each server's backhaul bytes too."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.fast.replay import replay, uncovered
from sfsim.schedules import Job, ReplayConfig, get


def _t(rng: random.Random, ties: bool, scale: float) -> float:
    return rng.choice((0.25, 0.5, 1.0)) * scale if ties else rng.uniform(0.01, 1.0) * scale


def random_job(seed: int, ties: bool) -> tuple[Job, ReplayConfig, dict[str, float]]:
    """1-4 servers (1-3 workers, some without a step time), 0-8 devices of 0-5 micro-batches an epoch over 0-4 epochs,
    and each server's wait (0.0 on some)."""
    rng = random.Random(seed)
    ns = rng.randint(1, 4)
    servers = [ServerTimes(f"s{k}", rng.choice((1, 1, 2, 3)), _t(rng, ties, 0.2) if rng.random() < 0.8 else 0.0)
               for k in range(ns)]
    devices = []
    for i in range(rng.randint(0, 8)):
        per, epochs = rng.randint(0, 5), rng.randint(0, 4)
        devices.append(DeviceTimes(f"d{i}", rng.randrange(ns), n=per * epochs, per_epoch=per,
                                   last=rng.choice((1.0, 1.0, 0.5)) if per else 1.0, srv_f=_t(rng, ties, 0.3),
                                   srv_b=_t(rng, ties, 0.3), srv_w=_t(rng, ties, 0.3) if rng.random() < 0.8 else 0.0))
    cfg = ReplayConfig(accumulate=rng.randint(1, 3), decompose=rng.random() < 0.6)
    waits = {s.name: rng.choice((0.0, 0.5, 1.0, rng.uniform(0.01, 2.0))) for s in servers}
    return Job(devices, servers), cfg, waits


def _figures(sim, makespan: float) -> dict:
    return {"makespan": makespan, "server_busy": dict(sim.server_busy), "device_busy": dict(sim.device_busy),
            "up": dict(sim.up_bytes), "down": dict(sim.down_bytes), "waited": set(sim.epoch_end_waited),
            "mixing": {k: (m.value, m.total) for k, m in sim.mixing.items()}}


def simpy_figures(job: Job, cfg: ReplayConfig, waits: dict[str, float]) -> dict:
    engine = Engine()
    engine.epoch_end = dict(waits)
    get("cenlora").run(engine, job, cfg)
    return _figures(engine, engine.run())


def check(seed: int, ties: bool) -> bool:
    """Whether the seed's fleet went epoch by epoch (some server waits, some device has 2+ epochs); asserts equality."""
    job, cfg, waits = random_job(seed, ties)
    assert uncovered(None, "cenlora", cfg, job) is None
    ref = simpy_figures(job, cfg, waits)
    rec, makespan = replay(job, cfg, schedule="cenlora", epoch_end=waits)
    assert _figures(rec, makespan) == ref, seed
    return bool(ref["waited"])


@pytest.mark.parametrize("ties", [False, True])
def test_epoch_end_waits_random_fleets_equal(ties):
    waited = [check(seed, ties) for seed in range(300)]
    assert sum(waited) >= 150, sum(waited)  # most fleets wait between epochs (the rest: one epoch, or no wait)


@pytest.mark.slow
@pytest.mark.parametrize("ties", [False, True])
def test_many_epoch_end_fleets_equal(ties):
    for seed in range(300, 3300):
        check(seed, ties)


def _scenario(epochs: int, seed: int) -> dict:
    """2-3 servers (1-2 workers, no backhaul), 3 device types of unequal samples, evaluation on 12-40 rows."""
    rng = random.Random(seed)
    link = {"bandwidth": "50 Mbps", "latency": "5 ms"}
    return {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "accumulate": rng.randint(1, 3), "epochs": epochs,
                         "eval_samples": rng.choice((12, 40))},
            "servers": [{"name": f"s{k}", "flops": f"{10 + 7 * k} TFLOPS", "memory": "24 GiB", "count": rng.randint(1, 2)}
                        for k in range(rng.randint(2, 3))],
            "devices": [{"name": f"d{t}", "count": 1 + t, "flops": f"{50 + 40 * t} GFLOPS", "memory": "4 GiB",
                         "samples": 8 + 12 * rng.randint(0, 4) + t, "uplink": dict(link), "downlink": dict(link)}
                        for t in range(3)]}


@pytest.mark.parametrize(("epochs", "seed"), [(2, 0), (3, 1), (2, 2)])
def test_simulate_takes_the_fast_path_with_the_simpy_figures(epochs, seed):
    """Through simulate(): auto replays CenLoRA's epoch-end waits on the fast path, and the result (every figure,
    the waits, the servers' busy time with them) equals the SimPy engine's."""
    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    res = {e: sfsim.simulate(scenario_from_dict(_scenario(epochs, seed), source="s.yaml"), "cenlora", engine=e)
           for e in ("simpy", "auto")}
    assert (res["auto"].engine, res["auto"].engine_note) == ("fast", None)
    assert res["simpy"].epoch_end_s and res["auto"].to_dict() == res["simpy"].to_dict()


def rounds_job(seed: int, ties: bool, joint: bool) -> tuple[Job, ReplayConfig, dict[str, float]]:
    """``joint``: tests.test_fast_split_sync's training.sync fleets (one worker a server); else tests.test_fast_sync's
    closing-round fleets with 1-3 workers a server; each server's wait (0.0 on some)."""
    from tests.test_fast_split_sync import sync_job
    from tests.test_fast_sync import random_job as closing_job

    job, cfg = sync_job(seed, ties) if joint else closing_job(seed, ties)
    rng = random.Random(seed + 31_000)
    if not joint:
        job.servers = [replace(s, count=rng.choice((1, 1, 2, 3))) for s in job.servers]
    return job, cfg, {s.name: rng.choice((0.0, 0.5, 1.0, rng.uniform(0.01, 2.0))) for s in job.servers}


def rounds_check(seed: int, ties: bool, joint: bool) -> bool:
    """Assert the fast path's figures equal SimPy's; whether some server waited."""
    from tests.test_fast_sync import _figures as closing_figures

    (a, cfg, waits), (b, _, _) = rounds_job(seed, ties, joint), rounds_job(seed, ties, joint)
    assert uncovered(None, "cenlora", cfg, b) is None
    engine = Engine()
    engine.epoch_end = dict(waits)
    get("cenlora").run(engine, a, cfg)
    makespan = engine.run()
    want = closing_figures(engine, makespan) | {"waited": engine.epoch_end_waited}
    rec, makespan = replay(b, cfg, schedule="cenlora", epoch_end=waits)
    assert closing_figures(rec, makespan) | {"waited": rec.epoch_end_waited} == want, f"seed {seed} joint={joint}"
    return bool(want["waited"])


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seeds", [range(150), pytest.param(range(150, 2150), marks=pytest.mark.slow)])
def test_epoch_end_waits_after_backhaul_rounds_equal(seeds, ties, joint):
    waited = [rounds_check(seed, ties, joint) for seed in seeds]
    assert sum(waited) >= len(seeds) // 3, sum(waited)  # 2-3 epochs and a wait on some server (else: no wait)
