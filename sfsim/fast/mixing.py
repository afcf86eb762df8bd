"""Stream mixing inside a compiled kernel: :class:`sfsim.outputs.mixing.StreamMixing`, same summation order.

State is two small arrays so that kernels can pass it around: ``M`` (ints, :data:`M_SLOTS`) and
``T`` (one float: the sum of the closed windows' distances), plus per-device ``counts`` and
``touched`` (the devices of the open window in the order they first appeared, which is the order
``StreamMixing`` sums them in). Memory: O(devices). A server whose devices join, leave or hand over
measures its stream against the totals it received in the end: its caller measures the stream it kept
(:func:`stream_value`) or, where that would pass :data:`sfsim.fast.handover.STREAM_CAP`, replays the
run again with those totals when they differ from the first guess (:mod:`sfsim.fast.dynamic`,
:mod:`sfsim.fast.handover`).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast.jit import inline, njit

_NTOUCHED, _SEEN, _BOUND, _COUNT, _TOTAL, _WINDOWS = range(6)
M_SLOTS = 6
"""Length of the int state ``M``."""
COUNT = _COUNT
"""Slot of ``M`` that counts the closed windows."""


def start(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fresh stream over devices with ``totals`` micro-batches: (M, T, share, counts, touched)."""
    total = int(totals.sum())
    windows = max(1, min(10, total))
    M = np.zeros(M_SLOTS, np.int64)
    M[_TOTAL], M[_WINDOWS], M[_BOUND] = total, windows, -(-total // windows)
    share = totals / total if total else np.zeros(len(totals))
    return M, np.zeros(1), share, np.zeros(len(totals), np.int64), np.zeros(len(totals), np.int64)


def value(M: np.ndarray, T: np.ndarray) -> float | None:
    """The mean distance over the closed windows (None before any micro-batch), as ``StreamMixing.value``."""
    return float(T[0]) / int(M[_COUNT]) if M[_COUNT] else None


@inline
def add(M, T, share, counts, touched, i):
    """Device ``i``'s micro-batch is next in the stream (``StreamMixing.add``)."""
    if counts[i] == 0:
        touched[M[_NTOUCHED]] = i
        M[_NTOUCHED] += 1
    counts[i] += 1
    M[_SEEN] += 1
    if M[_SEEN] < M[_BOUND]:
        return
    size = 0
    s1 = 0.0
    for q in range(M[_NTOUCHED]):
        size += counts[touched[q]]
        s1 += share[touched[q]]
    s2 = 0.0
    for q in range(M[_NTOUCHED]):
        s2 += abs(counts[touched[q]] / size - share[touched[q]])
        counts[touched[q]] = 0
    dist = 1.0 - s1
    dist += s2
    T[0] += 0.5 * dist
    M[_COUNT] += 1
    M[_NTOUCHED] = 0
    M[_BOUND] = -(-(M[_COUNT] + 1) * M[_TOTAL] // M[_WINDOWS])


@inline
def fresh(total, m):
    """:func:`start` inside a compiled kernel, for ``total`` micro-batches over ``m`` devices: (M, T, counts, touched)."""
    windows = max(1, min(10, total))
    M = np.zeros(M_SLOTS, np.int64)
    M[_TOTAL], M[_WINDOWS], M[_BOUND] = total, windows, -(-total // windows)
    return M, np.zeros(1), np.zeros(m, np.int64), np.zeros(m, np.int64)


@njit
def stream_value(stream, totals):
    """A fresh stream over ``totals`` fed ``stream`` (device per micro-batch): (sum of the windows' distances, windows).

    How a server whose devices join and leave measures mixing over the stream it received, in
    :func:`add`'s order: the same floats as measuring as it went with those totals.
    """
    total = totals.sum()
    windows = max(1, min(10, total))
    M = np.zeros(M_SLOTS, np.int64)
    M[_TOTAL], M[_WINDOWS], M[_BOUND] = total, windows, -(-total // windows)
    share = totals / total if total else np.zeros(totals.shape[0])
    T = np.zeros(1)
    counts, touched = np.zeros(totals.shape[0], np.int64), np.zeros(totals.shape[0], np.int64)
    for i in stream:
        add(M, T, share, counts, touched, i)
    return T[0], M[_COUNT]
