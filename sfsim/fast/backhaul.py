"""Backhaul sync (``mode: async``) on the fast path: the real :class:`sfsim.network.backhaul.Backhaul`, driven by a clock.

In ``async`` mode no accelerator waits for the average: the servers' timing is the same as without
sync, and the backhaul only adds transfers (bytes, rounds) and lasts until the last average has
arrived. So the servers are replayed as usual (each recording when its optimizer steps end and when
its last worker ends), and then :func:`replay` feeds those instants, in time order, to a
:class:`~sfsim.network.backhaul.Backhaul` built on a :class:`Clock` instead of the SimPy engine: the
same code computes the same rounds, bytes and arrival times.

At one instant the servers' events (set before it) come before an average that becomes ready
then (set at that instant), as SimPy's event ids order them; the servers' order among themselves
changes nothing (each server sends and receives on its own backhaul).
``mode: sync`` (a barrier) couples the servers and stays with the SimPy engine.
"""

from __future__ import annotations

import heapq
import itertools


class _At:
    """An event of the clock (what ``Engine.at`` returns): callbacks run when the clock reaches it."""

    __slots__ = ("callbacks",)

    def __init__(self):
        self.callbacks: list = []


class Clock:
    """What a :class:`~sfsim.network.backhaul.Backhaul` uses of an engine: the time, timers, no trace."""

    events = None

    def __init__(self):
        self.env = self  # Backhaul and FifoLane read engine.env.now
        self.now = 0.0
        self.queue: list = []
        self._seq = itertools.count()

    def at(self, t: float) -> _At:
        """A timer at ``t`` (after the servers' events at ``t``)."""
        ev = _At()
        heapq.heappush(self.queue, (t, 1, next(self._seq), ev))
        return ev

    def record(self, *args) -> None:
        """No trace on the fast path."""

    def event(self):  # pragma: no cover - mode sync is replayed by the SimPy engine
        raise RuntimeError("backhaul mode sync is replayed by the SimPy engine only")


def replay(sync, steps: list, leaves: list[float], ends: list[float]) -> float:
    """Run ``sync`` (a Backhaul on a :class:`Clock`) over the servers' step ends and last-worker ends.

    Args:
        sync: the run's :class:`~sfsim.network.backhaul.Backhaul`, built on a :class:`Clock`.
        steps: per server, the end times of its optimizer steps (any order).
        leaves: per server, when its last worker ended.
        ends: per server, its last event (its makespan).

    Returns:
        The run's makespan as SimPy returns it: the time of the last event it processed.
    """
    clock = sync.engine
    queue = clock.queue
    for j, (ts, leave, end) in enumerate(zip(steps, leaves, ends, strict=True)):
        for t in sorted(ts):
            heapq.heappush(queue, (float(t), 0, next(clock._seq), (sync.step_done, j)))
        heapq.heappush(queue, (float(leave), 0, next(clock._seq), (sync.leave, j)))
        heapq.heappush(queue, (float(end), 0, next(clock._seq), (_nothing, j)))
    last = 0.0
    while queue:
        t, prio, _, ev = heapq.heappop(queue)
        clock.now = last = t
        if prio == 0:
            ev[0](ev[1])
            continue
        for callback in ev.callbacks:
            callback(ev)
    return last


def _nothing(_j: int) -> None:
    """A server's last event: nothing for the backhaul, but the clock stands there."""
