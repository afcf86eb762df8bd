"""Backhaul synchronisation: the servers average their LoRA adapters and head every few steps.

With several servers each trains its own replica on its devices' micro-batches; ``training.sync``
(``every`` optimizer steps, FedLoRA: FedAvg rounds; ``mode`` sync or async) makes them one logical model.
Every method follows the runtime's rounds exactly (:class:`Rounds`, :class:`ServerRounds`, :func:`sync_spec`;
:mod:`trainer.transport.backhaul`): a round is one collective of every server, a server that has trained its
epoch answering with a round of zeros (so that its bytes count too and it takes part in the barrier) until
none trains; then a closing round when one is due (SplitLoRA: always, with its clients' average too).
``mode: sync`` with ``every: 1`` averages the gradients *before* each step; ``mode: sync`` otherwise is a
barrier after every ``every``-th step; an ``async`` round holds nobody, but a server's next round waits for it.

Server ``j`` sends its payload (``A`` bytes: the LoRA blocks and head its optimizer holds) on its own
backhaul link (lane ``backhaul:<server>``, op ``sync-send``: ``A x 8 / bandwidth`` seconds, then the
link's latency); the average is ready when every server's upload has arrived, and comes back the same way
(op ``sync-recv``). Averaging itself is taken as free (a few adds per parameter against a link transfer).

Without ``training.sync`` ``sfsim run`` still ends each epoch with one closing round over the servers' backhaul
links, so that the saved adapter is one model: SplitLoRA and CenLoRA replay it with :class:`ServerRounds`
(``every`` None) at each epoch's end, FedLoRA too (``sfsim.schedules.fedlora.EpochClose``), SplitFrozen over several
epochs too (:class:`PoolRounds` with ``every`` None; moving devices and cached epochs too); SplitFrozen over one epoch
(on the fast path too) and SplitLoRA with handovers, whose epochs run back to back, after the replay from
each server's end (:func:`close_epochs`: the rounds and bytes of every epoch, their time after the run). SplitFrozen's servers join :class:`Rounds` through
:class:`PoolRounds` (what the engine's workers call); one whose only work left is a visitor that may still come answers
the rounds the others open, with zeros, as SplitLoRA's and FedLoRA's waiting servers (:meth:`PoolRounds.wait_for_visitor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from sfsim.engine.pool import Engine, FifoLane
from sfsim.errors import SfsimError

STUCK = ("some server never joined it, which the replay's rules should not allow: please report the scenario (sfsim run "
         "would stop at its backhaul timeout)")
"""Why a round can wait for ever (a modelling error; the SplitFrozen waiting server of issue 21 answers rounds now:
``tests/test_splitfrozen_idle.py``)."""


class Rounds:
    """The backhaul rounds of every method, as :class:`trainer.transport.backhaul.ServerSync` runs them.

    Every server takes part in every round, as in the runtime's collective: round ``k`` pairs the ``k``-th call of each server (:meth:`join`), a server that has trained
    its epoch answering with a round of zeros (weight 0) until none trains. Server ``j`` sends its payload
    on its backhaul from the instant it joins (``sync-send``: ``bytes x 8 / bandwidth``, then the latency);
    the average is ready when every server's upload has arrived; each then receives it (``sync-recv``,
    same duration and latency). A round's outcome (:attr:`outcome`) says, as the runtime's vector tail,
    whether no server trains any more (``ended``), whether some server did not take the average
    (``differ``: a closing round is due) and whether some server stepped on it (``stepping``).

    Args:
        engine: the engine.
        servers: ``(name, bandwidth bit/s, latency s)`` per server, in server order.
        every: optimizer steps (FedLoRA: FedAvg rounds) between rounds; None: no ``training.sync``, only each
            epoch's closing round (:func:`sync_spec`).
        mode: ``sync`` (barrier) or ``async``.
    """

    def __init__(self, engine: Engine, servers: list[tuple[str, float, float]], every: int | None, mode: str):
        if every is not None and every < 1:
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
        # who may join a round: a waiting server joins a round once it is open (:meth:`opened`)
        self.first: dict[int, float] = {}  # round -> the earliest arrival of a vector that opens it
        self.hub: dict[int, float] = {}  # round -> the arrival of server 0's own vector (it reads the others' then)
        self.hub_waits = False  # server 0 waits for a visitor (it reads the others' vectors as they come)
        self.waiters: dict[int, list[simpy.Event]] = {}  # round -> events of the waiting servers to invite
        engine.on_finish(self._check)

    def _check(self) -> None:
        """A round some server never joined would leave the others waiting: a modelling error, never a figure."""
        if self.open:
            k = min(self.open)
            came = sorted(self.names[e[0]] for e in self.open[k])
            raise SfsimError(f"backhaul: sync round {k + 1} waited for ever (only {', '.join(came)} joined it); {STUCK}")

    def join(self, j: int, nbytes: float, active: bool, adopt: bool = True, stepping: bool = False,
             opens: bool = False, waits: bool = False) -> tuple[int, simpy.Event]:
        """Server ``j`` joins its next round now with ``nbytes``; returns the round and the event of the
        average's arrival back at ``j``. ``active``: it still trains; ``adopt``: it takes the average;
        ``stepping``: it steps on it (joint mode); ``opens``: it joins from an optimizer step; ``waits``: it waits
        for a visitor (invited: :meth:`opened`)."""
        k = self.calls[j]
        self.calls[j] += 1
        (end,) = self.lanes[j].serve([("sync-send", nbytes * 8.0 / self.bandwidth[j])])
        self.bytes[self.names[j]] += nbytes
        ev = self.env.event()
        entries = self.open.setdefault(k, [])
        arrival = end + self.latency[j]
        entries.append((j, arrival, nbytes, active, adopt, stepping, ev))
        if opens:
            self.first[k] = min(self.first.get(k, math.inf), arrival)
        if j == 0 and not waits:
            self.hub[k] = arrival
        if len(entries) == len(self.names):
            del self.open[k]
            for book in (self.first, self.hub, self.waiters):
                book.pop(k, None)
            self.rounds += 1
            self.outcome[k] = (not any(e[3] for e in entries), not all(e[4] for e in entries),
                               any(e[5] for e in entries))
            ready = max(e[1] for e in entries)
            self.engine.at(ready).callbacks.append(lambda _e, entries=entries: self._send_back(entries))
        elif k in self.waiters:
            self._invite(k)
        return k, ev

    def opened(self, j: int) -> simpy.Event:
        """Server ``j`` waits for a visitor: the event of its next round's opening, when it joins it (the runtime's
        :class:`trainer.transport.backhaul.ServerLinks`: server 0 invites it once it has read a vector that opens
        the round, from that vector's arrival on, and while it reads: waiting, or after its own vector arrived)."""
        k, ev = self.calls[j], self.env.event()
        self.waiters.setdefault(k, []).append(ev)
        if j == 0:
            self.hub_waits = True
        self._invite(k)
        return ev

    def stop_waiting(self, j: int, ev: simpy.Event) -> None:
        """Server ``j`` no longer waits (its visitor came, or it was invited: ``ev``, from :meth:`opened`)."""
        if j == 0:
            self.hub_waits = False
        waiting = self.waiters.get(self.calls[j], [])
        if ev in waiting:
            waiting.remove(ev)

    def _invite(self, k: int) -> None:
        """Schedule the invitation of round ``k``'s waiting servers when it is known (a vector opens it, and server
        0 reads: its own vector's arrival, or now while it waits); checked again at that instant."""
        first, hub = self.first.get(k), self.hub.get(k)
        if first is None or (hub is None and not self.hub_waits):
            return
        t = max(first, self.env.now if hub is None else hub, self.env.now)
        self.engine.at(t).callbacks.append(lambda _e, k=k: self._invited(k))

    def _invited(self, k: int) -> None:
        hub = self.hub.get(k)
        if (hub is not None and hub <= self.env.now) or (self.hub_waits and self.calls[0] == k):
            for ev in self.waiters.pop(k, []):
                if not ev.triggered:
                    ev.succeed()

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
        yield from self._join(self.payload, not last, stepping=True, opens=True)
        return self.env.now

    def after_step(self, t: float, last: bool = False):
        """An optimizer step ended at ``t``; every ``every``-th starts a round (``last``: the server's last)."""
        self.steps += 1
        if not self._due():
            return t
        return (yield from self._average(t, not last))

    def fed_round(self, t: float, last: bool = False):
        """FedLoRA: the server's FedAvg round ended at ``t``; joint mode averages every round."""
        self.steps += 1
        if self.rounds.joint:
            yield from self._at(t)
            yield from self._join(self.payload, not last, opens=True)
            return self.env.now
        if not self._due():
            return t
        return (yield from self._average(t, not last))

    def finish(self, t: float):
        """The server's epoch is trained at ``t``: rounds of zeros until none trains, then the closing round."""
        yield from self._at(t)
        yield from self._wait()
        joint = self.rounds.joint
        if self.rounds.every is None:  # no training.sync: the closing round alone (the runtime's finish)
            yield from self._join(self.closing, False)
            return self.env.now
        while self.ended is None:
            k = yield from self._join(self.payload, False, adopt=joint)
            if joint and self.step is not None and self.rounds.outcome[k][2]:  # the others stepped: so does it
                yield from self._at(self.step(self.env.now))
        if self.ended or self.always_close:
            yield from self._join(self.closing, False)
        self.ended = None
        return self.env.now

    def idle(self, wake: simpy.Event):
        """A server with nothing to train *yet* (a visitor may join it: SplitLoRA's handovers) answers the others'
        rounds until ``wake``, as the runtime's ``ServerSync.idle``: it joins exactly the rounds another server opens
        from an optimizer step, once invited (:meth:`Rounds.opened`), with zeros, as one that still trains. Joint
        mode: one round at a time, stepping with the others; else one round in flight (adopting nothing), which its
        next round of its own waits for. A round nobody opens (drain rounds) waits until it trains or drains. A visitor's
        ``join`` reaches it at once (``sfsim.schedules.fedsync.Fleet.move``, ``close``), before the invitation to any
        round its move or its epoch's end leads to: the runtime's waiting server reads the joins announced before a
        round first (``ServerSync.announce``), so that a join always comes first there too."""
        while not wake.triggered:
            if self.pending is not None:  # its round in flight
                k, ev = self.pending
                yield ev | wake
                if ev.processed:
                    self.pending = None
                    self._took(k)
                continue
            invited = self.rounds.opened(self.j)
            yield invited | wake
            self.rounds.stop_waiting(self.j, invited)
            if not invited.triggered:
                continue
            if self.rounds.joint:
                k = yield from self._join(self.payload, True, waits=True)
                if self.step is not None and self.rounds.outcome[k][2]:
                    yield from self._at(self.step(self.env.now))
            else:
                self.pending = self.rounds.join(self.j, self.payload, True, adopt=False, waits=True)

    def _due(self) -> bool:
        """Whether the step (FedAvg round) just counted starts a weight round (never without ``training.sync``)."""
        every = self.rounds.every
        return not self.rounds.joint and every is not None and self.steps % every == 0

    def _average(self, t: float, active: bool):
        """A weight round: a barrier in sync mode; in async mode in flight while the server goes on."""
        yield from self._at(t)
        yield from self._wait()
        if self.rounds.mode == "sync":
            yield from self._join(self.payload, active, opens=True)
        else:
            self.pending = self.rounds.join(self.j, self.payload, active, opens=True)
        return self.env.now

    def _join(self, nbytes: float, active: bool, adopt: bool = True, stepping: bool = False, opens: bool = False,
              waits: bool = False):
        """Join a round now and wait for its average; returns the round."""
        k, ev = self.rounds.join(self.j, nbytes, active, adopt, stepping, opens, waits)
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
        ended, differ, *_ = self.rounds.outcome[k]
        if ended:
            self.ended = differ

    def _at(self, t: float):
        if t > self.env.now:
            yield self.rounds.engine.at(t)


