"""SplitFrozen (pipelined) and its sequential ablation.

Device ``i`` with cut ``k_i`` sends ``sent_i`` micro-batches (``n_i``, or one epoch when activations
are cached) with ``f`` = prefix forward seconds, ``s`` = uplink serialisation seconds
(``uplink_bytes(k_i) * 8 / bandwidth``) and ``l`` = uplink latency (a pure delay: the link may start
the next transfer after ``s``). Pipelined timing, micro-batch ``n``::

    F_start[0] = 0;  F_end[n] = F_start[n] + f
    send_start[n] = max(F_end[n], send_start[n-1] + s, time a credit is granted)
    arrival[n] = send_start[n] + s + l;  F_start[n+1] = send_start[n]

so the forward of ``n+1`` overlaps the transfer of ``n`` and the device holds at most one finished
activation. A positive gap ``send_start[n] - F_end[n]`` (link busy or no credit) is recorded as op
``wait`` on the device lane. Sequential ablation: the device starts ``F`` of ``n+1`` only when the
server has finished ``B`` and ``W`` of ``n`` (see :mod:`sfsim.engine.pool` for the server side).

With one device, ``n`` micro-batches, a big buffer, fused backward and no step cost the makespan is
``(f + s + l + srv) + (n - 1) * max(f, s, srv)`` pipelined and ``n * (f + s + l + srv)``
sequential, with ``srv`` = server F + B + W seconds.

Every device runs one process, :func:`device_process`, under the rules of :mod:`sfsim.network.legs`
(a static device is one leg with constant rates; one that moves, churns or has a varying uplink
follows its legs); the timing rules above, in general::

    F_end[n] = when F_start[n] plus f of compute is done (compute progresses only online: pause)
    ready[n] = first online instant >= max(F_end[n], link free)
    send_start[n] = ready[n], or later when a credit is granted;  F_start[n+1] = send_start[n]
    send_end[n] = where the integral of the link's rate (times online, pause) from send_start
                  reaches the micro-batch's bits;  arrival[n] = send_end[n] + latency

Sequential ablation: F_start[n+1] is the release of micro-batch n (its W ended on the server).
SplitFrozen sends no payload down (a later epoch's ``start`` takes the downlink's latency
only: :func:`_started`), so a time-varying downlink rate changes nothing there. The leg holding
at ``send_start`` takes the micro-batch. The server pools learn of moves as they happen through
their public operations (:meth:`~sfsim.engine.pool.ServerPool.expect`, ``hand_over``,
``withdraw``, ``not_coming``): each pending handover into a pool holds a place in it, so that the
pool does not end while a device may still come. Servers touched by a handover or churn measure
stream mixing over the stream they actually received.

A device on one leg with constant rates takes the process's constant-rate branch: plain arithmetic
(``f``, ``s``, ``l``), and when pipelined, callbacks that a server worker may run inline
(:class:`_Pipelined`, the hot path). Events at one instant run in SimPy's order (time, then the
order they were scheduled), so each branch schedules what the other would, in the same order: a
pipelined device queues for its credit as soon as it knows its ready time
(:meth:`~sfsim.engine.credits.Credits.wait`); a static sequential device asks for it when its
forward ends (a timer, even of 0 s, then :meth:`~sfsim.engine.credits.Credits.take`), as
:mod:`sfsim.fast` replays it. Both grant the same credits; only ties at one instant resolve
differently, so neither branch may take the other's order.
"""

from __future__ import annotations

import math
from heapq import heappush

from simpy.events import PENDING

from sfsim.engine.cacheparts import Departures
from sfsim.engine.credits import Credits
from sfsim.engine.pool import DeviceTimes, Engine, ServerPool, ServerTimes
from sfsim.network.availability import next_online
from sfsim.network.backhaul import PoolRounds, sync_spec
from sfsim.network.legs import Motion, online, record_online, span
from sfsim.schedules.common import Job, ReplayConfig, ReplaySetup, link_seconds
from sfsim.schedules.frozennet import Network, closing_barrier, motions, network, pool_views  # noqa: F401 - re-exported
from sfsim.schedules.network import trace_moves, watch_departures


