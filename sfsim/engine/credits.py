"""Flow control of the SplitFrozen server: credits and their waiters, and who could still send."""

from __future__ import annotations

import heapq
import math
from collections import deque

import simpy


class Lane:
    """Waiters of one :class:`Credits` queued in ready order by construction: a FIFO beside its heap.

    A device that queues at ``now`` for ``now + c`` (``c`` fixed: its forward or its send, whichever
    is longer) never queues earlier than the one before it with the same ``c``, so waiters of one
    ``c`` need no heap among themselves: only the lane's first waiter sits in the heap of
    :attr:`Credits.waiting` (a few lanes instead of every waiting device). Same order, cheaper.
    """

    __slots__ = ("queue", "last", "active")

    def __init__(self):
        self.queue: deque = deque()  # its waiters after the one in the heap, in (ready, seq) order
        self.last = -math.inf        # the latest ready time queued here
        self.active = False          # its first waiter is in the heap


class Credits:
    """Credits of one holder (a server, or one device with ``training.credits: device``) and its waiters.

    Args:
        engine: the :class:`~sfsim.engine.pool.Engine`.
        n: credits to start with.
    """

    def __init__(self, engine, n: int):
        self.engine, self.env, self.credits = engine, engine.env, n
        self.waiting: list = []  # heap of (ready time, seq, event, Lane or None): devices waiting for a credit
        self.seq = 0
        self.lanes: dict[float, Lane] = {}

    def lane(self, c: float) -> Lane:
        """The :class:`Lane` of waiters that queue for ``c`` seconds after they queue."""
        lane = self.lanes.get(c)
        if lane is None:
            lane = self.lanes[c] = Lane()
        return lane

    def take(self) -> simpy.Event | None:
        """Take a credit now; returns None on success, else an event that fires when one is granted."""
        if self.credits:
            self.credits -= 1
            return None
        ev = self.env.event()
        self.wait(self.env.now, ev)
        return ev

    def wait(self, ready: float, ev: simpy.Event, lane: Lane | None = None) -> None:
        """Queue a device that will want a credit at ``ready`` (>= now; call only when none is free).

        ``ev`` fires with value True at the instant a credit is granted to it (>= ``ready``), or with
        False at ``ready`` when a credit was returned before ``ready``: the device must then try
        again (another device that became ready earlier may take that credit first). Waiters are
        served by ready time, ties in the order they queued: exactly a FIFO queue of devices that
        checked for a credit at their ready instants, without waking every device at that instant.
        ``lane``: the device's :class:`Lane` (where it queues when ``ready`` keeps its order).
        """
        self.seq += 1
        if lane is None or ready < lane.last:
            heapq.heappush(self.waiting, (ready, self.seq, ev, None))
            return
        lane.last = ready
        if lane.active:
            lane.queue.append((ready, self.seq, ev, lane))
        else:
            lane.active = True
            heapq.heappush(self.waiting, (ready, self.seq, ev, lane))

    def pop(self) -> tuple:
        """Remove the longest-ready waiter: its ``(ready, seq, event, lane)``; the next of its lane takes its place."""
        waiting = self.waiting
        entry = heapq.heappop(waiting)
        lane = entry[3]
        if lane is not None:
            if lane.queue:
                heapq.heappush(waiting, lane.queue.popleft())
            else:
                lane.active = False
        return entry

    def cancel(self, ev: simpy.Event) -> None:
        """A waiter leaves the queue (its device hands over or drops): ``ev`` fires now with None."""
        if ev.triggered:
            return
        rest = [(r, q, e, None) for r, q, e, _ in self.waiting + [w for lane in self.lanes.values() for w in lane.queue]
                if e is not ev]
        for lane in self.lanes.values():
            lane.queue.clear()
            lane.active = False
        self.waiting = rest
        heapq.heapify(self.waiting)
        ev.succeed(None)

    def give_back(self) -> None:
        """Return one credit: to the longest-ready waiter, else to the holder."""
        waiting = self.waiting
        if waiting and waiting[0][0] <= self.env.now:
            self.pop()[2].succeed(True)  # hand it straight to the longest-ready waiter
        else:
            self.credits += 1
            if waiting:  # the earliest future waiter tries for it at its ready time
                ready, _, ev, _ = self.pop()
                self.engine.trigger_at(ev, ready, False)


class Senders:
    """Which devices could still send to a server before its next draw (the mixing pool's ``more``).

    Device ``i`` could send while it has micro-batches left to send (``unsent``) and fewer than
    ``limit`` outstanding (``out``: sent and still holding its own credit, or, sequential, not yet
    released). With one server-wide pool of credits, ``holding`` counts the sent micro-batches
    that hold one of its ``buffer`` credits.
    """

    def __init__(self, sent: list[int], limit: float, buffer: float):
        self.unsent, self.out, self.limit = list(sent), [0] * len(sent), limit
        self.free = [u > 0 for u in sent]
        self.count = sum(self.free)  # devices that could send
        self.holding, self.buffer = 0, buffer

    def change(self, i: int, unsent: int = 0, out: int = 0) -> None:
        """Device ``i`` sent (``unsent=-1``), took or released an outstanding slot (``out=+-1``)."""
        self.unsent[i] += unsent
        self.out[i] += out
        free = self.unsent[i] > 0 and self.out[i] < self.limit
        if free != self.free[i]:
            self.free[i] = free
            self.count += 1 if free else -1

    def any(self) -> bool:
        """True when some device could still send (and, with server credits, a credit is left)."""
        return self.count > 0 and self.holding < self.buffer
