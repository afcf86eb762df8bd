"""Time-varying rates on the fast path: :mod:`sfsim.network.linkrate` rates as arrays, and their arithmetic compiled.

A rate (a link's bandwidth, a device's 0/1 availability, their product) becomes a *program*: one
row per node of its tree (:class:`Program`), a constant, a :class:`~sfsim.network.linkrate.Steps`
trace, a drawn process (Gilbert-Elliott, fading, on/off: its steps drawn so far), online windows
or a product of two nodes. :func:`segment` answers what ``Rate.segment`` answers, by the same float
operations, so :func:`span`, :func:`finish`, :func:`next_online`, :func:`online_until` and
:func:`online` give the same bits as :mod:`sfsim.network.legs` and :mod:`sfsim.network.availability`.

A drawn process is known only as far as it was drawn: a question past that sets ``need`` (the
node's latest time asked, and the flag in its last slot); the caller draws further
(:meth:`Program.draw_all`) and replays again. Answers after the flag is set are not used.

An on/off availability process (:class:`~sfsim.network.availability.OnOff`), a Gilbert-Elliott channel with
exponential holding times and log-normal fading (:class:`~sfsim.network.linkrate.GilbertElliottRate`,
:class:`~sfsim.network.linkrate.FadingRate`, on Python's own generator) are drawn by the kernels themselves, in a
window (:data:`WINDOW` steps a node; :mod:`sfsim.fast.mtwist`): from its Mersenne Twister's state (and ``gauss``'
cached value), by Python's float operations, so the same stream as the SimPy engine's. Their memory grows with
the devices, not with the run; a question before the window starts redraws from the state the node started with.

Every kernel of the fast path reads rates through this module: SplitFrozen's dynamic replay
(:mod:`sfsim.fast.moving`), SplitLoRA's and FedLoRA's (:func:`span_at` and :func:`gone_at` are theirs).
"""

from __future__ import annotations

import math

import numpy as np

from sfsim.fast import draws
from sfsim.fast.events import no_refcounts
from sfsim.fast.jit import njit
from sfsim.fast.mtwist import expovariate, gauss
from sfsim.network.availability import OnOff, Windows
from sfsim.network.linkrate import Constant, FadingRate, GilbertElliottRate, Product, Rate, Steps, _Lazy

CONST, STEPS, DRAWN, WINDOWS, PRODUCT, ONOFF, FLIPS, FADES = range(8)
WINDOWED = (ONOFF, FLIPS, FADES)  # the processes the kernels draw in a window
_KIND, _OFF, _LEN, _A, _B, _BASE, _CAP, _PRE, _POFF = range(9)
# columns of the int rows; float rows: value, period (<= 0: none); an ONOFF node's: mean on, mean off; FLIPS
# (Gilbert-Elliott): mean good, mean bad, good rate, bad rate, 1.0 when its first step is good; FADES: sigma (dB),
# coherence (s), 10.0 (the power's base, read at run time so that no compiler rewrites the power). A windowed
# node's _A: its twister's number, _BASE the step number of its window's first slot, _CAP the window's room,
# _PRE / _POFF the steps drawn before the replay (their count / their offset in the prefix arrays)
V_COLS = 5
WINDOW = 64
"""Steps an on/off process keeps on the fast path beyond those drawn before the replay (it drops the older half
when full)."""
HORIZON = 256.0
"""Seconds the baselines' replays first draw the drawn processes to (a replay that passes it draws further)."""


class Unsupported(ValueError):
    """A rate the fast path cannot replay (a handover's legs, a product nested too deep, an unknown class)."""


