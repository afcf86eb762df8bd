"""SplitLoRA's server loop with handovers: the same loop as :class:`~sfsim.schedules.splitlora.server.Server`'s,
run as a SimPy process in time, so that a client joining from another server is taken into account (the rules:
:mod:`sfsim.schedules.splitlora.moves`). :class:`InTime` is a part of ``Server``: it uses its primitives
(``_issue``, ``_serve``, ``_server_step``, ``_fedavg``) and state."""

from __future__ import annotations

import math


class InTime:
    """The ``Server`` methods of the loop in time (with handovers)."""

    # -- time ----------------------------------------------------------------------------------------
    def poke(self) -> None:
        """Wake the process if it waits (a client joined, left, finished or was lost)."""
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def until(self, t: float):
        """Wait until time ``t``; True when woken earlier (the state changed: decide again)."""
        env = self.engine.env
        if t <= env.now:
            return False
        self.wake = env.event()
        timer = self.engine.at(t)  # <= some server's end: it does not lengthen the run
        yield env.any_of([timer, self.wake])
        self.wake, woke = None, env.now < t
        return woke

    # -- holding -------------------------------------------------------------------------------------
    def leave(self, c) -> float:
        """When ``c`` leaves this server: its next handover to another server (``inf``: never)."""
        legs = self.motions[c.i].legs
        for j in range(c.hold + 1, len(legs)):
            if legs[j].server != self.k:
                return legs[j].at
        return math.inf

    def hand_over(self, c, since: float, outstanding: bool = False) -> None:
        """``c`` leaves this loop; from ``since`` on it is held by the server of the leg holding then."""
        m = self.motions[c.i]
        j = m.leg_at(since)
        dest = m.legs[j].server
        c.hold, c.since = j, since
        if dest == self.k and not outstanding:  # back here already (A -> B -> A): nothing moves
            return
        # with backhaul rounds (training.sync, or each epoch's closing round); without them the fast path's joint loop
        # (sfsim.fast.splitmoves) replays the client's fwd from ``since``, and this loop does too
        c.joined = self._join_arrival(c, since, outstanding) if self.sync is not None else since
        self._drop(c)
        c.home = dest
        c.history.append((since, dest))
        self.moves.servers[dest].join(c, outstanding)
        self.moves.changed()

    def _join_arrival(self, c, since: float, outstanding: bool) -> float:
        """When ``c``'s ``join`` reaches its new server (trainer.transport.handover): with a micro-batch on its way, the
        join goes up just before it (at its upload's start); else this server's ``release`` goes down at ``since``,
        the client takes it once free (after its backward), and the join goes up then. Zero-byte messages: a
        latency each, on the leg holding when each starts."""
        m = self.motions[c.i]
        if outstanding:
            return c.sent_at + m.legs[m.leg_at(c.sent_at)].up_l
        start = max(since, c.down_free)
        got = max(start + m.legs[m.leg_at(start)].down_l, c.free)
        start = max(got, c.up_free)
        return start + m.legs[m.leg_at(start)].up_l

    def _drop(self, c) -> None:
        self.left.pop(c, None)
        self.unissued.pop(c, None)
        if c in self.pending:
            self.pending.remove(c)

    def join(self, c, outstanding: bool) -> None:
        """Client ``c`` joins this loop (with a micro-batch on its way here when ``outstanding``)."""
        if outstanding:
            self.out.append(c)
            self.issued += 1
            if c in self.pending:  # joined here idle already (it came back before its old server's fwd): now busy
                self.pending.remove(c)
        if self.left or outstanding and self.serving:  # mid-epoch: the rest of its own epoch joins this one
            self.left[c] = self.rest(c) + outstanding
            self.unissued[c] = self.rest(c)
            if self.unissued[c] and not outstanding:
                self.pending.append(c)
            if not self.left[c]:
                del self.left[c]
        self.poke()

    def rest(self, c) -> int:
        """Micro-batches of ``c``'s current epoch not yet issued."""
        per = c.d.per_epoch or c.d.n
        base = c.mb if c in self.out else c.next
        return min((base // per + 1) * per, c.d.n) - c.next

    # -- the loop --------------------------------------------------------------------------------------
    def run_in_time(self):
        """With handovers, the SimPy process: epochs over the clients it holds, waiting for joiners while they may come.

        With backhaul rounds (``training.sync``, or without it each epoch's closing round on backhaul links) each epoch
        ends with the servers' last rounds, a barrier, as in the runtime: a client's next epoch starts on the server
        holding it then (a handover due meanwhile waits for its old server's next epoch, which releases it); without
        them (no backhaul modelled) the epochs run back to back."""
        env = self.engine.env
        for e in range(self.epochs) if self.sync is not None else [None]:
            if e:
                self._release_due()
            while True:
                counts = self._counts(e)
                if counts:
                    if not (yield from self._joined(counts)):
                        continue
                    yield from self._interleaved_in_time(counts, self._epoch_of(counts) if e is None else e)
                    continue
                if not self.moves.may_join(self.k, e):
                    if self.sync is None or (due := self._leaving(e)) is None:
                        break
                    yield from self._idle_until(due)  # the runtime's server waits for its join, then releases it
                    self._release_left(e)
                    continue
                self.wake = env.event()
                if self.sync is not None:  # training.sync: it answers the others' rounds while it waits
                    yield from self.sync.idle(self.wake)
                else:
                    yield self.wake
                self.wake = None
            if self.sync is not None:  # the epoch's last rounds (trainer: Method.train_epoch, finish_sync)
                self.closing = True
                self.free = yield from self.sync.finish(self.free)
                if e + 1 < self.epochs:  # then its epoch-end wait (Server._epoch_end), still closing: a handover due
                    self._epoch_end()  # meanwhile waits for the next epoch, which releases it (_release_due)
                    while (yield from self.until(self.free)):
                        pass
                self.closing = False
        self.engine.server_busy[self.srv.name] = self.busy
        self.finished = True
        yield self.engine.at(max(self.end, env.now))

    def _counts(self, e: int | None) -> dict:
        """The clients this loop holds with work left in epoch ``e`` (None: their current one), and how many
        micro-batches each (one on its way here included); one whose leg here ends before this server is free is not."""
        counts = {}
        for c in self.moves.clients:
            if c.home == self.k and (c in self.out or max(self.free, c.since) < self.leave(c)) \
                    and self._in_epoch(c, e) and (k := self.rest(c) + (c in self.out)) > 0:
                counts[c] = k
        return counts

    def _epoch_of(self, counts: dict) -> int:
        """Without backhaul rounds (no epoch barrier): the epoch this loop's pass over ``counts`` trains, its clients'
        earliest (a visitor joining mid-pass brings the rest of its own)."""
        return min((c.mb if c in self.out else c.next) // (c.d.per_epoch or c.d.n) for c in counts)

    def _joined(self, counts: dict):
        """With backhaul rounds, visitors only and not there yet: answer the rounds until the first one's ``join``
        arrives, then :meth:`_recount`. True when ``counts`` (changed in place) still has a client to train."""
        if self.sync is None:
            return True
        yield from self._idle_until(min((max(c.since, c.joined) for c in counts if self.motions[c.i].start < math.inf),
                                        default=0.0))  # one never online: the runtime's leaves at once
        return bool(self._recount(counts))

    def _visitor(self, e: int):
        """This loop's clients are done with epoch ``e``: the runtime's server keeps its epoch open while a visitor may
        still come in it (``while sum(left.values()) > 0 or waiting``, ``trainer.methods.splitlora``): it waits, with
        ``training.sync`` answering the others' rounds, and makes no FedAvg round before the visitor has joined and
        trained (issue 21). True when one joined (:attr:`left` holds its rest of ``e``); False when none may come any
        more (every visitor's epoch ``e`` is over elsewhere): the epoch's FedAvg round closes it then."""
        env = self.engine.env
        while True:
            counts = self._counts(e)
            if counts:
                if not (yield from self._joined(counts)):
                    continue
                self.left = dict(counts)
                return True
            if not self.moves.may_join(self.k, e):
                return False
            if (due := self._leaving(e)) is not None:  # one held here idle, uncounted, leaves first: a timer to its
                if self.sync is not None:  # handover's instant (the soft ticks alone do not keep the run going)
                    yield from self._idle_until(due)
                    self._release_left(e)
                elif not (yield from self.until(due)):
                    self._release_left(e)
                continue
            self.wake = env.event()
            if self.sync is not None:
                yield from self.sync.idle(self.wake)
            else:
                yield self.wake
            self.wake = None

    def _recount(self, counts: dict) -> dict:
        """After the wait for a visitor's ``join``: a client that left meanwhile is no longer counted, and one that joined
        meanwhile with a micro-batch on its way here is, with the rest of its epoch (as ``join`` counts it mid-epoch).
        The runtime's server counts a visitor when it reads its ``join``, and one whose leg here has ended by then it
        ``release``-s at once: it never sends it a ``fwd``. Counting a leaver (idle, handed over at its handover's
        instant) sent it a ``fwd`` from here while its new server drove it too (issue 19: a second ``fwd``, a
        micro-batch out without an arrival). Returns ``counts``."""
        for c in [c for c in counts if c.home != self.k]:
            del counts[c]
        for c in self.out:
            if c.home == self.k and c not in counts:
                counts[c] = self.rest(c) + 1
        return counts

    def _in_epoch(self, c, e: int | None) -> bool:
        """Whether client ``c``'s next micro-batch (or the one it has out here) is of epoch ``e`` (None: any)."""
        per = c.d.per_epoch or c.d.n
        return e is None or (c.mb if c in self.out else c.next) // per == e

    def _held_idle(self, e: int | None) -> list:
        """The clients held here, idle, with work left in epoch ``e`` that this loop does not count: their leg here ends
        before it could send them a ``fwd`` (:meth:`_give` dropped them); the handover's instant moves them on."""
        return [c for c in self.moves.clients if c.home == self.k and c not in self.out and c.i not in self.lost
                and c.next < c.d.n and self._in_epoch(c, e) and self.rest(c) > 0]

    def _leaving(self, e: int | None) -> float | None:
        """When the first client of :meth:`_held_idle` leaves (None: none). The runtime's server does not end its epoch
        while one may still come (it waits for its ``join``, then sends its ``release``): this loop does not close the
        epoch before the handover's instant either (a handover due while it closes would wait for its next epoch, and
        the client's new server for it: the rounds would wait for ever)."""
        return min((self.leave(c) for c in self._held_idle(e)), default=None)

    def _release_left(self, e: int | None) -> None:
        """Hand over the clients of :meth:`_held_idle` whose leg here has ended (the handover's instant, as ``tick``)."""
        now = self.engine.env.now
        for c in self._held_idle(e):
            if self.leave(c) <= now:
                self.hand_over(c, now)

    def _release_due(self) -> None:
        """An epoch starts: release the clients held here whose leg here ended during the last rounds (the runtime's
        server releases them when it first looks at them, at the epoch's start)."""
        now = self.engine.env.now
        for c in self.moves.clients:
            if c.home == self.k and c not in self.out and c.i not in self.lost and c.next < c.d.n \
                    and self.leave(c) <= now:
                self.hand_over(c, now)

    def _idle_until(self, t: float):
        """Answer the others' backhaul rounds until ``t`` (a visitor's ``join`` arrives then, as in the runtime)."""
        if t > self.engine.env.now:
            joined = self.engine.env.event()
            self.engine.succeed_at(joined, t)
            yield from self.sync.idle(joined)

    def _interleaved_in_time(self, counts, e: int):
        """Epoch ``e``'s segments over ``counts`` and the visitors that join it, then its FedAvg round."""
        every, acc = self.cfg.fedavg_every, self.cfg.accumulate
        self.left = dict(counts)
        while self.left:
            yield from self._segment_in_time((every - self.steps % every) * acc)
            yield from self._server_step()  # a partial window at the segment's end
            if self.steps % every == 0 and any(self._read_join(c) for c in self.left):
                yield from self._round()
            if not self.left:
                yield from self._visitor(e)
        yield from self._round()

    def _segment_in_time(self, quota: int):
        """Serve ``quota`` micro-batches in arrival order (skipped turns of gone clients do not count)."""
        self.quota, self.issued, self.pending, self.serving = quota, len(self.out), [], True
        self.unissued = {c: k - (c in self.out) for c, k in self.left.items()}
        self._release_deferred()  # the runtime's first look at each client (may_issue) releases before any fwd
        for c in list(self.left):
            if self.issued < quota and self.unissued.get(c) and c not in self.out:
                self._give(c)
        served = 0
        while served < quota and (self.out or self.moving > self.engine.env.now):
            if not self.out:  # the runtime's server waits for the mover's ``moved`` before it ends the segment
                if (yield from self.until(self.moving)):
                    self._fill()
                else:  # what it does next (a step, FedAvg) starts then
                    self.free = max(self.free, self.moving)
                continue
            c = min(self.out, key=lambda c: (c.arrival, c.i))
            if (yield from self.until(max(self.free, c.arrival))):
                self._fill()
                continue
            self.out.remove(c)
            skipped, moved = c.arrival == -math.inf, len(c.history)
            self.read = self.engine.env.now  # the runtime's server reads its messages in arrival order: a join by now too
            yield from self._serve(c)
            self.look = max(self.engine.env.now, self.free)  # the runtime looks at every client once this serve ends
            # handed over while the step after it waited on the others' rounds (sync): gone, or back here already
            # (A -> B -> A), counted anew by ``join`` (busy: with a micro-batch on its way here; idle: pending)
            gone = c not in self.left or len(c.history) != moved
            if not gone:
                self._count_down(self.left, c)
            served, self.issued = served + (not skipped), self.issued - skipped
            now = self.engine.env.now
            if c.next >= c.d.n:
                self.moves.changed()  # no more work of it: servers waiting for it may end
            elif not gone and c.i not in self.lost and self.leave(c) <= now:
                # its leg here ended while it was out, or while the step after it waited on the others' round (its
                # tick deferred: if its legs took it back here meanwhile it stays, as the runtime's ``holds`` says)
                stepped = c in self.deferred
                self.hand_over(c, now)
                if stepped and c.home == self.k and self.issued < quota and self.unissued.get(c):
                    self._give(c)
            elif not gone and self.issued < quota and self.unissued.get(c):
                self._give(c)
            self._release_deferred()  # the runtime looks at every client after each micro-batch (may_issue)
            self._fill()
        self.serving = False

    def _release_deferred(self) -> None:
        """Release now the idle clients whose leg here ended while this server was in a step and its backhaul round
        (:meth:`~sfsim.schedules.splitlora.moves.Moves.tick` deferred them): the runtime's server reads and sends nothing
        then, and its ``release`` goes when it next looks at the client (``may_issue``: after the step, or at the next
        segment's start), so the client's ``join`` reaches its new server from then. A client whose legs took it back
        here meanwhile stays (the runtime's server never saw it leave); until then it is counted here (a FedAvg round in
        between takes it, as the runtime's ``live``)."""
        now = self.engine.env.now
        for c in self.deferred:
            if c.home == self.k and c not in self.out and c.i not in self.lost and c.next < c.d.n and c in self.left \
                    and self.leave(c) <= now:
                self.hand_over(c, max(now, self.free))
        self.deferred = []

    def look_at(self, c) -> None:
        """Client ``c``'s leg here ends now while it is idle here and counted in this epoch: the runtime's server
        ``release``-s it when it next looks at it (``may_issue``): at the end of the serve it is in (:attr:`look`), else
        after its next serve, or at its next segment's start (:meth:`_release_deferred`)."""
        if self.look > self.engine.env.now:
            self.hand_over(c, self.look)
        elif c not in self.deferred:
            self.deferred.append(c)

    def _fill(self) -> None:
        """Send ``fwd`` to clients that joined mid-segment, while the segment has room."""
        for c in list(self.pending):
            if self.issued >= self.quota:
                break
            self.pending.remove(c)
            if self.unissued.get(c):
                self._give(c)

    def _give(self, c) -> None:
        """Send ``c`` its next ``fwd`` if this server still holds it then and it has none out (the runtime's
        ``may_issue``: never to a busy client); route its upload."""
        if c in self.out:  # it came back (A -> B -> A) while pending here and was sent its fwd already (training.sync)
            return
        t = max(self.free, c.since, c.joined)  # its fwd goes once its join is here (a release: after its backward)
        if t >= self.leave(c):  # gone by then: out of this loop (the handover's instant moves it)
            self._drop(c)
            if self.engine.env.now >= self.leave(c):
                self.hand_over(c, self.engine.env.now)
            return
        self.unissued[c] -= 1
        self.issued += 1
        self._issue(c, t)
        if c.next % (c.d.per_epoch or c.d.n) == 0:  # its epoch's last: no more visits (a server may close its epoch)
            self.moves.changed()
        if c.arrival != -math.inf:
            m = self.motions[c.i]
            j = m.leg_at(c.sent_at)
            c.starts.append(c.sent_at)
            if m.legs[j].server != self.k:  # uploaded after the handover: it goes to the new server
                self.issued -= 1
                self.hand_over(c, max(self.engine.env.now, m.legs[j].at), outstanding=True)
                if self.sync is not None:  # ``moved`` here, ``join`` there: sent together (see hand_over)
                    self.moving = max(self.moving, c.joined)
                return
        self.out.append(c)

    def _read_join(self, c) -> bool:
        """Whether this server has read client ``c``'s ``join`` (one held from the start: yes). With ``training.sync`` the
        runtime's server reads its messages in arrival order only while it waits for a micro-batch: a ``join`` that
        arrives after the last one it read in a segment is read in its next segment, so that visitor is not in a
        FedAvg round between (nor does it make one due). Without ``training.sync`` a joiner counts from its handover (the
        fast path's joint loop replays that)."""
        return self.sync is None or self.sync.rounds.every is None or c.joined <= self.read

    def _round(self):
        """FedAvg over the clients held when ``sync`` goes out (see module)."""
        while (yield from self.until(self.free)):
            pass
        self.clients = [c for c in self.moves.clients if self.moves.holder(c, self.free) == self.k and self._read_join(c)]
        if self.clients:
            # a member may have a micro-batch on its way to its next server already: keep its arrival
            flying = {c: c.arrival for c in self.clients if c.arrival is not None}
            self._fedavg()
            for c, t in flying.items():
                c.arrival = t
