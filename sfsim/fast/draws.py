"""The dynamic network's random rates drawn in compiled batches, value for value as Python's ``random`` draws them.

A :class:`sfsim.network.linkrate.FadingRate` or :class:`~sfsim.network.linkrate.GilbertElliottRate` draws its
steps one at a time from its own seeded ``random.Random`` (``_draw``: one ``gauss`` or ``expovariate`` each), which
is about half of :func:`sfsim.fast.fedsync._moving_run`'s time. :func:`compile_draws` gives such a rate a ``_draw``
that appends a batch of steps at once, computed here from the same Mersenne Twister stream (CPython's
``genrand_uint32``, ``random()`` from two words, ``gauss``' Box-Muller pair with its cached second value,
``expovariate``), with the same floating-point operations in the same order and libm's ``log``, ``cos``, ``sin``
and ``pow``: every step is the one the rate would have drawn (``tests/test_fast_draws.py`` compares them). A batch
only draws ahead of what a run reads, which changes no value: each rate owns its generator. From then on the rate
draws from the batch generator's copy of the stream (its ``random.Random`` is left where it was).
"""

from __future__ import annotations

import math
import random

import numpy as np

from sfsim.fast.jit import njit
from sfsim.fast.pool import _word
from sfsim.network.linkrate import FadingRate, GilbertElliottRate, Product

_FIRST, _MOST = 256, 8192  # a rate's first batch of steps, and the largest (each doubles the last): few calls


@njit
def _random(W):
    """``random.random()`` from the generator state ``W`` (:func:`sfsim.fast.pool.state`): 53 bits of two words."""
    a, b = _word(W) >> 5, _word(W) >> 6
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)


@njit
def _fades(W, g, sigma, ten, out):
    """``out[j] = ten ** (rng.gauss(0.0, sigma) / 10.0)`` for each j (``ten`` is 10.0, passed so that no compiler
    rewrites the power); ``g``: gauss' cached second value (``g[1]``: whether one is cached)."""
    for j in range(out.shape[0]):
        if g[1] != 0.0:
            z, g[1] = g[0], 0.0
        else:
            x2pi = _random(W) * (2.0 * math.pi)
            g2rad = math.sqrt(-2.0 * math.log(1.0 - _random(W)))
            z = math.cos(x2pi) * g2rad
            g[0], g[1] = math.sin(x2pi) * g2rad, 1.0
        out[j] = ten ** ((0.0 + z * sigma) / 10.0)


@njit
def _flips(W, good, mean_good, mean_bad, start, times, goods):
    """Gilbert-Elliott's steps with exponential holding times: ``times[j]`` ends a step in state ``goods[j]``."""
    for j in range(times.shape[0]):
        lambd = 1.0 / (mean_good if good else mean_bad)
        start = start + -math.log(1.0 - _random(W)) / lambd
        times[j], goods[j] = start, good
        good = not good
    return good


class _Stream:
    """A rate's generator copied out of its ``random.Random`` (words and position, gauss' cached value)."""

    def __init__(self, rng):
        _, words, cached = rng.getstate()
        self.W = np.array(words, np.int64)  # 624 words and the next word's position
        self.g = np.array([cached or 0.0, 0.0 if cached is None else 1.0])
        self.size = _FIRST

    def batch(self) -> int:
        """How many steps the next batch draws (doubling, at most :data:`_MOST`)."""
        n, self.size = self.size, min(2 * self.size, _MOST)
        return n


def _fading(rate: FadingRate, s: _Stream) -> None:
    """:meth:`FadingRate._draw`, a batch at once."""
    k, out = len(rate.times), np.empty(s.batch())
    _fades(s.W, s.g, float(rate.spec.sigma_db), 10.0, out)
    rate.times.extend((np.arange(k + 1, k + 1 + len(out), dtype=np.int64) * rate.spec.coherence).tolist())
    rate.rates.extend(out.tolist())


def _flipping(rate: GilbertElliottRate, s: _Stream) -> None:
    """:meth:`GilbertElliottRate._draw` (exponential holding times), a batch at once."""
    spec, n = rate.spec, s.batch()
    times, goods = np.empty(n), np.empty(n, np.bool_)
    start = rate.times[-1] if rate.times else 0.0
    rate.good = _flips(s.W, rate.good, float(spec.mean_good), float(spec.mean_bad), start, times, goods)
    rate.times.extend(times.tolist())
    rate.rates.extend(np.where(goods, float(spec.good), float(spec.bad)).tolist())


def compile_draws(rates) -> None:
    """Give every :class:`FadingRate` and exponential :class:`GilbertElliottRate` in ``rates`` (and inside their
    :class:`Product` s) the batch ``_draw`` (module docstring); once per rate."""
    todo = list(rates)
    while todo:
        r = todo.pop()
        if isinstance(r, Product):
            todo += [r.a, r.b]
        elif (not isinstance(r, FadingRate | GilbertElliottRate) or "_draw" in vars(r)
              or (type(r.rng).gauss, type(r.rng).random) != (_GAUSS, _RANDOM)):
            continue  # done already, or a generator of its own kind
        elif isinstance(r, FadingRate):
            s = r._stream = _Stream(r.rng)
            r._draw = lambda r=r, s=s: _fading(r, s)
        elif isinstance(r, GilbertElliottRate) and r.spec.mean_good is not None:
            s = r._stream = _Stream(r.rng)
            r._draw = lambda r=r, s=s: _flipping(r, s)


def stream(rate) -> tuple[np.ndarray, int, float, bool] | None:
    """Where ``rate``'s next step comes from, for the kernels to draw on from there (:mod:`sfsim.fast.rates`): its
    twister's 624 words, their position and ``gauss``' cached value (and whether one is cached); None for a rate
    whose steps come from elsewhere (a generator of its own kind, or a ``_draw`` not this module's)."""
    own = vars(rate).get("_stream")
    if own is not None:  # the batch draw's copy of the stream (compile_draws)
        return own.W[:624].copy(), int(own.W[624]), float(own.g[0]), bool(own.g[1])
    if "_draw" in vars(rate) or (type(rate.rng).gauss, type(rate.rng).random) != (_GAUSS, _RANDOM):
        return None
    _, words, cached = rate.rng.getstate()
    return np.array(words[:624], np.int64), int(words[624]), cached or 0.0, cached is not None


_GAUSS, _RANDOM = random.Random.gauss, random.Random.random  # what a subclass may replace
