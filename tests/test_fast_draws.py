"""The random rates drawn in compiled batches (:mod:`sfsim.fast.draws`) are the ones Python's ``random`` draws.

Each seed builds the same Fading or Gilbert-Elliott rate twice from a seeded ``random.Random`` (some having drawn
first, so that the stream starts mid-way or with ``gauss``' cached value), gives one the batch ``_draw``, reads both
at the same random increasing times (short and long jumps: batches end anywhere, the 624 words are refilled many
times) and compares every segment and every step both drew (``==``).
"""

from __future__ import annotations

import random

import pytest

from sfsim.fast.draws import compile_draws
from sfsim.network.linkrate import Constant, Fading, FadingRate, GilbertElliott, GilbertElliottRate, Product


def _rng(seed: int) -> random.Random:
    """A seeded generator, some of whose words (or one gauss, leaving its pair cached) are used already."""
    rng = random.Random(seed)
    for _ in range(seed % 5):
        rng.random() if seed % 2 else rng.gauss(0.0, 1.0)
    return rng


def _rate(seed: int):
    pick = random.Random(-seed - 1)
    if seed % 3 == 0:
        spec = Fading(sigma_db=pick.uniform(0.1, 12.0), coherence=pick.choice((0.1, 0.5, 2.0, 3.7)))
        return FadingRate(spec, _rng(seed))
    spec = GilbertElliott(good=pick.uniform(1e5, 1e8), bad=pick.uniform(1e3, 1e5), mean_good=pick.uniform(0.05, 20.0),
                          mean_bad=pick.uniform(0.05, 5.0))
    ge = GilbertElliottRate(spec, _rng(seed))
    if seed % 3 == 1:
        return ge
    return Product(Product(Constant(3.0), ge), FadingRate(Fading(sigma_db=4.0, coherence=2.0), _rng(seed + 7)))


def _steps(rate) -> list:
    if isinstance(rate, Product):
        return _steps(rate.a) + _steps(rate.b)
    return [(rate.times, rate.rates)] if hasattr(rate, "times") else []


def check(seed: int) -> None:
    want, got = _rate(seed), _rate(seed)
    compile_draws([got])
    pick, t = random.Random(seed), 0.0
    for _ in range(pick.randint(1, 60)):
        t += pick.choice((pick.uniform(0.0, 2.0), pick.uniform(0.0, 300.0), pick.uniform(0.0, 5000.0)))
        assert got.segment(t) == want.segment(t), f"seed {seed} t={t}"
    for (wt, wr), (gt, gr) in zip(_steps(want), _steps(got), strict=True):
        n = len(wt)
        assert len(gt) >= n and gt[:n] == wt and gr[:n] == wr, seed


@pytest.mark.parametrize("seeds", [range(300), pytest.param(range(300, 5300), marks=pytest.mark.slow)])
def test_compiled_draws_equal_pythons(seeds):
    for seed in seeds:
        check(seed)


def test_compiled_draws_are_installed_once_and_skip_other_generators():
    """A rate gets the batch draw once; a geometric Gilbert-Elliott or a subclassed generator keeps its own."""

    class Mine(random.Random):
        def random(self):
            return 0.5

    fade = FadingRate(Fading(sigma_db=3.0, coherence=1.0), random.Random(1))
    compile_draws([fade, fade])
    first = fade._draw
    compile_draws([fade])
    assert fade._draw is first and "_draw" in vars(fade)
    geo = GilbertElliottRate(GilbertElliott(good=1e6, bad=1e4, step=0.1, p_good_bad=0.1, p_bad_good=0.5),
                             random.Random(2))
    own = FadingRate(Fading(sigma_db=3.0, coherence=1.0), Mine(3))
    compile_draws([geo, own])
    assert "_draw" not in vars(geo) and "_draw" not in vars(own)
