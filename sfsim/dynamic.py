"""The dynamic network of a SplitFrozen run: handovers, time-varying uplinks and device churn.

A device with a handover (:mod:`sfsim.mobility`), a time-varying uplink (:mod:`sfsim.linkrate`) or
availability (:mod:`sfsim.availability`) runs :func:`device_process` instead of the static
pipelined process of :mod:`sfsim.schedules.splitfrozen`; the timing rules are the same::

    F_end[n] = when F_start[n] plus f of compute is done (compute progresses only online: pause)
    ready[n] = first online instant >= max(F_end[n], link free)
    send_start[n] = ready[n], or later when a credit is granted;  F_start[n+1] = send_start[n]
    send_end[n] = where the integral of the link's rate (times online, pause) from send_start
                  reaches the micro-batch's bits;  arrival[n] = send_end[n] + latency

A device is on one *leg* at a time: a server and an uplink, from its start or a handover's ``at``.
The leg holding at ``send_start`` takes the micro-batch. The server pools learn of moves as they
happen: each pending handover into a pool holds one placeholder in its ``unclaimed`` count, so that
the pool does not end while a device may still come; moved and lost micro-batches are taken off
the pool they no longer go to. Servers touched by a handover or churn measure stream mixing over
the stream they actually received.

Not modelled: a forward cut off by a drop or by the end of the windows counts neither as busy
time nor as FLOPs; the planner plans for the starting assignment and the nominal bandwidths.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field

from sfsim.availability import availability_for, next_online, offline_periods, online_until
from sfsim.credits import Credits
from sfsim.errors import SfsimError
from sfsim.linkrate import Constant, Product, Rate, finish, link_rate
from sfsim.mixing import StreamMixing
from sfsim.trace import TraceEvent

INF = math.inf
POLICIES_WITH_MOVES = ("fifo", "round-robin")
"""Server policies that take devices joining and leaving a server mid-run (handover, churn)."""


@dataclass
class Leg:
    """A device's server and uplink from time ``at`` on (nominal bit/s, seconds per full micro-batch, ``rate`` if varying)."""

    at: float
    server: int
    bandwidth: float
    up_s: float
    up_l: float
    rate: Rate | None = None


@dataclass
class Motion:
    """How one device moves and when it is online, and what happened to it (filled during the run)."""

    legs: list[Leg]
    avail: Rate | None = None
    churn: str = "pause"
    srv_flops: float = 0.0                 # server FLOP per full micro-batch (same blocks on every server)
    sent: int = 0                           # micro-batches it sent
    switched_at: list[int] = field(default_factory=list)  # micro-batches sent before each handover
    busy: float = 0.0
    up_bytes: float = 0.0
    send_s: float = 0.0                     # seconds its uplink spent sending (for the radio's energy)


def needs_dynamics(scenario) -> bool:
    """True when some device hands over, has a time-varying uplink or declares availability."""
    return any(d.handover or d.availability is not None or d.uplink.varies for d in scenario.devices)


def refuse_dynamics(scenario, what: str) -> None:
    """Refuse (one line) a scenario with handovers, time-varying links or availability where only constant
    links are modelled (the trainer's link emulation)."""
    if needs_dynamics(scenario) or any(d.downlink.varies for d in scenario.devices):
        raise SfsimError(f"{what} shapes constant links; this scenario has handovers, time-varying links or "
                         "availability, which only sfsim simulate models")


def check_supported(scenario, schedule: str, cfg, cache: bool) -> None:
    """Refuse, in one line, a combination the dynamic network is not simulated for."""
    if any(d.downlink.varies for d in scenario.devices):
        raise SfsimError("a time-varying downlink is not simulated (SplitFrozen sends nothing down); "
                         "give the downlink a constant bandwidth")
    if not needs_dynamics(scenario):
        return
    if schedule != "splitfrozen":
        raise SfsimError(f"{schedule}: handovers, time-varying uplinks and availability are simulated for "
                         "splitfrozen only; simulate --schedule splitfrozen or remove them")
    moves = any(d.handover or d.availability is not None for d in scenario.devices)
    if moves and cfg.policy not in POLICIES_WITH_MOVES:
        raise SfsimError(f"server policy {cfg.policy!r} cannot take devices that join or leave a server "
                         f"(handover, availability); use {' or '.join(POLICIES_WITH_MOVES)}")
    if moves and cache:
        raise SfsimError("cache_activations keeps a device's activations on its first server; it cannot be "
                         "combined with handover or availability")


