"""The SplitFrozen server pool: credits and buffers, server workers and their policies (and the engine's re-exports).

Schedules (``sfsim.schedules``) turn a scenario into plain per-device stage durations
(:class:`DeviceTimes`, :class:`ServerTimes`) and run small SimPy processes on one :class:`Engine`.
The engine only replays: it never calls the cost model, so tests give exact hand-made durations.

The engine's core (environment, recording, exact timers, :class:`FifoLane`) is
:mod:`sfsim.engine.core`; credits are :mod:`sfsim.engine.credits`; the policies
:mod:`sfsim.engine.policies`.

SplitFrozen server (:class:`ServerPool`), exactly as the planner must assume:

* **Credits** (``credits="server"``, the default): a server has ``buffer`` credits, one per
  micro-batch in flight to it or waiting at it. A device takes a credit when it starts sending; the
  credit comes back when a worker starts processing that micro-batch and goes to the device that
  has waited longest (FIFO by the time it became ready to send; ties in queueing order). Replayed
  (cached) micro-batches hold no credit. The acknowledgement is instantaneous (no downlink
  latency): see ``Training.buffer`` for why. With ``credits="device"`` (the trainer's flow control)
  each device has ``buffer`` credits of its own, by the same rules, and waits only for its own;
  sequential devices have one, returned when the device is released (so it never binds).
* **Arrivals** are kept in a heap; a worker that becomes free at time ``t`` sees every micro-batch
  with arrival ``<= t`` (an arrival at the instant a worker frees up is eligible). An idle worker is
  woken at the next arrival.
* **Policy** (:data:`POLICIES`, :mod:`sfsim.engine.policies`): which arrived micro-batch a free worker
  takes: ``fifo`` (arrival order), ``round-robin`` (devices in turn, in the order they first had
  work waiting) or ``proportional`` (the device with the largest fraction of its micro-batches not
  yet started; ties: lower device index). These take any arrived micro-batch. ``paced-proportional``
  and ``paced-round-robin`` follow :func:`sfsim.engine.pacing.server_order` over the server's devices (one
  order per epoch of ``per_epoch`` micro-batches each) and wait for the named device's next
  micro-batch even when others have arrived; they need ``credits="device"`` (with one server-wide
  pool the held-back micro-batches can take every credit). ``pool`` puts arrivals in a
  :class:`sfsim.engine.pacing.MixingPool` (capacity: the memory bound ``pool_bytes`` over the widest
  ``act_bytes``, else the sum of the credits; arrivals that find it full wait behind it in arrival
  order) and draws uniformly at random (seeded) only when it is full or nothing more can arrive
  before a draw: nothing in flight and no device able to send (micro-batches left to send and a
  credit it could hold; sequential: released). Within one device micro-batches run in order,
  except under ``pool``. A worker idle while the policy holds an arrived micro-batch back records
  op ``wait`` on its lane (device and micro-batch waited for, paced) and adds to ``server_wait``.
* **Several workers** (``count > 1``) are independent replicas of the server's model: each steps
  its own accumulation window (below) and no gradient is exchanged between them. An eligible
  micro-batch goes to the worker that has been free the longest: free workers wait in a FIFO
  (those free from the start in index order) and a worker that becomes free at the instant work
  is eligible queues behind the workers already waiting. No micro-batch waits while a worker is
  free (work-conserving).
* **Worker** per accelerator (lane ``<server>`` when ``count == 1``, else ``<server>/<w>``): for a
  micro-batch of device ``i`` it runs ``F`` then ``B`` back to back. With ``decompose`` its ``W``
  is queued: the worker runs queued W's (oldest first, one at a time) only when no micro-batch is
  eligible, and all of them right before an optimizer step. Without ``decompose`` it runs ``BW``
  (B and W fused) right after ``F``. After every ``accumulate`` micro-batches a worker has processed
  it runs its queued W's and a ``step``; when the server has no micro-batch left to hand out, each
  worker runs its remaining W's and a final ``step`` for a partial window.
* **Sequential** devices (the ``splitfrozen-sequential`` ablation) are released when the worker
  ends the micro-batch's ``W`` (run right after ``B``, never deferred), before any ``step``.
* **Activation cache**: a device sends only its first ``sent`` micro-batches; its micro-batch
  ``n >= sent`` (a later epoch, replayed from the server's cache) becomes eligible at the instant a
  worker starts its micro-batch ``n - 1``, so each device has at most one replay waiting.
* **Backhaul sync** (``Engine.sync``, optional; :mod:`sfsim.network.backhaul`): after each optimizer step a
  worker tells the backhaul; in ``sync`` mode it waits there until the servers' average has arrived.
* Ops of zero duration are not recorded. Ties at equal times are resolved in SimPy event order.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import simpy

from sfsim.cost.stagetimes import DeviceTimes, ServerTimes  # noqa: F401 (re-exported)
from sfsim.engine.core import DeviceEvent, Engine, FifoLane  # noqa: F401 (re-exported)
from sfsim.engine.credits import Credits, Senders  # noqa: F401 (re-exported)
from sfsim.engine.pacing import pool_capacity
from sfsim.engine.policies import (  # noqa: F401 (re-exported: the engine's policies)
    PACED,
    PACED_NEEDS_DEVICE_CREDITS,
    POLICIES,
    FifoPolicy,
    PacedPolicy,
    PoolPolicy,
    ProportionalPolicy,
    RoundRobinPolicy,
    make_policy,
    paced_order,
)
from sfsim.errors import SfsimError
from sfsim.outputs.mixing import StreamMixing  # noqa: F401 (re-exported)

_NORMAL = simpy.events.NORMAL  # SimPy's priority for ordinary (non-urgent) events


class _Stream:
    """The device order of a server's stream, kept until the run's totals are known (:meth:`ServerPool.mix_received`)."""

    def __init__(self, stream: list[int]):
        self.stream = stream

    def add(self, i: int) -> None:
        """Record that device ``i``'s micro-batch is next in the stream."""
        self.stream.append(i)


