"""FedLoRA with ``training.sync``: each server's FedAvg rounds as the runtime forms them (``trainer.methods.fedlora``).

The runtime's rounds are per server, not per device: a server's loop (:meth:`Server.epoch`, the runtime's
``server_epoch``) sends the average to every device it holds that still has data this epoch, collects their uploads
(:meth:`Server.collect`, ``_collect``), averages what came (``aggregate``) and ends the round with its backhaul round
(:meth:`sfsim.network.backhaul.ServerRounds.fed_round`: every ``every``-th round; every round with ``every: 1`` in
``sync`` mode) before the next round's average goes down. The epoch ends with the drain and the closing round
(:meth:`ServerRounds.finish`, the runtime's ``fed_finish``), at each epoch's end, before the next epoch's first round.

A device (:func:`device`) trains its rounds of :func:`sfsim.schedules.fedlora.round_plan` one per ``round`` it gets
from its server, as the runtime's device: the average's download (the initial adapters' for the first), ``local_steps``
micro-batches with their optimizer steps, the upload. The messages, as the runtime's (``trainer.transport.handover``):

* an upload that starts at or after a handover goes to the new server: ``moved`` to the old one (its round stops
  waiting for the device, which it waits for again only if a later leg brings it back) and ``join`` to the new one
  (the epoch's micro-batches still to come there), whose round being collected takes it in; a server that holds no
  device with data left but may still get a visitor this epoch answers the others' rounds while it waits
  (:meth:`ServerRounds.idle`);
* a device whose epoch is over (its last upload, or it left) tells every other server of its legs that it will not
  come this epoch (``join`` of 0);
* a device that leaves (a drop, or offline for good) sends ``leave`` to its server, which stops waiting for it; a
  round whose expected devices all left or moved away ends empty (a backhaul round all the same), and in a later
  epoch a device that has left answers its server's round with ``leave`` at once.

Downloads, as the runtime's: one at the start of each round a device is in (the first round's the initial adapters,
none after the run's last FedAvg); counted as the runtime's server sends them (a download cut off too; :func:`present`).
Figures are those of :mod:`sfsim.schedules.fedlora`'s devices.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from sfsim.engine.pool import FifoLane
from sfsim.network.availability import next_online
from sfsim.network.backhaul import ServerRounds
from sfsim.network.legs import Motion, gone_at, online, record_online, span
from sfsim.schedules.common import groups
from sfsim.schedules.network import trace_moves


class Box:
    """A mailbox: messages in arrival order and an event that fires when one comes."""

    def __init__(self, env):
        self.env, self.items, self.ev = env, deque(), env.event()

    def put(self, item) -> None:
        """Deliver ``item`` now."""
        self.items.append(item)
        if not self.ev.triggered:
            self.ev.succeed()

    def signal(self):
        """An event that fires when a message comes (at once when one is waiting)."""
        if self.ev.triggered and not self.items:
            self.ev = self.env.event()
        return self.ev

    def get(self):
        """Wait (a generator) for the next message and return it."""
        while not self.items:
            yield self.signal()
        return self.items.popleft()


class Server:
    """One server's FedAvg loop over the epochs, as the runtime's ``FedLoRA.server_epoch`` and ``finish_sync``."""

    def __init__(self, fleet: Fleet, k: int, lane: FifoLane, per_device: float, sync: ServerRounds, held: list[int]):
        self.fleet, self.k, self.lane, self.per_device, self.sync = fleet, k, lane, per_device, sync
        self.env = fleet.engine.env
        self.held = list(held)  # the devices it holds (its own first, visitors appended when they join)
        self.inbox = Box(self.env)
        self.visitors = {i for i, m in fleet.motions.items() if any(leg.server == k for leg in m.legs[1:])}

    def run(self, epochs: int):
        """Every epoch's rounds, then its drain and closing round (the runtime's ``train_epoch``) and, but after the last,
        the server's epoch-end wait (evaluation, adapter, checkpoint: :mod:`sfsim.cost.epochend`, lane
        ``epoch-end:<server>``), as the runtime's ``train_server``: the next epoch's first round goes after it."""
        engine, name = self.fleet.engine, self.fleet.job.servers[self.k].name
        for e in range(epochs):
            yield from self.epoch(e)
            yield from self.sync.finish(self.env.now)
            wait = engine.epoch_end.get(name, 0.0)
            if e + 1 < epochs and wait > 0:
                engine.record(f"epoch-end:{name}", "epoch_end", self.env.now, wait)
                engine.epoch_end_waited.add(name)
                yield engine.at(self.env.now + wait)

    def epoch(self, e: int):
        """Rounds until every device it holds has used epoch ``e``'s data and no visitor may still come."""
        fleet = self.fleet
        left = {i: fleet.micro_batches(i, e) for i in self.held}
        waiting = {v for v in self.visitors if v not in self.held}
        while sum(left.values()) > 0 or waiting:
            active = [i for i in self.held if left.get(i, 0) > 0]
            for i in active:
                fleet.boxes[i].put(("round", e))
            got = yield from self.collect(e, active, left, waiting)
            if not active and not got:  # only visitors were awaited, and none came
                continue
            t = self.env.now
            if got:
                (t,) = self.lane.serve([("aggregate", self.per_device * len(got))])
            t = yield from self.sync.fed_round(t, last=sum(left.values()) == 0 and not waiting)
            if t > self.env.now:
                yield fleet.engine.at(t)

    def collect(self, e: int, active: list[int], left: dict[int, int], waiting: set[int]):
        """The round's uploads (a generator returning the devices averaged), as the runtime's ``_collect``."""
        expect, got, box = list(active), [], self.inbox
        while expect or (not active and not got and waiting):
            if not box.items:
                wake = box.signal()
                if expect:
                    yield wake
                else:  # nothing of its own in this round: answer the others' rounds until a message comes
                    yield from self.sync.idle(wake)
                continue
            kind, i, aux, epoch = box.items.popleft()
            if kind == "moved":
                expect = [j for j in expect if j != i]
                left.pop(i, None)
                self.held = [j for j in self.held if j != i]
                if any(leg.server == self.k for leg in self.fleet.motions[i].legs[aux + 1:]):
                    waiting.add(i)
                else:
                    waiting.discard(i)
            elif kind == "join":
                if epoch != e:  # left over from an earlier epoch
                    continue
                waiting.discard(i)
                if aux and i not in self.held:
                    self.held.append(i)
                if aux:
                    left[i] = aux
                    expect.append(i)
            elif i in expect:
                expect.remove(i)
                if kind == "leave":
                    left[i] = 0
                else:
                    left[i] = max(left[i] - aux, 0) if aux else 0
                    got.append(i)
        return got


