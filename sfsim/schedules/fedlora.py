"""FedLoRA: every device trains LoRA on the whole model; FedAvg rounds whose membership follows the network.

Rounds are formed per epoch, as the runtime's (:func:`round_plan`): a round of a device is the download of the
global adapter (the server's ``round`` message: the initial adapters for the run's first round, from time 0; the
last average for the others); ``local_steps`` micro-batches (or what is left of its epoch: a round never runs into
the next epoch) of ``F``, ``B``, ``W`` through the whole model with a ``step`` after every ``accumulate``
micro-batches and one at the round's end for a partial window; the adapter upload (every block and the head); the
FedAvg of its server (``aggregate`` once every expected upload has arrived). This is the runtime's protocol, plain
FedAvg: broadcast, local training, upload, aggregate; nothing goes down after a device's last round. A device whose
epoch has fewer rounds than another's of its server waits for the server's epoch to end (its next round's download
starts after the epoch's last FedAvg). Downloaded bytes count what the runtime's server sends: the average once per
round a device is in, even when the device drops before it arrives (a send counts unless the device has already
left: ``trainer.transport.dynamics.departed``). FedAvg FLOPs are not counted.

One device process (:func:`device_process`) for every device, under the rules of
:mod:`sfsim.network.legs`: a transfer uses the leg holding when it starts and integrates its rate;
compute and transfers pause while offline; a drop ends the device at its first outage. A static
device is one leg with constant rates: its branch is the plain arithmetic (``sync_up_s``,
``sync_down_s``), the very figures of the static schedule.

FedAvg membership (:class:`FedGroup`, one per server) follows the devices:

* Round ``r`` of a device is averaged by the server its round-``r`` upload goes to (the leg
  holding when that upload starts). A server's round ``r`` waits for every device *expected* there:
  one attached to it that still has round ``r`` to upload.
* A handover at ``at`` moves the device's rounds from the first upload that starts at or after
  ``at`` to the new server's FedAvg group (at ``at``: the old server's barrier stops waiting for it
  then). If the new server has already averaged that round, the device is averaged on its own (an
  ``aggregate`` of one) and downloads at once.
* A device that drops (or goes offline for good, ``pause``) leaves every barrier it has not
  uploaded to at the instant it leaves, so no barrier waits for it; a round whose upload was cut
  off is lost. Its micro-batches count as trained once their round's upload has been sent; the
  others are its ``samples_not_trained``. A download cut off loses nothing already trained.

Several servers with ``training.sync``: each server's rounds as the runtime forms them, per server and per epoch,
with handovers and availability (:mod:`sfsim.schedules.fedsync`; the servers' backhaul rounds after their FedAvg
rounds, the drain and closing round at each epoch's end). Without ``training.sync`` each epoch ends with the servers' closing round
(:class:`EpochClose`, as the runtime's): from each server's epoch end (its epoch's last FedAvg, or its last device
gone, once no later leg may bring it a visitor with rounds of the epoch), a barrier over the servers, and the next epoch's rounds start when it is back.

``handovers`` in the result count micro-batches by their round's upload (``sent_before`` /
``sent_after``); busy time and FLOPs count the micro-batches and steps whose compute ended.
"""

from __future__ import annotations

import bisect
import math

from sfsim.engine.pool import DeviceTimes, Engine, FifoLane, ServerTimes
from sfsim.network.backhaul import Closed, sync_spec
from sfsim.network.legs import Leg, Motion, gone_at, online, record_online, span
from sfsim.schedules import fedsync
from sfsim.schedules.common import (
    Job,
    ReplayConfig,
    ReplaySetup,
    aggregate_seconds,
    groups,
    link_seconds,
    rounds,
)
from sfsim.schedules.network import every_device, trace_moves


