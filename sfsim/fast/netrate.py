"""Time-varying rates inside a compiled kernel: :mod:`sfsim.network.linkrate` and :mod:`sfsim.network.legs`, same floats.

A rate the dynamic network hands a transfer is a left-nested :class:`~sfsim.network.linkrate.Product`
of *factors* (a link's trace or Gilbert-Elliott rate, its fading, the device's 0/1 availability);
:class:`Table` lays every factor out in arrays that numba reads, one row per factor:

* ``Constant``: its rate;
* ``Steps``: its times and rates and its period (``nan``: none), :meth:`Steps.segment`'s arithmetic;
* a lazily drawn rate (Gilbert-Elliott, fading, an on/off process): the steps drawn so far, in
  absolute time (drawing is deterministic, so drawing ahead changes nothing);
* ``Windows``: its edges.

The kernels' ``segment``, ``finish``, ``steady``, ``span``, ``span_at``, ``online`` and ``gone_at``
repeat the Python functions operation for operation, so a transfer ends at the same float. A lazy
rate is drawn up to a horizon; a kernel that asks past it sets ``FLAG[0]`` (its figures are then
void) and the caller draws further and replays again (with twice the horizon).
"""

from __future__ import annotations

import math

import numpy as np

from sfsim.fast.jit import njit
from sfsim.network.availability import Windows
from sfsim.network.linkrate import Constant, Product, Rate, Steps, _Lazy

CONST, STEPS, LAZY, WINDOWS = range(4)
HORIZON = 256.0
"""Seconds lazy rates are first drawn to (a replay that passes it is replayed with twice the horizon)."""
MAX_FACTORS = 3
"""Factors of one rate at most (a link's rate, its fading, the availability)."""


def may_stall(rate: Rate | None) -> bool:
    """True when a transfer at ``rate`` might never end (a trace that ends at, or is all, zero)."""
    if isinstance(rate, Product):
        return may_stall(rate.a) or may_stall(rate.b)
    if isinstance(rate, Steps):
        return rate.rates[-1] <= 0 if rate.period is None else max(rate.rates) <= 0
    return isinstance(rate, Constant) and rate.rate <= 0


def factors(rate: Rate) -> list[Rate] | None:
    """The factors of a left-nested product, left to right; None for a rate the kernels do not know."""
    if isinstance(rate, Product):
        left = factors(rate.a)
        if left is None or isinstance(rate.b, Product):
            return None  # right-nested: a different float association
        return left + [rate.b]
    return [rate] if isinstance(rate, (Constant, Steps, _Lazy, Windows)) else None


def knows(rate: Rate | None) -> bool:
    """True when the kernels evaluate ``rate`` exactly (None: no rate)."""
    fs = factors(rate) if rate is not None else []
    return fs is not None and len(fs) <= MAX_FACTORS


class Table:
    """Every rate of a run as arrays (:meth:`arrays`); :meth:`add` returns a rate's row in ``LK`` (-1: None)."""

    def __init__(self, horizon: float = 256.0):
        """``horizon``: seconds the lazy rates are drawn to at least."""
        self.horizon = horizon
        self.rows: dict[int, int] = {}  # id(factor) -> its row
        self.objs: list[Rate] = []
        self.links: list[list[int]] = []

    def add(self, rate: Rate | None) -> int:
        """The row of ``rate`` (a left-nested product of at most :data:`MAX_FACTORS` known factors)."""
        if rate is None:
            return -1
        ids = []
        for f in factors(rate):
            if id(f) not in self.rows:
                self.rows[id(f)] = len(self.objs)
                self.objs.append(f)
            ids.append(self.rows[id(f)])
        self.links.append(ids)
        return len(self.links) - 1

    def arrays(self) -> tuple:
        """``(FK, FI, FF, PT, PR, LK, FLAG)``: factor kinds, (offset, length), constant or period, pooled times
        and rates, each rate's factors (count first), and the flag a kernel sets when it passes the horizon."""
        n = len(self.objs)
        FK, FI, FF = np.zeros(n, np.int64), np.zeros((n, 2), np.int64), np.full(n, np.nan)
        times: list[float] = []
        rates: list[float] = []
        for k, f in enumerate(self.objs):
            FI[k, 0] = len(times)
            if isinstance(f, Constant):
                FK[k], FF[k] = CONST, f.rate
            elif isinstance(f, Steps):
                FK[k] = STEPS
                FF[k] = np.nan if f.period is None else f.period
                times += f.times
                rates += f.rates
            elif isinstance(f, Windows):
                FK[k] = WINDOWS
                times += f.edges
                rates += [0.0] * len(f.edges)
            else:
                FK[k] = LAZY
                f.segment(self.horizon)  # draws until its last change is past the horizon
                times += f.times
                rates += f.rates
            FI[k, 1] = len(times) - FI[k, 0]
        LK = np.full((max(1, len(self.links)), MAX_FACTORS + 1), -1, np.int64)
        for r, ids in enumerate(self.links):
            LK[r, 0] = len(ids)
            LK[r, 1:1 + len(ids)] = ids
        return FK, FI, FF, np.array(times, np.float64), np.array(rates, np.float64), LK, np.zeros(1, np.int64)