class _WorkerState:
    """One worker's running state: its lane, deferred W's, window count, busy seconds and last op end."""

    __slots__ = ("lane", "flight", "queued_w", "done", "busy", "last")

    def __init__(self, lane: str, flight: float):
        self.lane, self.flight = lane, flight
        self.queued_w: deque = deque()  # (device, mb, W seconds) whose W is deferred
        self.done = 0                   # micro-batches processed since this worker's last step
        self.busy = 0.0
        self.last = 0.0                 # when this worker's last op ends (the trace's last event on its lane)


class ServerPool:
    """A SplitFrozen server: credits, pending arrivals, a policy, and ``count`` worker processes.

    Args:
        engine: the engine.
        server: the server's :class:`ServerTimes`.
        devices: every device of the run (index = device id); only those with ``server == index``
            of this pool send here.
        index: this server's index.
        buffer: credits (micro-batches in flight to or waiting here).
        accumulate: micro-batches per optimizer step (per worker).
        decompose: defer W into idle time (else fused ``BW``).
        policy: policy name (:data:`POLICIES`).
        sequential: release each device when its micro-batch's W ends (the ablation).
        credits: ``server`` (one pool of ``buffer`` credits) or ``device`` (``buffer`` per device).
        pool_bytes: memory bound of the ``pool`` policy (None: the sum of the credits).
        seed: seed of the ``pool`` policy's draws.
    """

    def __init__(self, engine: Engine, server: ServerTimes, devices: list[DeviceTimes], index: int,
                 buffer: int, accumulate: int, decompose: bool, policy: str, sequential: bool = False,
                 credits: str = "server", pool_bytes: float | None = None, seed: int = 0):
        if buffer < 1 or accumulate < 1:
            raise SfsimError(f"server {server.name!r}: buffer and accumulate must be >= 1")
        if credits not in ("server", "device"):
            raise SfsimError(f"unknown credits {credits!r}; choose server or device")
        if policy in PACED and credits == "server":
            raise SfsimError(f"server policy {policy!r} {PACED_NEEDS_DEVICE_CREDITS}")
        self.engine, self.env, self.server = engine, engine.env, server
        self.devices = devices
        self.totals = totals = [d.n if d.server == index else 0 for d in devices]
        self.per_device = credits == "device"
        self._accounts(buffer, sequential)
        self.wait_s = 0.0                 # worker-seconds idle while a micro-batch waited (paced, pool)
        self.senders = None
        self.policy = self._policy(policy, buffer, sequential, pool_bytes, seed)
        self.give = self._givers()
        self._direct: list | None = None  # built at the first claim, after every give is set
        self._hot_rows: list | None = None  # built at the first stream (_hot)
        self.mixing = engine.mixing[server.name] = StreamMixing(totals)
        self.unclaimed = sum(totals)
        self.pending: list = []           # heap of (arrival, seq, device, mb) not yet arrived
        self.seq = 0
        self.idle: list = []              # events of sleeping workers
        self.alarm_at = math.inf
        self._alarm = None
        self.accumulate, self.decompose, self.sequential = accumulate, decompose, sequential
        self.release: dict[int, simpy.Event] = {}  # sequential: device -> event to release it
        self.busy = 0.0
        self.end = 0.0                    # when the last op of any worker ends (what a trace would show)
        self.index, self.sync, self.running = index, engine.sync, server.count
        self.flight_bound: float | None = None  # 0 once devices may arrive at any latency (open_arrivals)
        engine.on_finish(self._finish)
        self.workers = [self.env.process(self._worker(w)) for w in range(server.count)]

    def _accounts(self, buffer: int, sequential: bool) -> None:
        """``account[i]``: the :class:`Credits` device ``i`` draws from (shared, or its own)."""
        if self.per_device:  # sequential: one micro-batch at a time, its credit back at the release
            self.account = [Credits(self.engine, 1 if sequential else buffer) if t else None for t in self.totals]
        else:
            self.account = [Credits(self.engine, buffer)] * len(self.devices)
        self.claim_returns = not (sequential and self.per_device)  # else the release returns it

    def _givers(self) -> list:
        """``give[i]()``: what starting a sent micro-batch of device ``i`` returns (None: its release does)."""
        if not self.claim_returns:
            return [None] * len(self.devices)
        if self.senders is None:
            return [a.give_back if a is not None else None for a in self.account]
        return [lambda i=i: self._give_pool(i) for i in range(len(self.devices))]

    def _give_pool(self, i: int) -> None:
        self.account[i].give_back()
        self.senders.holding -= 1
        if not self.sequential:
            self.senders.change(i, out=-1)

    def _policy(self, name: str, buffer: int, sequential: bool, pool_bytes: float | None, seed: int):
        """The policy object; ``pool`` also sets up :class:`Senders` and its capacity."""
        totals, devices = self.totals, self.devices
        if name in PACED:
            order = paced_order([d.name for d in devices], totals, [d.per_epoch for d in devices], PACED[name])
            return make_policy(name, totals, order=order)
        if name != "pool":
            return make_policy(name, [max(t, 1) for t in totals])
        sent = [d.sent if t else 0 for d, t in zip(devices, totals, strict=True)]
        if self.per_device:
            limit, total = (1 if sequential else buffer), math.inf
            credits = max(1, limit * sum(1 for x in sent if x))
        else:
            limit, total, credits = (1 if sequential else math.inf), buffer, buffer
        self.senders = Senders(sent, limit, total)
        if pool_bytes is None:
            capacity = credits
        else:  # the widest activation decides how many fit
            capacity = pool_capacity(pool_bytes, max(d.act_bytes for d, t in zip(devices, totals, strict=True) if t))
        return make_policy(name, totals, capacity=capacity, seed=seed, more=self._more_can_arrive,
                           nbytes=lambda i, n: devices[i].act_bytes * devices[i].size(n))

    def _more_can_arrive(self) -> bool:
        """Pool: can another micro-batch arrive before the next draw (one in flight, or a device free to send)?"""
        return bool(self.pending) or self.senders.any()

    def _finish(self) -> None:
        if self.unclaimed:  # a lost wake-up would silently shorten the run: fail loudly instead
            raise RuntimeError(f"server {self.server.name}: {self.unclaimed} micro-batches never processed")
        name = self.server.name
        self.engine.server_busy[name] = self.busy
        self.engine.server_wait[name] = self.wait_s
        self.engine.server_end[name] = self.end
        if self.senders is not None:
            self.engine.pool_peak_bytes[name] = self.policy.peak_bytes

    # -- device side ---------------------------------------------------------------------------
    def send(self, arrival: float, i: int, n: int) -> None:
        """Device ``i`` sends its micro-batch ``n`` now (it holds a credit), arriving at ``arrival``.

        The same as :meth:`push` but for the pool's bookkeeping of who could still send.
        """
        senders = self.senders
        if senders is not None:
            senders.holding += 1
            senders.change(i, unsent=-1, out=1)
        self.push(arrival, i, n)

    def push(self, arrival: float, i: int, n: int) -> None:
        """Announce micro-batch ``n`` of device ``i``, arriving at time ``arrival``."""
        self.seq += 1
        heapq.heappush(self.pending, (arrival, self.seq, i, n))
        if self.idle and arrival < self.alarm_at:
            self._arm(arrival)

    def released(self, i: int) -> simpy.Event:
        """Sequential: the event that lets device ``i`` go on, fired when a worker ends the W of the
        micro-batch it is about to send (call before :meth:`send`)."""
        ev = self.release[i] = self.env.event()
        return ev

    # -- devices that move and leave (the dynamic network) ----------------------------------------
    def expect(self, i: int, credits: int) -> None:
        """A handover may bring device ``i`` here: hold a place for it (the pool does not end while it
        may come) and, with per-device credits, open its account of ``credits``."""
        self.unclaimed += 1
        if self.per_device and self.account[i] is None:
            self.account[i] = Credits(self.engine, credits)
            self.give[i] = self.account[i].give_back if self.claim_returns else None
            self._direct = None

    def hand_over(self, i: int, k: int) -> None:
        """Device ``i`` arrives by a handover with ``k`` micro-batches left to send here (the place held for it goes)."""
        self._change(i, k, 1)

    def withdraw(self, i: int, k: int) -> None:
        """``k`` micro-batches of device ``i`` will not come here (it moved away, dropped or ran out of time)."""
        self._change(i, -k, 0)

    def not_coming(self, i: int) -> None:
        """A handover that was expected here never happens: give up the place held for device ``i``."""
        self._change(i, 0, 1)

    def _change(self, i: int, k: int, place: int) -> None:
        self.totals[i] += k
        self.unclaimed += k - place
        if self.unclaimed == 0:
            self._wake_all()  # its workers may now run their last W's and step

    def open_arrivals(self) -> None:
        """Devices may arrive at any latency (they move): keep every idle worker's wake-up exact."""
        self.flight_bound = 0.0

    def mix_received(self) -> None:
        """Measure stream mixing over the stream this server actually receives (devices join and leave)."""
        stream: list[int] = []
        self.mixing = _Stream(stream)

        def mixed():
            mix = StreamMixing(self.totals)
            for i in stream:
                mix.add(i)
            self.engine.mixing[self.server.name] = mix
        self.engine.on_finish(mixed)

    # -- waking idle workers ---------------------------------------------------------------------
    def wake_at(self, t: float) -> None:
        """Wake the idle workers at ``t``, an arrival before the alarm set (a device that pushes itself calls it)."""
        self._arm(t)

    def _arm(self, t: float) -> None:
        self.alarm_at = t
        self._alarm = self.engine.at(t)
        self._alarm.callbacks.append(self._ring)

    def _ring(self, ev) -> None:
        if ev is not self._alarm:
            return  # superseded by an earlier alarm
        self.alarm_at = math.inf
        self._wake_all()

    def _wake_all(self) -> None:
        idle, self.idle = self.idle, []
        for ev in idle:
            ev.succeed()

    def _claim(self, i: int, n: int, inline: bool = False) -> int:
        """Bookkeeping when a worker starts micro-batch ``n`` of device ``i``.

        ``inline``: nothing else happens in the worker's step after this call but its timer (the fast
        path). A device granted the returned credit then goes on at once when nothing else is queued
        for now (its grant would be the next event), and the worker's timer takes the event id reserved
        just before it, the place it would have had. Returns that id, or -1 (the timer takes a fresh one).
        """
        dev = self.devices[i]
        self.unclaimed -= 1
        self.mixing.add(i)
        replay = n + 1 < dev.n and n + 1 >= dev.sent
        eid = -1
        if n < dev.sent:  # a sent micro-batch frees its credit; a replay holds none
            acct = (self._direct or self._directs())[i]
            if acct is None:
                give = self.give[i]
                if give is not None:
                    give()
            elif (waiting := acct.waiting) and waiting[0][0] <= self.env._now:  # Credits.give_back, inlined
                env, ev = self.env, acct.pop()[2]  # to the longest-ready waiter
                ev._ok, ev._value = True, True
                queue = env._queue
                if inline and not replay and self.unclaimed and ev.__class__ is DeviceEvent and (
                        not queue or queue[0][0] > env._now):
                    eid = next(env._eid)  # the worker's timer, scheduled before what the device does
                    callbacks, ev.callbacks = ev.callbacks, None  # nothing else runs before it: go on now
                    for callback in callbacks:
                        callback(ev)
                else:
                    heapq.heappush(queue, (env._now, _NORMAL, next(env._eid), ev))
            else:
                acct.give_back()
        if replay:
            self.push(self.env._now, i, n + 1)  # the next cached micro-batch becomes eligible now
        if self.unclaimed == 0:
            self._wake_all()  # idle workers may now flush their W's and final step
        return eid

    def _directs(self) -> list:
        """``[i]``: the :class:`Credits` whose plain ``give_back`` starting a micro-batch of ``i`` calls, else None."""
        self._direct = [a if a is not None and g == a.give_back else None
                        for a, g in zip(self.account, self.give, strict=True)]
        return self._direct

    # -- worker ------------------------------------------------------------------------------------
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
            if stream:
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
            self._claim(i, n)
            t = self._run_mb(wk.lane, i, n, now, defer, wk.queued_w)
            wk.done += 1
            stepped = wk.done == acc
            if stepped:
                t = self._step(wk.lane, t, wk.queued_w, step_s)
                wk.done = 0
            wk.busy += t - now
            if t > now:
                wk.last = t
            yield engine.at(t)
            if stepped and self.sync is not None:
                yield from self._synced()

    def _stream(self, wk: _WorkerState, woken: bool):
        """The hot path (no trace, deferred W's, no backhaul): take and run micro-batches while any is eligible.

        Returns (as a generator) ``woken`` for :meth:`_worker` when no micro-batch may start now or
        idle workers must choose first; the timings are :meth:`_run_mb`'s, by the same arithmetic.
        """
        env, hot, until, claim, heappop = self.env, self._hot(), self.engine.until, self._claim, heapq.heappop
        policy, pending, step_s, acc = self.policy, self.pending, self.server.step, self.accumulate
        queued_w, push, pop = wk.queued_w, policy.push, policy.pop
        fifo, queue = policy.__class__ is FifoPolicy, env._queue  # fifo: arrival order is the heap's order
        arrived = policy.queue if fifo else None
        done, busy, last = wk.done, wk.busy, wk.last
        direct, mix_add, eids = self._direct or self._directs(), self.mixing.add, env._eid
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
            woken = False
            srv_f, srv_b, srv_w, sent, whole = hot[i]
            acct = direct[i]
            if n < sent and whole and acct is not None:  # _claim's usual case, inlined (no replay, plain credits)
                self.unclaimed -= 1
                mix_add(i)
                eid = -1
                waiting = acct.waiting
                if waiting and waiting[0][0] <= now:  # Credits.give_back: to the longest-ready waiter
                    _, _, ev, lane = heappop(waiting)
                    if lane is not None:  # Credits.pop, inlined: the next of its lane takes its place
                        if lane.queue:
                            heapq.heappush(waiting, lane.queue.popleft())
                        else:
                            lane.active = False
                    ev._ok, ev._value = True, True
                    if self.unclaimed and ev.__class__ is DeviceEvent and (not queue or queue[0][0] > now):
                        eid = next(eids)  # see _claim: the device goes on now, the timer keeps its place
                        callbacks, ev.callbacks = ev.callbacks, None
                        for callback in callbacks:
                            callback(ev)
                    else:
                        heapq.heappush(queue, (now, _NORMAL, next(eids), ev))
                else:
                    acct.give_back()
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
            yield ev
            woken = True
        if held and self._waited(wk.lane, now):
            wk.last = env.now
        return woken

    def _final(self, wk: _WorkerState, now: float):
        """Nothing left to hand out: a final step on a partial window, then the worker ends."""
        step_s = self.server.step
        if wk.done:
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
            self.sync.leave(self.index)

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

    def _run_mb(self, lane: str, i: int, n: int, now: float, defer: bool, queued_w: deque) -> float:
        """Record F and B (or BW) of one micro-batch starting at ``now``; returns when they end."""
        rec, d = self.engine.record, self.devices[i]
        x = d.size(n)
        f_s, b_s, w_s = d.srv_f * x, d.srv_b * x, d.srv_w * x
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

    def _step(self, lane: str, t: float, queued_w: deque, step_s: float) -> float:
        """Run every queued W, then an optimizer step, from time ``t``; returns the end time."""
        rec, devices = self.engine.record, self.devices
        while queued_w:
            i, n, w_s = queued_w.popleft()
            d = devices[i]
            rec(lane, "W", t, w_s, n, d.name)
            t += w_s
        rec(lane, "step", t, step_s)
        return t + step_s
