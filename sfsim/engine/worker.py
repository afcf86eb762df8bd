"""The worker processes of a SplitFrozen server (:class:`~sfsim.engine.pool.ServerPool`'s base class).

A worker takes an eligible micro-batch and runs it, else runs deferred W's, sleeps or ends (the
rules are :mod:`sfsim.engine.pool`'s docstring). Its hot path, :meth:`WorkerLoop._stream`, runs micro-batches
back to back without a SimPy step while nothing else is due (:meth:`~sfsim.engine.core.Engine.until`).
The pool's state (arrivals, credits, policy, idle workers) is the pool's own: this class only
holds the loop.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import simpy

from sfsim.engine.cacheparts import CacheParts, Departures
from sfsim.engine.core import DeviceEvent
from sfsim.engine.credits import Credits
from sfsim.engine.epochs import EpochBooks
from sfsim.engine.policies import FifoPolicy

_NORMAL = simpy.events.NORMAL  # SimPy's priority for ordinary (non-urgent) events


class _WorkerState:
    """One worker's running state: its lane, deferred W's, window count, busy seconds and last op end."""

    __slots__ = ("lane", "flight", "queued_w", "done", "busy", "last")

    def __init__(self, lane: str, flight: float):
        self.lane, self.flight = lane, flight
        self.queued_w: deque = deque()  # (device, mb, W seconds) whose W is deferred
        self.done = 0                   # micro-batches processed since this worker's last step
        self.busy = 0.0
        self.last = 0.0                 # when this worker's last op ends (the trace's last event on its lane)


class WorkerLoop:
    """The loop of a :class:`~sfsim.engine.pool.ServerPool`'s workers (a base class: it uses the pool's state)."""

    epochs, epoch = 1, 0  # by_epochs: the epochs the pool opens one at a time, and the one open now
    starts: dict | None = None  # by_epochs: epoch -> the event of its start (its devices wait for it)

    def by_epochs(self, epochs: int, legs: dict[int, list[int]] | None = None) -> None:
        """Open the devices' micro-batches one epoch at a time, as the runtime's server (``train_epoch``).

        Each epoch ends as a run does (a final step on a partial window, then the backhaul's drain and
        closing rounds, :meth:`sfsim.network.backhaul.PoolRounds.leave`); the next opens when they are
        over: its workers start then, and its devices start forwarding then (:meth:`epoch_start`), those
        that hold it (a device's last leg so far). Every device's micro-batches are ``epochs`` equal epochs;
        cached ones (activation cache) are replayed from each epoch's start. ``legs``: the servers of the legs of
        each device that moves or may leave (handover, churn, varying uplink): the epoch's count is then the
        runtime's (:class:`~sfsim.engine.epochs.EpochBooks`), kept by the device's calls (:meth:`moved_off`,
        :meth:`joined`, :meth:`closed`, :meth:`left`).
        """
        self.epochs, self.starts = epochs, {}
        if legs is not None:
            self.waiting_calls: dict[int, list] = {}  # epoch -> a device's calls made before it opened here
            held = {i for i, t in enumerate(self.totals) if t}
            self.books = EpochBooks(self.index, [d.per_epoch for d in self.devices], held, legs)
            if any(d.sent < d.n for d in self.devices):  # the cache: what each device that moves sends here
                self.cache_parts = CacheParts()
        self.unclaimed = self._opened()
        if self.senders is not None:  # the mixing pool's "could still send": this epoch's micro-batches only
            for i, k in enumerate(self._sending()):
                self.senders.change(i, unsent=k - (self.devices[i].sent if self.totals[i] else 0))

    books: EpochBooks | None = None  # by_epochs with devices that move or leave
    cache_parts: CacheParts | None = None  # books and the activation cache: the part of each mover's epoch 1 here
    departures: Departures | None = None  # the activation cache: devices that may drop (no replay from their drop on)

    def _gone(self, i: int) -> bool:
        """Whether device ``i`` replays nothing here from now on: gone for good in the books, and (a cached device that
        may drop) its drop instant has come (before it, a server ahead in a cached epoch still replays it)."""
        return i in self.books.gone and (self.departures is None or i not in self.departures.at
                                         or self.departures.gone(i, self.env.now))

    def _opened(self) -> int:
        """The count of the epoch that opens now (micro-batches, and places for visitors)."""
        if self.books is not None:
            return self.books.open() if self.cache_parts is None or self.epoch == 0 else self._cached_count()
        return sum(t // self.epochs for t in self.totals)

    def _cached_count(self) -> int:
        """A cached epoch with :class:`~sfsim.engine.epochs.EpochBooks`: no cached device sends or comes (no places);
        this server replays its own cache, a device that moves or may leave its part (:class:`CacheParts`, all of its
        epoch when it stayed), one that never moves its whole epoch, one gone for good nothing. At the first such
        epoch each mover's total here becomes its part in every epoch (what this server's stream holds). The devices
        beside them that are not cached send this epoch as any other (the books' count: held, places)."""
        books, parts = self.books, self.cache_parts
        count = books.open(frozenset(i for i, d in enumerate(self.devices) if d.sent < d.n))
        for i, d in enumerate(self.devices):
            if d.sent == d.n or self._gone(i):  # not cached: counted by the books above
                continue
            if i in books.legs:
                count += parts.count(i)
                if self.epoch == 1:
                    self.totals[i] = parts.count(i) * self.epochs
            elif i in books.held:
                count += d.per_epoch
        return count

    def _replay_first(self, i: int) -> int | None:
        """The epoch-local index of device ``i``'s first replay here in a cached epoch (None: none here)."""
        if self.cache_parts is not None and i in self.books.legs:
            return self.cache_parts.first(i)
        return 0

    def replay_after(self, i: int, n: int) -> int | None:
        """The micro-batch of device ``i`` replayed here after its ``n`` in a cached epoch (None: ``n`` was its last
        here this epoch)."""
        per = self.devices[i].per_epoch
        if self.cache_parts is not None and i in self.books.legs:
            j = self.cache_parts.after(i, n % per)
            return None if j is None else n - n % per + j
        return n + 1 if (n + 1) % per else None

    def _sending(self) -> list[int]:
        """Per device: the micro-batches it sends in the epoch open now (none of a cached epoch)."""
        e, books = self.epoch, self.books
        held = [bool(t) for t in self.totals] if books is None else \
            [i in books.held and i not in books.gone for i in range(len(self.devices))]
        return [d.per_epoch if h and e * d.per_epoch < d.sent else 0 for d, h in zip(self.devices, held, strict=True)]

    def epoch_start(self, e: int) -> simpy.Event:
        """The event of epoch ``e``'s start on this server (:meth:`by_epochs`): its devices forward from then."""
        ev = self.starts.get(e)
        if ev is None:
            ev = self.starts[e] = self.env.event()
        return ev

    def _epoch_end(self, _ev=None) -> None:
        """The epoch is over (with its rounds): the server's epoch-end wait (evaluation, adapter, checkpoint;
        :mod:`sfsim.cost.epochend`, lane ``epoch-end:<server>``), then the next epoch opens."""
        wait = self.engine.epoch_end.get(self.server.name, 0.0)
        if wait <= 0:
            self._next_epoch()
            return
        self.engine.record(f"epoch-end:{self.server.name}", "epoch_end", self.env.now, wait)
        self.engine.epoch_end_waited.add(self.server.name)
        self.engine.at(self.env.now + wait).callbacks.append(self._next_epoch)

    def _next_epoch(self, _ev=None) -> None:
        """The epoch's rounds are over: open the next one (cached micro-batches, its workers, then its devices)."""
        self.epoch += 1
        self.unclaimed = self._opened()
        if self.senders is not None:  # the devices held at the opening; the calls below move theirs
            for i, k in enumerate(self._sending()):
                self.senders.change(i, unsent=k)
        for apply in self.waiting_calls.pop(self.epoch, []) if self.books is not None else ():
            apply()
        now = self.env.now
        for i, (d, t) in enumerate(zip(self.devices, self.totals, strict=True)):
            if t and d.sent <= self.epoch * d.per_epoch < d.n and (self.books is None or not self._gone(i)):
                j = self._replay_first(i)
                if j is not None:
                    self.push(now, i, self.epoch * d.per_epoch + j)
        self.running = self.server.count
        self.workers = [self.env.process(self._worker(w)) for w in range(self.server.count)]
        self.epoch_start(self.epoch).succeed()

    # -- a device that moves or leaves, over epochs (EpochBooks) ------------------------------------
    # Each call names the device's epoch ``e``: one that comes before this server has opened that epoch (its
    # rounds' average came back later here) waits for the opening, as the runtime's message waits in its queue.
    def moved_off(self, e: int, i: int, run: int, k: int, leg: int) -> None:
        """Device ``i`` hands over to another server (its leg ``leg``) in its epoch ``e`` with ``run`` micro-batches
        unsent (``k`` of the epoch)."""
        def apply():
            self.totals[i] -= run
            self._unsent(i, -k)
            self._count(self.books.moved(i, k, leg))
        self._in_epoch(e, apply)

    def joined(self, e: int, i: int, run: int, k: int) -> None:
        """Device ``i`` arrives by a handover in its epoch ``e`` with ``run`` micro-batches unsent (``k`` of it)."""
        def apply():
            self.totals[i] += run
            self._unsent(i, k)
            self._count(self.books.joined(i, k))
        self._in_epoch(e, apply)

    def closed(self, e: int, i: int) -> None:
        """Device ``i``'s epoch ``e`` is over on another server: it does not come here this epoch."""
        self._in_epoch(e, lambda: self._count(self.books.closed(i)))

    def left(self, e: int, i: int, run: int, k: int) -> None:
        """Device ``i`` is gone for good in its epoch ``e`` with ``run`` micro-batches unsent (``k`` of the epoch,
        here if held)."""
        def apply():
            if i in self.books.held:
                self.totals[i] -= run
                self._unsent(i, -k)
            self._count(self.books.left(i, k))
        self._in_epoch(e, apply)

    def arrives(self, e: int, arrival: float, i: int, n: int) -> None:
        """:meth:`send` of device ``i``'s micro-batch ``n``, of its epoch ``e``, arriving at ``arrival``: one of an epoch
        this server has not opened yet (a device that moved here between epochs, started by the server it left, whose
        rounds' average came back first) waits in its queue until the opening, as the runtime's message does."""
        self._in_epoch(e, lambda: self.send(max(arrival, self.env.now), i, n))

    def _unsent(self, i: int, k: int) -> None:
        """The mixing pool's books of who could still send (:class:`~sfsim.engine.credits.Senders`): ``k`` more
        micro-batches of device ``i`` come here this epoch (fewer: it moved away or left). Without them a pool kept
        waiting for a device that had moved away and never drew what it held."""
        if self.senders is not None:
            self.senders.change(i, unsent=k)
            if k < 0 and self.idle and len(self.policy):  # nothing more can come first: its workers draw now
                self._wake_all()

    def _in_epoch(self, e: int, apply) -> None:
        if e <= self.epoch:
            apply()
        else:
            self.waiting_calls.setdefault(e, []).append(apply)

    def _count(self, change: int) -> None:
        self.unclaimed += change
        if change and self.unclaimed == 0:
            self._wake_all()  # its workers may now run their last W's and step
        self._visitor_news()

    # -- a server waiting only for a visitor answers the others' rounds (the one idle-server round rule) -----------
    places_held = 0  # one epoch (no books): places held for visitors (ServerPool.expect, _change)
    visiting: simpy.Process | None = None  # its rounds while it waits only for a visitor (PoolRounds.wait_for_visitor)
    _visit_wake: simpy.Event | None = None  # fired when it no longer waits only for a visitor

    def _places(self) -> int:
        """Places held for visitors that may still come (counted in :attr:`unclaimed`)."""
        return sum(self.books.place.values()) if self.books is not None else self.places_held

    def _await_visitor(self) -> None:
        """When every worker sleeps and the server's only work left is a visitor that may still come (nothing of its
        own to claim or in flight; what arrived is held back by its policy until more comes: ``pool``, paced; the
        runtime's ``left`` holds placeholders only), it answers the rounds other servers open until that changes
        (:meth:`sfsim.network.backhaul.PoolRounds.wait_for_visitor`)."""
        sync = self.sync
        if (self.visiting is not None or sync is None or not getattr(sync, "answers_waiting", False)
                or len(self.idle) < self.running or self.pending or not self._places()
                or self.unclaimed != self._places() + self.policy.held):
            return
        self._visit_wake = self.env.event()
        self.visiting = self.env.process(self._visit_rounds(self._visit_wake))

    def _visit_rounds(self, wake: simpy.Event):
        yield self.sync.wait_for_visitor(self.index, wake)
        self.visiting = self._visit_wake = None
        if self.idle:  # the news that woke it may be undone at that instant (a visitor through two legs at once)
            self._await_visitor()  # while it still waits only for a visitor it answers the rounds again

    def _visitor_news(self) -> None:
        """Its count or places changed: a visitor came (or none may any more), or it now waits only for one."""
        wake = self._visit_wake
        if wake is not None:
            if not wake.triggered and (not self.unclaimed or self.unclaimed != self._places() + self.policy.held):
                wake.succeed()
        elif self.idle:
            self._await_visitor()

    def _min_flight(self) -> float:
        """A lower bound on (arrival - push time) of any future push: send + latency, 0 with replays."""
        mine = [d for k, d in enumerate(self.devices) if d.n and self.totals[k]]
        if self.flight_bound is not None:
            return self.flight_bound
        if any(d.sent < d.n for d in mine):
            return 0.0  # replays are pushed at the claiming instant
        return min((d.up_s * d.last + d.up_l for d in mine), default=0.0)  # a partial one sends sooner

    def _worker(self, w: int):
        """One worker's process: take an eligible micro-batch and run it, else :meth:`_idle`."""
        env, engine = self.env, self.engine
        wk = _WorkerState(self.server.lane(w), self._min_flight())
        policy, pending, step_s, acc = self.policy, self.pending, self.server.step, self.accumulate
        defer = self.decompose and not self.sequential
        stream = defer and engine.events is None and self.sync is None
        woken = False               # resumed from the idle FIFO: take work without deferring again
        while True:
            if stream and not (engine.warm and wk.lane in engine.warm):  # its first forward's warm-up: _run_mb's
                woken = yield from self._stream(wk, woken)
            now = env._now  # env.now without the property call (hot loop)
            while pending and pending[0][0] <= now:
                _, _, i, n = heapq.heappop(pending)
                policy.push(i, n)
            if not policy:
                woken = yield from self._idle(wk, now)
                if woken is None:
                    return
                continue
            if self.idle and not woken:
                # Workers idle longer choose first: wake them and queue behind them (same instant).
                ev = env.event()
                self._wake_all()
                self.idle.append(ev)
                yield ev
                woken = True
                continue
            woken = False
            i, n = policy.pop()
            if self.departures is not None and self._unreplayed(i, n):
                continue
            self._claim(i, n)
            t = self._run_mb(wk.lane, i, n, now, defer, wk.queued_w)
            wk.done += 1
            stepped = wk.done == acc
            joint = stepped and self.sync is not None and self.sync.joint  # the round comes before the step
            if stepped:
                t = self._step(wk.lane, t, wk.queued_w, None if joint else step_s)
                wk.done = 0
            wk.busy += t - now
            if t > now:
                wk.last = t
            yield engine.at(t)
            if stepped and self.sync is not None:
                yield from (self._joint_step(wk, step_s) if joint else self._synced())

    def _stream(self, wk: _WorkerState, woken: bool):
        """The hot path (no trace, deferred W's, no backhaul): run micro-batches while any may start now.

        Returns (as a generator) ``woken`` for :meth:`_worker`; the timings are :meth:`_run_mb`'s, by the same arithmetic.
        """
        env, hot, until, claim, heappop = self.env, self._hot(), self.engine.until, self._claim, heapq.heappop
        policy, pending, step_s, acc = self.policy, self.pending, self.server.step, self.accumulate
        queued_w, push, pop = wk.queued_w, policy.push, policy.pop
        fifo, queue = policy.__class__ is FifoPolicy, env._queue  # fifo: arrival order is the heap's order
        arrived = policy.queue if fifo else None
        done, busy, last = wk.done, wk.busy, wk.last
        direct, mix_add, grant = self._direct or self._directs(), self.mixing.add, self._grant
        unreplayed = self._unreplayed if self.departures is not None else None  # the cache: a device that may drop
        while True:
            now = env._now
            if fifo and not arrived and pending and pending[0][0] <= now and not (self.idle and not woken):
                _, _, i, n = heappop(pending)  # what the policy would hand out next, without the round trip
            else:
                while pending and pending[0][0] <= now:
                    _, _, i, n = heappop(pending)
                    push(i, n)
                if not policy or (self.idle and not woken):
                    break
                i, n = pop()
            if unreplayed is not None and unreplayed(i, n):
                continue
            woken = False
            srv_f, srv_b, srv_w, sent, whole = hot[i]
            acct = direct[i]
            if n < sent and whole and acct is not None:  # _claim's usual case, inlined (no replay, plain credits)
                self.unclaimed -= 1
                mix_add(i)
                eid = grant(acct, now)
                if not self.unclaimed:
                    self._wake_all()
            else:
                eid = claim(i, n, True)
            if srv_w is None:  # a partial micro-batch: its size's share of each
                x = self.devices[i].size(n)
                srv_f, srv_b, srv_w = srv_f * x, srv_b * x, self.devices[i].srv_w * x
            queued_w.append((i, n, srv_w))
            t = now + srv_f + srv_b  # same rounding as _run_mb (x = 1.0 multiplies exactly)
            done += 1
            if done == acc:  # _step without a trace: every queued W, then the optimizer step
                while queued_w:
                    t += queued_w.popleft()[2]
                t += step_s
                done = 0
            busy += t - now
            if t > now:
                last = t
            if not queue or queue[0][0] > t:
                env._now = t  # nothing else happens before: what until() would do, without the call
                continue
            ev = until(t, eid)
            if ev is not None:
                yield ev
        wk.done, wk.busy, wk.last = done, busy, last
        return woken

    def _grant(self, acct: Credits, now: float) -> int:
        """The usual claim returns its credit to ``acct`` (:meth:`Credits.give_back`, as :meth:`_claim` inline)."""
        waiting = acct.waiting
        if not waiting or waiting[0][0] > now:
            acct.give_back()
            return -1
        _, _, ev, lane = heapq.heappop(waiting)  # to the longest-ready waiter
        if lane is not None:  # Credits.pop, inlined: the next of its lane takes its place
            if lane.queue:
                heapq.heappush(waiting, lane.queue.popleft())
            else:
                lane.active = False
        ev._ok, ev._value = True, True
        env = self.env
        queue = env._queue
        if self.unclaimed and ev.__class__ is DeviceEvent and (not queue or queue[0][0] > now):
            eid = next(env._eid)  # the worker's timer, scheduled before what the device does
            callbacks, ev.callbacks = ev.callbacks, None  # nothing else runs before it: go on now
            for callback in callbacks:
                callback(ev)
            return eid
        heapq.heappush(queue, (now, _NORMAL, next(env._eid), ev))
        return -1

    def _hot(self) -> list[tuple]:
        """Per device: (server F, B, W seconds, micro-batches it sends, whether all are full and sent)."""
        if self._hot_rows is None:
            self._hot_rows = [(d.srv_f, d.srv_b, d.srv_w if d.last == 1.0 else None, d.sent, d.sent == d.n)
                              for d in self.devices]
        return self._hot_rows

    def _idle(self, wk: _WorkerState, now: float):
        """No micro-batch may start now: run deferred W's, end the worker, or sleep until work may come.

        Returns (as a generator) True when woken from the idle FIFO, False otherwise, None when the
        worker has ended.
        """
        env, pending, queued_w = self.env, self.pending, wk.queued_w
        if queued_w:
            # Run deferred W's one after another while no micro-batch can have arrived;
            # no push made from now on arrives before now + flight, so batching them is exact.
            bound = min(pending[0][0] if pending else math.inf, now + wk.flight)
            t = now
            while queued_w and (t == now or t < bound):
                i, n, w_s = queued_w.popleft()
                d = self.devices[i]
                self.engine.record(wk.lane, "W", t, w_s, n, d.name)
                t += w_s
            wk.busy += t - now
            if t > now:
                wk.last = t
            yield self.engine.at(t)
            return False
        if self.unclaimed == 0:
            yield from self._final(wk, now)
            return None
        held = self.policy.held  # arrived micro-batches the policy holds back (paced, pool)
        if pending and pending[0][0] <= now + wk.flight:
            yield self.engine.at(pending[0][0])  # nothing can arrive earlier: sleep without an alarm
            woken = False
        else:
            ev = env.event()
            self.idle.append(ev)
            if pending and pending[0][0] < self.alarm_at:
                self._arm(pending[0][0])
            self._await_visitor()
            yield ev
            if self.visiting is not None:  # the server answers a round while it waits: it takes work after it
                yield self.visiting
            woken = True
        if held and self._waited(wk.lane, now):
            wk.last = env.now
        return woken

    def _final(self, wk: _WorkerState, now: float):
        """Nothing left to hand out: a final step on a partial window, then the worker ends."""
        step_s = self.server.step
        if wk.done and self.sync is not None and self.sync.joint:
            yield from self._joint_step(wk, step_s)
        elif wk.done:
            self.engine.record(wk.lane, "step", now, step_s)
            wk.busy += step_s
            if step_s > 0:
                wk.last = now + step_s
            yield self.engine.at(now + step_s)
            if self.sync is not None:
                yield from self._synced()
        self.busy += wk.busy
        self.end = max(self.end, wk.last)
        self.running -= 1
        if self.running == 0 and self.sync is not None:
            closed = self.sync.leave(self.index)
            if self.epoch + 1 < self.epochs:  # the next epoch starts when the epoch's rounds are over
                closed.callbacks.append(self._epoch_end)
        elif self.running == 0 and self.epoch + 1 < self.epochs:  # one server, by_epochs for its epoch-end wait
            self._epoch_end()

    def _waited(self, lane: str, start: float) -> bool:
        """A worker sat idle from ``start`` to now while the policy held micro-batches back: op ``wait``.

        Returns whether the wait took any time (a trace records it then).
        """
        dur = self.env.now - start
        self.wait_s += dur
        i, n = self.policy.waiting_for()
        self.engine.record(lane, "wait", start, dur, n, self.devices[i].name if i >= 0 else "")
        return dur > 0

    def _synced(self):
        """After a step: tell the backhaul; in sync mode wait until the servers' average has arrived."""
        ev = self.sync.step_done(self.index)
        if ev is not None:
            yield ev

    def _joint_step(self, wk: _WorkerState, step_s: float):
        """Gradients averaged before every step (``every: 1``, ``sync``): the backhaul round, then the step."""
        yield from self._synced()
        now = self.env.now
        self.engine.record(wk.lane, "step", now, step_s)
        wk.busy += step_s
        if step_s > 0:
            wk.last = now + step_s
        yield self.engine.at(now + step_s)

    def _run_mb(self, lane: str, i: int, n: int, now: float, defer: bool, queued_w: deque) -> float:
        """Record F and B (or BW) of one micro-batch starting at ``now``; returns when they end."""
        rec, d = self.engine.record, self.devices[i]
        x = d.size(n)
        f_s, b_s, w_s = d.srv_f * x, d.srv_b * x, d.srv_w * x
        if self.engine.warm:  # the worker's first forward of the run (ServerTimes.warmup)
            f_s += self.engine.warm_up(lane)
        rec(lane, "F", now, f_s, n, d.name)
        t = now + f_s
        if defer:
            rec(lane, "B", t, b_s, n, d.name)
            queued_w.append((i, n, w_s))
            return t + b_s
        if self.decompose:  # sequential ablation: W right after B
            rec(lane, "B", t, b_s, n, d.name)
            rec(lane, "W", t + b_s, w_s, n, d.name)
        else:
            rec(lane, "BW", t, b_s + w_s, n, d.name)
        t += b_s + w_s
        if self.sequential and n < d.sent:  # a replayed (cached) micro-batch has no device waiting
            ev = self.release.pop(i)
            self.engine.at(t).callbacks.append(lambda _e: self._released(i, ev))
        return t

    def _released(self, i: int, ev: simpy.Event) -> None:
        """Sequential: device ``i``'s micro-batch is done (its W ended); let the device go on."""
        if not self.claim_returns:
            self.account[i].give_back()
        if self.senders is not None:
            if not self.claim_returns:
                self.senders.holding -= 1
            self.senders.change(i, out=-1)
        ev.succeed()

    def _step(self, lane: str, t: float, queued_w: deque, step_s: float | None) -> float:
        """Run every queued W, then an optimizer step (None: not now), from time ``t``; returns the end time."""
        rec, devices = self.engine.record, self.devices
        while queued_w:
            i, n, w_s = queued_w.popleft()
            d = devices[i]
            rec(lane, "W", t, w_s, n, d.name)
            t += w_s
        if step_s is None:
            return t
        rec(lane, "step", t, step_s)
        return t + step_s