@njit
def _factor(R, f, t):
    """``(rate at t, until when it holds)`` of factor ``f``."""
    FK, FI, FF, PT, PR = R[0], R[1], R[2], R[3], R[4]
    kind, lo, n = FK[f], FI[f, 0], FI[f, 1]
    if kind == CONST:
        return FF[f], math.inf
    if kind == WINDOWS:
        k = np.searchsorted(PT[lo:lo + n], t, side="right")
        return (1.0 if k % 2 else 0.0), (PT[lo + k] if k < n else math.inf)
    if kind == LAZY:
        k = np.searchsorted(PT[lo:lo + n], t, side="right")
        if k >= n:
            R[6][0] = 1  # past the horizon: the caller draws further and replays
            return 0.0, math.inf
        return PR[lo + k], PT[lo + k]
    period = FF[f]
    base, at = 0.0, t
    if not np.isnan(period):
        base = math.floor(t / period) * period
        t -= base
    k = np.searchsorted(PT[lo:lo + n], t, side="right") - 1
    if k + 1 < n:
        end = PT[lo + k + 1]
    else:
        end = period if not np.isnan(period) else math.inf
    if base + end <= at:  # t / period rounded just below a whole period: the next period's first step
        base += period
        k = np.searchsorted(PT[lo:lo + n], 0.0, side="right") - 1
        end = PT[lo + k + 1] if k + 1 < n else period
    return PR[lo + k], base + end


@njit
def segment(R, r, t):
    """``Rate.segment`` of rate row ``r``: a product of its factors, left to right."""
    LK = R[5]
    rate, until = _factor(R, LK[r, 1], t)
    for q in range(2, LK[r, 0] + 1):
        rb, eb = _factor(R, LK[r, q], t)
        if (rate == 0 and until == math.inf) or (rb == 0 and eb == math.inf):
            rate, until = 0.0, math.inf
        else:
            rate, until = rate * rb, min(until, eb)
    return rate, until


@njit
def finish(R, r, t, amount):
    """:func:`sfsim.network.linkrate.finish`."""
    while True:
        rate, until = segment(R, r, t)
        if rate > 0:
            end = t + amount / rate
            if end <= until:
                return end
            amount -= rate * (until - t)
        if until == math.inf:
            return math.inf
        t = until


@njit
def steady(R, r, t, horizon):
    """:func:`sfsim.network.legs.steady`."""
    rate, until = segment(R, r, t)
    while until < min(horizon, math.inf):
        r2, nxt = segment(R, r, until)
        if r2 != rate:
            break
        until = nxt
    return rate, until


@njit
def span(R, r, t, amount):
    """:func:`sfsim.network.legs.span` with ``x`` 1 (row -1: no rate, ``amount`` itself)."""
    if r < 0:
        return amount * 1.0
    rate, until = segment(R, r, t)
    if rate > 0:
        d = amount / rate * 1.0
        if t + d > until:
            rate, until = steady(R, r, t, t + d)
        if t + d <= until:
            return d
    end = finish(R, r, t, amount * 1.0)
    return end - t if end < math.inf else math.inf


@njit
def span_at(R, r, t, dur, bandwidth):
    """:func:`sfsim.network.legs.span_at`."""
    rate, until = segment(R, r, t)
    if rate > 0:
        d = dur * (bandwidth / rate)
        if t + d > until:
            rate, until = steady(R, r, t, t + d)
            d = dur * (bandwidth / rate)
        if t + d <= until:
            return d
    end = finish(R, r, t, dur * bandwidth)
    return end - t if end < math.inf else math.inf


@njit
def online(R, r, a, b):
    """:func:`sfsim.network.legs.online` (row -1: no availability, ``b - a``)."""
    if r < 0:
        return b - a
    t, total = a, 0.0
    while t < b:
        rate, until = segment(R, r, t)
        end = min(until, b)
        total += (end - t) if rate > 0 else 0.0
        t = end
    return total


@njit
def gone_at(R, r, t):
    """:func:`sfsim.network.legs.gone_at` (row -1: never)."""
    if r < 0:
        return math.inf
    while True:
        rate, until = segment(R, r, t)
        if until == math.inf:
            return t if rate <= 0 else math.inf
        t = until
