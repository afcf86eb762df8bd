"""A SplitFrozen server's books over one epoch when devices move or leave (the runtime's ``left`` per epoch).

A server run one epoch at a time (:meth:`sfsim.engine.worker.WorkerLoop.by_epochs`) ends an epoch when every
micro-batch it will train in it has been handed out. With handovers and churn that count is the runtime's
(``trainer.methods.splitfrozen.SplitFrozen.server_epoch``, ``_visit``, ``_close_epoch``):

* at the epoch's start the server counts the epoch's micro-batches of the devices it *holds* (those whose last
  leg so far is on it) and one *place* for every other device that may still come to it: a leg on it after the
  last leg the server knows the device took (the first, or the one its ``moved`` named);
* a handover to another server (``moved``) takes the device's unsent micro-batches of the epoch away and leaves
  a place when a later leg brings it back; the server it lands on (``join``) counts those micro-batches instead
  of its place, and holds the device from then on;
* a device whose epoch is sent (or that left) frees its places on every other server of its legs (a ``join`` of
  0); one that left (drop, never online again) sends its server none of the epoch's unsent micro-batches, and
  no later epoch counts it anywhere (the runtime's device answers each later ``start`` with ``leave`` at once).
"""

from __future__ import annotations


class EpochBooks:
    """One server's devices per epoch (module docstring): held, places for visitors, devices gone for good.

    Args:
        index: the server's index.
        per: device index -> its micro-batches an epoch.
        held: the devices the server holds at the start (their first leg is on it).
        legs: device index -> the servers of its legs, in order, for each device that moves or may leave.
    """

    def __init__(self, index: int, per: list[int], held: set[int], legs: dict[int, list[int]]):
        self.index, self.per, self.held, self.legs = index, per, set(held), legs
        self.taken: dict[int, int] = {}  # device -> the last leg it took that the server knows of (0: its first)
        self.place: dict[int, int] = {}  # device -> 1 while it may still come this epoch
        self.gone: set[int] = set()

    def _may_come(self, i: int) -> bool:
        return self.index in self.legs.get(i, ())[self.taken.get(i, 0) + 1:]

    def open(self, replayed: frozenset[int] = frozenset()) -> int:
        """A new epoch: its count of micro-batches and places, of the devices that send in it (not ``replayed``: the
        activation cache's devices in a cached epoch send nothing and come nowhere; their servers count their replays,
        :meth:`sfsim.engine.worker.WorkerLoop._cached_count`)."""
        self.place = {i: 1 for i in sorted(self.legs) if i not in self.held and i not in self.gone and self.per[i]
                      and i not in replayed and self._may_come(i)}
        return sum(self.per[i] for i in self.held - self.gone - replayed) + len(self.place)

    def moved(self, i: int, k: int, leg: int) -> int:
        """Device ``i`` left for another server (its leg ``leg``) with ``k`` micro-batches of the epoch unsent; a place
        stays when a later leg brings it here again. Returns the change of the count."""
        self.held.discard(i)
        self.taken[i] = leg
        self.place[i] = back = int(self._may_come(i))
        return back - k

    def joined(self, i: int, k: int) -> int:
        """Device ``i`` arrived with ``k`` micro-batches of the epoch to send here: they replace its place."""
        self.held.add(i)
        return k - self.place.pop(i, 0)

    def closed(self, i: int) -> int:
        """Device ``i``'s epoch is over elsewhere: its place here goes."""
        return -self.place.pop(i, 0)

    def left(self, i: int, k: int) -> int:
        """Device ``i`` left for good with ``k`` micro-batches of the epoch unsent (here when held, else its place)."""
        self.gone.add(i)
        return -k if i in self.held else self.closed(i)
