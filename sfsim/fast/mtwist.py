"""Python's random numbers in compiled code: its Mersenne Twister, ``random()`` and ``expovariate``, bit for bit.

A twister's state is a row of 624 words (``uint32``) and a position, as ``random.Random.getstate()``
gives them; :func:`expovariate` and :func:`gauss` draw the number ``Random.expovariate`` and ``Random.gauss``
would draw next from that state, by the same integer and float operations (CPython's ``_randommodule.c`` and
``random.py``), and advance the state. :mod:`sfsim.fast.rates` draws the on/off availability processes, the
Gilbert-Elliott channels and the fading with it, so the fast path keeps a window of their steps where it once
drew the whole run up front.
"""

from __future__ import annotations

import math

from sfsim.fast.events import no_refcounts

_N, _M = 624, 397


@no_refcounts
def _twist(M, r):
    """Regenerate row ``r``'s 624 words (``genrand_uint32``'s refill)."""
    for kk in range(_N):
        y = (M[r, kk] & 0x80000000) | (M[r, (kk + 1) % _N] & 0x7FFFFFFF)
        v = M[r, (kk + _M) % _N] ^ (y >> 1)
        if y & 1:
            v ^= 0x9908B0DF
        M[r, kk] = v


@no_refcounts
def genrand(M, MI, w):
    """The next 32-bit word of twister ``w`` (its state in row ``2 w`` of ``M``, its position in ``MI[w, 0]``)."""
    r = 2 * w
    i = MI[w, 0]
    if i >= _N:
        _twist(M, r)
        i = 0
    y = int(M[r, i])
    MI[w, 0] = i + 1
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    y ^= y >> 18
    return y


@no_refcounts
def random(M, MI, w):
    """``Random.random()``: a float in [0, 1) with 53 random bits."""
    a = genrand(M, MI, w) >> 5
    b = genrand(M, MI, w) >> 6
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)


@no_refcounts
def expovariate(M, MI, w, lambd):
    """``Random.expovariate(lambd)``."""
    return -math.log(1.0 - random(M, MI, w)) / lambd


@no_refcounts
def gauss(M, MI, MG, w):
    """``Random.gauss(0.0, 1.0)``'s ``z`` (the caller computes ``mu + z * sigma``) for twister ``w``, with the
    cached second value of its Box-Muller pair in ``MG[w, 0]`` (``MG[w, 1]``: 1.0 when one is cached)."""
    if MG[w, 1] != 0.0:
        MG[w, 1] = 0.0
        return MG[w, 0]
    x2pi = random(M, MI, w) * (2.0 * math.pi)
    g2rad = math.sqrt(-2.0 * math.log(1.0 - random(M, MI, w)))
    MG[w, 0], MG[w, 1] = math.sin(x2pi) * g2rad, 1.0
    return math.cos(x2pi) * g2rad
