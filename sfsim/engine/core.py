"""The SimPy engine's core: one environment, what every schedule records, and exact timers.

Time is in seconds. To stay fast (about three SimPy events per micro-batch) a process computes
times that follow from its own state arithmetically and yields only when it must wait for another
process or for time to pass. Trace events are built only when a trace is asked for, so memory does
not grow with the run otherwise. A worker whose own timer is the next event moves the clock itself
(:meth:`Engine.until`), running inline the device callbacks due before it (:class:`DeviceEvent`):
the same events in the same order as ``env.run()``, with less machinery.

Links: every device has its own uplink and downlink (nothing is shared between devices), so a
link is a FIFO lane whose state is its free-at time inside the device's process; a transfer takes
``bytes * 8 / bandwidth`` seconds of the lane (op ``send``) and arrives ``latency`` later (a pure
delay: the lane is free again after the serialisation). :class:`FifoLane` is the same idea for a
server that serves jobs in arrival order (SplitLoRA, FedAvg).
"""

from __future__ import annotations

import heapq

import simpy

from sfsim.outputs.mixing import StreamMixing
from sfsim.outputs.trace import TraceEvent

_NORMAL = simpy.events.NORMAL  # SimPy's priority for ordinary (non-urgent) events
_new_event = object.__new__


class DeviceEvent(simpy.Event):
    """An event whose only callback resumes a device process (its timer, or a credit it waits for).

    A device process never resumes a worker in the same step (it only schedules events), so a worker
    may process such an event inline, in queue order, instead of handing control back to SimPy
    (:meth:`Engine.advance`): the same events run in the same order, with less machinery.
    """