def build(setup: ReplaySetup, cache: bool = False) -> Job:
    """Stage durations and FLOPs for FedLoRA (cuts are ignored: every device holds the whole model)."""
    sc, cm, idx, L = setup.scenario, setup.cm, setup.server_index, setup.scenario.arch.n_layers
    full = cm.full_model()
    params = cm.trainable_params(range(L), head=True)
    adapter = cm.adapter_bytes(range(L), head=True)
    servers = [ServerTimes(s.name, s.count, 0.0, aggregate_seconds(params, s, cm)) for s in sc.servers]
    job = Job([], servers, server_flops={s.name: 0.0 for s in sc.servers})
    for d in sc.devices:
        srv = setup.assignment[d.name]
        _, n = setup.micro_batches(d)
        f, b, w = cm.seconds(full, d)
        dt = DeviceTimes(
            d.name, idx[srv], n, f=f, b=b, w=w, step=cm.optimizer_seconds(params, d),
            up_l=d.uplink.latency, down_l=d.downlink.latency, sync_up_s=link_seconds(adapter, d.uplink),
            sync_down_s=link_seconds(adapter, d.downlink), sync_bytes=adapter, **setup.partial(d))
        job.devices.append(dt)
        job.device_flops[d.name] = dt.units(n) * full.total
    job.network = every_device(setup, job)
    spec = sync_spec(sc, adapter)  # the servers' averages: every block's adapters and the head
    job.sync = spec  # every None: each epoch's closing round in the replay (EpochClose); else per-server rounds
    return job


def width(devices: list, per: int) -> int:
    """FedAvg slots per epoch: the most rounds an epoch of any device needs (``per`` micro-batches a round;
    ``per_epoch`` 0 is one epoch)."""
    return max((rounds(d.per_epoch or d.n, per) for d in devices if d.n), default=0)


def round_plan(n: int, per_epoch: int, per: int, slots: int) -> list[tuple[int, int, int]]:
    """A device's FedAvg rounds as the runtime forms them (``trainer.methods.fedlora``): ``(slot, first, last)``.

    Rounds are formed per epoch: ``per`` micro-batches each, the epoch's last round holds what is left (it
    does not run into the next epoch) and ends with an optimizer step on a partial window. Round ``q`` of
    epoch ``e`` is FedAvg slot ``e * slots + q`` (:func:`width`), the same on every server, so a device with
    fewer rounds in an epoch skips the epoch's later slots: it waits for its server's epoch to end.
    """
    out, per_epoch = [], per_epoch or n  # per_epoch 0: one epoch (stage times built by hand)
    for e in range(rounds(n, per_epoch) if n else 0):
        lo, hi = e * per_epoch, min(n, (e + 1) * per_epoch)
        out.extend((e * slots + q, first, min(hi, first + per)) for q, first in enumerate(range(lo, hi, per)))
    return out


def count(n: int, per_epoch: int, per: int) -> int:
    """How many rounds :func:`round_plan` forms (its uploads, and downloads)."""
    per_epoch = per_epoch or n
    if not n:
        return 0
    e = rounds(n, per_epoch) - 1  # full epochs before the last
    return e * rounds(per_epoch, per) + rounds(n - e * per_epoch, per)


def plans(devices: list, per: int) -> list[list[tuple[int, int, int]]]:
    """:func:`round_plan` of every device, on the slots of :func:`width`."""
    slots = width(devices, per)
    return [round_plan(d.n, d.per_epoch, per, slots) for d in devices]


def first_of(plan: list[tuple[int, int, int]], u: int, n: int) -> int:
    """The micro-batches a device trains before its ``u``-th upload (``n`` after its last)."""
    return plan[u][1] if u < len(plan) else n


def slot_of(plan: list[tuple[int, int, int]], u: int) -> int:
    """The slot of a device's ``u``-th round; past its last, the slot after it (0 for none)."""
    return plan[u][0] if u < len(plan) else (plan[-1][0] + 1 if plan else 0)