class Program:
    """The nodes of the rates of one run (each distinct rate object once), as arrays for the kernels."""

    def __init__(self):
        self.rates: list[Rate] = []
        self.index: dict[int, int] = {}
        self.rows: list[tuple] = []  # (kind, a, b, value, period)

    def add(self, rate: Rate | None, depth: int = 0) -> int:
        """The node of ``rate`` (-1 for None), adding it and its parts; raises :class:`Unsupported`."""
        if rate is None:
            return -1
        if id(rate) in self.index:
            return self.index[id(rate)]
        if isinstance(rate, Product):
            if depth >= 2:
                raise Unsupported("a product of rates nested more than twice")
            row = (PRODUCT, self.add(rate.a, depth + 1), self.add(rate.b, depth + 1), 0.0, 0.0)
        elif rate.__class__ is Constant:
            row = (CONST, -1, -1, float(rate.rate), 0.0)
        elif rate.__class__ is Steps:
            row = (STEPS, -1, -1, 0.0, float(rate.period) if rate.period is not None else 0.0)
        elif rate.__class__ is OnOff:
            row = (ONOFF, -1, -1, float(rate.means[0]), float(rate.means[1]))
        elif isinstance(rate, _Lazy):
            row = (_lazy_kind(rate), -1, -1, 0.0, 0.0)
        elif rate.__class__ is Windows:
            row = (WINDOWS, -1, -1, 0.0, 0.0)
        else:
            raise Unsupported(f"rate {type(rate).__name__}")
        self.index[id(rate)] = len(self.rows)
        self.rates.append(rate)
        self.rows.append(row)
        return len(self.rows) - 1

    def draw_all(self, t: float) -> None:
        """Draw every drawn process past time ``t`` (the replay asks the caller for more when it goes further)."""
        for k, rate in enumerate(self.rates):
            if self.rows[k][0] == DRAWN:
                rate.segment(t)  # draws until its last change is later than t

    def arrays(self) -> tuple:
        """``(K, V, T, R, need, M, MI, T0, R0, MG)``: int rows, float rows, the steps' times and rates, the need
        slots, the windowed processes' twisters (working and initial state by turns), their positions, their first
        steps' times and rates, and ``gauss``' cached values (working value and flag, initial value and flag)."""
        K = np.full((max(1, len(self.rows)), 9), -1, np.int64)
        V = np.zeros((max(1, len(self.rows)), V_COLS))
        # one array filled node by node: no per-node copies kept at once
        total = sum(_count(rate, row[0]) for rate, row in zip(self.rates, self.rows, strict=True))
        T, R, off = np.zeros(total + 1), np.zeros(total + 1), 0
        twisters = [k for k, row in enumerate(self.rows) if row[0] in WINDOWED]
        M, MI = np.zeros((2 * max(1, len(twisters)), 624), np.uint32), np.zeros((max(1, len(twisters)), 2), np.int64)
        T0 = np.zeros(sum(len(self.rates[k].times) for k in twisters) + 1)
        R0, MG = np.zeros(T0.shape[0]), np.zeros((max(1, len(twisters)), 4))
        slot = {k: w for w, k in enumerate(twisters)}
        poff = 0
        for k, (rate, (kind, a, b, value, period)) in enumerate(zip(self.rates, self.rows, strict=True)):
            ts, rs = _steps(rate, kind)
            n = len(ts)
            K[k, :5] = (kind, off, n, a, b)
            V[k] = _floats(rate, kind, value, period)
            if kind in WINDOWED:
                w = slot[k]
                K[k, _A], K[k, _BASE], K[k, _CAP], K[k, _PRE], K[k, _POFF] = w, 0, n + WINDOW, n, poff
                words, pos, cached, has = _state(rate, kind)
                M[2 * w] = M[2 * w + 1] = words
                MI[w] = pos
                MG[w] = (cached, has, cached, has)
                T0[poff:poff + n] = ts
                R0[poff:poff + n] = rs
                poff += n
            T[off:off + n] = ts
            if kind != ONOFF:
                R[off:off + n] = rs
            off += _count(rate, kind)
        need = np.full(len(self.rows) + 1, -math.inf)
        return K, V, T, R, need, M, MI, T0, R0, MG


@njit
def no_rates():
    """:meth:`Program.arrays` of a program without nodes (for the kernels' callers on constant links)."""
    return (np.full((1, 9), -1, np.int64), np.zeros((1, V_COLS)), np.zeros(1), np.zeros(1), np.full(2, -np.inf),
            np.zeros((2, 624), np.uint32), np.zeros((1, 2), np.int64), np.zeros(1), np.zeros(1), np.zeros((1, 4)))


