"""Backhaul synchronisation: the servers average their LoRA adapters and head every few steps.

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

The baselines (SplitLoRA, FedLoRA, CenLoRA) follow the runtime's rounds exactly (:class:`Rounds`,
:class:`ServerRounds`, :func:`sync_spec`; :mod:`trainer.transport.backhaul`): every server takes part in every
round (one that has trained its epoch with a round of zeros, so that its bytes count too); ``mode: sync`` with
``every: 1`` averages the gradients *before* each step; each epoch ends with rounds of zeros until no server
trains, then a closing round when one is due (SplitLoRA: always, with its clients' average too); an ``async``
round holds nobody, but a server's next round waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from sfsim.engine.pool import Engine, FifoLane
from sfsim.errors import SfsimError


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
            ready = max(arrived.values())
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


class Rounds:
    """The backhaul rounds of SplitLoRA, FedLoRA and CenLoRA, as :class:`trainer.transport.backhaul.ServerSync` runs them.

    Unlike SplitFrozen's :class:`Backhaul`, every server takes part in every round, as in the runtime's
    collective: round ``k`` pairs the ``k``-th call of each server (:meth:`join`), a server that has trained
    its epoch answering with a round of zeros (weight 0) until none trains. Server ``j`` sends its payload
    on its backhaul from the instant it joins (``sync-send``: ``bytes x 8 / bandwidth``, then the latency);
    the average is ready when every server's upload has arrived; each then receives it (``sync-recv``,
    same duration and latency). A round's outcome (:attr:`outcome`) says, as the runtime's vector tail,
    whether no server trains any more (``ended``), whether some server did not take the average
    (``differ``: a closing round is due) and whether some server stepped on it (``stepping``).

    Args:
        engine: the engine.
        servers: ``(name, bandwidth bit/s, latency s)`` per server, in server order.
        every: optimizer steps (FedLoRA: FedAvg rounds) between rounds.
        mode: ``sync`` (barrier) or ``async``.
    """

    def __init__(self, engine: Engine, servers: list[tuple[str, float, float]], every: int, mode: str):
        if every < 1:
            raise ValueError(f'"every" must be >= 1, got {every}')
        if mode not in ("sync", "async"):
            raise ValueError(f'"mode" must be sync or async, got {mode!r}')
        self.engine, self.env = engine, engine.env
        self.names = [name for name, _, _ in servers]
        self.lanes = [FifoLane(engine, f"backhaul:{name}") for name in self.names]
        self.bandwidth = [bw for _, bw, _ in servers]
        self.latency = [lat for _, _, lat in servers]
        self.every, self.mode = every, mode
        self.joint = mode == "sync" and every == 1  # gradients averaged before every step
        self.calls = [0] * len(servers)
        self.open: dict[int, list[tuple]] = {}  # round -> (server, arrival, bytes, active, adopt, stepping, event)
        self.outcome: dict[int, tuple[bool, bool, bool]] = {}  # closed round -> (ended, differ, stepping)
        self.bytes = {name: 0.0 for name in self.names}  # up + down per server
        self.rounds = 0  # rounds completed
        engine.on_finish(self._check)

    def _check(self) -> None:
        """A round some server never joined would leave the others waiting: a modelling error, never a figure."""
        if self.open:
            k = min(self.open)
            came = sorted(self.names[e[0]] for e in self.open[k])
            raise SfsimError(f"backhaul: sync round {k + 1} waited for ever (only {', '.join(came)} joined it); "
                             "this run's rounds are not simulated correctly, please report it")

    def join(self, j: int, nbytes: float, active: bool, adopt: bool = True, stepping: bool = False
             ) -> tuple[int, simpy.Event]:
        """Server ``j`` joins its next round now with ``nbytes``; returns the round and the event of the
        average's arrival back at ``j``. ``active``: it still trains; ``adopt``: it takes the average;
        ``stepping``: it steps on it (joint mode)."""
        k = self.calls[j]
        self.calls[j] += 1
        (end,) = self.lanes[j].serve([("sync-send", nbytes * 8.0 / self.bandwidth[j])])
        self.bytes[self.names[j]] += nbytes
        ev = self.env.event()
        entries = self.open.setdefault(k, [])
        entries.append((j, end + self.latency[j], nbytes, active, adopt, stepping, ev))
        if len(entries) == len(self.names):
            del self.open[k]
            self.rounds += 1
            self.outcome[k] = (not any(e[3] for e in entries), not all(e[4] for e in entries),
                               any(e[5] for e in entries))
            ready = max(e[1] for e in entries)
            self.engine.at(ready).callbacks.append(lambda _e, entries=entries: self._send_back(entries))
        return k, ev

    def _send_back(self, entries: list[tuple]) -> None:
        """At the instant the average is ready: each server receives it on its backhaul."""
        for j, _, nbytes, *_, ev in entries:
            (end,) = self.lanes[j].serve([("sync-recv", nbytes * 8.0 / self.bandwidth[j])])
            self.bytes[self.names[j]] += nbytes
            self.engine.succeed_at(ev, end + self.latency[j])


class ServerRounds:
    """One server's side of :class:`Rounds`, by the runtime's rules (:class:`trainer.transport.backhaul.ServerSync`).

    Which optimizer steps (FedLoRA: FedAvg rounds) start a round, an ``async`` round in flight (the server's
    next round first waits for it), and the end of an epoch (:meth:`finish`): rounds of zeros until no
    server trains, then a closing round when one is due. Every method is a SimPy generator that takes the
    server's time ``t`` (at or after now) and returns when the server goes on.

    Args:
        rounds: the run's :class:`Rounds`.
        j: this server's index.
        payload: bytes of a round (what the server's optimizer holds: its adapters and head).
        closing: bytes of the closing round (``payload`` plus a method's extra state).
        always_close: end every epoch with the closing round (SplitLoRA: its client averages differ).
        step: joint mode: ``step(t)`` records the optimizer step a drained server takes with the others and
            returns its end (None: the method has no such step, FedLoRA).
    """

    def __init__(self, rounds: Rounds, j: int, payload: float, closing: float, always_close: bool = False,
                 step=None):
        self.rounds, self.j, self.env = rounds, j, rounds.env
        self.payload, self.closing, self.always_close, self.step = payload, closing, always_close, step
        self.steps = 0
        self.pending: tuple[int, simpy.Event] | None = None  # an async round in flight
        self.ended: bool | None = None  # no server trains: whether a closing round is due (None: some trains)

    def before_step(self, t: float, last: bool = False):
        """Joint mode: the servers average the step's gradients before it; returns when the step may start."""
        if not self.rounds.joint:
            return t
        yield from self._at(t)
        yield from self._join(self.payload, not last, stepping=True)
        return self.env.now

    def after_step(self, t: float, last: bool = False):
        """An optimizer step ended at ``t``; every ``every``-th starts a round (``last``: the server's last)."""
        self.steps += 1
        if self.rounds.joint or self.steps % self.rounds.every:
            return t
        return (yield from self._average(t, not last))

    def fed_round(self, t: float, last: bool = False):
        """FedLoRA: the server's FedAvg round ended at ``t``; joint mode averages every round."""
        self.steps += 1
        if self.rounds.joint:
            yield from self._at(t)
            yield from self._join(self.payload, not last)
            return self.env.now
        if self.steps % self.rounds.every:
            return t
        return (yield from self._average(t, not last))

    def finish(self, t: float):
        """The server's epoch is trained at ``t``: rounds of zeros until none trains, then the closing round."""
        yield from self._at(t)
        yield from self._wait()
        joint = self.rounds.joint
        while self.ended is None:
            k = yield from self._join(self.payload, False, adopt=joint)
            if joint and self.step is not None and self.rounds.outcome[k][2]:  # the others stepped: so does it
                yield from self._at(self.step(self.env.now))
        if self.ended or self.always_close:
            yield from self._join(self.closing, False)
        self.ended = None
        return self.env.now

    def _average(self, t: float, active: bool):
        """A weight round: a barrier in sync mode; in async mode in flight while the server goes on."""
        yield from self._at(t)
        yield from self._wait()
        if self.rounds.mode == "sync":
            yield from self._join(self.payload, active)
        else:
            self.pending = self.rounds.join(self.j, self.payload, active)
        return self.env.now

    def _join(self, nbytes: float, active: bool, adopt: bool = True, stepping: bool = False):
        """Join a round now and wait for its average; returns the round."""
        k, ev = self.rounds.join(self.j, nbytes, active, adopt, stepping)
        yield ev
        self._took(k)
        return k

    def _wait(self):
        """Wait for the async round in flight (the runtime joins its thread)."""
        if self.pending is not None:
            k, ev = self.pending
            self.pending = None
            yield ev
            self._took(k)

    def _took(self, k: int) -> None:
        ended, differ, _ = self.rounds.outcome[k]
        if ended:
            self.ended = differ

    def _at(self, t: float):
        if t > self.env.now:
            yield self.rounds.engine.at(t)


@dataclass(frozen=True)
class SyncSpec:
    """What a baseline's job needs to replay the backhaul rounds (:func:`sync_spec`)."""

    servers: tuple[tuple[str, float, float], ...]  # (name, bandwidth bit/s, latency s) per server
    every: int
    mode: str
    payload: float  # bytes of a round
    closing: float  # bytes of the closing round
    epochs: int  # each ends with the closing rounds

    def start(self, engine: Engine) -> Rounds:
        """The run's :class:`Rounds`, set as ``engine.sync`` (the result's backhaul bytes and rounds)."""
        engine.sync = Rounds(engine, list(self.servers), self.every, self.mode)
        return engine.sync


def sync_spec(scenario, payload: float, closing: float | None = None) -> SyncSpec | None:
    """The baseline's backhaul rounds when ``training.sync`` applies (several servers), else None."""
    sync = scenario.training.sync
    if sync is None or len(scenario.servers) < 2:
        return None
    servers = tuple((s.name, s.backhaul.bandwidth, s.backhaul.latency) for s in scenario.servers)
    return SyncSpec(servers, sync.every, sync.mode, payload, payload if closing is None else closing,
                    scenario.training.epochs)
