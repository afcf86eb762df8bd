"""What a server's activation cache holds of each device that moves: the part of its first epoch sent there.

With ``training.cache_activations`` a device sends its first epoch and the server that *received* each micro-batch
keeps it; later epochs replay each server's own cache with no device compute and no uplink (the runtime's
``trainer.methods.splitfrozen``, ``_from_cache``). A device that hands over during its first epoch leaves the
micro-batches it sent to the old server cached there and sends the rest to the new one, so in every later epoch
each server replays its own part (the device's later handovers do not matter: it sends nothing more). A server run
one epoch at a time (:class:`~sfsim.engine.epochs.EpochBooks`) keeps, per device that moves or may leave, the
epoch-local indices it received (:meth:`CacheParts.add`, called by the device's process when it sends); its cached
epochs count and replay those, in index order, as its devices that never move replay their whole epoch.

A cached device that drops for good (``availability`` with ``churn: drop``; :class:`Departures`): one server's rule
was that a device that leaves before its first epoch is sent trains nothing more (its partial cache is not read), and
that one server cannot start a cached epoch before that (the epoch ends only when the device has sent or left). A
mover leaves parts on several servers, which run their epochs on their own (a server ahead may replay its part while
the device still sends to another), and a device's later drop (in a cached epoch) must mean the same on each of them.
The rule, one for every server and every cached device that may drop: **a replay trains only if its server starts it
before the device's departure**; from then on no server replays any of its micro-batches (the one it was about to
start, the rest of the epoch, every later epoch) and they count as its untrained samples. The departure is its drop
instant, or, when it leaves while sending its first epoch, the instant it finds that its next micro-batch cannot be
sent in full while present (the one-server rule's ``leave``: no cached epoch opens on that server before it, so its
partial cache is not read there, and no other server reads it after). A drop in a cached epoch, which used to leave
every replay in place, now ends its replays at that instant, on one server as on several.
The runtime's servers learn of the drop from the device's ``gone`` message stamped with its drop instant
(``trainer.transport.departure``) and compare that stamp with each replay's start.

Example:
    >>> parts = CacheParts()
    >>> for j in (0, 1):  # a device sent micro-batches 0 and 1 of its 4 here, then moved away
    ...     parts.add(7, j)
    >>> parts.count(7), parts.first(7), parts.after(7, 0), parts.after(7, 1)
    (2, 0, 1, None)
"""

from __future__ import annotations

import math


class CacheParts:
    """Per device: the sorted epoch-local indices of its first epoch that this server received (and caches)."""

    def __init__(self):
        self._held: dict[int, list[int]] = {}
        self._next: dict[int, dict[int, int | None]] = {}  # device -> index -> the next index held (built lazily)

    def add(self, i: int, j: int) -> None:
        """Device ``i``'s micro-batch ``j`` of its first epoch was sent here (``j`` >= 0, each once)."""
        if j < 0:
            raise ValueError(f"micro-batch index must be >= 0, got {j}")
        held = self._held.setdefault(i, [])
        if j in held:
            raise ValueError(f"device {i}'s micro-batch {j} was cached here twice")
        held.append(j)
        held.sort()
        self._next.pop(i, None)

    def count_from(self, i: int, j: int) -> int:
        """Micro-batches of device ``i`` held here with an epoch-local index >= ``j``."""
        return sum(1 for x in self._held.get(i, ()) if x >= j)

    def count(self, i: int) -> int:
        """Micro-batches of device ``i`` this server replays each later epoch."""
        return len(self._held.get(i, ()))

    def first(self, i: int) -> int | None:
        """The first epoch-local index of device ``i`` held here (None: none)."""
        held = self._held.get(i)
        return held[0] if held else None

    def after(self, i: int, j: int) -> int | None:
        """The epoch-local index held here that comes after ``j`` (None: ``j`` was the last one)."""
        nxt = self._next.get(i)
        if nxt is None:
            held = self._held.get(i, [])
            nxt = self._next[i] = dict(zip(held, [*held[1:], None], strict=True))
        return nxt.get(j)


class Departures:
    """The cached devices that may drop for good, shared by every server's pool (module docstring): each one's drop
    instant, and the replays its servers started before it (count and sizes, which the result's untrained samples
    come from).

    Example:
        >>> dep = Departures({3: 120.0})
        >>> dep.gone(3, 119.9), dep.gone(3, 120.0), dep.gone(0, 1e9)
        (False, True, False)
        >>> dep.trained(3, 1.0); dep.trained(3, 0.5); dep.replayed[3], dep.units[3]
        (2, 1.5)
    """

    def __init__(self, at: dict[int, float]):
        for i, t in at.items():
            if not t >= 0:
                raise ValueError(f"device {i}'s drop instant must be >= 0 s, got {t}")
        self.at = dict(at)
        self.replayed: dict[int, int] = dict.fromkeys(at, 0)
        self.units: dict[int, float] = dict.fromkeys(at, 0.0)

    def left(self, i: int, t: float) -> None:
        """Device ``i`` left at ``t`` while sending its first epoch (its next micro-batch could not be sent in full
        while present): its departure is then, if before its drop instant (the runtime's ``leave`` and ``gone``)."""
        if i in self.at:
            self.at[i] = min(self.at[i], t)

    def gone(self, i: int, t: float) -> bool:
        """Whether device ``i`` has dropped by ``t`` (a replay starting then does not train)."""
        return t >= self.at.get(i, math.inf)

    def trained(self, i: int, size: float) -> None:
        """A server started a replay of device ``i`` (``size``: its share of a full micro-batch) before its drop."""
        if i in self.at:
            self.replayed[i] += 1
            self.units[i] += size