@dataclass(frozen=True)
class SyncSpec:
    """What a baseline's job needs to replay the backhaul rounds (:func:`sync_spec`)."""

    servers: tuple[tuple[str, float, float], ...]  # (name, bandwidth bit/s, latency s) per server
    every: int | None  # None: no training.sync, only each epoch's closing round
    mode: str
    payload: float  # bytes of a round
    closing: float  # bytes of the closing round
    epochs: int  # each ends with the closing rounds

    def start(self, engine: Engine) -> Rounds:
        """The run's :class:`Rounds`, set as ``engine.sync`` (the result's backhaul bytes and rounds)."""
        engine.sync = Rounds(engine, list(self.servers), self.every, self.mode)
        return engine.sync


def sync_spec(scenario, payload: float, closing: float | None = None) -> SyncSpec | None:
    """The backhaul rounds of a run on several servers, else None.

    With ``training.sync`` its rounds; without it, when some server declares a ``backhaul`` link, each epoch's
    closing round alone (``every`` None: ``sfsim run`` still makes the servers one model at each epoch's end,
    :func:`trainer.run.launch._server_sync`); a server without a link sends in no time (the runtime shapes
    only declared links). With no link at all nothing is modelled: the round would take no time.
    """
    sync = scenario.training.sync
    if len(scenario.servers) < 2 or (sync is None and all(s.backhaul is None for s in scenario.servers)):
        return None
    servers = tuple((s.name, s.backhaul.bandwidth, s.backhaul.latency) if s.backhaul is not None
                    else (s.name, math.inf, 0.0) for s in scenario.servers)
    every, mode = (sync.every, sync.mode) if sync is not None else (None, "sync")
    return SyncSpec(servers, every, mode, payload, payload if closing is None else closing, scenario.training.epochs)


