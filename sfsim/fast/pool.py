"""The ``pool`` server policy in the compiled SplitFrozen loop (:class:`sfsim.engine.policies.PoolPolicy`).

Arrivals enter a mixing pool of ``capacity`` micro-batches (:class:`sfsim.engine.pacing.MixingPool`),
or wait behind it in arrival order when it is full; a worker draws one uniformly at random when
the pool is full or nothing more can arrive before a draw (nothing in flight, and no device free
to send: :class:`sfsim.engine.credits.Senders`, whose books :func:`sfsim.fast.events.change`
keeps). The draws are Python's: ``random.Random(seed).randrange(n)`` takes 32-bit words of the
Mersenne Twister and keeps the top ``n.bit_length()`` bits of each until one is below ``n``; the
words are drawn beforehand (:func:`words`) and read here in order, so the same draws come out.

``order`` is the kernel's policy tuple: the paced segments, then ``PL`` (the pool: device and
micro-batch rows, in the pool's order), the words and each device's activation bytes. The overflow
queue is the FIFO ring of the kernel (``ring_a``, ``ring_b``).
"""

from __future__ import annotations

import random

import numpy as np

from sfsim.fast.events import (
    _CAP,
    _HELD,
    _NPENDING,
    _OVERFLOW,
    _PBYTES,
    _PCAP,
    _PPEAK,
    _PSIZE,
    _QHEAD,
    _QLEN,
    _RPOS,
    _SBUF,
    _SCOUNT,
    _SHOLD,
    _size,
)
from sfsim.fast.jit import njit


def words(seed: int, n: int) -> np.ndarray:
    """The first ``n`` 32-bit outputs of ``random.Random(seed)`` (what its ``randrange`` calls consume)."""
    raw = random.Random(seed).getrandbits(32 * n).to_bytes(4 * n, "little")  # first word lowest
    return np.frombuffer(raw, "<u4").astype(np.int64)


@njit
def _randbelow(S, W, n):
    """``random.Random._randbelow(n)`` from the words ``W`` (next at ``S[_RPOS]``); 0 and a flag when they run out."""
    k = 0
    while (n >> k) > 0:
        k += 1
    while S[_RPOS] < W.shape[0]:
        r = W[S[_RPOS]] >> (32 - k)
        S[_RPOS] += 1
        if r < n:
            return r
    S[_OVERFLOW] = 2  # more words are needed: the caller draws more and replays
    return 0


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
    q = _randbelow(S, order[5], S[_PSIZE])
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
