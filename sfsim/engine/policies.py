"""Server policies: which eligible micro-batch a free SplitFrozen worker takes next (see sfsim.engine.pool).

A policy holds the micro-batches that have arrived at a server and not yet started. The worker
calls ``push`` at each arrival, ``len(policy)`` to ask whether any micro-batch may start now, and
``pop`` to take it. Work-conserving policies (``fifo``, ``round-robin``, ``proportional``) let every
arrived micro-batch start; the paced orders and the mixing pool may hold arrived micro-batches back
(``held`` counts them), so that a worker can sit idle while micro-batches wait: the engine records
that as the server's ``wait``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator

from sfsim.engine.pacing import MixingPool, server_order
from sfsim.errors import SfsimError


class FifoPolicy:
    """Take micro-batches in arrival order."""

    name = "fifo"
    held = 0  # arrived micro-batches that may not start yet: never, for a work-conserving policy

    def __init__(self, totals: list[int]):
        self.queue: deque = deque()  # (device, micro-batch) in arrival order

    def push(self, i: int, n: int) -> None:
        """Make micro-batch ``n`` of device ``i`` eligible."""
        self.queue.append((i, n))

    def pop(self) -> tuple[int, int]:
        """Remove and return the next ``(device, micro-batch)``."""
        return self.queue.popleft()

    def __len__(self) -> int:
        return len(self.queue)


class _PerDevicePolicy:
    """Base for policies that choose a device first, then take its oldest eligible micro-batch."""

    held = 0

    def __init__(self, totals: list[int]):
        self.totals = totals
        self.ready = [0] * len(totals)      # eligible micro-batches per device
        self.next_mb = [-1] * len(totals)   # oldest eligible micro-batch per device
        self.size = 0

    def push(self, i: int, n: int) -> None:
        """Make micro-batch ``n`` of device ``i`` eligible."""
        self.size += 1
        self.ready[i] += 1
        if self.ready[i] == 1:
            self.next_mb[i] = n
            self._add(i)

    def push_many(self, i: int, first: int, count: int) -> None:
        """Make ``count`` micro-batches of device ``i`` from ``first`` on eligible (O(1) memory)."""
        if count <= 0:
            return
        self.size += count
        self.ready[i] += count
        if self.ready[i] == count:
            self.next_mb[i] = first
            self._add(i)

    def pop(self) -> tuple[int, int]:
        """Remove and return the next ``(device, micro-batch)``."""
        i = self._take()
        n = self.next_mb[i]
        self.next_mb[i] = n + 1
        self.ready[i] -= 1
        self.size -= 1
        if self.ready[i]:
            self._add(i)
        return i, n

    def __len__(self) -> int:
        return self.size


class RoundRobinPolicy(_PerDevicePolicy):
    """Serve devices in turn (in the order they first had work waiting), one micro-batch each."""

    name = "round-robin"

    def __init__(self, totals: list[int]):
        super().__init__(totals)
        self._turn: deque = deque()

    def _add(self, i: int) -> None:
        self._turn.append(i)

    def _take(self) -> int:
        return self._turn.popleft()


class ProportionalPolicy(_PerDevicePolicy):
    """Serve the device with the largest fraction of its micro-batches not yet started.

    This paces devices so that they finish together, which keeps the server's stream mixed.
    """

    name = "proportional"

    def __init__(self, totals: list[int]):
        super().__init__(totals)
        self._started = [0] * len(totals)
        self._heap: list = []

    def _add(self, i: int) -> None:
        # Key changes only when device i is served, so a plain heap stays correct.
        heapq.heappush(self._heap, (-(self.totals[i] - self._started[i]) / self.totals[i], i))

    def _take(self) -> int:
        i = heapq.heappop(self._heap)[1]
        self._started[i] += 1
        return i


class PacedPolicy:
    """Train micro-batches in a fixed device order, waiting for the named device's next one.

    ``order`` yields device indices, each device once per micro-batch it sends to this server (the
    engine builds one :func:`sfsim.engine.pacing.server_order` per epoch, see :func:`paced_order`). A
    micro-batch may start only when it is the next in that order: arrivals from other devices wait
    (``held``) even while a worker is free. This is how the trainer keeps its stream mixed.
    """

    def __init__(self, totals: list[int], order: Iterator[int], name: str = "paced-proportional"):
        self.name = name
        self._order = order
        self.ready = [0] * len(totals)  # arrived micro-batches per device (they arrive in order)
        self.next_mb = [0] * len(totals)  # next micro-batch to start per device
        self.held = 0  # arrived, not started
        self.turn = next(order, -1)  # the device whose micro-batch is next

    def push(self, i: int, n: int) -> None:
        """Micro-batch ``n`` of device ``i`` has arrived."""
        self.ready[i] += 1
        self.held += 1

    def pop(self) -> tuple[int, int]:
        """Remove and return the next ``(device, micro-batch)`` in the order (call only when ``len`` > 0)."""
        i = self.turn
        n = self.next_mb[i]
        self.next_mb[i] = n + 1
        self.ready[i] -= 1
        self.held -= 1
        self.turn = next(self._order, -1)
        return i, n

    def waiting_for(self) -> tuple[int, int]:
        """``(device, micro-batch)`` the server waits for (``(-1, -1)`` when the order is done)."""
        i = self.turn
        return (i, self.next_mb[i]) if i >= 0 else (-1, -1)

    def __len__(self) -> int:
        return 1 if self.turn >= 0 and self.ready[self.turn] else 0


class PoolPolicy:
    """A mixing pool (:class:`sfsim.engine.pacing.MixingPool`): arrivals pooled, drawn uniformly at random.

    A micro-batch may start only when ``pool.ready(more())``: the pool holds ``capacity``
    micro-batches, or ``more()`` (supplied by the server) says that nothing else can arrive before
    a draw. Arrivals that find the pool full wait outside it, in arrival order, and enter it one
    per draw, so the pool never holds more than its capacity (its memory bound). ``nbytes(i, n)``
    is the memory one pooled micro-batch takes; ``peak_bytes`` is the most the pool held at once.
    """

    name = "pool"

    def __init__(self, totals: list[int], capacity: int, seed: int, more: Callable[[], bool],
                 nbytes: Callable[[int, int], float]):
        self.pool = MixingPool(capacity, seed)
        self.more, self.nbytes = more, nbytes
        self.overflow: deque = deque()  # arrived while the pool was full
        self.bytes = self.peak_bytes = 0.0

    @property
    def held(self) -> int:
        """Arrived micro-batches not started (in the pool or waiting to enter it)."""
        return len(self.pool) + len(self.overflow)

    def _add(self, item: tuple[int, int]) -> None:
        self.pool.add(item)
        self.bytes += self.nbytes(*item)
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def push(self, i: int, n: int) -> None:
        """Micro-batch ``n`` of device ``i`` has arrived: into the pool, or behind it when full."""
        if self.pool.full():
            self.overflow.append((i, n))
        else:
            self._add((i, n))

    def pop(self) -> tuple[int, int]:
        """Draw a pooled micro-batch (call only when ``len`` > 0); the oldest waiting one takes its place."""
        i, n = self.pool.draw()
        self.bytes -= self.nbytes(i, n)
        if self.overflow:
            self._add(self.overflow.popleft())
        return i, n

    def waiting_for(self) -> tuple[int, int]:
        """The pool waits for no one device: ``(-1, -1)``."""
        return -1, -1

    def __len__(self) -> int:
        return 1 if self.pool.ready(self.more()) else 0


def paced_order(names: list[str], totals: list[int], per_epoch: list[int], kind: str) -> Iterator[int]:
    """Device indices in the server's paced order: one :func:`sfsim.engine.pacing.server_order` per epoch.

    Args:
        names: device names (index = device id).
        totals: micro-batches each device sends to this server over the run (0: not this server's).
        per_epoch: micro-batches per epoch of each device (0: all of ``totals`` in one epoch).
        kind: ``proportional`` or ``round-robin``.

    Returns:
        An iterator over device indices, ``totals[i]`` times device ``i``; epoch ``e`` orders each
        device's micro-batches ``e * per_epoch .. (e + 1) * per_epoch - 1``. Memory is one epoch.

    Example:
        >>> list(paced_order(["a", "b"], [2, 4], [1, 2], "round-robin"))
        [0, 1, 1, 0, 1, 1]
    """
    members = [i for i, t in enumerate(totals) if t > 0]
    per = {i: per_epoch[i] or totals[i] for i in members}
    epochs = max((-(-totals[i] // per[i]) for i in members), default=0)
    index = {names[i]: i for i in members}
    last_counts, last = None, []
    for e in range(epochs):
        counts = {names[i]: c for i in members if (c := min(per[i], totals[i] - e * per[i])) > 0}
        if counts != last_counts:
            last_counts, last = counts, [index[d] for d in server_order(counts, kind)]
        yield from last


#: Paced policies: name -> the :func:`sfsim.engine.pacing.server_order` they follow.
PACED = {"paced-proportional": "proportional", "paced-round-robin": "round-robin"}

#: Why a paced policy refuses one server-wide pool of credits (``training.credits: server``).
PACED_NEEDS_DEVICE_CREDITS = ("waits for one device's micro-batch, so each device needs credits of its own (with "
                              "one pool per server, others' held-back micro-batches can take every credit: "
                              "deadlock); set training.credits: device")

#: Server policies by name.
POLICIES = {p.name: p for p in (FifoPolicy, RoundRobinPolicy, ProportionalPolicy)}
POLICIES.update({name: PacedPolicy for name in PACED}, pool=PoolPolicy)


def make_policy(name: str, totals: list[int], **context):
    """A new policy object by name, or SfsimError naming the choices.

    ``context`` is what the name needs beyond ``totals``: ``order`` for the paced policies
    (see :func:`paced_order`); ``capacity``, ``seed``, ``more`` and ``nbytes`` for ``pool``.
    """
    if name not in POLICIES:
        raise SfsimError(f"unknown server policy {name!r}; choose one of: {', '.join(POLICIES)}")
    if name in PACED:
        return PacedPolicy(totals, context["order"], name)
    return POLICIES[name](totals, **context)