@dataclass
class Network:
    """A SplitFrozen job's dynamic devices (index -> :class:`Motion`) and each server's view of the devices."""

    moving: dict[int, Motion]
    views: list[list]


def network(setup, job) -> Network | None:
    """The job's :class:`Network`, or None when no device moves, churns or has a varying uplink."""
    if not needs_dynamics(setup.scenario):
        return None
    moving = motions(setup, job)
    return Network(moving, pool_views(setup, job, moving))


def motions(setup, job) -> dict[int, Motion]:
    """Device index -> :class:`Motion` for every device of ``job`` that needs the dynamic process."""
    sc, cm, idx = setup.scenario, setup.cm, setup.server_index
    seed, out = sc.training.seed, {}
    for i, (d, dt) in enumerate(zip(sc.devices, job.devices, strict=True)):
        if not (d.handover or d.availability is not None or d.uplink.varies):
            continue
        key = f"devices[{[t.name for t in sc.device_types].index(d.type)}]"
        legs, link = [], d.uplink
        stops = [(0.0, setup.assignment[d.name], None)] + [(h.at, h.to, h.uplink) for h in d.handover]
        for j, (at, srv, new_link) in enumerate(stops):
            link = new_link or link
            rate = link_rate(link, sc.resolve_path, f"{seed}:{d.name}:uplink:{j}", sc.source, f"{key}.uplink")
            legs.append(Leg(at, idx[srv], link.bandwidth, dt.up_bytes * 8.0 / link.bandwidth, link.latency, rate))
        avail = None
        if d.availability is not None:
            avail = availability_for(d.availability, d.name, d.type, sc.resolve_path, seed, sc.source,
                                     f"{key}.availability")
        suffix = cm.server_suffix(setup.splits[d.name], setup.lora_start)
        out[i] = Motion(legs, avail, d.availability.churn if d.availability else "pause", suffix.total)
    return out


def pool_views(setup, job, moving: dict[int, Motion]) -> list[list]:
    """Per server: the devices as that server sees them (its own F/B/W seconds for visitors).

    A moving device's uplink time is set to 0 and its latency to its smallest, so that the pool's
    bound on how soon a micro-batch can arrive stays a lower bound.
    """
    sc, cm = setup.scenario, setup.cm
    views = []
    for k, srv in enumerate(sc.servers):
        row = []
        for i, d in enumerate(job.devices):
            m = moving.get(i)
            if m is None:
                row.append(d)
                continue
            lat = min(leg.up_l for leg in m.legs)
            if any(leg.server == k for leg in m.legs):
                suffix = cm.server_suffix(setup.splits[d.name], setup.lora_start)
                f, b, w = cm.seconds(suffix, srv)
                d = dataclasses.replace(d, srv_f=f, srv_b=b, srv_w=w)
            row.append(dataclasses.replace(d, up_s=0.0, up_l=lat))
        views.append(row)
    return views


def _move(pool, i: int, k: int, placeholder: bool = False) -> None:
    """Add ``k`` (may be < 0) micro-batches of device ``i`` to a pool; ``placeholder``: drop one placeholder."""
    pool.totals[i] += k
    pool.unclaimed += k - (1 if placeholder else 0)
    if pool.unclaimed == 0:
        pool._wake_all()  # its workers may now run their last W's and step


class Recorder:
    """The device order of a server's stream, for :class:`StreamMixing` once the run's totals are known."""

    def __init__(self):
        self.stream: list[int] = []

    def add(self, i: int) -> None:
        """Record that device ``i``'s micro-batch is next in the stream."""
        self.stream.append(i)


