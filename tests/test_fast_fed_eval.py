"""FedLoRA's epoch-end wait (``training.eval_samples`` over several epochs) on the fast path.

``sfsim.schedules.fedlora.FedGroup.evaluated``: when a server's epoch has ended (its last FedAvg round, and the
closing round when the servers close each epoch) it evaluates and saves for its wait (:mod:`sfsim.cost.epochend`),
and its devices with rounds in the next epoch download the average after it. Each seed builds a random job (constant
or time-varying links, availability, handovers on the device's own server; with or without each epoch's closing
round) twice, gives each server a random wait (some none), replays one on the SimPy engine and one on the fast path,
and compares every figure, the servers that waited, the rounds and (on a network) what the motions hold.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sfsim.fast import uncovered
from tests.test_fast_fedclose import _all, closing_job
from tests.test_fast_lora import random_cfg, random_job


def eval_job(seed: int, network: str, closing: bool):
    """A random FedLoRA job (:func:`tests.test_fast_fedclose.closing_job` with ``closing``, else without backhaul
    rounds) and each server's epoch-end wait (0 for some)."""
    from tests.test_fast_lora_dynamic import dynamic_network

    kind = {"stay": "moving"}.get(network, network)
    if closing:
        job, cfg = closing_job(seed, kind)
        rng = random.Random(seed + 10**6)
    else:
        rng = random.Random(seed)
        job = random_job(rng, ties=seed % 2 == 0)
        if network != "static":
            job.network = dynamic_network(rng, job, kind != "varying", kind == "moving")
        cfg = random_cfg(rng)
    if network == "stay":  # handovers to other links of the device's own server
        for i, m in job.network.motions.items():
            m.legs = [replace(leg, server=job.devices[i].server) for leg in m.legs]
    waits = {s.name: rng.choice((0.0, rng.uniform(0.01, 20.0), float(rng.randint(1, 5)))) for s in job.servers}
    return job, cfg, waits


def check(seed: int, network: str = "static", closing: bool = False) -> None:
    from sfsim.engine.pool import Engine
    from sfsim.fast import replay
    from sfsim.schedules import get
    from tests.test_fast_lora import figures

    (a, cfg, waits), (b, _, _) = eval_job(seed, network, closing), eval_job(seed, network, closing)
    if uncovered(None, "fedlora", cfg, b) is not None:  # a link that may stall for good: SimPy's
        return
    engine = Engine()
    engine.epoch_end = dict(waits)
    get("fedlora").run(engine, a, cfg)
    makespan = engine.run()
    want = figures(engine, makespan) if not closing else _all(a, figures(engine, makespan), engine.sync)
    rec, makespan = replay(b, cfg, schedule="fedlora", epoch_end=dict(waits))
    got = figures(rec, makespan) if not closing else _all(b, figures(rec, makespan), rec.sync)
    assert (got, rec.epoch_end_waited) == (want, engine.epoch_end_waited), f"seed {seed} cfg={cfg} waits={waits}"
    if network != "static" and not closing:
        held = {i: (m.done, m.steps, m.sent, m.send_s, m.recv_s, m.syncs_sent, m.downloads, m.uploads, m.gone)
                for i, m in a.network.motions.items()}
        assert {i: (m.done, m.steps, m.sent, m.send_s, m.recv_s, m.syncs_sent, m.downloads, m.uploads, m.gone)
                for i, m in b.network.motions.items()} == held, seed


@pytest.mark.parametrize("seeds", [range(300), pytest.param(range(300, 3300), marks=pytest.mark.slow)])
@pytest.mark.parametrize("closing", [False, True])
def test_static_epoch_end_wait_equal(seeds, closing):
    for seed in seeds:
        check(seed, "static", closing)


@pytest.mark.parametrize("seeds", [range(150), pytest.param(range(150, 1650), marks=pytest.mark.slow)])
@pytest.mark.parametrize("closing", [False, True])
def test_varying_epoch_end_wait_equal(seeds, closing):
    for seed in seeds:
        check(seed, "varying", closing)


@pytest.mark.parametrize("seeds", [range(150), pytest.param(range(150, 1650), marks=pytest.mark.slow)])
@pytest.mark.parametrize("network", ["availability", "stay"])
@pytest.mark.parametrize("closing", [False, True])
def test_moving_epoch_end_wait_equal(seeds, network, closing):
    """Availability (pause, drop) and handovers on the device's own server: the compiled event loop's wait
    (:func:`sfsim.fast.fedmoves._evaluated`)."""
    for seed in seeds:
        check(seed, network, closing)


def test_the_wait_moves_the_run():
    """The waits change the figures of most multi-epoch fleets (the comparison above is not vacuous)."""
    from sfsim.fast import replay

    moved = 0
    for seed in range(100):
        job, cfg, waits = eval_job(seed, "static", False)
        base, _, _ = eval_job(seed, "static", False)
        if replay(job, cfg, schedule="fedlora", epoch_end=waits)[1] != replay(base, cfg, schedule="fedlora")[1]:
            moved += 1
    assert moved > 30


def test_uncovered_keeps_moving_fleets_on_simpy():
    """With handovers between servers the wait stays on the SimPy engine, in one line (with training.sync:
    tests/test_fast_fed_sync_eval.py)."""
    from types import SimpleNamespace

    scenario = SimpleNamespace(training=SimpleNamespace(eval_samples=50, epochs=2))
    job, cfg = next((j, c) for j, c in (closing_job(s, "moving") for s in range(50)) if any(
        leg.server != j.devices[i].server for i, m in j.network.motions.items() for leg in m.legs))
    assert uncovered(scenario, "fedlora", cfg, job) == (
        "fedlora's epoch-end wait (training.eval_samples, several epochs) with handovers between servers is replayed "
        "by the SimPy engine only")
    job, cfg, _ = eval_job(3, "stay", True)
    assert uncovered(scenario, "fedlora", cfg, job) is None
