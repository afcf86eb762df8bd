"""SplitLoRA's epoch-end wait (``training.eval_samples`` over several epochs) on the fast path, without handovers
between servers: each server waits its seconds (:mod:`sfsim.cost.epochend`) after each epoch but the last, after the
epoch's backhaul rounds when it has them (``Server._epoch_end``), in :mod:`sfsim.fast.splitlora` (no backhaul),
:func:`sfsim.fast.closing.replay_closing` (each epoch's closing round) and :mod:`sfsim.fast.splitsync`
(``training.sync``). Each seed builds a random job of 2-4 servers (one may have no client), 1-8 devices over 1-3
epochs of their own, random waits (0 on some servers, ties with the fleet's times on some), on constant links or on
time-varying links with availability, and compares every figure, the rounds and their bytes, who waited, and what the
motions hold (``==``) with the SimPy engine's."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sfsim.engine.pool import Engine
from sfsim.fast import replay, uncovered
from sfsim.schedules import Job, ReplayConfig, get
from tests.test_fast_split_sync import sync_job
from tests.test_fast_sync import random_job

KINDS = ("none", "closing", "sync")
"""No backhaul (the servers run apart), each epoch's closing round, ``training.sync``."""


def job_of(seed: int, kind: str, network: bool) -> tuple[Job, ReplayConfig]:
    """A random SplitLoRA job of ``kind`` (:data:`KINDS`); ``network``: time-varying links and availability, each
    device on its own server (handovers to new links there)."""
    from tests.test_fast_lora_dynamic import dynamic_network

    job, cfg = sync_job(seed, seed % 2 == 1) if kind == "sync" else random_job(seed, seed % 2 == 1)
    if kind == "none":
        job.sync = None
    if network:
        rng = random.Random(seed + 20_000)
        job.network = dynamic_network(rng, job, rng.random() < 0.7, handover=rng.random() < 0.5)
        for i, m in job.network.motions.items():
            m.legs = [replace(leg, server=job.devices[i].server) for leg in m.legs]
    return job, cfg


def waits_of(seed: int, job: Job) -> dict[str, float]:
    rng = random.Random(seed + 30_000)
    return {s.name: rng.choice((0.0, 0.25, 0.5, 1.0, rng.uniform(0.01, 2.0))) for s in job.servers}


def figures(rec, makespan: float) -> dict:
    """Every figure the run leaves (the rounds when it has them) and the servers that waited."""

    sync = getattr(rec, "sync", None)
    return {"makespan": makespan, "server_busy": rec.server_busy, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "down": rec.down_bytes, "waited": set(rec.epoch_end_waited),
            "rounds": None if sync is None else (sync.rounds, dict(sync.bytes)),
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items() if m.value is not None}}


def simpy_figures(job: Job, cfg: ReplayConfig, waits: dict[str, float]) -> dict:
    engine = Engine()
    engine.epoch_end = dict(waits)
    get("splitlora").run(engine, job, cfg)
    makespan = engine.run()
    return figures(engine, makespan)


def check(seed: int, kind: str, network: bool) -> bool:
    """Fast against SimPy on one random job; True when some server waited."""
    from tests.test_fast_lora_dynamic import motions

    (a, cfg), (b, _) = job_of(seed, kind, network), job_of(seed, kind, network)
    waits = waits_of(seed, a)
    assert uncovered(None, "splitlora", cfg, b) is None, seed
    want = simpy_figures(a, cfg, waits)
    rec, makespan = replay(b, cfg, schedule="splitlora", epoch_end=waits)
    got = figures(rec, makespan)
    assert (got, motions(b) if network else None) == (want, motions(a) if network else None), \
        f"seed {seed} {kind} network={network} waits={waits} cfg={cfg}"
    return bool(want["waited"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seeds", [range(200), pytest.param(range(200, 2200), marks=pytest.mark.slow)])
def test_epoch_end_waits_constant_links_equal(kind, seeds):
    waited = sum(check(seed, kind, False) for seed in seeds)
    assert waited >= 0.4 * len(seeds)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seeds", [range(60), pytest.param(range(60, 660), marks=pytest.mark.slow)])
def test_epoch_end_waits_dynamic_network_equal(kind, seeds):
    """Time-varying links, availability (pause, drop) and handovers to new links on the device's own server."""
    waited = sum(check(seed, kind, True) for seed in seeds)
    assert waited >= 0.4 * len(seeds)


class _Evaluated:
    class training:  # noqa: N801
        eval_samples, epochs = 8, 2


def test_what_stays_on_simpy_is_said():
    """With handovers between servers the wait stays on SimPy, with its line; without them it is replayed."""
    from tests.test_fast_lora_dynamic import moving_job
    from tests.test_fast_sync import _links

    job, cfg = job_of(3, "closing", True)
    assert uncovered(_Evaluated(), "splitlora", cfg, job) is None
    moving, cfg = moving_job(1, False)
    moving.sync = _links(1, moving)
    assert uncovered(_Evaluated(), "splitlora", cfg, moving) == (
        "the epoch-end wait (training.eval_samples, several epochs) of SplitLoRA with handovers between servers is "
        "replayed by the SimPy engine only")


@pytest.mark.parametrize("training", [{"sync": None, "backhaul": False}, {"sync": None},
                                      {"sync": {"every": 2, "mode": "sync"}}, {"sync": {"every": 1, "mode": "async"}},
                                      {"sync": None, "client_order": "sequential"}])
def test_simulate_replays_the_wait_on_the_fast_path(training):
    """sfsim.simulate on a fresh two-server fleet, 3 epochs, training.eval_samples: auto takes the fast path, and every
    figure (the waits in the servers' busy time) equals the SimPy engine's."""
    import sfsim
    from tests.test_epoch_end_wait import sc_of, two_servers

    sync, backhaul = training.pop("sync"), training.pop("backhaul", True)
    data = two_servers(sync={"every": 1, "mode": "sync"} if backhaul else None, **training)
    if sync is None:
        data["training"].pop("sync", None)
    else:
        data["training"]["sync"] = sync
    sc = sc_of(data)
    fast, slow = (sfsim.simulate(sc, "splitlora", splits=2, engine=e) for e in ("auto", "simpy"))
    assert (fast.engine, fast.engine_note, slow.engine) == ("fast", None, "simpy")
    assert fast.to_dict() == slow.to_dict() and fast.epoch_end_s == slow.epoch_end_s
    assert min(fast.epoch_end_s.values()) > 0 and len(fast.epoch_end_s) == 2
