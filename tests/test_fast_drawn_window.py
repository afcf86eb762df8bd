"""Gilbert-Elliott channels and fading drawn by the fast path's kernels in a window (:mod:`sfsim.fast.rates`).

The kernels draw Python's Mersenne Twister stream themselves (``expovariate``, ``gauss`` with its cached second
value: :mod:`sfsim.fast.mtwist`), so every step equals the rate's own bit for bit; a question before the window's
start redraws from the node's first state. Each seed builds the same rate twice (some having drawn steps first, some
with the batch draw of :mod:`sfsim.fast.draws` installed, some inside a product), asks the fast path's node and the
fresh rate the same random times (mostly forward, some back) and compares every answer (``==``). Whole replays
against SimPy: ``test_fast_dynamic.py``, ``test_fast_lora_dynamic.py``, ``test_fast_handover.py``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from sfsim.fast import rates
from sfsim.fast.draws import compile_draws
from sfsim.fast.mtwist import gauss
from sfsim.network.linkrate import Constant, Fading, FadingRate, GilbertElliott, GilbertElliottRate, Product


def test_the_twister_draws_pythons_gauss():
    for seed in range(10):
        rng = random.Random(f"seed:{seed}")
        if seed % 2:
            rng.gauss(0.0, 1.0)  # its pair's second value cached
        _, words, cached = rng.getstate()
        M, MI = np.zeros((2, 624), np.uint32), np.array([[words[624], 0]], np.int64)
        M[0] = words[:624]
        MG = np.array([[cached or 0.0, float(cached is not None), 0.0, 0.0]])
        for _ in range(1500):  # past two refills of the 624 words
            assert 0.0 + gauss(M, MI, MG, 0) * 3.5 == rng.gauss(0.0, 3.5)


def _rate(seed: int):
    """A Fading, exponential Gilbert-Elliott or product rate (the same for one seed), its generator used a little."""
    pick, rng = random.Random(-seed - 1), random.Random(seed)
    for _ in range(seed % 5):
        rng.random() if seed % 2 else rng.gauss(0.0, 1.0)
    if seed % 3 == 0:
        return FadingRate(Fading(sigma_db=pick.uniform(0.1, 12.0), coherence=pick.choice((0.1, 0.5, 2.0, 3.7))), rng)
    ge = GilbertElliottRate(GilbertElliott(good=pick.uniform(1e5, 1e8), bad=pick.uniform(1e3, 1e5),
                                           mean_good=pick.uniform(0.05, 20.0), mean_bad=pick.uniform(0.05, 5.0)), rng)
    if seed % 3 == 1:
        return ge
    return Product(Product(Constant(3.0), ge), FadingRate(Fading(sigma_db=4.0, coherence=2.0), random.Random(seed + 7)))


def _leaves(rate) -> list:
    return _leaves(rate.a) + _leaves(rate.b) if isinstance(rate, Product) else [rate]


def _segments(seed: int, questions: int) -> tuple[int, int, int]:
    """Ask the fast path's node and a fresh rate the same times; returns (disagreements, windowed nodes, the most
    steps one has drawn past its window's start)."""
    ahead, ref = _rate(seed), _rate(seed)
    if seed % 4 == 1:  # the batch draw installed (its stream is the one the kernels go on from)
        compile_draws([ahead])
    if seed % 4 >= 2:  # steps drawn before the replay (the node starts from them)
        ahead.segment([0.0, 7.0, 60.0][seed % 3])
    before = [len(r.times) for r in _leaves(ahead) if hasattr(r, "times")]
    prog = rates.Program()
    node = prog.add(ahead)
    P = prog.arrays()
    K = P[0]
    windowed = [k for k in range(K.shape[0]) if K[k, rates._KIND] in (rates.FLIPS, rates.FADES)]
    rng, t, bad, past = random.Random(seed + 1), 0.0, 0, 0
    for _ in range(questions):
        u = rng.random()  # mostly short steps forward, some long ones, now and then back
        t = max(0.0, t + rng.uniform(-2.0, 6.0)) if u < 0.975 else t + rng.uniform(0.0, 300.0) if u < 0.995 else \
            rng.uniform(0.0, t)
        bad += rates.segment(P, node, t) != ref.segment(t)
        past = max(past, max(int(K[k, rates._BASE]) for k in windowed))
    assert [len(r.times) for r in _leaves(ahead) if hasattr(r, "times")] == before  # Python drew nothing more
    assert P[2].shape[0] == sum(before) + rates.WINDOW * len(windowed) + 1  # the steps' room: the window, not the run
    return bad, len(windowed), past


@pytest.mark.parametrize("seeds", [range(60), pytest.param(range(60, 1060), marks=pytest.mark.slow)])
def test_the_window_answers_as_the_rate(seeds):
    slid = 0
    for seed in seeds:
        bad, windowed, past = _segments(seed, 1500)
        assert bad == 0, seed
        assert windowed == (2 if seed % 3 == 2 else 1), seed
        slid += past > 0
    assert slid > 0.9 * len(seeds)  # most windows moved on (hundreds to thousands of steps drawn)


def test_other_drawn_rates_stay_drawn_ahead():
    """A geometric Gilbert-Elliott channel and a generator of its own kind are drawn by the caller, as before."""

    class Mine(random.Random):
        def random(self):
            return 0.5

    geo = GilbertElliottRate(GilbertElliott(good=1e6, bad=1e4, step=0.1, p_good_bad=0.1, p_bad_good=0.5),
                             random.Random(2))
    own = FadingRate(Fading(sigma_db=3.0, coherence=1.0), Mine(3))
    prog = rates.Program()
    assert [prog.rows[prog.add(r)][0] for r in (geo, own)] == [rates.DRAWN, rates.DRAWN]
