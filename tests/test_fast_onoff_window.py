"""On/off availability drawn by the fast path's kernels in a window (:mod:`sfsim.fast.mtwist`, :mod:`sfsim.fast.rates`).

The kernels draw Python's Mersenne Twister stream themselves, so the steps equal ``OnOff``'s bit for bit;
a question before the window's start redraws from the node's first state. Whole replays against SimPy:
``test_fast_dynamic.py``, ``test_fast_lora_dynamic.py``, ``test_fast_handover.py``.
"""

from __future__ import annotations

import random

import numpy as np

from sfsim.fast import rates
from sfsim.fast.mtwist import expovariate
from sfsim.network.availability import OnOff


def test_the_twister_draws_pythons_exponentials():
    for seed in range(10):
        rng = random.Random(f"seed:{seed}")
        rng.random()
        state = rng.getstate()[1]
        M, MI = np.zeros((2, 624), np.uint32), np.array([[state[624], 0]], np.int64)
        M[0] = state[:624]
        for k in range(1500):  # past two refills of the 624 words
            lambd = 1.0 / (0.5, 3.0, 30.0)[k % 3]
            assert expovariate(M, MI, 0, lambd) == rng.expovariate(lambd)


def _segments(seed: int, drawn_before: float, questions: int) -> tuple[int, int]:
    """Ask the fast path's node and a fresh ``OnOff`` the same random times (mostly forward, some back); returns
    (disagreements, steps the node keeps at most)."""
    means = (2.0 + seed % 7, 0.5 + seed % 3)
    ahead = OnOff(*means, random.Random(seed))
    ahead.segment(drawn_before)  # steps drawn before the replay (the node starts from them)
    prog = rates.Program()
    node = prog.add(ahead)
    P = prog.arrays()
    ref, rng, t, bad = OnOff(*means, random.Random(seed)), random.Random(seed + 1), 0.0, 0
    for _ in range(questions):
        t = t + rng.uniform(-2.0, 6.0) if rng.random() < 0.97 else rng.uniform(0.0, t)
        t = max(0.0, t)
        bad += rates.segment(P, node, t) != ref.segment(t)
    assert len(ahead.times) == len(ahead.rates)  # the Python process itself drew nothing more
    return bad, int(P[0][node, rates._CAP])


def test_the_window_answers_as_the_process():
    for seed in range(40):
        bad, cap = _segments(seed, [0.0, 0.0, 25.0][seed % 3], 2000)
        assert bad == 0, seed
        assert cap <= rates.WINDOW + 40  # the window, not the run (some 1,000 steps drawn)
