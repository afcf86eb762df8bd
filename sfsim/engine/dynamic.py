"""The dynamic network: handovers, time-varying links and churn, for every schedule; SplitFrozen's process.

This module is the dynamic network's face: which scenario has one (:func:`needs_dynamics`), what
is refused (:func:`check_supported`) and how the outcome goes into a result (:func:`report`). The
shared rules (legs, transfers that integrate the rate, pause and drop) are in
:mod:`sfsim.network.legs`; the processes per schedule family:

* ``splitfrozen`` and ``splitfrozen-sequential``: :func:`device_process` below;
* ``splitlora``: :mod:`sfsim.schedules.dynamic_split` (time-varying links, pause and drop) and, with
  handovers, :mod:`sfsim.schedules.dynamic_split_moves` (the servers' loops run jointly in time);
* ``fedlora``: :mod:`sfsim.schedules.dynamic_fed` (everything, with FedAvg rounds whose membership follows
  handovers and drops);
* ``cenlora`` has no device links (its data is at the server from the start): the dynamic network
  does not apply, and the result says so (``SimResult.dynamic_network``, :func:`applies`).

A SplitFrozen device with a handover (:mod:`sfsim.network.mobility`), a time-varying uplink
(:mod:`sfsim.network.linkrate`) or availability (:mod:`sfsim.network.availability`) runs :func:`device_process`
instead of the static process of :mod:`sfsim.schedules.splitfrozen`; the timing rules are the same::

    F_end[n] = when F_start[n] plus f of compute is done (compute progresses only online: pause)
    ready[n] = first online instant >= max(F_end[n], link free)
    send_start[n] = ready[n], or later when a credit is granted;  F_start[n+1] = send_start[n]
    send_end[n] = where the integral of the link's rate (times online, pause) from send_start
                  reaches the micro-batch's bits;  arrival[n] = send_end[n] + latency

Sequential ablation: F_start[n+1] is the release of micro-batch n (its W ended on the server).
SplitFrozen sends nothing down, so a time-varying downlink changes nothing there.

The leg holding at ``send_start`` takes the micro-batch. The server pools learn of moves as they
happen: each pending handover into a pool holds one placeholder in its ``unclaimed`` count, so that
the pool does not end while a device may still come; moved and lost micro-batches are taken off
the pool they no longer go to. Servers touched by a handover or churn measure stream mixing over
the stream they actually received.

Refused (one line each, :func:`check_supported`), and why:

* SplitFrozen's handovers and availability with the ``proportional`` and paced policies: their
  server order is a schedule of turns computed before the run from every starting device's
  micro-batch count (:mod:`sfsim.engine.pacing`), and the pacing credits follow that schedule. Skipping the
  turns of a device that has dropped or moved away is clear, but a device that *joins* a server has
  no turns in its schedule, and re-drawing the schedule mid-run (over what counts, from which turn
  on) is a policy the trainer does not have; the result would be a made-up policy, not the trainer's.
* With the ``pool`` policy (:class:`sfsim.engine.pacing.MixingPool`): its capacity is fixed before the run
  from the widest activations among the devices planned to send there, and it draws early only when
  "every device has all the micro-batches its credits allow already in the pool". A visitor's wider
  activations would break the memory bound, and "every device" has no meaning while devices may
  still join (wait for a device that may never come, or draw without it): the rule needs a choice
  the trainer has not made.
* With ``cache_activations``: the second and later epochs replay activations cached on the
  device's *first* server; after a handover those activations are on another machine (moving them
  is a backhaul transfer the scenario does not describe), and a device that drops leaves a cache
  nobody reads. Either choice (resend, or move over a backhaul) is a modelling decision the scenario
  would have to state.
* SplitLoRA's handovers with the ``sequential`` client order or a fixed server order (see
  :mod:`sfsim.schedules.dynamic_split_moves`).

Not modelled: a forward cut off by a drop or by the end of the windows counts neither as busy
time nor as FLOPs; the planner plans for the starting assignment and the nominal bandwidths.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass

from sfsim.engine.credits import Credits
from sfsim.errors import SfsimError
from sfsim.network.availability import next_online, offline_periods, online_until
from sfsim.network.legs import Leg, Motion, motion_of, needs_motion, online, record_online, span
from sfsim.outputs.mixing import StreamMixing
from sfsim.outputs.trace import TraceEvent

__all__ = ["Leg", "Motion", "Network", "check_supported", "needs_dynamics", "report"]

INF = math.inf
POLICIES_WITH_MOVES = ("fifo", "round-robin")
"""Server policies that take devices joining and leaving a server mid-run (handover, churn)."""
SPLITFROZEN = ("splitfrozen", "splitfrozen-sequential")
NOT_FOR_CENLORA = ("not applicable: cenlora has its data at the server from the start and no device links, "
                   "so handovers, time-varying links and availability do not change it")
NOTHING_DOWN = ("not applicable: only the downlink varies, and SplitFrozen sends nothing down")


class Unsupported(SfsimError):
    """A schedule or setting the dynamic network is not simulated for (``--schedule all`` skips it, saying so)."""


def needs_dynamics(scenario, downlink: bool = False) -> bool:
    """True when some device hands over, has a time-varying uplink (or ``downlink``) or declares availability."""
    return any(needs_motion(d, downlink) for d in scenario.devices)


def applies(scenario, schedule: str) -> str | None:
    """What becomes of the scenario's dynamic network under ``schedule`` (``SimResult.dynamic_network``).

    Returns:
        None when the scenario has none; ``"simulated"``; or ``"not applicable: <why>"`` (cenlora,
        or SplitFrozen with only a varying downlink).
    """
    if not needs_dynamics(scenario, downlink=True):
        return None
    if schedule == "cenlora":
        return NOT_FOR_CENLORA
    if schedule in SPLITFROZEN and not needs_dynamics(scenario):
        return NOTHING_DOWN
    return "simulated"


def check_supported(scenario, schedule: str, cfg, cache: bool) -> None:
    """Refuse, in one line, a combination the dynamic network is not simulated for (see the module docstring)."""
    if schedule == "splitlora":
        from sfsim.schedules.splitlora import FIXED_ORDERS

        mover = next((d.name for d in scenario.devices if d.handover), None)
        if mover is not None and cfg.client_order == "sequential":
            raise Unsupported(f"splitlora: {mover} hands over, and the sequential client order (client after "
                              "client, each over its whole epoch) has no place for a client arriving mid-run; "
                              "use client_order interleaved")
        if mover is not None and cfg.policy in FIXED_ORDERS:
            raise Unsupported(f"splitlora: {mover} hands over, and server policy {cfg.policy!r} is a fixed order "
                              "drawn per epoch over the starting clients, with no turn for a client that joins; "
                              "use fifo or pool")
    if schedule not in SPLITFROZEN:
        return  # fedlora takes every combination; cenlora has no device links
    moves = any(d.handover or d.availability is not None for d in scenario.devices)
    if moves and cfg.policy not in POLICIES_WITH_MOVES:
        raise Unsupported(f"server policy {cfg.policy!r} cannot take devices that join or leave a server "
                         f"(handover, availability); use {' or '.join(POLICIES_WITH_MOVES)}")
    if moves and cache:
        raise Unsupported("cache_activations keeps a device's activations on its first server; it cannot be "
                         "combined with handover or availability")


@dataclass
class Untouched:
    """The dynamic network of a job it does not apply to (cenlora): nothing moves; the result says why."""

    moving: dict[int, Motion]


def not_applicable(scenario) -> Untouched | None:
    """An :class:`Untouched` network when the scenario has a dynamic network, else None."""
    return Untouched({}) if needs_dynamics(scenario, downlink=True) else None


@dataclass
class Network:
    """A SplitFrozen job's dynamic devices (index -> :class:`Motion`) and each server's view of the devices."""

    moving: dict[int, Motion]
    views: list[list]


def network(setup, job) -> Network | Untouched | None:
    """The job's :class:`Network`, or None when no device moves, churns or has a varying link.

    Only a varying downlink: :class:`Untouched` (SplitFrozen sends nothing down).
    """
    if not needs_dynamics(setup.scenario):
        return not_applicable(setup.scenario)
    moving = motions(setup, job)
    return Network(moving, pool_views(setup, job, moving))


def motions(setup, job) -> dict[int, Motion]:
    """Device index -> :class:`Motion` for every device of ``job`` that needs the dynamic process."""
    sc, cm, out = setup.scenario, setup.cm, {}
    for i, (d, dt) in enumerate(zip(sc.devices, job.devices, strict=True)):
        if needs_motion(d, downlink=False):  # nothing goes down in SplitFrozen
            suffix = cm.server_suffix(setup.splits[d.name], setup.lora_start)
            out[i] = motion_of(setup, d, dt.up_bytes, suffix.total)
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


def prepare(engine, pools, buffer: int, moving: dict[int, Motion], sequential: bool = False) -> None:
    """Placeholders for pending handovers, credits for visiting devices, and recorded streams."""
    engine.soft_timers = True  # handover and drop deadlines must not extend the run
    touched = set()
    for i, m in moving.items():
        if len(m.legs) > 1 or m.avail is not None:
            touched |= {leg.server for leg in m.legs}
        for leg in m.legs[1:]:
            pool = pools[leg.server]
            pool.unclaimed += 1
            if pool.per_device and pool.account[i] is None:  # sequential: one, returned at the release
                pool.account[i] = Credits(engine, 1 if sequential else buffer)
                pool.give[i] = pool.account[i].give_back if pool.claim_returns else None
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


def device_process(engine, pools, i: int, d, m: Motion, sequential: bool = False):
    """One device of the dynamic network (see the module docstring); fills ``m``'s outcome."""
    env, legs, pause = engine.env, m.legs, m.pause
    start, stop = m.start, m.stop
    j, n = 0, 0
    pool = pools[legs[0].server]
    f_start, link_free = start, 0.0
    tracing = engine.events is not None
    while n < d.sent and start < INF:
        x, fx = d.size(n), d.fwd(n)
        f_end = f_start + span(pause, f_start, fx)
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
        s = span(leg.up_rate(pause), t0, d.up_bytes * 8.0, x)  # (bits per full micro-batch) x size
        end = t0 + s
        if end > stop or end == INF:  # cut off mid-send: the credit comes back when the device leaves
            if end == INF:
                acct.give_back()
            else:
                engine.soft_at(stop, acct.give_back)
            break
        if tracing:
            record_online(engine, d.name, "F", f_start, f_end, n, d.name, pause, fx)
            record_online(engine, d.name, "wait", f_end, t0, n, d.name, pause)
            record_online(engine, "link:" + d.name, "send", t0, end, n, d.name, pause, s)
        m.send_s += end - t0 if pause is None else online(pause, t0, end)
        link_free = end
        if sequential:  # the worker releases the device when this micro-batch's W ends
            released = pool.release[i] = env.event()
        pool.send(end + leg.up_l, i, n)
        n += 1
        if sequential:
            yield released
            f_start = env.now
        else:
            f_start = t0
    m.sent = n
    m.busy = d.units(n) * d.f + d.first_extra(n)  # as the static process counts it: forwards of sent ones
    m.up_bytes = d.units(n) * d.up_bytes
    if n < d.sent:
        _move(pool, i, -(d.sent - n))
    for k in range(j + 1, len(legs)):  # handovers never reached: nothing goes there
        m.switched_at.append(n)
        _move(pools[legs[k].server], i, 0, placeholder=True)


