"""Backhaul synchronisation between server processes: the real counterpart of :mod:`sfsim.network.backhaul`.

With several servers each server process trains its own replica on its own devices; ``training.sync``
(``every`` optimizer steps, ``mode`` sync or async) makes them one logical model. A round is one sum
over the servers (:class:`ServerLinks`) of a flat fp32 vector: each server's tensors times its weight,
then its weight and whether it still trains (and opens the round from a step). Shaped (``--emulate links|all``)
as the simulator costs it: the server's upload occupies its ``backhaul`` link for ``bytes x 8 /
bandwidth`` and arrives a latency later (``sync-send`` on lane ``backhaul:<server>``), the average is
ready when every server's upload is (the collective is that barrier), and comes back the same way
(``sync-recv``).

What a round averages:

* ``mode: sync`` with ``every: 1`` is data-parallel training: before each optimizer step the servers
  average the step's gradients (each server's sum over its micro-batches, divided by the number of
  servers) and all take the same step from the same state, so they hold one model throughout and a
  run on N servers equals a one-server run whose steps hold the same micro-batches (a test).
* otherwise (``every`` > 1, or ``mode: async``) each server steps alone and every ``every``-th step the
  adapters and head are averaged, weighted by the servers' training samples. ``async`` does not wait:
  the round runs in a thread on a snapshot, and at the next round the server adds the average's change
  (``average - snapshot``) to what it trained meanwhile.

A server that has trained its epoch keeps answering rounds with weight 0 (it no longer holds the others
back, as in the simulator) until none trains; then a last round averages everything (adapters, head
and a method's extra state such as SplitLoRA's client average), so that after it every server holds
bit-identical adapters and the one saved adapter is the logical model. Without ``training.sync``
(``every=None``) there are no rounds during the epoch, so that last round alone ends it (a round of zeros
before it would carry nothing: every server has ended its epoch when it joins).

With handovers a server may have nothing to train for a while, waiting for a visiting device. Which rounds
happen must not depend on who polls first: a round is *opened* by a server that joins it from an optimizer
step; a waiting server joins exactly the opened rounds (server 0 invites it: :class:`ServerLinks`), and a
round nobody opens (drained servers' drain rounds) waits until every server joins it, the waiting one once it
trains or drains. Two waiting servers trade no rounds, and a server waiting while the others have drained
answers none (the simulator's ``ServerRounds`` follows the same rule). Nor may a round depend on whether a visitor's
``join`` or the round's invitation reaches the waiting server first: a server that reads a device's ``moved`` (or
its epoch's end) knows which servers the device sends a ``join`` to (:meth:`ServerSync.announce`), its round vectors
carry those counts per device that moves, each invitation passes on the counts announced to its server, and a waiting
server answers the round only once it has read that many joins of each device (a join it reads first takes it out of
waiting, so it joins that round from its own step), as in the simulator, where a join arrives at once, before any
round the move leads to. A device that dies (its connection closes) after a server announced its join and before it
sent it is lost on the server it would join (everything it sent is read before the loss): that server awaits none of
its joins any more, so the run goes on without it, as with any lost device.

The rounds travel over the servers' admitted channels (:mod:`trainer.transport.rendezvous`: server ``j``
<-> server 0, authenticated and, when the run encrypts, encrypted), not over gloo collectives: every
admitted process, devices included, can reach the gloo store and the servers' gloo listeners, and gloo
aborts a receiver that is sent more than it expects, so a hostile device could forge or kill a round.
Server 0 sums the servers' vectors in server order and sends the sum back, so every server adopts
bit-identical averages; a vector of the wrong size (refused before it is read), a forged or replayed
frame, non-finite values, a round whose tail is not a weight >= 0 and counts of servers
(:func:`round_tail_error`) or of joins (whole, 0..:data:`MAX_JOINS` a server), or an invitation to another round than the
one due or announcing more joins of a device end the run with one line naming the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from sfsim.outputs.trace import TraceEvent
from trainer.run.emulation import sleep_until
from trainer.run.measure import Meter
from trainer.transport.serverlinks import MAX_JOINS, TAIL, ServerLinks, round_tail_error

IDLE_POLL_S = 0.005  # a server waiting for a visitor looks for it (and for an open round) this often


class ServerSync:
    """One server process's side of the backhaul sync.

    Args:
        group: the backhaul between the servers (:class:`ServerLinks`).
        index: this server's index.
        n_servers: servers in the group.
        every: optimizer steps (FedLoRA: rounds) between sync rounds; None: no ``training.sync``, only the
            last round of each epoch.
        mode: ``sync`` or ``async``.
        weight: this server's weight in averages (its devices' training samples).
        meter: this process's meter (trace events on ``backhaul:<lane>``).
        lane: this server's name.
        link: ``(bandwidth bit/s, latency s)`` of its backhaul when links are shaped, else None.
    """

    def __init__(self, group, index: int, n_servers: int, every: int | None, mode: str, weight: float,
                 meter: Meter, lane: str, link: tuple[float, float] | None = None):
        if (every is not None and every < 1) or mode not in ("sync", "async"):
            raise ValueError(f'"every" must be >= 1 and "mode" sync or async (got {every}, {mode!r})')
        self.group, self.index, self.n = group, index, n_servers
        self.every, self.mode, self.weight = every, mode, float(weight)
        self.meter, self.lane, self.link = meter, lane, link
        self.joint = mode == "sync" and every == 1  # gradients averaged before every step
        self.steps = 0
        self.rounds = 0
        self.bytes = 0  # up + down on this server's backhaul
        self.ended: bool | None = None  # every server ended in one round: whether a last round is still due
        self.stepping = False  # joint mode: some server stepped on the last round's mean gradient
        self._pending: tuple | None = None  # async: (thread, live state, snapshot, average, steps at the snapshot)
        self._idle: threading.Thread | None = None  # a waiting server's round in flight (:meth:`idle`)
        self.movers: list[str] = []  # devices whose joins the rounds count (:meth:`track`)
        self.joins_in: list[int] = []  # per mover: its joins this server has read (:meth:`joined`)
        self.announced: list[int] = []  # server r, mover i at r * movers + i: joins this server knows it sends there
        self.lost: tuple = ()  # containers of the devices this server has lost: their joins are never read here
        self.extra = 0  # the vectors' join counts (servers x movers)
        # a waiting server's method: whether it may answer, now, the open round invited at the given instant (no join
        # sent by then may still come to it: the simulator delivers a join when its send starts); None: at once
        self.answers: Callable[[float], bool] | None = None
        if isinstance(group, ServerLinks):
            group.now = self.now

    def invited_at(self) -> float | None:
        """The invitation instant of the open round this waiting server holds (read, not yet answered), else None; None
        too while a join announced in that round is unread (it must be read first, whatever its stamp: a join of 0 leaves
        after the device's last send, later than its stamp says, so its stamp may come after the invitation's)."""
        if not isinstance(self.group, ServerLinks) or (self.index != 0 and not self.group.invited) or self._unread():
            return None
        return self.group.at

    def track(self, movers: list[str], *lost) -> None:
        """Count the joins of ``movers`` (the devices whose legs go to several servers; the same list on every server,
        before the first round); ``lost``: containers (live views) of the devices this server has lost, whose joins it
        does not await."""
        if movers == self.movers or not isinstance(self.group, ServerLinks):
            return
        self.movers, self.lost = list(movers), lost
        self.joins_in, self.announced = [0] * len(movers), [0] * (self.n * len(movers))
        self.extra = self.n * len(movers)

    def joined(self, name: str) -> None:
        """This server read a ``join`` of device ``name`` (of any epoch, 0 or not)."""
        if name in self.movers:
            self.joins_in[self.movers.index(name)] += 1

    def announce(self, name: str, ranks: list[int]) -> None:
        """Device ``name`` sends (or has sent) a ``join`` to each server of ``ranks``: this server read its ``moved`` or
        its epoch's end (:meth:`trainer.transport.handover.Visits.announced`). Its next round's vector carries the
        counts, and a server waiting for a visitor answers that round only once it has read as many of that device's
        joins as announced to it (or has lost the device: its connection closed, so nothing more comes): so whether a
        visitor's join or the round's invitation reaches it first decides nothing (the simulator delivers a join at
        once, before any round its move leads to)."""
        if name not in self.movers:
            return
        i, m = self.movers.index(name), len(self.movers)
        for r in ranks:
            self.announced[r * m + i] += 1

    def _unread(self) -> bool:
        """Whether a join announced to this server in the open round's vectors is still to be read (a lost device's
        never: everything it sent was read before its loss)."""
        need = getattr(self.group, "need", [])
        return any(self.joins_in[i] < c for i, c in enumerate(need[:len(self.movers)])
                   if not any(self.movers[i] in gone for gone in self.lost))

    # -- what a method calls around its optimizer step -----------------------------------------------------
    def before_step(self, params: list[torch.nn.Parameter], last: bool = False) -> None:
        """Joint mode: replace every gradient by the servers' mean (a drained server contributes zeros).
        ``last``: this server's last step of the epoch."""
        if not self.joint:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self._round(grads, 1.0, not last, adopt=True, stepping=True, opens=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def after_step(self, state: list[torch.Tensor], last: bool = False) -> None:
        """One optimizer step ended; every ``every``-th, average ``state`` (the adapters and head) with the others."""
        self.steps += 1
        if self._due():
            self._average(state, self.weight, not last)

    def finish(self, state: list[torch.Tensor], params: list[torch.nn.Parameter] | None = None,
               step=None, last_round: bool = False) -> None:
        """This server's epoch is trained: answer rounds until no server trains, then a last round over
        ``state`` unless every server already holds the same one.

        Args:
            state: every tensor the servers must agree on (adapters, head, a method's extra state).
            params: the parameters the servers' rounds carry (:meth:`before_step`, :meth:`after_step`).
            step: joint mode: a function taking the optimizer step, which a drained server takes with the
                others' mean gradient (so that it stays identical).
            last_round: always end with the last round (``state`` holds more than the rounds carry).
        """
        self._wait()
        while self.ended is None and self.every is not None:
            self._drained(state, params, step, False)
        if self.ended or last_round or self.every is None:
            self._round(state, self.weight, False, adopt=True)
        self.ended = None

    def idle(self, state: list[torch.Tensor], params: list[torch.nn.Parameter] | None = None, step=None) -> None:
        """Wait a moment as a server with nothing to train *yet*: its devices are done, but a visiting device may still
        join it (a handover, :mod:`trainer.transport.handover`). Called again and again while it waits. It joins
        exactly the rounds another server opens from an optimizer step (:class:`ServerLinks`: server 0 invites it),
        with zeros, as a server that still trains, so that no round ends the run and no server waits for it; a
        round nobody opens (the others drained, or waiting too) waits until it trains or drains. With gradients
        averaged before every step (joint) it answers now and steps with the others; otherwise the round runs in
        the background (it adopts nothing), so that a visitor who joins meanwhile is served at once, and the
        server's next round waits for it. The simulator's ``ServerRounds.idle`` follows the same rule."""
        zeros = self._zeros(params if params is not None else state)
        if zeros is None:
            return
        if self.joint:
            self._drained(state, params, step, True)
            return
        self._in_background(zeros)

    def fed_idle(self, state: list[torch.Tensor]) -> None:
        """FedLoRA's :meth:`idle`: joint, adopt the others' average of the next round; else answer in the background."""
        zeros = self._zeros(state)
        if zeros is None:
            return
        if self.joint:
            self._round(zeros, 0.0, True, adopt=True, into=state, waits=True)
            return
        self._in_background(zeros)

    def _zeros(self, like: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """A waiting server's round of zeros shaped as ``like`` when its next round is open, else None (after
        looking for up to :data:`IDLE_POLL_S`). None too while a round of its own is in flight."""
        th = self._idle
        if self.every is None or (th is not None and th.is_alive()):  # no rounds before the epoch's last
            time.sleep(IDLE_POLL_S)
            return None
        self._wait()
        nbytes = (sum(t.numel() for t in like) + self.extra + TAIL) * 4
        if not self.group.opened(nbytes, self._check, IDLE_POLL_S, movers=len(self.movers)):
            return None  # not open
        at = getattr(self.group, "at", None)
        if self._unread() or (self.answers is not None and at is not None and not self.answers(at)):
            time.sleep(IDLE_POLL_S)  # a join announced, or sent, before it opened may still come: read it first
            return None
        return [torch.zeros_like(t) for t in like]

    def _in_background(self, zeros: list[torch.Tensor]) -> None:
        """A waiting server's weight-0 round (adopting nothing) in a thread."""
        self._idle = threading.Thread(target=self._round, args=(zeros, 0.0, True, False), daemon=True,
                                      name="backhaul-idle", kwargs={"waits": True})
        self._idle.start()

    def _drained(self, state, params, step, active: bool) -> None:
        """One round of a server that trains nothing now (``active``: it may train again this epoch: it waits for a
        visitor)."""
        if self.joint and params is not None:
            for p in params:
                p.grad = None
            grads = [torch.zeros_like(p) for p in params]
            self._round(grads, 1.0, active, adopt=True, waits=active)
            if self.stepping:  # another server stepped on this round's mean gradient: so does this one
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                step()
        else:  # shaped as the others' rounds (after_step's parameters); a drained server does not adopt
            self._round([torch.zeros_like(t) for t in (params if params is not None else state)], 0.0, active,
                        adopt=False, waits=active)

    def fed_round(self, state: list[torch.Tensor], weight: float, last: bool = False) -> None:
        """FedLoRA: the server's FedAvg round ended with ``state`` (weight: samples averaged into it)."""
        self.steps += 1
        if self.joint:
            self._round(state, weight, not last, adopt=True, opens=True)
        elif self._due():
            self._average(state, weight, not last)

    def fed_finish(self, state: list[torch.Tensor], weight: float) -> None:
        """FedLoRA's drain: joint rounds adopt the others' average until none trains, then the last round."""
        self._wait()
        while self.ended is None and self.every is not None:
            self._round([torch.zeros_like(t) for t in state], 0.0, False, adopt=self.joint, into=state)
        if self.ended or self.every is None:
            self._round(state, weight, False, adopt=True)
        self.ended = None

    # -- rounds -----------------------------------------------------------------------------------------
    def _due(self) -> bool:
        """Whether the step just counted starts a weight round (never without ``training.sync``)."""
        return not self.joint and self.every is not None and self.steps % self.every == 0

    def _average(self, state: list[torch.Tensor], weight: float, active: bool) -> None:
        """A weight round: blocking in sync mode; in async mode a thread on a snapshot, merged at the next."""
        if self.mode == "sync":
            self._round(state, weight, active, adopt=True, opens=True)
            return
        self._wait()
        snap = [t.detach().clone() for t in state]
        out = [t.clone() for t in snap]
        th = threading.Thread(target=self._round, args=(out, weight, active, True), daemon=True,
                              name="backhaul-async", kwargs={"opens": True})
        th.start()
        self._pending = (th, state, snap, out, self.steps)

    def _wait(self) -> None:
        """Async: wait for the round in flight and add its average's change to the live state."""
        if self._pending is None:
            return
        th, state, snap, out, steps = self._pending
        th.join()
        self._pending = None
        with torch.no_grad():
            for t, s, avg in zip(state, snap, out, strict=True):
                if self.steps == steps:  # nothing trained meanwhile: the average itself (bit-equal everywhere)
                    t.copy_(avg)
                else:
                    t.add_(avg - s)

    def _round(self, tensors: list[torch.Tensor], weight: float, active: bool, adopt: bool,
               into: list[torch.Tensor] | None = None, stepping: bool = False, opens: bool = False,
               waits: bool = False) -> int:
        """One collective round; returns how many servers still train. ``adopt``: write the average into
        ``into`` (default ``tensors``) when any weight was given; ``opens``: this server joins it from an optimizer
        step (a waiting server joins only such rounds: :class:`ServerLinks`); ``waits``: it answers it as a server
        waiting for a visitor.

        The vector's tail: the weights' sum, the servers that still train, the servers that do not take
        this round's average, (joint mode) the servers that step on it (:attr:`stepping`), the servers that
        open it, and ``at``: the instant (the run's clock) this server's vector reaches server 0, its joining
        instant plus its link's send and latency (in the sum server 0 sends back: the round's invitation instant,
        :func:`invitation_at`). When none trains any more, each took its last step before this round, so
        :attr:`ended` says whether a last round is due (some server did not take the average); every
        server reads the same sums, so all decide alike.
        """
        idle = self._idle
        if idle is not None and idle is not threading.current_thread():
            idle.join()  # rounds go one at a time over the channels: a waiting server's round first
        nbytes = sum(t.numel() for t in tensors) * 4
        at = self.now() + self._flight(nbytes)  # when this vector reaches server 0, as the simulator's arithmetic
        flat = torch.cat([t.detach().reshape(-1).float().cpu() * weight for t in tensors]  # a GPU server's too
                         + [torch.tensor([float(c) for c in self.announced], dtype=torch.float32)]
                         + [torch.tensor([weight, float(active), float(not adopt), float(stepping),
                                          float(opens), at])])  # (numels + extra + TAIL,)
        self._transfer("sync-send", nbytes)
        if isinstance(self.group, ServerLinks):
            self.group.waits = waits
        self.group.all_reduce(flat, check=self._check, opens=opens, movers=len(self.movers))
        self._transfer("sync-recv", nbytes)
        self.rounds += 1
        total, still, differ = float(flat[-6]), int(round(float(flat[-5]))), float(flat[-4]) > 0.5
        self.stepping = float(flat[-3]) > 0.5
        if adopt and total > 0:
            pos = 0
            with torch.no_grad():
                for t in (into if into is not None else tensors):
                    k = t.numel()
                    t.copy_((flat[pos:pos + k] / total).view_as(t).to(t.dtype))
                    pos += k
        if still == 0:
            self.ended = differ
        return still

    def _check(self, flat: torch.Tensor, servers: int) -> str | None:
        """What is wrong with a round vector (:func:`round_tail_error`, and its join counts: whole numbers in
        0..:data:`MAX_JOINS` per server summed), or None."""
        why = round_tail_error(flat, servers, self.now())
        if why is not None or not self.extra:
            return why
        if flat.numel() < self.extra + TAIL:
            return f"a vector of {flat.numel()} values (a round carries at least its {self.extra + TAIL} counts)"
        bad = [c for c in (float(v) for v in flat[-TAIL - self.extra:-TAIL])
               if not (0 <= c <= MAX_JOINS * servers and c == round(c))]
        return f"a count of {bad[0]:g} joins (0..{MAX_JOINS * servers})" if bad else None

    def _flight(self, nbytes: int) -> float:
        """Seconds a transfer of ``nbytes`` holds this server's link, latency included (0 unshaped)."""
        if self.link is None:
            return 0.0
        bandwidth, latency = self.link
        return nbytes * 8 / bandwidth + latency

    def now(self) -> float:
        """This server's clock (the run's: its meter's; a test's sync without one, the process's)."""
        return self.meter.now() if self.meter is not None else time.perf_counter()

    def _transfer(self, op: str, nbytes: int) -> None:
        """Count ``nbytes`` on the backhaul; shaped, hold the link for them and the latency (a trace event)."""
        self.bytes += nbytes
        if self.link is None:
            return
        bandwidth, latency = self.link
        start = self.meter.now()
        busy = nbytes * 8 / bandwidth
        sleep_until(self.meter.now, start + busy + latency, getattr(self.meter, "lag", None), f"backhaul:{self.lane}")
        self.meter.events.append(TraceEvent(f"backhaul:{self.lane}", op, start, busy, -1, ""))

    def summary(self) -> dict:
        """What this server's backhaul did (metrics.json ``servers``)."""
        return {"sync_rounds": self.rounds, "backhaul_bytes": self.bytes, "steps": self.steps,
                "every": self.every, "mode": self.mode, "joint": self.joint}


__all__ = ["MAX_JOINS", "TAIL", "ServerLinks", "ServerSync", "round_tail_error"]