def build(setup: ReplaySetup, cache: bool = False) -> Job:
    """Stage durations and FLOPs for SplitFrozen from the cost model.

    Args:
        setup: scenario, cost model, cuts, LoRA start and assignment.
        cache: devices send one epoch; the server replays later epochs from its cache.

    Returns:
        A :class:`~sfsim.schedules.Job`.
    """
    sc, cm, ls = setup.scenario, setup.cm, setup.lora_start
    idx = setup.server_index
    trainable = cm.trainable_params(range(ls, sc.arch.n_layers), head=True)
    servers = [ServerTimes(s.name, s.count, cm.optimizer_seconds(trainable, s), warmup=cm.server_warmup(s))
               for s in sc.servers]
    job = Job([], servers, server_flops={s.name: 0.0 for s in sc.servers})
    for d in sc.devices:
        k, srv = setup.splits[d.name], sc.server_by_name[setup.assignment[d.name]]
        per_epoch, n = setup.micro_batches(d)
        sent = per_epoch if cache else n
        prefix, suffix = cm.device_prefix(k), cm.server_suffix(k, ls)
        sf, sb, sw = cm.seconds(suffix, srv)
        up = cm.uplink_bytes(k)
        enc, dec = cm.codec_seconds(d, "encode"), cm.codec_seconds(srv, "decode")  # wire codec (0 for fp32)
        dt = DeviceTimes(d.name, idx[srv.name], n, sent, f=cm.seconds(prefix, d)[0] + enc,
                         up_s=link_seconds(up, d.uplink), up_l=d.uplink.latency, down_l=d.downlink.latency,
                         srv_f=sf + dec, srv_b=sb, srv_w=sw,
                         up_bytes=up, act_bytes=cm.activation_bytes(k), **setup.partial(d))
        job.devices.append(dt)
        job.device_flops[d.name] = dt.units(sent) * prefix.f
        job.server_flops[srv.name] += dt.units(n) * suffix.total
    job.network = network(setup, job)
    # several servers: the backhaul rounds (sfsim.network.backhaul), the closing ones without training.sync
    payload = cm.adapter_bytes(range(ls, sc.arch.n_layers), head=True)  # the server's LoRA and head
    job.sync = sync_spec(sc, payload) or closing_barrier(sc, payload)  # no link: each epoch's round, a barrier
    return job


def run(engine: Engine, job: Job, cfg: ReplayConfig, sequential: bool = False) -> None:
    """Start the server pools and one process per device on ``engine`` (call ``engine.run()`` after).

    Every device runs :func:`device_process` (:func:`start_device`): a device of the job's dynamic
    network (handover, varying uplink, availability) follows its legs, pipelined or ``sequential``
    (checked by :func:`sfsim.schedules.network.check_supported`); the others are one leg with
    constant rates. The moving devices start first.
    """
    engine.arm(job.servers)  # each worker lane's first forward pays its server's warm-up
    net = job.network
    views = getattr(net, "views", None)  # None: no network, or one that does not touch SplitFrozen
    moving = net.moving if net else {}
    if engine.sync is None and closes_per_epoch(job, moving):  # no training.sync: each epoch's closing round
        PoolRounds(engine, job.sync, job.servers)
    pools = [ServerPool(engine, s, views[k] if views else job.devices, k, cfg.buffer, cfg.accumulate,
                        cfg.decompose, cfg.policy, sequential, cfg.credits, cfg.pool_memory, cfg.seed)
             for k, s in enumerate(job.servers)]
    if engine.sync is not None:  # training.sync: sfsim.network.backhaul.PoolRounds (whether a step is a server's last)
        engine.sync.attach(pools)
    if moving:
        prepare(engine, pools, cfg.buffer, moving, sequential)
    if by_epochs(job, engine.sync is not None):  # devices that move or leave: the runtime's count of each epoch
        legs = {i: [leg.server for leg in m.legs] for i, m in moving.items()} if moving else None
        for pool in pools:
            pool.by_epochs(job.sync.epochs, legs)
    elif engine.sync is None and (epochs := whole_epochs(job)) > 1:
        legs = {i: [leg.server for leg in m.legs] for i, m in moving.items()} if moving else None
        for pool in pools:  # no rounds: each epoch still ends before the next opens (the runtime's train_epoch)
            pool.by_epochs(epochs, legs)
    departures = watch_departures(pools, job, moving, cfg.policy)  # the cache: no replay of a device from its drop on
    for i, m in moving.items():  # their busy time and bytes are known when the run ends
        d = job.devices[i]
        start_device(engine, pools, i, d, m, sequential)
        engine.on_finish(lambda i=i, d=d, m=m: _report_moving(engine, d, m, departures, i))
    for i, d in enumerate(job.devices):
        engine.device_busy[d.name] = d.units(d.sent) * d.f + d.first_extra(d.sent)
        engine.up_bytes[d.name] = d.units(d.sent) * d.up_bytes
        engine.down_bytes[d.name] = 0.0
        if i not in moving:
            start_device(engine, pools, i, d, None, sequential)