def _lazy_kind(rate: _Lazy) -> int:
    """A drawn process's kind: FLIPS or FADES when the kernels can draw its stream on (:func:`draws.stream`: Python's
    own generator, exponential holding times), else DRAWN (the caller draws it ahead, :meth:`Program.draw_all`)."""
    if rate.__class__ is FadingRate and draws.stream(rate) is not None:
        return FADES
    if rate.__class__ is GilbertElliottRate and rate.spec.mean_good is not None and draws.stream(rate) is not None:
        return FLIPS
    return DRAWN


def _floats(rate: Rate, kind: int, value: float, period: float) -> tuple:
    """A node's float row (the column comment above)."""
    if kind == FLIPS:
        spec, n = rate.spec, len(rate.times)
        first_good = rate.good != (n % 2 == 1)  # the state flips at every step: the first step's
        return float(spec.mean_good), float(spec.mean_bad), float(spec.good), float(spec.bad), float(first_good)
    if kind == FADES:
        return float(rate.spec.sigma_db), float(rate.spec.coherence), 10.0, 0.0, 0.0
    return value, period, 0.0, 0.0, 0.0


def _state(rate: Rate, kind: int) -> tuple:
    """A windowed node's stream: 624 words, their position, ``gauss``' cached value and whether one is cached."""
    if kind == ONOFF:
        state = rate.rng.getstate()[1]
        return state[:624], state[624], 0.0, 0.0
    words, pos, cached, has = draws.stream(rate)
    return words, pos, cached, float(has)


def _count(rate: Rate, kind: int) -> int:
    """How many steps :func:`_steps` gives of a node."""
    if kind in (STEPS, DRAWN):
        return len(rate.times)
    if kind in WINDOWED:  # its window
        return len(rate.times) + WINDOW
    return len(rate.edges) if kind == WINDOWS else 0


