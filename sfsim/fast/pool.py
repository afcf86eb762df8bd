"""The ``pool`` server policy in the compiled SplitFrozen loop (:class:`sfsim.engine.policies.PoolPolicy`).

Arrivals enter a mixing pool of ``capacity`` micro-batches (:class:`sfsim.engine.pacing.MixingPool`),
or wait behind it in arrival order when it is full; a worker draws one uniformly at random when
the pool is full or nothing more can arrive before a draw (nothing in flight, and no device free
to send: :class:`sfsim.engine.credits.Senders`, whose books :func:`sfsim.fast.events.change`
keeps). The draws are Python's: ``random.Random(seed).randrange(n)`` takes 32-bit words of the
Mersenne Twister and keeps the top ``n.bit_length()`` bits of each until one is below ``n``. The
kernel runs the same generator (MT19937) from the seeded state that Python computes
(:func:`state`): 624 words, regenerated in place each time they are used up, so the same words come
out in the same order and memory stays the same however long the run.

``order`` is the kernel's policy tuple: the paced segments, then ``PL`` (the pool: device and
micro-batch rows, in the pool's order), the generator's state and each device's activation bytes. The overflow
queue is the FIFO ring of the kernel (``ring_a``, ``ring_b``).
"""

from __future__ import annotations

import random

import numpy as np

from sfsim.fast.events import (
    _CAP,
    _HELD,
    _NPENDING,
    _PBYTES,
    _PCAP,
    _PPEAK,
    _PSIZE,
    _QHEAD,
    _QLEN,
    _SBUF,
    _SCOUNT,
    _SHOLD,
    _size,
)
from sfsim.fast.jit import njit

_N, _M = 624, 397  # MT19937: state words, and the offset of the word each twist mixes in
_UPPER, _LOWER, _MATRIX = 0x80000000, 0x7FFFFFFF, 0x9908B0DF


def state(seed: int) -> np.ndarray:
    """``random.Random(seed)``'s Mersenne Twister state: its 624 words, then the next word's position.

    :func:`_randbelow` draws from it (in place) the words ``random.Random(seed).getrandbits(32)``
    would return, in the same order.
    """
    return np.array(random.Random(seed).getstate()[1], np.int64)  # 624 words and the position (624: fresh)


@njit
def _twist(W):
    """Regenerate the 624 state words (CPython's ``genrand_uint32`` when its position reaches 624)."""
    for i in range(_N):
        y = (W[i] & _UPPER) | (W[(i + 1) % _N] & _LOWER)
        W[i] = W[(i + _M) % _N] ^ (y >> 1) ^ (_MATRIX if y & 1 else 0)
    W[_N] = 0


@njit
def _word(W):
    """The next 32-bit output of the generator in ``W`` (:func:`state`), tempered as CPython does."""
    if W[_N] >= _N:
        _twist(W)
    y = W[W[_N]]
    W[_N] += 1
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    return y ^ (y >> 18)


@njit
def _randbelow(W, n):
    """``random.Random._randbelow(n)`` from the generator state ``W`` (:func:`state`), which it advances."""
    k = 0
    while (n >> k) > 0:
        k += 1
    while True:
        r = _word(W) >> (32 - k)
        if r < n:
            return r


@njit
def ready(S):
    """``len(policy)``: the pool holds micro-batches and is full, or nothing more can arrive first."""
    if S[_PSIZE] == 0:
        return False
    more = S[_NPENDING] > 0 or (S[_SCOUNT] > 0 and S[_SHOLD] < S[_SBUF])
    return S[_PSIZE] >= S[_PCAP] or not more


@njit
def _enter(S, F, D, N, order, i, k):
    """Micro-batch ``k`` of device ``i`` enters the pool (PoolPolicy._add)."""
    PL, act = order[4], order[6]
    PL[0, S[_PSIZE]] = i
    PL[1, S[_PSIZE]] = k
    S[_PSIZE] += 1
    F[_PBYTES] += act[i] * _size(D, N, i, k)
    F[_PPEAK] = max(F[_PPEAK], F[_PBYTES])


@njit
def add(S, F, D, N, order, ring_a, ring_b, i, k):
    """Micro-batch ``k`` of device ``i`` has arrived: into the pool, or behind it when full (PoolPolicy.push)."""
    S[_HELD] += 1
    if S[_PSIZE] >= S[_PCAP]:
        pos = (S[_QHEAD] + S[_QLEN]) % S[_CAP]
        ring_a[pos] = i
        ring_b[pos] = k
        S[_QLEN] += 1
        return
    _enter(S, F, D, N, order, i, k)


@njit
def take(S, F, D, N, order, ring_a, ring_b):
    """Draw a pooled micro-batch; the oldest waiting one takes its place (PoolPolicy.pop)."""
    PL, act = order[4], order[6]
    q = _randbelow(order[5], S[_PSIZE])
    i, k = PL[0, q], PL[1, q]
    for r in range(q, S[_PSIZE] - 1):  # list.pop(q): the rest keep their order
        PL[0, r] = PL[0, r + 1]
        PL[1, r] = PL[1, r + 1]
    S[_PSIZE] -= 1
    S[_HELD] -= 1
    F[_PBYTES] -= act[i] * _size(D, N, i, k)
    if S[_QLEN] > 0:
        h = S[_QHEAD]
        S[_QHEAD] = (h + 1) % S[_CAP]
        S[_QLEN] -= 1
        _enter(S, F, D, N, order, ring_a[h], ring_b[h])
    return i, k