class Engine:
    """One SimPy environment plus what every schedule records: trace, busy time, bytes.

    Attributes:
        env: the SimPy environment.
        events: list of :class:`~sfsim.outputs.trace.TraceEvent` when tracing, else ``None``.
        device_busy, server_busy: seconds of compute per device / per server (all workers).
        up_bytes, down_bytes: bytes per device on its uplink / downlink.
        mixing: server name -> :class:`StreamMixing` for schedules with a server stream.
        server_wait: SplitFrozen server -> worker-seconds idle while its policy held micro-batches back.
        server_end: SplitFrozen server -> when its last op (F, B, W, step or ``wait``) ends (0: none ran).
        pool_peak_bytes: server -> the most its mixing pool held (policy ``pool``).
        warm: server worker lane -> the warm-up seconds its first forward still has to pay
            (:attr:`~sfsim.cost.stagetimes.ServerTimes.warmup`; :meth:`arm`, :meth:`warm_up`).
    """

    def __init__(self, trace: bool = False):
        self.env = simpy.Environment()
        self.events: list[TraceEvent] | None = [] if trace else None
        self.device_busy: dict[str, float] = {}
        self.server_busy: dict[str, float] = {}
        self.up_bytes: dict[str, float] = {}
        self.down_bytes: dict[str, float] = {}
        self.mixing: dict[str, StreamMixing] = {}
        self.server_wait: dict[str, float] = {}
        self.server_end: dict[str, float] = {}
        self.pool_peak_bytes: dict[str, float] = {}
        self.sync = None  # a sfsim.network.backhaul.PoolRounds when SplitFrozen servers synchronise
        self.epoch_end: dict[str, float] = {}  # server -> its wait at each epoch's end (sfsim.cost.epochend)
        self.epoch_end_waited: set[str] = set()  # the servers whose schedule replayed that wait
        self._finishers: list = []
        self.soft_timers = False  # set before run() by schedules that call soft_at
        self._soft = 0  # pending soft timers
        self._unfinished: list = []  # hold_open: work the run may not end without
        self.warm: dict[str, float] = {}

    def arm(self, servers) -> None:
        """Each worker lane of ``servers`` (:class:`~sfsim.cost.stagetimes.ServerTimes`) pays its server's warm-up on
        the first forward it runs in the run (once: a later epoch's first does not warm up again)."""
        for srv in servers:
            self.warm.update(srv.warm_lanes())

    def warm_up(self, lane: str) -> float:
        """The warm-up seconds the forward starting now on ``lane`` adds (0 after its first); :meth:`arm`."""
        return self.warm.pop(lane, 0.0) if self.warm else 0.0

    def on_finish(self, fn) -> None:
        """Call ``fn()`` after the run ends (schedules copy their busy totals here)."""
        self._finishers.append(fn)

    def record(self, lane: str, op: str, start: float, dur: float, mb: int = -1, device: str = "") -> None:
        """Append one trace event (only when tracing and ``dur > 0``)."""
        if self.events is not None and dur > 0:
            self.events.append(TraceEvent(lane, op, start, dur, mb, device))

    def at(self, t: float) -> simpy.Event:
        """An event that fires at exactly the absolute time ``t`` (>= now).

        ``env.timeout(t - now)`` would land on ``now + (t - now)``, which can differ from ``t`` in
        the last bit and break the exact time comparisons the server relies on, so the event is
        put on SimPy's queue at ``t`` itself.
        """
        env = self.env
        ev = _new_event(simpy.Event)  # simpy.Event(env) and trigger_at, inlined: the hottest call of a run
        ev.env, ev.callbacks, ev._ok, ev._value = env, [], True, None
        heapq.heappush(env._queue, (t, _NORMAL, next(env._eid), ev))
        return ev

    def device_at(self, t: float) -> DeviceEvent:
        """:meth:`at` for a device process's own timer (see :class:`DeviceEvent`)."""
        env = self.env
        ev = _new_event(DeviceEvent)
        ev.env, ev.callbacks, ev._ok, ev._value = env, [], True, None
        heapq.heappush(env._queue, (t, _NORMAL, next(env._eid), ev))
        return ev

    def start(self, fn) -> None:
        """Call ``fn(event)`` now, as SimPy starts a process (urgent, in start order): a callback process's start."""
        env = self.env
        ev = _new_event(DeviceEvent)
        ev.env, ev.callbacks, ev._ok, ev._value = env, [fn], True, None
        heapq.heappush(env._queue, (env._now, simpy.events.URGENT, next(env._eid), ev))

    def device_event(self) -> DeviceEvent:
        """A pending :class:`DeviceEvent` (a device waits on it for a credit)."""
        ev = _new_event(DeviceEvent)
        ev.env, ev.callbacks, ev._value = self.env, [], simpy.events.PENDING
        return ev

    def until(self, t: float, eid: int = -1) -> simpy.Event | None:
        """Move the caller's process to time ``t`` (>= now): None when done at once, else an event to yield.

        The caller's timer takes its place in SimPy's queue as :meth:`at` would; the
        :class:`DeviceEvent` s ahead of it run inline, in queue order, and when nothing else comes
        before it the clock moves to ``t`` without a SimPy step. Exactly what ``env.run()`` would do,
        in the same order, with less machinery (the hot path of a SplitFrozen worker). ``eid``: an
        event id reserved for the timer earlier (-1: take the next one now).
        """
        env = self.env
        queue = env._queue
        if eid < 0:
            eid = next(env._eid)
        while queue:
            top = queue[0]
            at = top[0]
            if at > t or (at == t and (top[1] > _NORMAL or (top[1] == _NORMAL and top[2] > eid))):
                break  # the caller's timer is next
            ev = top[3]
            if ev.__class__ is not DeviceEvent:  # another process may run first: a real SimPy step
                ev = _new_event(simpy.Event)
                ev.env, ev.callbacks, ev._ok, ev._value = env, [], True, None
                heapq.heappush(queue, (t, _NORMAL, eid, ev))
                return ev
            env._now = heapq.heappop(queue)[0]
            callbacks, ev.callbacks = ev.callbacks, None
            for callback in callbacks:
                callback(ev)
        env._now = t
        return None

    def trigger_at(self, ev: simpy.Event, t: float, value=None) -> None:
        """Trigger the pending event ``ev`` with ``value`` at exactly the absolute time ``t`` (>= now)."""
        env = self.env
        ev._ok, ev._value = True, value
        heapq.heappush(env._queue, (t, _NORMAL, next(env._eid), ev))

    def succeed_at(self, event: simpy.Event, t: float) -> None:
        """Trigger ``event`` at absolute time ``t`` (>= now)."""
        self.at(t).callbacks.append(lambda _e: event.succeed())

    def soft_at(self, t: float, fn) -> None:
        """Call ``fn()`` at time ``t`` unless the run has ended by then (a timeout that does not extend it).

        The dynamic network's deadlines (:mod:`sfsim.schedules.splitfrozen`) use it: a handover at 120 s must wake a
        device waiting for a credit, but must not make a run that ended at 50 s last until 120 s.
        """
        if not self.soft_timers:
            raise RuntimeError("set Engine.soft_timers before run() to use soft_at")
        self._soft += 1

        def fire(_e):
            self._soft -= 1
            fn()
        self.at(t).callbacks.append(fire)

    def hold_open(self, unfinished) -> None:
        """Soft timers fire while ``unfinished()`` is true, even when nothing else is left to run.

        A SplitFrozen server with micro-batches it cannot start yet (its devices wait for a credit that a
        device cut off mid-send holds until it leaves, or for a device's drop deadline) is not done: the
        soft timers it waits for are real events, and only they let it finish.
        """
        self._unfinished.append(unfinished)

    def run(self) -> float:
        """Run until no event is left but soft timers that no unfinished work waits for (:meth:`hold_open`);
        returns the makespan (time of the last event)."""
        if not self.soft_timers:
            self.env.run()
        else:
            env = self.env
            queue = env._queue
            while len(queue) > self._soft or (queue and any(unfinished() for unfinished in self._unfinished)):
                env.step()
        for fn in self._finishers:
            fn()
        return self.env.now


class FifoLane:
    """A lane that serves jobs first come, first served (the caller arrives at its arrival time).

    Since callers ask at their arrival instants in time order, ``start = max(now, free_at)`` is
    exactly a FIFO single-server queue (Lindley's recursion) with no extra SimPy event.
    """

    def __init__(self, engine: Engine, lane: str):
        self.engine, self.lane, self.free_at, self.busy = engine, lane, 0.0, 0.0

    def serve(self, ops: list[tuple[str, float]], mb: int = -1, device: str = "") -> list[float]:
        """Queue ``ops`` (op name, seconds) now; returns the end time of each op."""
        t = max(self.engine.env.now, self.free_at)
        ends = []
        for op, dur in ops:
            self.engine.record(self.lane, op, t, dur, mb, device)
            t += dur
            self.busy += dur
            ends.append(t)
        self.free_at = t
        return ends
