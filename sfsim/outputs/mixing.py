"""Stream mixing: how close each window of a server's stream is to its overall device shares."""

from __future__ import annotations


class StreamMixing:
    """Online mean total-variation distance between window and overall device shares.

    A server's stream (the micro-batches in the order its workers start them) is cut into
    ``windows`` equal parts by count (10 by default: deciles); for each part the distance is
    ``0.5 * sum_i |share_i(window) - share_i(all)|``. 0 means every tenth of the stream has the
    fleet's overall mix; 1 means each tenth comes from devices absent overall (impossible).
    Memory is O(devices), not O(micro-batches).
    """

    def __init__(self, totals: list[int], windows: int = 10):
        total = sum(totals)
        self.total = total
        self.windows = max(1, min(windows, total))
        self.share = [t / total if total else 0.0 for t in totals]
        self.counts: dict[int, int] = {}
        self.seen = 0
        self.tv: list[float] = []
        self._bound = self._boundary(1)

    def _boundary(self, k: int) -> int:
        return -(-k * self.total // self.windows)  # ceil(k * total / windows)

    def add(self, i: int) -> None:
        """Record that device ``i``'s micro-batch is next in the stream."""
        self.counts[i] = self.counts.get(i, 0) + 1
        self.seen += 1
        if self.seen >= self._bound:
            self._close()

    def _close(self) -> None:
        size = sum(self.counts.values())
        dist = 1.0 - sum(self.share[i] for i in self.counts)  # devices absent from the window
        dist += sum(abs(c / size - self.share[i]) for i, c in self.counts.items())
        self.tv.append(0.5 * dist)
        self.counts.clear()
        self._bound = self._boundary(len(self.tv) + 1)

    @property
    def value(self) -> float | None:
        """Mean distance over the closed windows (None before any micro-batch)."""
        return sum(self.tv) / len(self.tv) if self.tv else None
