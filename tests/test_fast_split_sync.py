"""SplitLoRA with ``training.sync`` on the fast path (:mod:`sfsim.fast.splitsync`, :mod:`sfsim.fast.lockstep`).

Each seed builds a random job of 2-4 servers (one may have no client, a backhaul link may be infinitely fast),
1-8 devices of unequal times and samples, 1-3 epochs, ``every`` 1-5 in ``sync`` or ``async`` mode, both client
orders and the server policies, replays it on the SimPy engine and on the fast path, and compares every figure,
the rounds and their backhaul bytes (``==``).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sfsim.engine.pool import Engine
from sfsim.fast import replay, uncovered
from sfsim.schedules import get
from tests.test_fast_sync import _figures, random_job, simpy_figures


def sync_job(seed: int, ties: bool = False):
    """:func:`tests.test_fast_sync.random_job` with ``training.sync``: every 1-5, sync or async."""
    job, cfg = random_job(seed, ties)
    rng = random.Random(seed + 77_000)
    job.sync = replace(job.sync, every=rng.randint(1, 5), mode=rng.choice(("sync", "async")))
    if rng.random() < 0.3:
        job.sync = replace(job.sync, every=1, mode="sync")  # joint: the gradients averaged before each step
    policy = rng.choice(("fifo", "pool", "proportional", "paced-proportional", "round-robin", "paced-round-robin"))
    return job, replace(cfg, policy=policy)


def check(seed: int, ties: bool = False) -> None:
    (a, cfg), (b, _) = sync_job(seed, ties), sync_job(seed, ties)
    assert uncovered(None, "splitlora", cfg, b) is None
    want = simpy_figures(a, cfg, "splitlora")
    rec, makespan = replay(b, cfg, schedule="splitlora")
    assert _figures(rec, makespan) == want, f"seed {seed} every={a.sync.every} {a.sync.mode} cfg={cfg}"


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seeds", [range(300), pytest.param(range(300, 3300), marks=pytest.mark.slow)])
def test_splitlora_sync_random_fleets_equal(seeds, ties):
    for seed in seeds:
        check(seed, ties)


def varying_sync_pair(seed: int, availability: bool, stay: bool = False):
    """Two copies (the runs leave figures on the motions) of :func:`sync_job` on time-varying links, with pause or
    drop churn when ``availability``; with ``stay`` devices hand over 0-2 times to new links on their own server
    (no move to another server)."""
    from tests.test_fast_lora_dynamic import dynamic_network

    out = []
    for _ in range(2):
        job, cfg = sync_job(seed, ties=seed % 2 == 1)
        job.network = dynamic_network(random.Random(seed + 20_000), job, availability, handover=stay)
        for i, m in job.network.motions.items():
            m.legs = [replace(leg, server=job.devices[i].server) for leg in m.legs]
        out.append(job)
    return (*out, cfg)


@pytest.mark.parametrize("stay", [False, True])
@pytest.mark.parametrize("availability", [False, True])
@pytest.mark.parametrize("seeds", [range(75), pytest.param(range(75, 1075), marks=pytest.mark.slow)])
def test_splitlora_sync_on_varying_links_equal(availability, stay, seeds):
    """Time-varying links (and availability: pause, drop; handovers to new links on the device's own server with
    ``stay``): every figure and what the motions hold (``switched_at`` too)."""
    from tests.test_fast_lora_dynamic import motions

    for seed in seeds:
        a, b, cfg = varying_sync_pair(seed, availability, stay)
        assert uncovered(None, "splitlora", cfg, b) is None, seed
        want = simpy_figures(a, cfg, "splitlora")
        rec, makespan = replay(b, cfg, schedule="splitlora")
        assert (_figures(rec, makespan), motions(b)) == (want, motions(a)), seed


def fed_sync_job(seed: int, network: str = "static"):
    """:func:`tests.test_fast_fedclose.closing_job` (2-4 servers, every device trains each of the run's epochs; on
    ``network`` static or varying links) with ``training.sync``: every 1-5, sync or async; one seed in five gives the
    devices more epochs than the run's, or fewer."""
    from tests.test_fast_fedclose import closing_job

    job, cfg = closing_job(seed, network)
    rng = random.Random(seed + 99_000)
    job.sync = replace(job.sync, every=rng.randint(1, 5), mode=rng.choice(("sync", "async")))
    if rng.random() < 0.3:
        job.sync = replace(job.sync, every=1, mode="sync")
    if rng.random() < 0.2:
        job.sync = replace(job.sync, epochs=max(1, job.sync.epochs + rng.choice((-1, 1))))
    return job, cfg


def fed_check(seed: int, network: str = "static") -> None:
    from tests.test_fast_fedclose import _all
    from tests.test_fast_lora import figures

    (a, cfg), (b, _) = fed_sync_job(seed, network), fed_sync_job(seed, network)
    assert uncovered(None, "fedlora", cfg, b) is None
    engine = Engine()
    get("fedlora").run(engine, a, cfg)
    want = _all(a, figures(engine, engine.run()), engine.sync)
    rec, makespan = replay(b, cfg, schedule="fedlora")
    assert _all(b, figures(rec, makespan), rec.sync) == want, f"seed {seed} every={a.sync.every} {a.sync.mode}"


@pytest.mark.parametrize("seeds", [range(500), pytest.param(range(500, 5500), marks=pytest.mark.slow)])
def test_fedlora_sync_random_fleets_equal(seeds):
    for seed in seeds:
        fed_check(seed)


@pytest.mark.parametrize("seeds", [range(200), pytest.param(range(200, 2200), marks=pytest.mark.slow)])
def test_fedlora_sync_on_varying_links_equal(seeds):
    """Time-varying links (no handover, no availability): every figure, the rounds and what the motions hold."""
    for seed in seeds:
        fed_check(seed, "varying")


def test_what_stays_on_simpy():
    """FedLoRA's training.sync with handovers between servers stays on SimPy, in one line."""
    job, cfg = fed_sync_job(0, "moving")
    assert uncovered(None, "fedlora", cfg, job) == (
        "fedlora's backhaul sync with handovers between servers is replayed by the SimPy engine only")


def cen_check(seed: int, ties: bool = False) -> None:
    (a, cfg), (b, _) = sync_job(seed, ties), sync_job(seed, ties)
    assert uncovered(None, "cenlora", cfg, b) is None
    want = simpy_figures(a, cfg, "cenlora")
    rec, makespan = replay(b, cfg, schedule="cenlora")
    assert _figures(rec, makespan) == want, f"seed {seed} every={a.sync.every} {a.sync.mode} cfg={cfg}"


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seeds", [range(250), pytest.param(range(250, 2750), marks=pytest.mark.slow)])
def test_cenlora_sync_random_fleets_equal(seeds, ties):
    """One worker a server (2-4 servers, one maybe without data), every 1-5, sync or async, 1-3 epochs."""
    for seed in seeds:
        cen_check(seed, ties)


def test_cenlora_sync_with_several_workers_stays_on_simpy():
    job, cfg = sync_job(0)
    job.servers[job.devices[0].server] = replace(job.servers[job.devices[0].server], count=2)
    assert uncovered(None, "cenlora", cfg, job) == (
        "cenlora's backhaul sync with several workers a server is replayed by the SimPy engine only")
