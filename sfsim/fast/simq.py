"""SimPy's event queue inside a compiled loop: entries ``(time, priority, id, kind, a, b)`` in SimPy's order.

SimPy processes the event with the earliest time, then the lower priority (``URGENT`` before
``NORMAL``), then the one scheduled first; a compiled replay of a SimPy run that schedules the same
events in the same order (:mod:`sfsim.fast.splitmoves`, :mod:`sfsim.fast.fedmoves`) processes them in
the same order. ``CNT`` holds the next event id and the pending soft timers (slots :data:`EID`,
:data:`NSOFT`; a loop keeps its own counters after them).
"""

from __future__ import annotations

import heapq

import numpy as np

from sfsim.fast.jit import njit

URGENT, NORMAL = 0, 1
"""SimPy's priorities: a process's start is urgent, every other event normal."""
EID, NSOFT = 0, 1
"""Slots of ``CNT``: the next event's id, the soft timers pending (a run ends when only they are left)."""


@njit
def push(Q, CNT, t, prio, kind, a, b):
    """Schedule an event of ``kind`` at ``t`` (its id: the next one)."""
    heapq.heappush(Q, (t, prio, CNT[EID], kind, a, b))
    CNT[EID] += 1


@njit
def start(soft, soft_kind, starts, start_kind, slots):
    """A queue with the soft timers ``soft`` (time, who) scheduled first, then the processes ``starts`` (urgent,
    at 0), and its ``CNT`` of ``slots`` counters."""
    Q = [(0.0, 0, 0, 0, 0, 0)]
    Q.pop()
    CNT = np.zeros(slots, np.int64)
    for q in range(soft.shape[1]):
        push(Q, CNT, soft[0, q], NORMAL, soft_kind, int(soft[1, q]), 0)
        CNT[NSOFT] += 1
    for q in range(starts.shape[0]):
        push(Q, CNT, 0.0, URGENT, start_kind, starts[q], 0)
    return Q, CNT