def _steps(rate: Rate, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """The times and rates a node reads: a trace's steps, a process's drawn steps, windows' edges."""
    if rate.__class__ is OnOff:  # packed times (a view: the caller copies it), rates by parity
        n = len(rate.times)
        return np.frombuffer(rate.times, np.float64) if n else np.zeros(0), (np.arange(n) % 2 == 0).astype(np.float64)
    if kind in (STEPS, DRAWN, FLIPS, FADES):
        return np.array(rate.times, np.float64), np.array(rate.rates, np.float64)
    if kind == WINDOWS:
        return np.array(rate.edges, np.float64), np.zeros(len(rate.edges))
    return np.zeros(0), np.zeros(0)


def may_stall(rate: Rate | None) -> bool:
    """True when a transfer at ``rate`` might never end (a trace that ends at, or is all, zero)."""
    if isinstance(rate, Product):
        return may_stall(rate.a) or may_stall(rate.b)
    if isinstance(rate, Steps):
        return rate.rates[-1] <= 0 if rate.period is None else max(rate.rates) <= 0
    return isinstance(rate, Constant) and rate.rate <= 0


def knows(rate: Rate | None) -> bool:
    """True when a :class:`Program` takes ``rate`` (None: no rate), so the kernels evaluate it exactly."""
    try:
        Program().add(rate)
    except Unsupported:
        return False
    return True


@no_refcounts
def _right(T, off, n, t):
    """``bisect.bisect_right`` over ``T[off:off + n]``."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if t < T[off + mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@no_refcounts
def _leaf(P, node, t):
    """``segment(t)`` of a node that is not a product."""
    K, V, T, R, need = P[0], P[1], P[2], P[3], P[4]
    kind, off, n = K[node, _KIND], K[node, _OFF], K[node, _LEN]
    if kind == CONST:
        return V[node, 0], np.inf
    if kind == ONOFF or kind == FLIPS or kind == FADES:
        return _windowed(P, node, t)
    if kind == DRAWN:
        if n == 0 or T[off + n - 1] <= t:  # not drawn that far: ask the caller to draw further
            need[node] = max(need[node], t)
            need[need.shape[0] - 1] = 1.0
            return 0.0, np.inf
        k = _right(T, off, n, t)
        return R[off + k], T[off + k]
    if kind == WINDOWS:
        k = _right(T, off, n, t)
        return (1.0 if k % 2 else 0.0), (T[off + k] if k < n else np.inf)
    return _trace(T, R, off, n, V[node, 1], t)


@no_refcounts
def _restart(P, node):
    """A windowed node draws again from its first state (a question before its window); returns its step count."""
    K, T, R, M, MI, T0, R0, MG = P[0], P[2], P[3], P[5], P[6], P[7], P[8], P[9]
    off, w, n, poff = K[node, _OFF], K[node, _A], K[node, _PRE], K[node, _POFF]
    for i in range(n):
        T[off + i] = T0[poff + i]
        R[off + i] = R0[poff + i]
    for i in range(624):
        M[2 * w, i] = M[2 * w + 1, i]
    MI[w, 0] = MI[w, 1]
    MG[w, 0], MG[w, 1] = MG[w, 2], MG[w, 3]
    return n


@no_refcounts
def _draw(P, node, i, last):
    """Step ``i`` of a windowed node after the step that ends at ``last``: its end and its rate (``_draw``)."""
    K, V, M, MI = P[0], P[1], P[5], P[6]
    kind, w = K[node, _KIND], K[node, _A]
    if kind == ONOFF:  # OnOff._draw_past
        return last + expovariate(M, MI, w, 1.0 / V[node, i % 2]), 0.0
    if kind == FLIPS:  # GilbertElliottRate._draw: the state flips at every step
        good = (i % 2 == 0) == (V[node, 4] != 0.0)
        end = last + expovariate(M, MI, w, 1.0 / (V[node, 0] if good else V[node, 1]))
        return end, V[node, 2] if good else V[node, 3]
    z = gauss(M, MI, P[9], w)  # FadingRate._draw: 10 ** (gauss(0, sigma) / 10) for block i + 1
    return (i + 1) * V[node, 1], V[node, 2] ** ((0.0 + z * V[node, 0]) / 10.0)


@no_refcounts
def _windowed(P, node, t):
    """``segment(t)`` of a process drawn in the node's window as far as ``t`` (:data:`WINDOW`)."""
    K, T, R = P[0], P[2], P[3]
    off, n, base, cap = K[node, _OFF], K[node, _LEN], K[node, _BASE], K[node, _CAP]
    if base > 0 and t < T[off]:  # before the window: draw again from the node's first state
        n, base = _restart(P, node), 0
    while n == 0 or T[off + n - 1] <= t:  # _Lazy.segment's draws
        if n == cap:  # full: drop the older half
            h = cap >> 1
            for i in range(n - h):
                T[off + i] = T[off + h + i]
                R[off + i] = R[off + h + i]
            base, n = base + h, n - h
        T[off + n], R[off + n] = _draw(P, node, base + n, T[off + n - 1] if n > 0 else 0.0)
        n += 1
    K[node, _LEN], K[node, _BASE] = n, base
    k = _right(T, off, n, t)
    if K[node, _KIND] == ONOFF:
        return (0.0 if (base + k) % 2 else 1.0), T[off + k]
    return R[off + k], T[off + k]


@no_refcounts
def _trace(T, R, off, n, period, t):
    """``Steps.segment(t)``, by its float operations."""
    base, at = 0.0, t
    if period > 0:
        base = math.floor(t / period) * period
        t -= base
    k = _right(T, off, n, t) - 1  # -1 when t / period rounded up to a whole period: t - base < 0
    if k + 1 < n:
        end = T[off + k + 1]
    else:
        end = period if period > 0 else np.inf
    if base + end <= at:  # t / period rounded just below a whole period: the next period's first step
        base, k = base + period, _right(T, off, n, 0.0) - 1
        end = T[off + k + 1] if k + 1 < n else period
    return R[off + k if k >= 0 else off + n - 1], base + end  # Python's rates[-1] for k = -1


@no_refcounts
def _product(ra, ea, rb, eb):
    """``Product.segment`` from its parts' segments."""
    if (ra == 0 and ea == np.inf) or (rb == 0 and eb == np.inf):
        return 0.0, np.inf
    return ra * rb, min(ea, eb)


@no_refcounts
def _inner(P, node, t):
    """``segment(t)`` of a leaf or of a product of leaves."""
    K = P[0]
    if K[node, _KIND] != PRODUCT:
        return _leaf(P, node, t)
    ra, ea = _leaf(P, K[node, _A], t)
    rb, eb = _leaf(P, K[node, _B], t)
    return _product(ra, ea, rb, eb)


@no_refcounts
def segment(P, node, t):
    """``(rate at t, until when it holds)`` of ``node`` (``Rate.segment``)."""
    K = P[0]
    if K[node, _KIND] != PRODUCT:
        return _leaf(P, node, t)
    ra, ea = _inner(P, K[node, _A], t)
    rb, eb = _inner(P, K[node, _B], t)
    return _product(ra, ea, rb, eb)


@no_refcounts
def stuck(P):
    """Whether a question went past what was drawn (the run must be replayed after drawing further)."""
    need = P[4]
    return need[need.shape[0] - 1] > 0


@no_refcounts
def finish(P, node, t, amount):
    """``linkrate.finish``: when ``amount`` started at ``t`` is done (``inf`` if never)."""
    while True:
        r, until = segment(P, node, t)
        if r > 0:
            end = t + amount / r
            if end <= until:
                return end
            amount -= r * (until - t)
        if until == np.inf or stuck(P):
            return np.inf
        t = until


@no_refcounts
def steady(P, node, t, horizon):
    """``legs.steady``: the rate at ``t`` and until when it stays that rate (looking up to ``horizon``)."""
    r, until = segment(P, node, t)
    while until < min(horizon, np.inf) and not stuck(P):
        r2, nxt = segment(P, node, until)
        if r2 != r:
            break
        until = nxt
    return r, until


@no_refcounts
def span(P, node, t, amount, x):
    """``legs.span``: seconds from ``t`` until ``amount x x`` is done (``inf`` if never; node -1: rate 1)."""
    if node < 0:
        return amount * x
    r, until = segment(P, node, t)
    if r > 0:
        d = amount / r * x
        if t + d > until:
            r, until = steady(P, node, t, t + d)
        if t + d <= until:
            return d
    end = finish(P, node, t, amount * x)
    return end - t if end < np.inf else np.inf


@no_refcounts
def span_at(P, node, t, dur, bandwidth):
    """``legs.span_at``: seconds from ``t`` for what takes ``dur`` seconds at ``bandwidth`` (``inf`` if never)."""
    r, until = segment(P, node, t)
    if r > 0:
        d = dur * (bandwidth / r)
        if t + d > until:
            r, until = steady(P, node, t, t + d)
            d = dur * (bandwidth / r)
        if t + d <= until:
            return d
    end = finish(P, node, t, dur * bandwidth)
    return end - t if end < np.inf else np.inf


@no_refcounts
def next_online(P, node, t):
    """``availability.next_online``: the first instant ``>= t`` online (``inf`` if never)."""
    while True:
        r, until = segment(P, node, t)
        if r > 0 or until == np.inf or stuck(P):
            return t if r > 0 else np.inf
        t = until


@no_refcounts
def gone_at(P, node, t):
    """``legs.gone_at``: from when on (at or after ``t``) ``node`` is 0 for good (``inf`` if never; node -1: never)."""
    if node < 0:
        return np.inf
    while True:
        r, until = segment(P, node, t)
        if until == np.inf or stuck(P):
            return t if r <= 0 else np.inf
        t = until


@no_refcounts
def online(P, node, a, b):
    """``legs.online``: online seconds within ``[a, b)`` (node -1: all of it)."""
    if node < 0:
        return b - a
    t, total = a, 0.0
    while t < b and not stuck(P):
        r, until = segment(P, node, t)
        end = min(until, b)
        total += (end - t) if r > 0 else 0.0
        t = end
    return total
