"""Flow control of the SplitFrozen server: credits and their waiters, and who could still send."""

from __future__ import annotations

import heapq

import simpy


class Credits:
    """Credits of one holder (a server, or one device with ``training.credits: device``) and its waiters.

    Args:
        engine: the :class:`~sfsim.engine.pool.Engine`.
        n: credits to start with.
    """

    def __init__(self, engine, n: int):
        self.engine, self.env, self.credits = engine, engine.env, n
        self.waiting: list = []  # heap of (ready time, seq, event): devices waiting for a credit
        self.seq = 0

    def take(self) -> simpy.Event | None:
        """Take a credit now; returns None on success, else an event that fires when one is granted."""
        if self.credits:
            self.credits -= 1
            return None
        ev = self.env.event()
        self.wait(self.env.now, ev)
        return ev

    def wait(self, ready: float, ev: simpy.Event) -> None:
        """Queue a device that will want a credit at ``ready`` (>= now; call only when none is free).

        ``ev`` fires with value True at the instant a credit is granted to it (>= ``ready``), or with
        False at ``ready`` when a credit was returned before ``ready``: the device must then try
        again (another device that became ready earlier may take that credit first). Waiters are
        served by ready time, ties in the order they queued: exactly a FIFO queue of devices that
        checked for a credit at their ready instants, without waking every device at that instant.
        """
        self.seq += 1
        heapq.heappush(self.waiting, (ready, self.seq, ev))

    def cancel(self, ev: simpy.Event) -> None:
        """A waiter leaves the queue (its device hands over or drops): ``ev`` fires now with None."""
        if ev.triggered:
            return
        self.waiting = [w for w in self.waiting if w[2] is not ev]
        heapq.heapify(self.waiting)
        ev.succeed(None)

    def give_back(self) -> None:
        """Return one credit: to the longest-ready waiter, else to the holder."""
        waiting = self.waiting
        if waiting and waiting[0][0] <= self.env.now:
            heapq.heappop(waiting)[2].succeed(True)  # hand it straight to the longest-ready waiter
        else:
            self.credits += 1
            if waiting:  # the earliest future waiter tries for it at its ready time
                ready, _, ev = heapq.heappop(waiting)
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