def by_epochs(job: Job, synced: bool) -> bool:
    """Whether the servers run one epoch at a time, each ending with its backhaul rounds, as the runtime's
    (several epochs, ``synced``: the rounds are replayed). With ``training.sync`` those are its drain and closing
    rounds, without it the closing round alone (the runtime's ``ServerSync.finish``, which a server waits for before
    its next epoch). Devices that move, churn or have a varying uplink wait for the next epoch on the server holding
    them (:class:`~sfsim.engine.epochs.EpochBooks`); with the activation cache a server replays each later epoch
    from its start, its devices idle (the runtime's ``_replay``)."""
    sync = job.sync
    return (synced and sync is not None and sync.epochs > 1
            and all(d.n == d.per_epoch * sync.epochs and d.sent in (d.n, d.per_epoch) for d in job.devices))


def whole_epochs(job: Job) -> int:
    """The epochs of every device, sent in full or, with the activation cache, the first sent and the others
    replayed from the server's cache (1 for devices of unequal epoch counts): :func:`run` opens them one at a time,
    as the runtime's server trains each epoch out, then waits its epoch-end wait (:mod:`sfsim.cost.epochend`; none
    without ``training.eval_samples``), then sends each device the next epoch's ``start`` (:func:`_started`). The
    cached epochs need no ``start``: the server replays each from its opening (``WorkerLoop._next_epoch``)."""
    counts = {d.n // d.per_epoch if d.per_epoch and d.sent in (d.n, d.per_epoch) and d.n % d.per_epoch == 0 else 0
              for d in job.devices if d.n}
    return counts.pop() if len(counts) == 1 else 1


def closes_per_epoch(job: Job, moving=None) -> bool:
    """No ``training.sync`` but several servers with a backhaul, over several epochs (:func:`by_epochs`; ``moving``
    is not looked at: devices that move close each epoch too): :func:`run` replays each epoch's closing round
    (:class:`PoolRounds` with ``every`` None) at the epoch's end, as the runtime; the fast path replays it when no
    device moves and no activation is cached (:func:`sfsim.fast.synced.covers`)."""
    return job.sync is not None and job.sync.every is None and by_epochs(job, True)


