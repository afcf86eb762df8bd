"""The SplitFrozen server pool: credits and buffers, server workers and their policies (and the engine's re-exports).

Schedules (``sfsim.schedules``) turn a scenario into plain per-device stage durations
(:class:`DeviceTimes`, :class:`ServerTimes`) and run small SimPy processes on one :class:`Engine`.
The engine only replays: it never calls the cost model, so tests give exact hand-made durations.

The engine's core (environment, recording, exact timers, :class:`FifoLane`) is
:mod:`sfsim.engine.core`; credits are :mod:`sfsim.engine.credits`; the policies
:mod:`sfsim.engine.policies`; the workers' loop :mod:`sfsim.engine.worker`.

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
  worker starts its micro-batch ``n - 1``, so each device has at most one replay waiting (a pool run one epoch at
  a time: an epoch's first replay at the epoch's start, :meth:`~sfsim.engine.worker.WorkerLoop.by_epochs`).
* **Backhaul sync** (``Engine.sync``, optional; :mod:`sfsim.network.backhaul`): after each optimizer step a
  worker tells the backhaul; in ``sync`` mode it waits there until the servers' average has arrived (with
  ``every: 1`` the round averages the gradients before the step, which waits for it).
* Ops of zero duration are not recorded. Ties at equal times are resolved in SimPy event order.
"""

from __future__ import annotations

import heapq
import math

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
from sfsim.engine.worker import WorkerLoop
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


class ServerPool(WorkerLoop):
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
        engine.hold_open(lambda: self.unclaimed > 0)  # a device's drop deadline may be all it waits for
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
        self.places_held += 1
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

    def _unreplayed(self, i: int, n: int) -> bool:
        """Whether micro-batch ``n`` of device ``i``, about to start now, is a replay of a device that has dropped
        (:class:`~sfsim.engine.cacheparts.Departures`): then neither it nor any later replay of the device here trains
        (this epoch's rest here, every later epoch: the books' ``gone``) and it is not started (True)."""
        d = self.devices[i]
        if n < d.sent or not self.departures.gone(i, self.env._now):
            return False
        if self.books is None:  # the whole run at once (one server): this replay and every later one were here
            if self.starts is not None:
                raise RuntimeError(f"server {self.server.name}: {d.name} drops while its epochs are replayed without books")
            self.withdraw(i, d.n - n)
            return True
        e, j = divmod(n, d.per_epoch)
        parts = self.cache_parts
        here = parts.count_from(i, j) if parts is not None and i in self.books.legs else d.per_epoch - j
        each = parts.count(i) if parts is not None and i in self.books.legs else d.per_epoch
        self.books.gone.add(i)
        self.totals[i] -= here + (self.epochs - e - 1) * each
        self._count(-here)
        return True

    def not_coming(self, i: int) -> None:
        """A handover that was expected here never happens: give up the place held for device ``i``."""
        self._change(i, 0, 1)

    def _change(self, i: int, k: int, place: int) -> None:
        self.totals[i] += k
        self.unclaimed += k - place
        self.places_held -= place
        if self.unclaimed == 0:
            self._wake_all()  # its workers may now run their last W's and step
        self._visitor_news()

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
        replay = n + 1 < dev.n and n + 1 >= dev.sent and (self.starts is None or (n + 1) % dev.per_epoch)
        # (one epoch at a time: an epoch's first cached micro-batch comes at its start, WorkerLoop._next_epoch)
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
        if n >= dev.sent and self.departures is not None:  # a replay of a device that may drop: it trains
            self.departures.trained(i, dev.size(n))
        if replay:  # the next cached micro-batch becomes eligible now (a mover's: the next of its part here)
            nxt = n + 1 if self.cache_parts is None else self.replay_after(i, n)
            if nxt is not None:
                self.push(self.env._now, i, nxt)
        if self.unclaimed == 0:
            self._wake_all()  # idle workers may now flush their W's and final step
        return eid

    def _directs(self) -> list:
        """``[i]``: the :class:`Credits` whose plain ``give_back`` starting a micro-batch of ``i`` calls, else None."""
        self._direct = [a if a is not None and g == a.give_back else None
                        for a, g in zip(self.account, self.give, strict=True)]
        return self._direct