class Fleet:
    """The devices' side: their rounds, legs, the server each talks to, and their mailboxes."""

    def __init__(self, engine, job, motions: dict[int, Motion], plan: dict[int, list], slots: int):
        self.engine, self.job, self.motions, self.plan = engine, job, motions, plan
        self.slots = max(slots, 1)
        self.boxes = {i: Box(engine.env) for i in motions}
        self.leg = dict.fromkeys(motions, 0)  # the leg each device last sent on
        self.at = {i: m.legs[0].server for i, m in motions.items()}  # the server each device talks to
        self.servers: list[Server] = []

    def epoch_of(self, i: int, u: int) -> int:
        """The epoch of device ``i``'s ``u``-th round."""
        return self.plan[i][u][0] // self.slots

    def micro_batches(self, i: int, e: int) -> int:
        """Device ``i``'s micro-batches in epoch ``e``."""
        return sum(hi - lo for r, lo, hi in self.plan[i] if r // self.slots == e)

    def epoch_end(self, i: int, u: int) -> int:
        """The micro-batch after the last of the epoch of device ``i``'s ``u``-th round."""
        e = self.epoch_of(i, u)
        return max(hi for r, _, hi in self.plan[i] if r // self.slots == e)

    def post(self, k: int, msg: tuple, t: float | None = None) -> None:
        """Deliver ``msg`` to server ``k`` now or at ``t``."""
        box = self.servers[k].inbox
        if t is None or t <= self.engine.env.now:
            box.put(msg)
        else:
            self.engine.at(t).callbacks.append(lambda _e: box.put(msg))

    def move(self, i: int, t: float, u: int) -> None:
        """Device ``i``'s upload of round ``u`` starts at ``t``: take the handovers due by then (``moved``, ``join``)."""
        m, k = self.motions[i], self.leg[i]
        to = m.leg_at(t)
        if to <= k:
            return
        self.leg[i] = to
        old, new, e = m.legs[k].server, m.legs[to].server, self.epoch_of(i, u)
        if old != new:
            self.post(old, ("moved", i, to, e))
            self.at[i] = new
            self.post(new, ("join", i, self.epoch_end(i, u) - self.plan[i][u][1], e))
        for rank in sorted({m.legs[j].server for j in range(k + 1, to)} - {old, new}):
            if not any(leg.server == rank for leg in m.legs[to + 1:]):
                self.post(rank, ("join", i, 0, e))

    def close(self, i: int, e: int, t: float | None = None) -> None:
        """Device ``i``'s epoch ``e`` is over: the other servers of its legs stop waiting for it (``join`` of 0)."""
        m = self.motions[i]
        home = m.legs[self.leg[i]].server
        for rank in sorted({leg.server for leg in m.legs} - {home}):
            self.post(rank, ("join", i, 0, e), t)

    def leave(self, i: int, u: int, t: float, e: int | None = None) -> None:
        """Device ``i`` leaves for good at ``t`` (now or later) in its ``u``-th round (or, gone, in a round of epoch
        ``e`` its server sends): ``leave`` to its server."""
        m = self.motions[i]
        m.gone = min(m.gone, t)
        e = self.epoch_of(i, u) if e is None else e
        self.post(self.at[i], ("leave", i, 0, e), t)
        self.close(i, e, t)


def run(engine, job, cfg, motions: dict[int, Motion], plan: dict[int, list], slots: int) -> None:
    """FedLoRA's servers with ``training.sync`` and one process per device on ``engine`` (module docstring)."""
    fleet = Fleet(engine, job, motions, plan, slots)
    rounds = job.sync.start(engine)
    own = groups(job.devices)
    for k, srv in enumerate(job.servers):
        lane = FifoLane(engine, srv.lane(0))
        engine.on_finish(lambda lane=lane, name=srv.name: engine.server_busy.__setitem__(name, lane.busy))
        sync = ServerRounds(rounds, k, job.sync.payload, job.sync.closing)
        fleet.servers.append(Server(fleet, k, lane, srv.aggregate, sync, own.get(k, [])))
    for server in fleet.servers:
        engine.env.process(server.run(job.sync.epochs))
    for i in [i for _, ids in own.items() for i in ids]:  # the results' order: by server
        d, m = job.devices[i], motions[i]
        engine.device_busy[d.name] = engine.up_bytes[d.name] = engine.down_bytes[d.name] = 0.0
        m.done = 0
        if d.n:
            engine.env.process(device(fleet, i, cfg.accumulate, job.network is None))
        engine.on_finish(lambda d=d, m=m, i=i: _finish(fleet, i, d, m))


def _finish(fleet: Fleet, i: int, d, m: Motion) -> None:
    """A device's figures (as :func:`sfsim.schedules.fedlora._finish`): its micro-batches, steps, rounds, moves."""
    engine, plan = fleet.engine, fleet.plan[i]
    engine.device_busy[d.name] = d.units(m.done) * (d.f + d.b + d.w) + m.steps * d.step + d.first_extra(m.done)
    engine.up_bytes[d.name] = m.syncs_sent * d.sync_bytes
    engine.down_bytes[d.name] = m.downloads * d.sync_bytes
    moved = [bisect.bisect_left(m.uploads, leg.at) for leg in m.legs[1:]]  # uploads started before each handover
    m.switched_at = [min(plan[u][1] if u < len(plan) else d.n, m.sent) for u in moved]
    net = fleet.job.network
    if engine.events is not None and net is not None and i in net.moving:
        trace_moves(engine, d, m)


def device(fleet: Fleet, i: int, accumulate: int, constant: bool):
    """One device: a round for each ``round`` its server sends (once it has left, a ``leave`` for each).
    ``constant``: one leg with constant rates (the stage times), else each transfer integrates its
    rate."""
    engine, d, m, plan, box = fleet.engine, fleet.job.devices[i], fleet.motions[i], fleet.plan[i], fleet.boxes[i]
    for u in range(len(plan)):
        _, e = yield from box.get()
        while m.gone < math.inf or m.start == math.inf:  # it has left (or never comes): its server stops waiting
            fleet.leave(i, u, engine.env.now, e)
            _, e = yield from box.get()
        yield from _round(fleet, i, d, m, u, accumulate, constant)


def _round(fleet: Fleet, i: int, d, m: Motion, u: int, accumulate: int, constant: bool):
    """Device ``i``'s ``u``-th round from now: the average's download (the initial adapters' for the first), local
    training, the upload to the server of the leg holding when it starts (and, its epoch over, the ``join`` of 0)."""
    engine, (_, first, last) = fleet.engine, fleet.plan[i][u]
    if m.churn == "drop" and m.start > engine.env.now:
        yield engine.at(m.start)  # it joins at its first online instant
    if not (yield from _transfer(fleet, i, d, m, False, constant, u)):
        return
    t = _train(fleet, i, d, m, first, last, accumulate, u)
    if t is None:
        return
    yield engine.env.timeout(t - engine.env.now)
    fleet.move(i, engine.env.now, u)
    if (yield from _transfer(fleet, i, d, m, True, constant, u, last - first)) and last == fleet.epoch_end(i, u):
        fleet.close(i, fleet.epoch_of(i, u))


def _train(fleet: Fleet, i: int, d, m: Motion, first: int, last: int, accumulate: int, u: int) -> float | None:
    """Local training of micro-batches ``first..last-1`` from now (arithmetic); its end, or None when the device
    leaves before it ends."""
    t, stop = fleet.engine.env.now, m.stop
    for n in range(first, last):
        x = d.size(n)  # the last micro-batch of an epoch may be partial
        for op, dur in (("F", d.fwd(n)), ("B", d.b * x), ("W", d.w * x)):
            t = _compute(fleet, i, m, op, t, dur, n, d.name, stop, u)
            if t is None:
                return None
        m.done += 1
        if (n - first + 1) % accumulate == 0 or n + 1 == last:
            t = _compute(fleet, i, m, "step", t, d.step, -1, d.name, stop, u)
            if t is None:
                return None
            m.steps += 1
    return t


def _compute(fleet: Fleet, i: int, m: Motion, op: str, t: float, dur: float, n: int, name: str, stop: float,
             u: int) -> float | None:
    """Record ``op`` from ``t`` (paused offline); its end, or None when the device leaves before it ends."""
    engine = fleet.engine
    if m.pause is None and stop == math.inf:  # always online: plain arithmetic
        engine.record(name, op, t, dur, n, name)
        return t + dur
    end = t + span(m.pause, t, dur)
    if end > stop or end == math.inf:
        fleet.leave(i, u, _gone(m, t, stop))
        return None
    record_online(engine, name, op, t, end, n, name, m.pause, dur)
    return end


def _transfer(fleet: Fleet, i: int, d, m: Motion, up: bool, constant: bool, u: int, k: int = 0):
    """Device ``i`` sends its adapter of round ``u`` (``up``, ``k`` micro-batches) or receives the average from now,
    over the leg holding now; the upload's arrival is posted to its server. Returns (as a generator, once it has
    arrived) whether it did, False when the device leaves first."""
    engine = fleet.engine
    t, pause, stop = engine.env.now, m.pause, m.stop
    leg = m.legs[m.leg_at(t)]
    if up:
        m.uploads.append(t)
        secs = d.sync_up_s if constant else span(leg.up_rate(pause), t, d.sync_bytes * 8.0)
    else:
        secs = d.sync_down_s if constant else span(leg.down_rate(pause), t, d.sync_bytes * 8.0)
        m.downloads += present(m, t, stop)  # round u's average, sent even if cut off
    if t + secs > stop or secs == math.inf:
        fleet.leave(i, u, _gone(m, t, stop))
        return False
    record_online(engine, ("link:" if up else "downlink:") + d.name, "send", t, t + secs, -1, d.name, pause, secs)
    if up:
        m.send_s += online(pause, t, t + secs)
        m.syncs_sent += 1
        m.sent = fleet.plan[i][u][2]
    else:
        m.recv_s += online(pause, t, t + secs)
    yield engine.env.timeout(secs + (leg.up_l if up else leg.down_l))
    if up:
        fleet.post(fleet.at[i], ("adapter", i, k, fleet.epoch_of(i, u)))
    return True


def present(m: Motion, t: float, stop: float) -> bool:
    """Whether a server's send at ``t`` reaches the device, so that the runtime counts it: it has not dropped and will
    be online again (``trainer.transport.dynamics.departed``)."""
    return t < stop and (m.avail is None or next_online(m.avail, t) < math.inf)


def _gone(m: Motion, t: float, stop: float) -> float:
    """When a device whose work from ``t`` never ends leaves: its drop, or when it goes offline for good."""
    return stop if stop < math.inf else gone_at(m.avail, t)