def prepare(engine, pools, buffer: int, moving: dict[int, Motion]) -> None:
    """Placeholders for pending handovers, credits for visiting devices, and recorded streams."""
    engine.soft_timers = True  # handover and drop deadlines must not extend the run
    touched = set()
    for i, m in moving.items():
        if len(m.legs) > 1 or m.avail is not None:
            touched |= {leg.server for leg in m.legs}
        for leg in m.legs[1:]:
            pool = pools[leg.server]
            pool.unclaimed += 1
            if pool.per_device and pool.account[i] is None:
                pool.account[i] = Credits(engine, buffer)
                pool.give[i] = pool.account[i].give_back
    for pool in pools:
        pool.flight_bound = 0.0  # devices may arrive at any latency: keep every wake-up exact
    for k in touched:
        pool, rec = pools[k], Recorder()
        pool.mixing = rec

        def mixed(pool=pool, rec=rec):
            mix = StreamMixing(pool.totals)
            for i in rec.stream:
                mix.add(i)
            engine.mixing[pool.server.name] = mix
        engine.on_finish(mixed)


def _expire(acct: Credits, ev) -> None:
    """A device's wait for a credit ends at a handover or a drop: leave the queue, wake it with None."""
    if ev.triggered:
        return
    acct.waiting = [w for w in acct.waiting if w[2] is not ev]
    heapq.heapify(acct.waiting)
    ev.succeed(None)


def _acquire(engine, acct: Credits, ready: float, deadline: float):
    """Take a credit at or after ``ready`` and before ``deadline`` (rules of engine.Credits.wait); True if taken."""
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
        elif acct.credits:
            acct.credits -= 1
            return True
        else:
            ev = env.event()
            acct.wait(env.now, ev)
        if deadline < INF:
            engine.soft_at(deadline, lambda ev=ev: _expire(acct, ev))
        got = yield ev
        if got is None:
            return False
        if got and env.now >= deadline:  # granted at the deadline: the send would start after it
            acct.give_back()
            return False
        if got:
            return True


def _record_online(engine, lane: str, op: str, a: float, b: float, n: int, name: str, avail: Rate | None) -> None:
    """Record ``op`` over the online parts of ``[a, b)`` (all of it without availability)."""
    if avail is None:
        engine.record(lane, op, a, b - a, n, name)
        return
    t = a
    while t < b:
        r, until = avail.segment(t)
        end = min(until, b)
        if r > 0:
            engine.record(lane, op, t, end - t, n, name)
        t = end


def device_process(engine, pools, i: int, d, m: Motion):
    """One device of the dynamic network (see the module docstring); fills ``m``'s outcome."""
    env, legs, avail = engine.env, m.legs, m.avail
    drop = avail is not None and m.churn == "drop"
    pause = avail if avail is not None and not drop else None
    start = next_online(avail, 0.0) if avail is not None else 0.0
    stop = online_until(avail, start) if drop else INF
    j, n = 0, 0
    pool = pools[legs[0].server]
    f_start, link_free = start, 0.0
    tracing = engine.events is not None
    while n < d.sent and start < INF:
        x, fx = d.size(n), d.fwd(n)
        f_end = finish(pause, f_start, fx) if pause is not None else f_start + fx
        ready = max(f_end, link_free)
        if pause is not None and ready < INF:
            ready = next_online(pause, ready)
        acct = None
        while ready < min(stop, INF):
            while j + 1 < len(legs) and legs[j + 1].at <= max(ready, env.now):
                j, pool = j + 1, _switch(pools, i, d, m, j + 1, n)
            acct = pool.account[i]
            deadline = min(stop, legs[j + 1].at if j + 1 < len(legs) else INF)
            if (yield from _acquire(engine, acct, ready, deadline)):
                break
            acct, ready = None, env.now
        if acct is None:
            break  # dropped, or never online again: the rest is lost
        t0, leg = env.now, legs[j]
        rate = leg.rate
        if pause is not None:
            rate = Product(rate or Constant(leg.bandwidth), pause)
        end = finish(rate, t0, d.up_bytes * 8.0 * x) if rate is not None else t0 + leg.up_s * x
        if end > stop or end == INF:  # cut off mid-send: the credit comes back when the device leaves
            if end == INF:
                acct.give_back()
            else:
                engine.soft_at(stop, acct.give_back)
            break
        if tracing:
            _record_online(engine, d.name, "F", f_start, f_end, n, d.name, pause)
            _record_online(engine, d.name, "wait", f_end, t0, n, d.name, pause)
            _record_online(engine, "link:" + d.name, "send", t0, end, n, d.name, pause)
        m.busy += fx
        m.up_bytes += d.up_bytes * x
        m.send_s += end - t0 if pause is None else _online(pause, t0, end)
        link_free = end
        (pool.send if pool.senders is not None else pool.push)(end + leg.up_l, i, n)  # send: the mixing pool's count
        f_start, n = t0, n + 1
    m.sent = n
    if n < d.sent:
        _move(pool, i, -(d.sent - n))
    for k in range(j + 1, len(legs)):  # handovers never reached: nothing goes there
        m.switched_at.append(n)
        _move(pools[legs[k].server], i, 0, placeholder=True)


