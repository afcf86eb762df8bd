"""Server pacing orders: which device's micro-batch a server trains on next (shared by simulator and trainer).

A *pacing order* is fixed before the epoch from the devices' micro-batch counts: the server waits
for the named device's next micro-batch even when others have arrived (holding fast devices back).
This keeps the server's stream mixed under label skew, at the price of waiting; the trainer uses it
in every run, and the simulator can replay it (``policy: paced-...``) to predict that wait.
"""

from __future__ import annotations

import random

from sfsim.errors import SfsimError

#: Server pacing policies: which device's micro-batch the server trains on next.
SERVER_ORDERS = {
    "proportional": "devices paced in proportion to their remaining data (each spread over the epoch)",
    "round-robin": "one micro-batch from each device in turn until a device runs out",
    "fifo": "arrival order when every device streams back to back at its own rate",
    "pool": "a mixing buffer: arrivals pooled up to a memory bound, drawn uniformly at random (seeded)",
}

#: ``training.server_policy`` -> the fixed order (:func:`server_order`) a SplitLoRA server follows for it
#: (the trainer's ``--server-order``; absent: arrival order).
FIXED_ORDERS = {"paced-proportional": "proportional", "proportional": "proportional",
                "paced-round-robin": "round-robin", "round-robin": "round-robin"}


def server_order(counts: dict[str, int], policy: str, periods: dict[str, float] | None = None) -> list[str]:
    """The device sequence a server trains on in one epoch (each device appears ``counts[d]`` times).

    Args:
        counts: device -> micro-batches this epoch (dict order breaks ties).
        policy: one of :data:`SERVER_ORDERS`.
        periods: fifo only: device -> seconds between its micro-batches (relative values suffice).

    Returns:
        Device names in the order the server takes their micro-batches.

    Example:
        >>> server_order({"a": 2, "b": 4}, "proportional")
        ['b', 'a', 'b', 'b', 'a', 'b']
        >>> server_order({"a": 2, "b": 4}, "round-robin")
        ['a', 'b', 'a', 'b', 'b', 'b']
    """
    names = list(counts)
    if policy == "proportional":
        # micro-batch j of device d sits at fraction (j + 0.5) / n_d of the epoch
        keys = [((j + 0.5) / counts[d], i, d) for i, d in enumerate(names) for j in range(counts[d])]
    elif policy == "round-robin":
        keys = [(j, i, d) for i, d in enumerate(names) for j in range(counts[d])]
    elif policy in ("fifo", "pool"):  # in one process, arrival order is the fifo estimate
        periods = periods or {}
        keys = [((j + 1) * periods.get(d, 1.0), i, d) for i, d in enumerate(names) for j in range(counts[d])]
    else:
        raise SfsimError(f"unknown server order {policy!r}; choose one of: {', '.join(SERVER_ORDERS)}")
    return [d for *_, d in sorted(keys)]




class MixingPool:
    """A server-side mixing buffer: arrived micro-batches pooled, drawn uniformly at random (seeded).

    The server draws when the pool holds ``capacity`` micro-batches, or when nothing more can arrive
    before it draws (every device has all the micro-batches its credits allow already in the pool).
    Capacity comes from a memory bound: ``capacity = max(1, bound // bytes per micro-batch)``.

    Args:
        capacity: micro-batches the pool may hold.
        seed: seed of the draws (``random.Random``); the pool keeps arrival order, so the same
            arrivals and seed give the same draws.

    Example:
        >>> pool = MixingPool(2, seed=0)
        >>> pool.add(("a", 0)); pool.ready(more_can_arrive=True)
        False
        >>> pool.add(("b", 0)); pool.ready(more_can_arrive=True)
        True
    """

    def __init__(self, capacity: int, seed: int):
        if capacity < 1:
            raise SfsimError(f"the mixing pool must hold at least one micro-batch (capacity {capacity})")

        self.capacity = capacity
        self.items: list = []
        self._rng = random.Random(seed)
        self.peak = 0

    def add(self, item) -> None:
        """Put an arrived micro-batch in the pool."""
        self.items.append(item)
        self.peak = max(self.peak, len(self.items))

    def full(self) -> bool:
        """True when the pool may accept nothing more."""
        return len(self.items) >= self.capacity

    def ready(self, more_can_arrive: bool) -> bool:
        """True when the server should draw: the pool is full, or it holds all it can get for now."""
        return bool(self.items) and (self.full() or not more_can_arrive)

    def draw(self):
        """Remove and return a uniformly random pooled micro-batch."""
        return self.items.pop(self._rng.randrange(len(self.items)))

    def __len__(self) -> int:
        return len(self.items)


def pool_capacity(bound_bytes: float, mb_bytes: float) -> int:
    """Micro-batches that fit a pool of ``bound_bytes`` (at least one).

    Example:
        >>> pool_capacity(10 * 2**20, 3 * 2**20)
        3
    """
    return max(1, int(bound_bytes // max(mb_bytes, 1)))
