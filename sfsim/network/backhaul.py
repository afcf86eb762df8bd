"""Backhaul synchronisation: SplitFrozen servers average their LoRA adapters and head every few steps.

With several servers each trains its own replica on its devices' micro-batches; ``training.sync``
makes them one logical model. A server starts sync round ``r`` when it ends its ``r * every``-th
optimizer step (counted over all its accelerators): it sends its adapters (``A`` bytes: LoRA
blocks and head) on its own backhaul link (lane ``backhaul:<server>``, op ``sync-send``: ``A x 8 /
bandwidth`` seconds, then the link's latency). The average is ready when the uploads of round
``r`` from every server still training have arrived (a server that has ended its last step no longer
holds the others back); then every server that sent receives the average on its backhaul (op
``sync-recv``, same duration, then latency). Averaging itself is taken as free (a few adds per
parameter against a link transfer).

* ``mode: sync``: the accelerator that ended the step waits until the average has arrived (a
  barrier), then goes on; the others of that server keep working.
* ``mode: async``: nobody waits; the transfers only occupy the backhaul and show in the bytes.

Traffic: every round moves ``A`` bytes up and ``A`` down on each participating server's backhaul.
"""

from __future__ import annotations

import simpy

from sfsim.engine.pool import Engine, FifoLane


class Backhaul:
    """The sync rounds of one run: backhaul lanes, per-server step counts, open rounds.

    Args:
        engine: the engine.
        servers: ``(name, bandwidth bit/s, latency s)`` per server, in server order.
        adapter_bytes: bytes of one adapter copy (LoRA blocks + head).
        every: optimizer steps between rounds.
        mode: ``sync`` (barrier) or ``async``.
        active: indices of the servers that train (have devices).
    """

    def __init__(self, engine: Engine, servers: list[tuple[str, float, float]], adapter_bytes: float,
                 every: int, mode: str, active: set[int]):
        if every < 1:
            raise ValueError(f'"every" must be >= 1, got {every}')
        if mode not in ("sync", "async"):
            raise ValueError(f'"mode" must be sync or async, got {mode!r}')
        self.engine, self.env = engine, engine.env
        self.names = [name for name, _, _ in servers]
        self.lanes = [FifoLane(engine, f"backhaul:{name}") for name in self.names]
        self.seconds = [adapter_bytes * 8.0 / bw for _, bw, _ in servers]
        self.latency = [lat for _, _, lat in servers]
        self.adapter_bytes, self.every, self.mode = adapter_bytes, every, mode
        self.active = set(active)
        self.steps = [0] * len(servers)
        self.open: dict[int, tuple[dict[int, float], dict[int, simpy.Event | None]]] = {}
        self.bytes = {name: 0.0 for name, _, _ in servers}  # up + down per server
        self.rounds = 0  # rounds completed

    def step_done(self, j: int) -> simpy.Event | None:
        """Server ``j`` ended an optimizer step now; returns an event to wait for in sync mode, else None."""
        self.steps[j] += 1
        if self.steps[j] % self.every:
            return None
        r = self.steps[j] // self.every
        (end,) = self.lanes[j].serve([("sync-send", self.seconds[j])])
        self.bytes[self.names[j]] += self.adapter_bytes
        arrived, waiting = self.open.setdefault(r, ({}, {}))
        arrived[j] = end + self.latency[j]
        ev = self.env.event() if self.mode == "sync" else None
        waiting[j] = ev
        self._close_ready()
        return ev

    def leave(self, j: int) -> None:
        """Server ``j`` has ended its last step: rounds no longer wait for it."""
        self.active.discard(j)
        self._close_ready()

    def _close_ready(self) -> None:
        for r in sorted(self.open):
            arrived, waiting = self.open[r]
            if not self.active <= set(arrived):
                continue
            del self.open[r]
            self.rounds += 1
            ready = max(max(arrived.values()), self.env.now)  # a round a leaving server closes late: now, not the past
            self.engine.at(ready).callbacks.append(lambda _e, w=waiting: self._send_average(w))

    def _send_average(self, waiting: dict[int, simpy.Event | None]) -> None:
        """At the instant the average is ready: each participant receives it on its backhaul."""
        for j, ev in waiting.items():
            (end,) = self.lanes[j].serve([("sync-recv", self.seconds[j])])
            self.bytes[self.names[j]] += self.adapter_bytes
            done = end + self.latency[j]
            if ev is not None:
                self.engine.succeed_at(ev, done)
            else:
                self.engine.at(done)  # the run lasts until the last average has arrived


def backhaul_for(engine: Engine, scenario, cm, lora_start: int, job) -> Backhaul:
    """The :class:`Backhaul` of a SplitFrozen run: adapters of blocks ``lora_start..L-1`` and the head."""
    L = scenario.arch.n_layers
    servers = [(s.name, s.backhaul.bandwidth, s.backhaul.latency) for s in scenario.servers]
    active = {d.server for d in job.devices if d.n}
    if getattr(job, "network", None) is not None:  # servers that devices hand over to train too
        active |= {leg.server for m in job.network.moving.values() for leg in m.legs}
    sync = scenario.training.sync
    return Backhaul(engine, servers, cm.adapter_bytes(range(lora_start, L), head=True), sync.every, sync.mode, active)
