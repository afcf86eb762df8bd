"""What a server's activation cache holds of each device that moves: the part of its first epoch sent there.

With ``training.cache_activations`` a device sends its first epoch and the server that *received* each micro-batch
keeps it; later epochs replay each server's own cache with no device compute and no uplink (the runtime's
``trainer.methods.splitfrozen``, ``_from_cache``). A device that hands over during its first epoch leaves the
micro-batches it sent to the old server cached there and sends the rest to the new one, so in every later epoch
each server replays its own part (the device's later handovers do not matter: it sends nothing more). A server run
one epoch at a time (:class:`~sfsim.engine.epochs.EpochBooks`) keeps, per device that moves or may leave, the
epoch-local indices it received (:meth:`CacheParts.add`, called by the device's process when it sends); its cached
epochs count and replay those, in index order, as its devices that never move replay their whole epoch.

Example:
    >>> parts = CacheParts()
    >>> for j in (0, 1):  # a device sent micro-batches 0 and 1 of its 4 here, then moved away
    ...     parts.add(7, j)
    >>> parts.count(7), parts.first(7), parts.after(7, 0), parts.after(7, 1)
    (2, 0, 1, None)
"""

from __future__ import annotations


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