@dataclass
class Closed:
    """The closing rounds added after a replay (:func:`close_epochs`): what ``simulate`` reads as ``engine.sync``."""

    bytes: dict[str, float]  # server -> up + down on its backhaul
    rounds: int


def close_epochs(spec: SyncSpec, ends: dict[str, float], makespan: float, record=None) -> tuple[Closed, float]:
    """No ``training.sync``: each epoch's closing round after the replay, from each server's end.

    The simulator replays SplitFrozen's (and SplitLoRA's with handovers) epochs back to back, so
    the ``epochs`` closing rounds come one after
    another from each server's end (``ends``: its last op; 0 for a server without devices): server ``j``
    sends ``closing`` bytes on its backhaul (``bytes x 8 / bandwidth``, then the latency), the average is
    ready when every upload has arrived, and comes back the same way; the next round starts when it has.
    Returns the rounds and the new makespan. ``record``: ``Engine.record`` when tracing.
    """
    names = [name for name, _, _ in spec.servers]
    busy = {name: spec.closing * 8.0 / bw for name, bw, _ in spec.servers}
    lat = {name: latency for name, _, latency in spec.servers}
    free = {name: ends.get(name, 0.0) for name in names}
    for _ in range(spec.epochs):
        ready = max(free[n] + busy[n] + lat[n] for n in names)
        for n in names:
            if record is not None:
                record(f"backhaul:{n}", "sync-send", free[n], busy[n])
                record(f"backhaul:{n}", "sync-recv", ready, busy[n])
            free[n] = ready + busy[n] + lat[n]
    closed = Closed({n: 2.0 * spec.closing * spec.epochs for n in names}, spec.epochs)
    return closed, max([makespan, *free.values()])