def _online(avail: Rate, a: float, b: float) -> float:
    """Online seconds within ``[a, b)``."""
    t, total = a, 0.0
    while t < b:
        r, until = avail.segment(t)
        end = min(until, b)
        total += (end - t) if r > 0 else 0.0
        t = end
    return total


def _switch(pools, i: int, d, m: Motion, j: int, n: int):
    """Device ``i`` takes leg ``j`` having sent ``n``: its unsent micro-batches move; returns the new pool."""
    old, new = pools[m.legs[j - 1].server], pools[m.legs[j].server]
    left = d.sent - n
    m.switched_at.append(n)
    _move(new, i, left, placeholder=True)
    _move(old, i, -left)
    return new


def start(engine, pools, job, moving: dict[int, Motion]) -> None:
    """Start the dynamic devices' processes; their busy time and bytes are set when the run ends."""
    for i, m in moving.items():
        d = job.devices[i]
        if d.sent:
            engine.env.process(device_process(engine, pools, i, d, m))

        def done(d=d, m=m):
            engine.device_busy[d.name] = m.busy
            engine.up_bytes[d.name] = m.up_bytes
            if engine.events is not None:
                _trace_moves(engine, d, m)
        engine.on_finish(done)


def _trace_moves(engine, d, m: Motion) -> None:
    """Instant ``handover`` ops on the device lane, and its ``offline`` periods up to the end of the run."""
    end = engine.env.now
    for leg in m.legs[1:]:
        if leg.at <= end:
            engine.events.append(TraceEvent(d.name, "handover", leg.at, 0.0, -1, d.name))
    if m.avail is None:
        return
    if m.churn == "drop":
        join = next_online(m.avail, 0.0)
        leave = online_until(m.avail, join) if join < INF else INF
        periods = [(0.0, min(join, end)), (min(leave, end), end)]
    else:
        periods = offline_periods(m.avail, end)
    for a, b in periods:
        engine.record(d.name, "offline", a, b - a, -1, d.name)


def report(res, setup, job, moving: dict[int, Motion]) -> None:
    """Put the dynamic network's outcome into a SimResult: handovers, samples not trained, real FLOPs."""
    sc, names = setup.scenario, [s.name for s in setup.scenario.servers]
    mb = sc.training.micro_batch
    for i, m in moving.items():
        d, dev = job.devices[i], sc.devices[i]
        for j, leg in enumerate(m.legs[1:], start=1):
            before = m.switched_at[j - 1]
            res.handovers.append({"device": d.name, "at_s": leg.at, "from": names[m.legs[j - 1].server],
                                  "to": names[leg.server], "sent_before": before, "sent_after": m.sent - before})
        if dev.availability is not None:
            res.samples_not_trained[d.name] = round((d.units(d.sent) - d.units(m.sent)) * mb)
        res.uplink_send_s[d.name] = m.send_s
        res.device_flops[d.name] = job.device_flops[d.name] * (d.units(m.sent) / d.units(d.sent) if d.sent else 0.0)
        if len(m.legs) == 1 and m.avail is None:
            continue  # a varying link only: every micro-batch trains where the schedule put it
        # Server FLOPs: each leg's share of the micro-batches, on the server that trained them.
        cuts = [0] + m.switched_at + [m.sent]
        first = names[m.legs[0].server]
        res.server_flops[first] -= d.units(d.n) * m.srv_flops
        for leg, a, b in zip(m.legs, cuts, cuts[1:], strict=False):
            res.server_flops[names[leg.server]] += (d.units(b) - d.units(a)) * m.srv_flops
    lost = sum(d.sent - m.sent for i, m in moving.items() for d in [job.devices[i]])
    res.micro_batches -= lost