def _switch(pools, i: int, d, m: Motion, j: int, n: int):
    """Device ``i`` takes leg ``j`` having sent ``n``: its unsent micro-batches move; returns the new pool."""
    old, new = pools[m.legs[j - 1].server], pools[m.legs[j].server]
    left = d.sent - n
    m.switched_at.append(n)
    _move(new, i, left, placeholder=True)
    _move(old, i, -left)
    return new


def start(engine, pools, job, moving: dict[int, Motion], sequential: bool = False) -> None:
    """Start the dynamic devices' processes; their busy time and bytes are set when the run ends."""
    for i, m in moving.items():
        d = job.devices[i]
        if d.sent:
            engine.env.process(device_process(engine, pools, i, d, m, sequential))

        def done(d=d, m=m):
            engine.device_busy[d.name] = m.busy
            engine.up_bytes[d.name] = m.up_bytes
            if engine.events is not None:
                trace_moves(engine, d, m)
        engine.on_finish(done)


def trace_moves(engine, d, m: Motion) -> None:
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
    """Put the dynamic network's outcome into a SimResult: handovers, samples not trained, real FLOPs.

    Every schedule's motions mean the same here: ``sent`` micro-batches reached training (sent to a
    server, or inside a sent adapter upload), ``switched_at`` counts them before each handover,
    ``done`` (default ``sent``) those whose device work ended, which the device FLOPs scale with.
    """
    sc, names = setup.scenario, [s.name for s in setup.scenario.servers]
    mb = sc.training.micro_batch
    res.dynamic_network = applies(sc, res.schedule)
    if res.dynamic_network != "simulated":  # nothing moved: every sample trains
        res.samples_not_trained = {d.name: 0 for d in sc.devices if d.availability is not None}
        return
    for i, m in moving.items():
        d, dev = job.devices[i], sc.devices[i]
        for j, leg in enumerate(m.legs[1:], start=1):
            before = m.switched_at[j - 1]
            res.handovers.append({"device": d.name, "at_s": leg.at, "from": names[m.legs[j - 1].server],
                                  "to": names[leg.server], "sent_before": before, "sent_after": m.sent - before})
        if dev.availability is not None:
            res.samples_not_trained[d.name] = round((d.units(d.sent) - d.units(m.sent)) * mb)
        res.uplink_send_s[d.name] = m.send_s
        if m.recv_s:
            res.downlink_recv_s[d.name] = m.recv_s
        done = m.sent if m.done is None else m.done
        if done != d.sent:  # all done: the static count stays exact
            res.device_flops[d.name] = job.device_flops[d.name] * (d.units(done) / d.units(d.sent) if d.sent else 0.0)
        if (len(m.legs) == 1 and m.avail is None) or not m.srv_flops:
            continue  # a varying link only, or no server FLOPs: every micro-batch trains where the schedule put it
        # Server FLOPs: each leg's share of the micro-batches, on the server that trained them.
        cuts = [0] + m.switched_at + [m.sent]
        first = names[m.legs[0].server]
        res.server_flops[first] -= d.units(d.n) * m.srv_flops
        for leg, a, b in zip(m.legs, cuts, cuts[1:], strict=False):
            res.server_flops[names[leg.server]] += (d.units(b) - d.units(a)) * m.srv_flops
    lost = sum(d.sent - m.sent for i, m in moving.items() for d in [job.devices[i]])
    res.micro_batches -= lost