def steps_in_round(k: int, accumulate: int) -> int:
    """Optimizer steps in a round of ``k`` micro-batches (one per window, the last may be partial)."""
    return -(-k // accumulate)


def still(d: DeviceTimes) -> Motion:
    """A device that neither moves nor churns: one leg with constant rates (its stage times)."""
    return Motion([Leg(0.0, d.server, 0.0, d.up_s, d.up_l, None, 0.0, d.down_l, None)])


def run(engine: Engine, job: Job, cfg: ReplayConfig, sequential: bool = False) -> None:
    """Start one aggregation lane and :class:`FedGroup` per server and one process per device on ``engine``."""
    per, net = cfg.local_steps, job.network
    motions = net.motions if net is not None else {i: still(d) for i, d in enumerate(job.devices)}
    engine.soft_timers = any(len(m.legs) > 1 or m.avail is not None for m in motions.values())
    plan = dict(enumerate(plans(job.devices, per)))  # each device's rounds, per epoch as the runtime's
    if job.sync is not None and job.sync.every is not None:  # training.sync: each server's rounds, as the runtime's
        fedsync.run(engine, job, cfg, motions, plan, width(job.devices, per))
        return
    most = max((p[-1][0] + 1 for p in plan.values() if p), default=0)  # FedAvg slots
    fed_groups = []
    for srv in job.servers:
        lane = FifoLane(engine, srv.lane(0))
        engine.on_finish(lambda lane=lane, name=srv.name: engine.server_busy.__setitem__(name, lane.busy))
        fed_groups.append(FedGroup(engine, lane, srv.aggregate, most))
        fed_groups[-1].width, fed_groups[-1].wait = width(job.devices, per), (srv.name, engine.epoch_end.get(srv.name, 0.0))
    close = EpochClose(engine, job.sync, fed_groups, width(job.devices, per)) if job.sync is not None else None
    members = Membership(engine, fed_groups, motions, plan)
    if close is not None:  # no training.sync: each epoch's closing round, after the visitors a leg may still bring
        close.members = members
    for i in [i for _, ids in groups(job.devices).items() for i in ids]:  # the results' order: by server
        d, m = job.devices[i], motions[i]
        engine.device_busy[d.name] = engine.up_bytes[d.name] = engine.down_bytes[d.name] = 0.0
        m.done = 0
        if d.n:
            engine.env.process(device_process(engine, members, i, d, m, plan[i], cfg.accumulate, net is None))
        engine.on_finish(lambda d=d, m=m, i=i: _finish(engine, members, net, i, d, m))


def _finish(engine: Engine, members: Membership, net, i: int, d: DeviceTimes, m: Motion) -> None:
    """A device's figures from what it did: the static formulas over its micro-batches, steps and rounds."""
    engine.device_busy[d.name] = d.units(m.done) * (d.f + d.b + d.w) + m.steps * d.step + d.first_extra(m.done)
    engine.up_bytes[d.name] = m.syncs_sent * d.sync_bytes
    engine.down_bytes[d.name] = m.downloads * d.sync_bytes
    moved = members.moved_at[i] + [len(m.uploads)] * (len(m.legs) - 1 - len(members.moved_at[i]))
    m.switched_at = [min(first_of(members.plan[i], u, d.n), m.sent) for u in moved]
    if engine.events is not None and net is not None and i in net.moving:
        trace_moves(engine, d, m)


class FedGroup:
    """One server's FedAvg rounds while devices join and leave (see the module docstring).

    ``need[r]`` counts the devices expected at round ``r``; a round closes (``aggregate`` on the
    server's lane for each arrival, then its event fires) when as many have arrived.
    """

    def __init__(self, engine, lane: FifoLane, per_device: float, n_rounds: int):
        self.engine, self.lane, self.per_device = engine, lane, per_device
        self.need, self.arrived = [0] * n_rounds, [0] * n_rounds
        self.closed = [False] * n_rounds
        self.done = [engine.env.event() for _ in range(n_rounds)]
        self.expect: dict[int, list[int]] = {}  # device -> [lo, hi): the slots it is expected for here
        self.slots: dict[int, list[int]] = {}  # device -> its rounds' slots (:func:`round_plan`)
        self.poke = None  # fired when a device leaves: :meth:`until` looks again
        self.closes: list = []  # no training.sync: each epoch's closing round back here (:class:`EpochClose`)
        self.width = 1  # with them: slots an epoch
        self.on_wait = None  # called with r when an arrival has to wait (Membership keeps the run alive)
        self.end = 0.0  # when its last round ended or its last expected device left (its epoch's end)
        self.wait = ("", 0.0)  # (server, its epoch-end wait: sfsim.cost.epochend)
        self.evals: dict = {}  # epoch -> the event of its epoch-end wait's end

    def join(self, i: int, lo: int, hi: int, slots: list[int]) -> None:
        """Device ``i`` (its rounds at ``slots``) is expected here for its rounds in slots ``lo..hi-1``."""
        self.expect[i], self.slots[i] = [lo, hi], slots
        for r in slots:
            self.need[r] += lo <= r < hi

    def cut(self, i: int, hi: int) -> None:
        """Device ``i`` is expected here only before round ``hi`` (it left); rounds may close now."""
        span_i = self.expect.get(i)
        if span_i is None or hi >= span_i[1]:
            return
        lo, old = span_i
        span_i[1] = max(lo, hi)
        self.end = max(self.end, self.engine.env.now)
        cut = [r for r in self.slots[i] if span_i[1] <= r < old]
        for r in cut:
            self.need[r] -= 1
        for r in cut:
            self._close(r)
        if self.poke is not None and not self.poke.triggered:
            self.poke.succeed()

    def until(self, lo: int, hi: int):
        """Wait (a generator) until every round in slots ``lo..hi-1`` that is averaged here has ended: a device whose
        epoch's rounds are done waits for its server's epoch to end (the runtime's next round starts after it)."""
        for r in range(lo, hi):
            while (self.closed[r] or self.need[r]) and not self.done[r].triggered:
                if self.poke is None or self.poke.triggered:
                    self.poke = self.engine.env.event()
                yield self.done[r] | self.poke

    def closing(self, r: int, nxt: int):
        """Wait (a generator) for the closing round of slot ``r``'s epoch when slot ``nxt`` is in a later one."""
        if self.closes and nxt // self.width != r // self.width:
            yield self.closes[r // self.width]

    def evaluated(self, r: int, nxt: int):
        """Wait (a generator) for the server's epoch-end wait (evaluation, adapter, checkpoint:
        :mod:`sfsim.cost.epochend`) after slot ``r``'s epoch, when slot ``nxt`` is in a later one: it starts when the
        epoch's rounds (and closing round) are over, as the runtime's ``train_server`` evaluates between epochs."""
        e = r // self.width
        if nxt // self.width == e or self.wait[1] <= 0:
            return
        if e not in self.evals:
            self.evals[e] = self.engine.env.event()
            self.engine.env.process(self._evaluate(e))
        yield self.evals[e]

    def _evaluate(self, e: int):
        yield from self.until(e * self.width, (e + 1) * self.width)
        if self.closes:
            yield self.closes[e]
        (name, wait), t = self.wait, self.engine.env.now
        self.engine.record(f"epoch-end:{name}", "epoch_end", t, wait)
        self.engine.epoch_end_waited.add(name)
        self.engine.succeed_at(self.evals[e], t + wait)

    def arrive(self, r: int):
        """An upload for round ``r`` arrived now; the returned event fires when the round's aggregate ends."""
        if self.closed[r]:  # the group averaged this round before the device joined: on its own
            ev = self.engine.env.event()
            (end,) = self.lane.serve([("aggregate", self.per_device)])
            self.engine.succeed_at(ev, end)
            self.end = max(self.end, end)
            return ev
        self.arrived[r] += 1
        self._close(r)
        if not self.closed[r] and self.on_wait is not None:
            self.on_wait(self, r)
        return self.done[r]

    def _close(self, r: int) -> None:
        if not self.closed[r] and self.arrived[r] and self.arrived[r] >= self.need[r]:
            self.closed[r] = True
            (end,) = self.lane.serve([("aggregate", self.per_device * self.arrived[r])])
            self.end = max(self.end, end)
            self.engine.succeed_at(self.done[r], end)


class EpochClose:
    """No ``training.sync``: each epoch ends with the servers' closing round, as the runtime's (``finish_sync``).

    A server's epoch ends when every round of its epoch's slots has ended and no visitor a later leg may still bring
    has rounds of the epoch left (:meth:`Membership.awaited`, the runtime's ``visits.waiting``; at once for a server
    without devices or visitors);
    it then sends ``closing`` bytes on its backhaul (``bytes x 8 / bandwidth``, then the latency) once its
    previous closing round is back, the average is ready when every server's upload has arrived, and comes back the
    same way; its devices' next rounds start after that (:meth:`FedGroup.closing`). Sets ``engine.sync`` (the
    result's backhaul bytes and rounds: one per epoch).
    """

    def __init__(self, engine, spec, groups: list[FedGroup], width: int):
        self.engine, self.spec, self.width = engine, spec, max(width, 1)
        self.members: Membership | None = None  # set by run(): the visitors a server waits for
        self.arrived: list[list[float]] = [[] for _ in range(spec.epochs)]
        self.ready = [engine.env.event() for _ in range(spec.epochs)]
        engine.sync = Closed({n: 2.0 * spec.closing * spec.epochs for n, _, _ in spec.servers}, spec.epochs)
        for k, g in enumerate(groups):
            g.closes, g.width = [engine.env.event() for _ in range(spec.epochs)], self.width
            engine.env.process(self._server(k, g))

    def _server(self, k: int, group: FedGroup):
        """Server ``k``'s closing rounds, one an epoch after its epoch's rounds."""
        name, bw, lat = self.spec.servers[k]
        busy, free, env = self.spec.closing * 8.0 / bw, 0.0, self.engine.env
        for e in range(self.spec.epochs):
            yield from self._epoch_end(k, group, e)
            t = max(env.now, free)
            self.engine.record(f"backhaul:{name}", "sync-send", t, busy)
            self.arrived[e].append(t + busy + lat)
            if len(self.arrived[e]) == len(self.spec.servers):
                self.engine.succeed_at(self.ready[e], max(self.arrived[e]))
            yield self.ready[e]
            self.engine.record(f"backhaul:{name}", "sync-recv", env.now, busy)
            free = env.now + busy + lat
            self.engine.succeed_at(group.closes[e], free)


    def _epoch_end(self, k: int, group: FedGroup, e: int):
        """Wait (a generator) for server ``k``'s epoch ``e`` to end: its rounds, and every visitor a later leg may
        still bring with rounds of epoch ``e`` (the runtime's server waits for them: ``visits.waiting``)."""
        while True:
            yield from group.until(e * self.width, (e + 1) * self.width)
            if self.members is None or not self.members.awaited(k, e, self.width):
                return
            yield self.members.change()


class Membership:
    """Which server's :class:`FedGroup` expects each round of each device: handovers and leaving."""

    def __init__(self, engine, groups: list[FedGroup], motions: dict[int, Motion], plan: dict[int, list]):
        self.engine, self.groups, self.motions, self.plan = engine, groups, motions, plan
        self.slots = {i: [r for r, _, _ in p] for i, p in plan.items()}  # each device's rounds' slots
        self.applied = dict.fromkeys(motions, 0)  # legs switched to so far
        self.leaving: dict[int, float] = {}  # device -> when it will leave (a soft timer is set)
        self.kept: set[int] = set()  # leaving devices a barrier waits for: the run lasts until they leave
        for g in groups:
            g.on_wait = self._keep_alive
        self.moved_at: dict[int, list[int]] = {i: [] for i in motions}  # uploads started before each handover
        self.uploaded = dict.fromkeys(motions, 0)  # uploads arrived so far
        self.changed = None  # fired when an upload arrives, a device leaves or hands over (EpochClose looks again)
        for i, m in motions.items():
            if plan[i]:
                groups[m.legs[0].server].join(i, 0, slot_of(plan[i], len(plan[i])), self.slots[i])
            for j in range(1, len(m.legs)):
                engine.soft_at(m.legs[j].at, lambda i=i: self.switch(i, engine.env.now))

    def change(self):
        """An event that fires at the next arrival, leave or handover (:meth:`notify`)."""
        if self.changed is None or self.changed.triggered:
            self.changed = self.engine.env.event()
        return self.changed

    def notify(self) -> None:
        """Wake whoever waits on :meth:`change`."""
        if self.changed is not None and not self.changed.triggered:
            self.changed.succeed()

    def arrived(self, i: int) -> None:
        """Device ``i``'s next upload has arrived."""
        self.uploaded[i] += 1
        self.notify()

    def awaited(self, k: int, e: int, width: int) -> bool:
        """Whether server ``k`` still waits for a visitor in epoch ``e``: a device there now, not gone, with rounds of
        epoch ``e`` still to upload and a later leg on ``k``. A leave due later keeps the run alive until then."""
        late = False
        for i, m in self.motions.items():
            mine = [u for u, (r, _, _) in enumerate(self.plan[i]) if r // width == e]
            j = self.applied[i]
            if (not mine or m.gone < math.inf or self.uploaded[i] > mine[-1] or m.legs[j].server == k
                    or all(leg.server != k for leg in m.legs[j + 1:])):
                continue
            late = True
            t = self.leaving.get(i, math.inf)
            if i not in self.kept and self.engine.env.now < t < math.inf:
                self.kept.add(i)
                self.engine.at(t)
        return late

    def switch(self, i: int, t: float) -> int:
        """Apply device ``i``'s handovers up to time ``t``; returns the leg holding at ``t``."""
        m = self.motions[i]
        j = m.leg_at(t)
        while self.applied[i] < j:
            k = self.applied[i] = self.applied[i] + 1
            u = bisect.bisect_left(m.uploads, m.legs[k].at)  # uploads started before the handover stay
            self.moved_at[i].append(u)
            old, new = self.groups[m.legs[k - 1].server], self.groups[m.legs[k].server]
            self.notify()
            if old is new or m.gone < math.inf:
                continue
            s, end = slot_of(self.plan[i], u), slot_of(self.plan[i], len(self.plan[i]))
            hi = old.expect[i][1] if i in old.expect else end
            old.cut(i, s)
            if s < hi:
                new.join(i, s, hi, self.slots[i])
        return j

    def leave_at(self, i: int, t: float, uploaded: int) -> None:
        """Device ``i`` leaves for good at ``t`` (now or later) with ``uploaded`` uploads sent.

        A later leave is a soft timer (it must not extend a run nobody waits in); a barrier that
        waits for the device makes it a hard one (:meth:`_keep_alive`).
        """
        if t <= self.engine.env.now:
            self.leave(i, uploaded)
            return
        self.leaving[i] = t
        self.engine.soft_at(t, lambda: self.leave(i, uploaded))

    def _keep_alive(self, group: FedGroup, r: int) -> None:
        """Round ``r`` of ``group`` waits: let the run last until its expected devices that will leave have left."""
        for i, t in self.leaving.items():
            lo, hi = group.expect.get(i, (0, 0))
            if i not in self.kept and lo <= r < hi and t > self.engine.env.now:
                self.kept.add(i)
                self.engine.at(t)  # a hard event at t; the soft leave at t was queued first, so it runs

    def leave(self, i: int, uploaded: int) -> None:
        """Device ``i`` leaves for good now, having sent ``uploaded`` uploads."""
        m = self.motions[i]
        self.switch(i, self.engine.env.now)
        m.gone = self.engine.env.now
        for g in self.groups:
            g.cut(i, slot_of(self.plan[i], uploaded))
        self.notify()


def device_process(engine, members: Membership, i: int, d, m: Motion, plan: list, accumulate: int,
                   constant: bool = False):
    """One FedLoRA device (see the module docstring) over its rounds ``plan`` (:func:`round_plan`); fills ``m``.

    ``constant``: one leg with constant rates given by the stage times (``sync_up_s``, ``sync_down_s``),
    the static schedule's arithmetic; else each transfer integrates its leg's rate.
    """
    env, name = engine.env, d.name
    stop = m.stop
    if m.start == math.inf:
        members.leave_at(i, 0.0, 0)
        return
    if m.churn == "drop" and m.start > 0:
        yield engine.at(m.start)  # it joins at its first online instant
    for u, (r, first, last) in enumerate(plan):
        # the round's average (the initial adapters for the first round) comes down before the device trains
        if (yield from _transfer(engine, members, i, d, m, False, constant, stop)) is None:
            return
        t = env.now
        for n in range(first, last):  # local training, by arithmetic (as the static schedule)
            x = d.size(n)  # the last micro-batch of an epoch may be partial
            for op, dur in (("F", d.fwd(n)), ("B", d.b * x), ("W", d.w * x)):
                t = _compute(engine, members, i, m, op, t, dur, n, name, stop)
                if t is None:
                    return
            m.done += 1
            if (n - first + 1) % accumulate == 0 or n + 1 == last:
                t = _compute(engine, members, i, m, "step", t, d.step, -1, name, stop)
                if t is None:
                    return
                m.steps += 1
        yield env.timeout(t - env.now)
        # the adapter upload, on the leg holding when it starts
        leg = yield from _transfer(engine, members, i, d, m, True, constant, stop, last)
        if leg is None:
            return
        group = members.groups[leg.server]
        done = group.arrive(r)
        members.arrived(i)
        yield done
        yield from group.until(r + 1, slot_of(plan, u + 1))  # its epoch's end
        if u + 1 < len(plan):
            yield from group.closing(r, plan[u + 1][0])  # a new epoch: after the epoch's closing round
            yield from group.evaluated(r, plan[u + 1][0])  # and after the server's evaluation


def _transfer(engine, members: Membership, i: int, d, m: Motion, up: bool, constant: bool, stop: float,
              last: int = 0):
    """Device ``i`` sends its adapter (``up``) or receives its next round's average from now, over the leg holding now.

    An upload (of the micro-batches before ``last``) applies the handovers due first. Returns (as a
    generator, when it has arrived) that leg, or None when the device leaves before it ends.
    """
    t, name, pause = engine.env.now, d.name, m.pause
    if up:
        leg = m.legs[members.switch(i, t)]
        m.uploads.append(t)
        secs = d.sync_up_s if constant else span(leg.up_rate(pause), t, d.sync_bytes * 8.0)
    else:
        leg = m.legs[m.leg_at(t)]
        secs = d.sync_down_s if constant else span(leg.down_rate(pause), t, d.sync_bytes * 8.0)
        m.downloads += fedsync.present(m, t, stop)  # the round's average, sent even if cut off
    if t + secs > stop or secs == math.inf:
        members.leave_at(i, _gone(m, t, stop), m.syncs_sent)
        return None
    record_online(engine, ("link:" if up else "downlink:") + name, "send", t, t + secs, -1, name, pause, secs)
    if up:
        m.send_s += online(pause, t, t + secs)
        m.syncs_sent += 1
        m.sent = last
    else:
        m.recv_s += online(pause, t, t + secs)
    yield engine.env.timeout(secs + (leg.up_l if up else leg.down_l))
    return leg


def _compute(engine, members: Membership, i: int, m: Motion, op: str, t: float, dur: float, n: int,
             name: str, stop: float) -> float | None:
    """Record ``op`` from ``t`` (paused offline); its end, or None when the device leaves before it ends."""
    if m.pause is None and stop == math.inf:  # always online: plain arithmetic
        engine.record(name, op, t, dur, n, name)
        return t + dur
    end = t + span(m.pause, t, dur)
    if end > stop or end == math.inf:
        members.leave_at(i, _gone(m, t, stop), m.syncs_sent)
        return None
    record_online(engine, name, op, t, end, n, name, m.pause, dur)
    return end


def _gone(m: Motion, t: float, stop: float) -> float:
    """When a device whose work from ``t`` never ends leaves: its drop, or when it goes offline for good."""
    return stop if stop < math.inf else gone_at(m.avail, t)