def closing_round(spec: SyncSpec, ends: dict[str, float]) -> dict[str, float]:
    """One closing round from each server's end (``ends``: server -> when it joins): server -> when the average is
    back at it, in :class:`Rounds`' arithmetic (the fast path's SplitLoRA, whose next epoch starts then)."""
    busy = {name: spec.closing * 8.0 / bw for name, bw, _ in spec.servers}
    ready = max(ends[n] + busy[n] + lat for n, _, lat in spec.servers)
    return {n: ready + busy[n] + lat for n, _, lat in spec.servers}


class PoolRounds:
    """SplitFrozen's servers on :class:`Rounds`: what the engine's workers call (``Engine.sync``).

    A worker calls :meth:`step_done` after each optimizer step (the server's steps count over its workers) and
    the pool calls :meth:`leave` when its workers have ended: the server then answers the others' rounds with
    zeros until none trains and closes when due (:meth:`ServerRounds.finish`; a server without devices at
    once). A step is the server's last (its round says it no longer trains) when every micro-batch of its pool
    is claimed and no other worker runs, as the runtime's ``last``. With ``every: 1`` in ``sync`` mode the
    servers average the gradients *before* each step, as the runtime: the worker calls :meth:`step_done` when
    its W's end and steps when the round's average is back (:attr:`joint`). Over several epochs each ends with
    its drain and closing rounds and the pool opens the next when :meth:`leave` returns
    (:meth:`sfsim.engine.worker.WorkerLoop.by_epochs`), as the runtime, with devices that move or leave
    (:class:`sfsim.engine.epochs.EpochBooks`) and with cached epochs too.

    Args:
        engine: the engine (its ``sync`` is set to this).
        spec: the run's :class:`SyncSpec` (with ``training.sync``).
        servers: the servers as the engine sees them (a drained server's joint step goes on its first lane).
    """

    def __init__(self, engine: Engine, spec: SyncSpec, servers: list):
        self.engine, self.env, self.servers = engine, engine.env, servers
        self.links = Rounds(engine, list(spec.servers), spec.every, spec.mode)
        self.sides = [ServerRounds(self.links, j, spec.payload, spec.closing,
                                   step=lambda t, srv=srv: self._drained_step(srv, t)) for j, srv in enumerate(servers)]
        self.pools: list = []  # the servers' ServerPools (:meth:`attach`)
        engine.sync = self

    @property
    def bytes(self) -> dict[str, float]:
        """Server -> bytes up and down its backhaul."""
        return self.links.bytes

    @property
    def joint(self) -> bool:
        """Gradients averaged before every step (``every: 1``, ``sync``): a worker's round precedes its step."""
        return self.links.joint

    @property
    def rounds(self) -> int:
        """Rounds completed."""
        return self.links.rounds

    def attach(self, pools: list) -> None:
        """The run's server pools, in server order (whether a step is a server's last)."""
        self.pools = list(pools)

    def step_done(self, j: int) -> simpy.Event | None:
        """Server ``j`` ended an optimizer step now (:attr:`joint`: is about to take one); returns an event to wait
        for (a barrier, or an async round still in flight), else None."""
        side, pool = self.sides[j], self.pools[j]
        every = self.links.every  # None: no training.sync, no round before the epoch's closing one
        if every is None or (not self.links.joint and (side.steps + 1) % every):
            side.steps += 1
            return None
        last = pool.unclaimed == 0 and pool.running == 1
        return self.env.process(self._step(side, last))

    def _step(self, side: ServerRounds, last: bool):
        t = yield from side.before_step(self.env.now, last)
        yield from side.after_step(t, last)

    @property
    def answers_waiting(self) -> bool:
        """Whether a server waiting only for a visitor answers the rounds others open (with ``training.sync``)."""
        return self.links.every is not None

    def wait_for_visitor(self, j: int, wake: simpy.Event) -> simpy.Event:
        """Server ``j`` waits only for a visitor (:meth:`sfsim.engine.worker.WorkerLoop._await_visitor`): it answers
        the rounds another server opens, with zeros, until ``wake`` (:meth:`ServerRounds.idle`, as SplitLoRA's and
        FedLoRA's waiting servers and the runtime's ``ServerSync.idle``); returns the event of its end."""
        return self.env.process(self.sides[j].idle(wake))

    def leave(self, j: int) -> simpy.Event:
        """Server ``j``'s workers have ended: it drains and closes with the others; returns when it goes on."""
        return self.env.process(self.sides[j].finish(self.env.now))

    def _drained_step(self, srv, t: float) -> float:
        """The step a drained server takes with the others (joint rounds): on its first lane."""
        self.engine.record(srv.lane(0), "step", t, srv.step)
        return t + srv.step
