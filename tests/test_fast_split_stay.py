"""SplitLoRA handovers that keep a device on its own server (new links from each handover's instant) on the fast path.

Without a move to another server each SplitLoRA server runs its loop alone (``Server.run``), every transfer on
the leg holding when it starts; the per-server kernel (:mod:`sfsim.fast.splitlora`) does the same and counts the
activation uploads started before each handover (``Motion.switched_at``). Each seed builds a random job twice
(1-3 servers; every device 1-3 legs, all on its server; availability when asked), replays one on the SimPy
engine and one on the fast path, and compares every figure and what the motions hold.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sfsim.fast import uncovered
from tests.test_fast_lora import fast_figures, random_cfg, random_job, simpy_figures
from tests.test_fast_lora_dynamic import ORDERS, dynamic_network, motions


def staying_job(seed: int, availability: bool, **kw):
    """A random SplitLoRA job whose devices hand over (0-2 times) to new links on their own server."""
    rng = random.Random(seed)
    job = random_job(rng, ties=seed % 2 == 0)
    job.network = dynamic_network(rng, job, availability, handover=True)
    for i, m in job.network.motions.items():
        m.legs = [replace(leg, server=job.devices[i].server) for leg in m.legs]
    return job, random_cfg(rng, **kw)


def check(seeds, availability: bool, **kw) -> int:
    """Fast against SimPy per seed; returns how many fleets had a handover."""
    moved = 0
    for seed in seeds:
        (a, cfg), (b, _) = staying_job(seed, availability, **kw), staying_job(seed, availability, **kw)
        assert uncovered(None, "splitlora", cfg, b) is None, f"seed {seed}"
        want, got = simpy_figures(a, cfg, "splitlora"), fast_figures(b, cfg, "splitlora")
        assert (want, motions(a)) == (got, motions(b)), f"seed {seed} cfg={cfg}"
        moved += any(len(m.legs) > 1 for m in a.network.motions.values())
    return moved


@pytest.mark.parametrize("availability", [False, True])
@pytest.mark.parametrize(("order", "policy"), ORDERS)
@pytest.mark.parametrize("seeds", [range(60), pytest.param(range(60, 1060), marks=pytest.mark.slow)])
def test_handovers_on_own_server_equal(availability, order, policy, seeds):
    """Both client orders and every server order, with and without availability: 24 x 60 fleets (slow: 1,000)."""
    assert check(seeds, availability, client_order=order, policy=policy) >= 0.6 * len(seeds)


def test_switched_at_counts_uploads_before_each_handover():
    """The motions' ``switched_at`` (the result's handovers) is filled on the fast path, and not all zero."""
    counts = []
    for seed in range(40):
        job, cfg = staying_job(seed, False)
        fast_figures(job, cfg, "splitlora")
        counts += [u for m in job.network.motions.values() for u in m.switched_at]
    assert len(counts) >= 20 and any(counts)