def _gate(pool: ServerPool, n: int, d: DeviceTimes):
    """The event device ``d`` waits for before forwarding its micro-batch ``n`` (the first of an epoch on a
    pool run :meth:`~sfsim.engine.worker.WorkerLoop.by_epochs`), else None."""
    if pool.starts is None or n % d.per_epoch or n == 0 or n >= d.sent:
        return None
    return pool.epoch_start(n // d.per_epoch)


def _started(opened: float, down_l: float) -> float:
    """When a device's ``start`` for a later epoch comes: its server opened the epoch at ``opened`` and sent it down
    the device's downlink (``down_l``: the leg's latency; the message has no payload, so it takes the latency only,
    as the runtime's ``trainer.transport.distributed`` shapes it). The runtime's device forwards nothing of an epoch
    before its ``start`` (its credits are the epoch's); the run's first epoch needs none (its ``start`` is setup)."""
    return opened + down_l


def start_device(engine: Engine, pools: list[ServerPool], i: int, d: DeviceTimes, m: Motion | None,
                 sequential: bool = False) -> None:
    """Start device ``i``'s process (nothing when it sends nothing): :func:`device_process`.

    Its constant-rate pipelined branch, the hot path, runs as callbacks (:class:`_Pipelined`): the
    same steps, which a server worker may run inline.
    """
    if not d.sent:
        return
    if m is None and not sequential:
        _Pipelined(engine, pools[d.server], i, d)
    else:
        engine.env.process(device_process(engine, pools, i, d, m, sequential))


def device_process(engine: Engine, pools: list[ServerPool], i: int, d: DeviceTimes, m: Motion | None,
                   sequential: bool = False):
    """The one SplitFrozen device process (see the module docstring); fills ``m``'s outcome.

    ``m`` None: one leg with constant rates, its stage times (:func:`start_device` runs a pipelined
    one as :class:`_Pipelined`). Else the device follows its legs, pause and drop.
    """
    env, constant = engine.env, m is None
    legs, pause, start, stop = (None, None, env.now, math.inf) if constant else (m.legs, m.pause, m.start, m.stop)
    j, n, told = 0, 0, 0  # told: the last leg the servers know of (one epoch at a time, :func:`_moved`)
    f_start, link_free = start, 0.0
    while n < d.sent and start < math.inf:
        x, fx = d.size(n), d.fwd(n)
        f_end = f_start + (fx if pause is None else span(pause, f_start, fx))
        if constant and sequential:  # Credits.take when the forward ends (a timer even of 0 s): the fast path's order
            yield engine.at(f_end)
            acct = pools[d.server].account[i]
            granted = acct.take()
            if granted is not None:
                yield granted
        else:
            ready = max(f_end, link_free)
            if pause is not None and ready < math.inf:
                ready = next_online(pause, ready)
            while (opening := _not_open(pools, d, m, n, ready)) is not None:  # its new server is an epoch behind
                yield opening
                ready = max(ready, env.now) if pause is None else next_online(pause, max(ready, env.now))
            acct, j, told = yield from _take_credit(engine, pools, i, d, m, j, n, ready, stop, told)
            if acct is None:
                break  # dropped, or never online again: the rest is lost
        pool = pools[d.server if constant else legs[j].server]
        t0 = env.now
        if constant:
            s, up_l = d.up_s * x, d.up_l
        else:
            leg, told = legs[j], _moved(pools, i, d, m, told, j, n)
            s, up_l = span(leg.up_rate(pause), t0, d.up_bytes * 8.0, x), leg.up_l  # (bits per full mb) x size
        end = t0 + s
        if end > stop or end == math.inf:  # cut off mid-send: the credit comes back when the device leaves
            acct.give_back() if end == math.inf else engine.soft_at(stop, acct.give_back)
            break
        if engine.events is not None:
            _record(engine, d, m, n, f_start, f_end, fx, t0, end, s, sequential)
        if not constant:
            m.send_s += end - t0 if pause is None else online(pause, t0, end)
        link_free = end
        if sequential:  # the worker releases the device when this micro-batch's W ends
            released = pool.released(i)
        _deliver(pool, i, d, n, end + up_l, not constant)
        n += 1
        if sequential:
            yield released
            f_start = env.now
        else:
            f_start = t0
        if (gate := _epoch_sent(pools, pool, i, d, m, j, n)) is not None:  # the server holding it starts its next
            yield gate
            f_start = link_free = _started(env.now, d.down_l if constant else legs[j].down_l)
    if not constant:
        _left(pools, i, d, m, j, n)


def _deliver(pool: ServerPool, i: int, d: DeviceTimes, n: int, at: float, moving: bool) -> None:
    """Micro-batch ``n`` of device ``i`` reaches ``pool``'s queue at ``at``. One epoch at a time it may arrive before
    that server opened its epoch (the device moved between epochs): it waits there for the opening. With the
    activation cache, the server that received it keeps it (a moving device's part, :mod:`sfsim.engine.cacheparts`)."""
    if pool.books is None:
        pool.send(at, i, n)
    else:
        pool.arrives(n // d.per_epoch, at, i, n)
    if moving and pool.cache_parts is not None and n < d.sent < d.n:  # a cached device's first epoch only
        pool.cache_parts.add(i, n)


def _take_credit(engine: Engine, pools: list[ServerPool], i: int, d: DeviceTimes, m: Motion | None, j: int, n: int,
                 ready: float, stop: float, told: int = 0):
    """Take a credit at or after ``ready`` on the leg holding then (device ``i`` on leg ``j`` has sent ``n``).

    Handovers due by then apply first; a wait cut off by the next one tries again on the new leg. One epoch at a
    time, a device that must wait for a credit on a leg its servers do not know of yet (``told``: the last they
    know) tells them of its moves when the wait begins (:func:`_moved`), as the runtime's device sends ``moved`` and
    ``join`` when it hands over, before any credit of its new server (``_move_if_due``); waiting untold, with
    ``training.credits: server``, its old server kept counting its micro-batches and never ended the epoch (nor
    joined the round that its new server waited for before it gave a credit back). Returns (as a generator)
    ``(the Credits taken from, or None when the device left first, leg, told)``.
    """
    legs, env = (m.legs if m is not None else ()), engine.env
    while ready < stop:
        while j + 1 < len(legs) and legs[j + 1].at <= max(ready, env.now):
            j += 1
            _switch(pools, i, d, m, j, n)
        acct = pools[legs[j].server if legs else d.server].account[i]
        deadline = min(stop, legs[j + 1].at) if j + 1 < len(legs) else stop
        tell = None
        if j > told and pools[legs[j].server].books is not None:
            def tell(j=j):
                nonlocal told
                told = _moved(pools, i, d, m, told, j, n)
        if (yield from _acquire(engine, acct, ready, deadline, tell)):
            return acct, j, told
        ready = env.now
    return None, j, told


def _acquire(engine, acct: Credits, ready: float, deadline: float, tell=None):
    """Take a credit at or after ``ready`` and before ``deadline`` (rules of engine.Credits.wait); True if taken.

    ``tell``: called once, at the instant (>= ``ready``) the device begins to wait for a credit, if it must."""
    env = engine.env
    while True:
        if max(ready, env.now) >= deadline:
            return False
        if ready > env.now:
            if acct.credits:
                yield engine.at(ready)
                continue
            ev = env.event()
            acct.wait(ready, ev)
            if tell is not None:  # at `ready`, unless granted (or told to try again) by then
                engine.at(ready).callbacks.append(lambda _e, ev=ev, tell=tell: ev.triggered or tell())
        elif acct.credits:
            acct.credits -= 1
            return True
        else:
            if tell is not None:
                tell()
            ev = env.event()
            acct.wait(env.now, ev)
        if deadline < math.inf:
            engine.soft_at(deadline, lambda ev=ev: acct.cancel(ev))
        got = yield ev
        if got is None:
            return False
        if got and env.now >= deadline:  # granted at the deadline: the send would start after it
            acct.give_back()
            return False
        if got:
            return True


def _not_open(pools: list[ServerPool], d: DeviceTimes, m: Motion | None, n: int, ready: float):
    """The start of epoch ``e`` of micro-batch ``n`` on the server of the leg holding at ``ready``, when that server
    runs one epoch at a time and has not opened ``e`` yet (else None): the device waits for it before its send.

    The servers leave each epoch together (its closing round, :func:`closing_barrier` without a link) but open the
    next after their own epoch-end waits: a device that finished epoch ``e - 1`` on a server with a short wait may
    hand over to one still in its wait. The runtime's device never sends a micro-batch of epoch ``e`` before its new
    server opens ``e`` (``ServerSync.finish``, then the wait); counted in the old epoch there, it broke that server's
    books.
    """
    if m is None or n >= d.sent or ready == math.inf:
        return None
    legs = m.legs
    j = 0
    while j + 1 < len(legs) and legs[j + 1].at <= ready:
        j += 1
    pool = pools[legs[j].server]
    if pool.books is None or n // d.per_epoch <= pool.epoch:  # (books: one epoch at a time, per_epoch > 0)
        return None
    return pool.epoch_start(n // d.per_epoch)


def _record(engine: Engine, d: DeviceTimes, m: Motion | None, n: int, f_start: float, f_end: float, fx: float,
            t0: float, end: float, s: float, sequential: bool) -> None:
    """Trace micro-batch ``n``'s forward, its wait for the link or a credit, and its send."""
    name = d.name
    if m is None:  # the static arithmetic, rounded as each branch always has
        engine.record(name, "F", f_start, fx, n, name)
        engine.record(name, "wait", f_end, t0 - f_start - fx if sequential else t0 - f_end, n, name)
        engine.record("link:" + name, "send", t0, s, n, name)
        return
    record_online(engine, name, "F", f_start, f_end, n, name, m.pause, fx)
    record_online(engine, name, "wait", f_end, t0, n, name, m.pause)
    record_online(engine, "link:" + name, "send", t0, end, n, name, m.pause, s)


def _left(pools: list[ServerPool], i: int, d: DeviceTimes, m: Motion, j: int, n: int) -> None:
    """A moving device has ended on leg ``j`` with ``n`` sent: its outcome, and the pools it will not reach."""
    m.sent = n
    if n < d.sent and pools[0].departures is not None:  # the cache: no server replays it from now on
        pools[0].departures.left(i, pools[0].env.now)
    m.busy = d.units(n) * d.f + d.first_extra(n)  # as the static process counts it: forwards of sent ones
    m.up_bytes = d.units(n) * d.up_bytes
    home = m.legs[j].server
    if pools[home].books is not None:  # one epoch at a time: gone for good (its epoch ended with its last send)
        if n < d.sent:
            for k in sorted({leg.server for leg in m.legs}):
                pools[k].left(n // d.per_epoch, i, d.sent - n, d.per_epoch - n % d.per_epoch)
        m.switched_at.extend([n] * (len(m.legs) - j - 1))  # handovers never reached
        return
    if n < d.sent:  # with the cache (d.sent < d.n) its replays go too: they come after its last send (reached())
        pools[home].withdraw(i, d.n - n)
    for k in range(j + 1, len(m.legs)):  # handovers never reached: nothing goes there
        m.switched_at.append(n)
        pools[m.legs[k].server].not_coming(i)


def _epoch_sent(pools: list[ServerPool], pool: ServerPool, i: int, d: DeviceTimes, m: Motion | None, j: int,
                n: int):
    """Device ``i`` (on leg ``j``, on ``pool``) has sent ``n``: when that ends an epoch, the other servers of its legs
    stop waiting for it in that epoch; returns the event of its next epoch's start on ``pool`` (:func:`_gate`), else
    None."""
    if m is not None and pool.books is not None and n % d.per_epoch == 0:
        for k in sorted({leg.server for leg in m.legs} - {m.legs[j].server}):
            pools[k].closed((n - 1) // d.per_epoch, i)
    return _gate(pool, n, d)


def _moved(pools: list[ServerPool], i: int, d: DeviceTimes, m: Motion, told: int, j: int, n: int) -> int:
    """Device ``i``'s send of its micro-batch ``n`` starts on leg ``j``: one epoch at a time, the servers of its legs
    ``told + 1 .. j`` learn of each move now (the runtime's ``moved`` and ``join``, sent right before the micro-batch):
    the epoch's unsent micro-batches go from the old server's count to the new one's. Returns ``j``."""
    if j > told and pools[m.legs[j].server].books is not None:
        e, k = n // d.per_epoch, d.per_epoch - n % d.per_epoch
        for x in range(told + 1, j + 1):
            pools[m.legs[x - 1].server].moved_off(e, i, d.sent - n, k, x)
            pools[m.legs[x].server].joined(e, i, d.sent - n, k)
    return j


def _switch(pools: list[ServerPool], i: int, d: DeviceTimes, m: Motion, j: int, n: int) -> None:
    """Device ``i`` takes leg ``j`` having sent ``n``: its unsent micro-batches move to that leg's pool."""
    old, new = pools[m.legs[j - 1].server], pools[m.legs[j].server]
    left = d.sent - n
    m.switched_at.append(n)
    if new.books is not None:  # one epoch at a time: the servers learn of it when its next send starts (_moved)
        return
    new.hand_over(i, left)
    old.withdraw(i, left)


def _report_moving(engine: Engine, d: DeviceTimes, m: Motion, departures: Departures | None = None,
                   i: int = -1) -> None:
    """When the run ends: a moving device's busy time and bytes, its replays trained (a cached device that may
    drop, :func:`sfsim.schedules.network.reached`) and its moves in the trace."""
    if departures is not None and i in departures.at:
        m.replayed = (departures.replayed[i], departures.units[i])
    engine.device_busy[d.name] = m.busy
    engine.up_bytes[d.name] = m.up_bytes
    if engine.events is not None:
        trace_moves(engine, d, m)


class _Pipelined:
    """The constant-rate pipelined branch of :func:`device_process`: micro-batches back to back, as callbacks.

    The same steps as the process (see the module docstring for the timing), written as a small
    state machine whose callbacks are :class:`~sfsim.engine.pool.DeviceEvent` s: a server worker may
    run them inline (:meth:`~sfsim.engine.pool.Engine.until`), which keeps the hot path short.
    """

    __slots__ = ("engine", "env", "d", "i", "acct", "send", "pool", "n", "x", "fx", "f_start", "f_end", "ready",
                 "link_free", "event", "tracing", "on_credit", "f", "up_s", "up_l", "full", "sent", "lane", "home")

    def __init__(self, engine: Engine, pool: ServerPool, i: int, d: DeviceTimes):
        self.engine, self.env, self.d, self.i = engine, engine.env, d, i
        self.acct, self.send = pool.account[i], pool.send
        self.pool = pool if pool.senders is None else None  # None: ServerPool.send keeps the senders' books
        self.home = pool if pool.starts is not None else None  # its server opens one epoch at a time
        self.f, self.up_s, self.up_l, self.sent = d.f, d.up_s, d.up_l, d.sent  # constants of the hot path
        self.full = d.last == 1.0  # every micro-batch is full (no partial last one per epoch)
        self.lane = self.acct.lane(max(d.f, d.up_s))  # after a send it waits max(f, s) for its next (full) one
        self.n, self.x, self.fx = 0, 1.0, 0.0
        self.f_start = self.f_end = self.ready = self.link_free = 0.0
        self.event = engine.device_event()  # reused for every credit wait: one is pending at a time
        self.on_credit = [self._send]  # its callbacks, reused likewise (SimPy drops the list when it fires)
        self.tracing = engine.events is not None
        engine.start(self._next)

    def _next(self, _ev=None) -> None:
        """Forward micro-batch ``n`` from ``f_start``; when it and the link are done, get a credit and send."""
        d, n = self.d, self.n
        if n == d.sent:
            return
        x = 1.0 if d.last == 1.0 else d.size(n)  # the last micro-batch of an epoch may be partial
        fx = d.f * x + (d.warmup if n == 0 else 0.0)  # d.fwd(n), inlined on the hot path
        f_end = self.f_start + fx
        self.x, self.fx, self.f_end = x, fx, f_end
        self.ready = f_end if f_end > self.link_free else self.link_free
        self._try()

    def _try(self, _ev=None) -> None:
        """Get a credit at or after ``ready`` (see engine.Credits.wait), then send."""
        acct, ready, engine = self.acct, self.ready, self.engine
        if ready > self.env._now:
            if acct.credits:  # one is free now: check again when ready
                engine.device_at(ready).callbacks.append(self._try)
                return
            acct.wait(ready, self._pending(self._send))  # True: granted; False: try again now
        elif acct.credits:
            acct.credits -= 1
            self._send()
        else:
            acct.wait(self.env._now, self._pending(self._send))  # fires when granted

    def _epoch(self, _ev) -> None:
        """The server opened the next epoch: forward its first micro-batch once its ``start`` has come (one downlink
        latency later, :func:`_started`)."""
        self.f_start = self.link_free = _started(self.env._now, self.d.down_l)
        self._next()

    def _pending(self, callback):
        """The device's credit event, pending again, with ``callback``."""
        ev = self.event
        ev.callbacks, ev._value = [callback], PENDING
        return ev

    def _send(self, ev=None) -> None:
        """Send micro-batch ``n`` now (a credit is held), then forward the next one (``ev`` False: no credit yet)."""
        if ev is not None and ev._value is False:
            self._try()  # a credit came back before `ready`: try for it now
            return
        n, x, t0 = self.n, self.x, self.env._now
        if self.tracing:
            rec, name = self.engine.record, self.d.name
            rec(name, "F", self.f_start, self.fx, n, name)
            rec(name, "wait", self.f_end, t0 - self.f_end, n, name)
            rec("link:" + name, "send", t0, self.up_s * x, n, name)
        link_free = t0 + self.up_s * x  # the link's free time matters only here: the next ready time
        arrival = link_free + self.up_l
        pool = self.pool
        if pool is None:
            self.send(arrival, self.i, n)
        else:  # ServerPool.push, inlined on the hot path
            pool.seq = seq = pool.seq + 1
            heappush(pool.pending, (arrival, seq, self.i, n))
            if pool.idle and arrival < pool.alarm_at:
                pool.wake_at(arrival)
        self.n = n = n + 1
        if n == self.sent:
            return
        if self.home is not None and (gate := _gate(self.home, n, self.d)) is not None:
            gate.callbacks.append(self._epoch)  # the server's next epoch starts it (its last send arrived before)
            return
        x = 1.0 if self.full else self.d.size(n)  # _next, inlined on the hot path (n > 0: no warm-up)
        fx = self.f * x
        f_end = t0 + fx
        self.x = x
        if self.tracing:  # kept only for the trace of the next send
            self.f_start, self.fx, self.f_end = t0, fx, f_end
        ready = self.ready = f_end if f_end > link_free else link_free
        acct = self.acct
        if ready > t0 and not acct.credits:  # _try's usual case, inlined: wait for a credit (Credits.wait)
            ev = self.event
            ev.callbacks, ev._value = self.on_credit, PENDING
            acct.seq = seq = acct.seq + 1
            lane = self.lane
            if ready < lane.last:
                heappush(acct.waiting, (ready, seq, ev, None))
            else:
                lane.last = ready
                if lane.active:
                    lane.queue.append((ready, seq, ev, lane))
                else:
                    lane.active = True
                    heappush(acct.waiting, (ready, seq, ev, lane))
        else:
            self._try()


def prepare(engine: Engine, pools: list[ServerPool], buffer: int, moving: dict[int, Motion],
            sequential: bool = False) -> None:
    """Places for pending handovers, credits for visiting devices, and the streams servers really receive."""
    engine.soft_timers = True  # handover and drop deadlines must not extend the run
    touched = set()
    for i, m in moving.items():
        if len(m.legs) > 1 or m.avail is not None:
            touched |= {leg.server for leg in m.legs}
        for leg in m.legs[1:]:
            pools[leg.server].expect(i, 1 if sequential else buffer)  # sequential: one, back at the release
    for pool in pools:
        pool.open_arrivals()
    for k in touched:
        pools[k].mix_received()
