"""FedLoRA's epoch-end wait (``training.eval_samples``, several epochs) with ``training.sync`` on the fast path.

``sfsim.schedules.fedsync.Server.run``: after each epoch's rounds, drain and closing round but the last's a server
evaluates and saves for its wait (:mod:`sfsim.cost.epochend`) and only then sends its next epoch's first round
(:func:`sfsim.fast.fedsync.server_run` and its Python twins). Each seed builds
:func:`tests.test_fast_split_sync.fed_sync_job`'s random job (2-4 servers, 1-3 epochs, ``every`` 1-5 in ``sync`` or
``async`` mode, a run with more or fewer epochs than the devices') on constant links, time-varying links, or with
availability (pause or drop churn) and handovers to new links on the device's own server, twice; gives each server a
random wait (some none); replays one on the SimPy engine and one on the fast path and compares every figure (the
servers' waits and ends included), the servers that waited, the rounds, their backhaul bytes and what the motions hold
(``==``).
"""

from __future__ import annotations

import random

import pytest

from sfsim.engine.pool import Engine
from sfsim.fast import replay, uncovered
from sfsim.schedules import get
from tests.test_fast_fed_sync_moves import moving_job
from tests.test_fast_fedclose import _all
from tests.test_fast_lora import figures
from tests.test_fast_split_sync import fed_sync_job


def eval_sync_job(seed: int, network: str):
    """A random FedLoRA job with ``training.sync`` on ``network`` (static, varying, availability or stay) and each
    server's epoch-end wait (0 for some: none, a random float, whole seconds)."""
    if network in ("availability", "stay"):
        job, cfg = moving_job(seed, network == "stay")
    else:
        job, cfg = fed_sync_job(seed, network)
    rng = random.Random(seed + 7_000_000)
    waits = {s.name: rng.choice((0.0, rng.uniform(0.01, 20.0), float(rng.randint(1, 5)))) for s in job.servers}
    return job, cfg, waits


def run_both(seed: int, network: str) -> tuple[dict, dict, dict]:
    """(SimPy's figures, the fast path's, the waits) of one seed; each with the servers that waited."""
    (a, cfg, waits), (b, _, _) = eval_sync_job(seed, network), eval_sync_job(seed, network)
    assert uncovered(None, "fedlora", cfg, b) is None, seed
    engine = Engine()
    engine.epoch_end = dict(waits)
    get("fedlora").run(engine, a, cfg)
    want = {**_all(a, figures(engine, engine.run()), engine.sync), "waited": engine.epoch_end_waited}
    rec, makespan = replay(b, cfg, schedule="fedlora", epoch_end=dict(waits))
    got = {**_all(b, figures(rec, makespan), rec.sync), "waited": rec.epoch_end_waited}
    return want, got, {"waits": waits, "every": a.sync.every, "mode": a.sync.mode, "epochs": a.sync.epochs}


def check(seed: int, network: str) -> None:
    want, got, how = run_both(seed, network)
    assert got == want, f"seed {seed} {network} {how}"


@pytest.mark.parametrize("seeds", [range(300), pytest.param(range(300, 3300), marks=pytest.mark.slow)])
def test_sync_epoch_end_wait_equal(seeds):
    """Constant links: the compiled loop's wait (:func:`sfsim.fast.fedsync.server_run`)."""
    for seed in seeds:
        check(seed, "static")


@pytest.mark.parametrize("seeds", [range(120), pytest.param(range(120, 1320), marks=pytest.mark.slow)])
def test_sync_epoch_end_wait_on_varying_links_equal(seeds):
    for seed in seeds:
        check(seed, "varying")


@pytest.mark.parametrize("network", ["availability", "stay"])
@pytest.mark.parametrize("seeds", [range(120), pytest.param(range(120, 1320), marks=pytest.mark.slow)])
def test_sync_epoch_end_wait_with_availability_equal(seeds, network):
    """Pause and drop churn (and with ``stay`` handovers to new links on the device's own server)."""
    for seed in seeds:
        check(seed, network)


@pytest.mark.parametrize("network", ["static", "varying", "availability", "stay"])
def test_the_wait_moves_the_run(network):
    """The waits change the makespan of many fleets on each kind of network (the comparison above is not vacuous),
    and every multi-epoch fleet with a positive wait counts it."""
    moved = 0
    for seed in range(60):
        job, cfg, waits = eval_sync_job(seed, network)
        base, _, _ = eval_sync_job(seed, network)
        rec, makespan = replay(job, cfg, schedule="fedlora", epoch_end=dict(waits))
        if makespan != replay(base, cfg, schedule="fedlora")[1]:
            moved += 1
        assert rec.epoch_end_waited == ({s for s, w in waits.items() if w > 0} if job.sync.epochs > 1 else set())
    assert moved > 15


def test_covered_in_one_line_else():
    """training.sync with the wait takes the fast path; with handovers between servers it stays on SimPy, in one
    line."""
    from types import SimpleNamespace

    scenario = SimpleNamespace(training=SimpleNamespace(eval_samples=50, epochs=2))
    job, cfg, _ = eval_sync_job(0, "static")
    assert uncovered(scenario, "fedlora", cfg, job) is None
    job, cfg = fed_sync_job(0, "moving")
    assert uncovered(scenario, "fedlora", cfg, job) == (
        "fedlora's epoch-end wait (training.eval_samples, several epochs) with handovers between servers is replayed "
        "by the SimPy engine only")
