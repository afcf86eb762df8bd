"""FedLoRA with ``training.sync`` on a moving network on the fast path (:func:`sfsim.fast.fedsync._moving_run`).

Each seed builds :func:`tests.test_fast_split_sync.fed_sync_job`'s random job (2-4 servers, 1-3 epochs, ``every`` 1-5
in ``sync`` or ``async`` mode) on random varying links with availability (pause or drop churn) and, with ``stay``,
0-2 handovers per device to new links on its own server; replays it on the SimPy engine and on the fast path and
compares every figure, the rounds, their backhaul bytes and what the motions hold (``==``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from sfsim.engine.pool import Engine
from sfsim.fast import replay, uncovered
from sfsim.schedules import get
from tests.test_fast_fedclose import _all
from tests.test_fast_lora import figures
from tests.test_fast_split_sync import fed_sync_job


def moving_job(seed: int, stay: bool):
    """:func:`fed_sync_job` with availability; ``stay``: with handovers, each leg on the device's own server."""
    job, cfg = fed_sync_job(seed, "moving" if stay else "availability")
    if stay:
        for i, m in job.network.motions.items():
            m.legs = [replace(leg, server=job.devices[i].server) for leg in m.legs]
    return job, cfg


def check(seed: int, stay: bool) -> None:
    (a, cfg), (b, _) = moving_job(seed, stay), moving_job(seed, stay)
    assert uncovered(None, "fedlora", cfg, b) is None, seed
    engine = Engine()
    get("fedlora").run(engine, a, cfg)
    want = _all(a, figures(engine, engine.run()), engine.sync)
    rec, makespan = replay(b, cfg, schedule="fedlora")
    assert _all(b, figures(rec, makespan), rec.sync) == want, f"seed {seed} every={a.sync.every} {a.sync.mode}"


@pytest.mark.parametrize("stay", [False, True])
@pytest.mark.parametrize("seeds", [range(200), pytest.param(range(200, 2200), marks=pytest.mark.slow)])
def test_fedlora_sync_with_availability_equal(stay, seeds):
    """Pause and drop churn (and handovers to new links on the device's own server with ``stay``): every figure."""
    for seed in seeds:
        check(seed, stay)


def test_handovers_between_servers_stay_on_simpy():
    """FedLoRA's training.sync with handovers between servers stays on SimPy, in one line."""
    job, cfg = fed_sync_job(0, "moving")
    assert any(leg.server != job.devices[i].server for i, m in job.network.motions.items() for leg in m.legs)
    assert uncovered(None, "fedlora", cfg, job) == (
        "fedlora's backhaul sync with handovers between servers is replayed by the SimPy engine only")
