"""SplitLoRA's server loop: one server's clients driven as the trainer drives them (see :mod:`sfsim.schedules.splitlora`).

:class:`Server` computes a server's whole run by arithmetic over three primitives (a client's
compute, a message on its uplink, one on its downlink), then waits once. With constant links (no
dynamic network) the primitives are plain sums; on the dynamic network (``motions``) they follow
the shared rules of :mod:`sfsim.network.legs`:

* a message (activations, adapters up; a gradient, a FedAvg average, a command down) queued at
  ``t`` starts when its link is free and takes the integral of the link's rate: ``bits`` at the
  link's nominal ``bandwidth`` take ``dur`` seconds in the static schedule, so they end where the
  rate's integral from the start reaches ``dur x bandwidth`` (exactly ``dur`` on a constant rate);
* under ``churn: pause`` compute and transfers progress only while the client is online (a command,
  zero bits, reaches it when it is back online); the server waits for it as it would for a slow
  client, so every micro-batch still trains;
* a client that drops (``churn: drop``: at its first outage; it joins at its first online instant)
  or whose windows end with work left is *gone* from the first op or message that would outlast it:
  the server skips its later turns (in arrival order they do not count toward the segment's
  ``fedavg_every`` steps; in a fixed order its slots are skipped), FedAvg averages the uploads that
  arrive, and messages to it go nowhere. A micro-batch trains when its activations were sent (the
  server still runs it when its gradient can no longer reach the client); the others are the
  client's ``samples_not_trained``. Device FLOPs count the micro-batches whose client W ended.

The result's ``uplink_send_s`` / ``downlink_recv_s`` are the seconds the links really spent (for the
radio's energy). A transfer uses the leg holding when it starts: after a handover, its ``uplink``
and ``downlink`` (when given). Without handovers each server's loop plays its whole run ahead by
arithmetic; with them the loops run jointly in time, a client moving from one to another
(:mod:`sfsim.schedules.splitlora.moves`, which states the handover rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sfsim.engine.pacing import FIXED_ORDERS, server_order
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.legs import Motion, gone_at, online, record_online, span, span_at
from sfsim.schedules.common import ReplayConfig
from sfsim.schedules.splitlora.intime import InTime


@dataclass(eq=False)
class Client:
    """One client as its server drives it: stage times, and when its device and links are next free."""

    i: int
    d: DeviceTimes
    free: float = 0.0  # the device ends its current compute
    up_free: float = 0.0  # the uplink ends its current serialisation
    down_free: float = 0.0  # the downlink ends its current serialisation
    next: int = 0  # its next micro-batch over the run
    mb: int = -1  # the micro-batch it has out
    arrival: float | None = None  # when that micro-batch reaches the server (None: nothing out)
    since_step: int = 0  # backward passes since its last optimizer step
    sent_at: float = 0.0  # when its last activation upload started (the dynamic network's legs)
    # with handovers (sfsim.schedules.splitlora.moves): who holds it since when, and its upload starts
    home: int = -1  # the server holding it
    hold: int = 0  # index of the leg it was last handed over on
    since: float = 0.0  # when its current server took it
    joined: float = 0.0  # when its ``join`` reaches that server (the server waits for it until then)
    starts: list[float] = field(default_factory=list)  # start times of its activation uploads
    history: list[tuple[float, int]] = field(default_factory=list)  # (since, server), in time order


class Received:
    """The device order of a server's stream, for a :class:`StreamMixing` once the run's totals are known."""

    def __init__(self):
        self.stream: list[int] = []

    def add(self, i: int) -> None:
        """Record that device ``i``'s micro-batch is next in the stream."""
        self.stream.append(i)


class Server(InTime):
    """The trainer's SplitLoRA server loop for one server's clients: times by arithmetic, then one wait."""

    def __init__(self, engine: Engine, srv: ServerTimes, clients: list[Client], cfg: ReplayConfig, mix,
                 motions: dict[int, Motion] | None = None, lost: set[int] | None = None, k: int = -1, moves=None):
        self.engine, self.srv, self.cfg, self.lane = engine, srv, cfg, srv.lane(0)
        self.clients = clients
        self.mix = mix  # what records the server's stream (a StreamMixing)
        self.motions = motions  # the dynamic network: every client's legs and presence (None: constant links)
        self.lost = lost if lost is not None else set()  # clients gone for good (drop, or windows over)
        # with handovers (run_in_time): this server's index, every server's Moves, and the loop's state
        self.k, self.moves = k, moves
        self.left: dict = {}  # micro-batches each client has still to train this epoch
        self.out: list = []  # clients with a micro-batch out to this server
        self.unissued: dict = {}
        self.pending: list = []  # clients that joined mid-segment, waiting for a fwd
        self.issued = self.quota = 0
        self.moving = 0.0  # a client's ``moved`` reaches this server then (its micro-batch went on to its new one)
        self.closing = False  # in the epoch's last backhaul rounds (a handover due meanwhile waits: run_in_time)
        self.serving = False  # in a segment of run_in_time (a joiner with a micro-batch on its way here counts in it)
        self.stepping = False  # in a step and its backhaul round (the runtime's server reads nothing meanwhile)
        self.deferred: list = []  # idle clients whose leg here ended: released at its next look (Moves.tick)
        self.read = 0.0  # when it last read a micro-batch: the joins that arrived by then are read too (InTime._round)
        self.look = 0.0  # when the runtime's server looks at every client after the serve it is in (InTime.look_at)
        self.wake = None
        self.finished = False
        self.free = self.end = self.busy = 0.0  # server free at; last instant of the run; busy seconds
        self.steps = self.window = 0  # server steps so far; micro-batches since its last step
        self.relay = False  # sequential: some client has handed its adapters on
        self.sync = None  # the backhaul rounds (sfsim.network.backhaul.ServerRounds), when modelled
        self.epochs: int | None = None  # with sync: the run's epochs (a server without clients takes part too)

    def run(self):
        """The SimPy process: every epoch in the client order, then wait until the last event."""
        per = {c: c.d.per_epoch or c.d.n for c in self.clients}
        epochs = max((-(-c.d.n // per[c]) for c in self.clients), default=0) if self.epochs is None else self.epochs
        for e in range(epochs):
            counts = {c: k for c in self.clients if (k := min(per[c], c.d.n - e * per[c])) > 0}
            if self.cfg.client_order == "sequential":
                yield from self._sequential(counts)
            else:
                yield from self._interleaved(counts)
            if self.sync is not None:  # the epoch's last rounds (trainer: Method.train_epoch, finish_sync)
                self.free = yield from self.sync.finish(self.free)
            if e + 1 < epochs:
                self._epoch_end()
        self.engine.server_busy[self.srv.name] = self.busy
        yield self.engine.at(max(self.end, self.engine.env.now))

    def _epoch_end(self) -> None:
        """The server's wait between two epochs (evaluation, adapter, checkpoint: :mod:`sfsim.cost.epochend`, lane
        ``epoch-end:<server>``), as the runtime's ``train_server``: the next epoch's first commands go after it."""
        wait = self.engine.epoch_end.get(self.srv.name, 0.0)
        if wait > 0:
            self.engine.record(f"epoch-end:{self.srv.name}", "epoch_end", self.free, wait)
            self.engine.epoch_end_waited.add(self.srv.name)
            self.free += wait

    # -- the two client orders (trainer.methods.splitlora: server_epoch, _sequential) -------------------
    def _interleaved(self, counts: dict[Client, int]):
        every, acc = self.cfg.fedavg_every, self.cfg.accumulate
        kind = FIXED_ORDERS.get(self.cfg.policy)
        by_name = {c.d.name: c for c in counts}
        order = [by_name[n] for n in server_order({c.d.name: k for c, k in counts.items()}, kind)] if kind else None
        left = dict(counts)  # micro-batches each client has still to train on this epoch
        while left:
            quota = (every - self.steps % every) * acc  # micro-batches to the next FedAvg
            if order is not None:
                seg, order = order[:quota], order[quota:]
                yield from self._fixed_segment(seg, left)
            else:
                yield from self._arrival_segment(quota, left)
            yield from self._server_step()  # a partial window at the segment's end
            if self.steps % every == 0 and left:
                self._fedavg()
        self._fedavg()

    def _sequential(self, counts: dict[Client, int]):
        for c, k in counts.items():
            if self.relay:  # the previous client's adapters, down before the first fwd
                self._down(c, self.free, c.d.sync_down_s, -1, c.d.sync_bytes)
            self._issue(c, self.free)
            for j in range(k):
                yield from self._serve(c)
                if j + 1 < k:
                    self._issue(c, self.free)
            yield from self._server_step()
            self._upload_adapters(c)
            self.free, c.arrival = max(self.free, c.arrival), None  # the server waits for them
            self.relay = True

    # -- segments between FedAvg rounds (trainer: _segment) ----------------------------------------------
    def _fixed_segment(self, seg: list[Client], left: dict[Client, int]):
        """Serve ``seg`` in its order, waiting for each named client's micro-batch."""
        todo = {c: 0 for c in left}
        for c in seg:
            todo[c] += 1
        for c in left:
            if todo[c]:
                self._issue(c, self.free)
        for c in seg:
            yield from self._serve(c)
            todo[c] -= 1
            self._count_down(left, c)
            if todo[c]:
                self._issue(c, self.free)

    def _arrival_segment(self, quota: int, left: dict[Client, int]):
        """Serve ``quota`` micro-batches in arrival order (ties: device order).

        A turn of a client that is gone (arrival ``-inf``: its upload never arrives on the dynamic network)
        is skipped and does not count toward ``quota``.
        """
        unissued, issued = dict(left), 0
        for c in left:
            if issued < quota:
                self._issue(c, self.free)
                unissued[c] -= 1
                issued += 1
        out = [c for c in left if c.arrival is not None]
        served = 0
        while served < quota and out:
            c = min(out, key=lambda c: (c.arrival, c.i))
            out.remove(c)
            skipped = c.arrival == -math.inf
            yield from self._serve(c)
            self._count_down(left, c)
            served, issued = served + (not skipped), issued - skipped
            if issued < quota and unissued[c]:
                self._issue(c, self.free)
                unissued[c] -= 1
                issued += 1
                out.append(c)

    @staticmethod
    def _count_down(left: dict[Client, int], c: Client) -> None:
        left[c] -= 1
        if not left[c]:
            del left[c]

    # -- one micro-batch ---------------------------------------------------------------------------------
    def _issue(self, c: Client, t: float) -> None:
        """``fwd`` sent at ``t``: the client's forward and upload of its next micro-batch."""
        d, n = c.d, c.next
        c.next, c.mb, x = n + 1, n, d.size(n)  # the last micro-batch of an epoch may be partial
        start = max(c.free, self._down(c, t, 0.0, n))
        c.free = self._device(c, "F", start, d.fwd(n), n)
        c.arrival = self._up(c, c.free, d.up_s * x, n, d.up_bytes * x)

    def _serve(self, c: Client):
        """Server F, B (gradient down), W, maybe its step; the client's B, W, maybe its step."""
        if c.arrival == -math.inf:  # its upload never arrived (the client is gone): the turn is skipped
            c.arrival = None
            return
        d, n, acc = c.d, c.mb, self.cfg.accumulate
        x = d.size(n)
        f_s = d.srv_f * x + self.engine.warm_up(self.lane)  # its first forward: the warm-up (ServerTimes.warmup)
        t = self._op("F", max(self.free, c.arrival), f_s, n, d.name)
        c.arrival = None
        if self.cfg.decompose:
            t_grad = t = self._op("B", t, d.srv_b * x, n, d.name)
            t = self._op("W", t, d.srv_w * x, n, d.name)
        else:
            t_grad = t = self._op("BW", t, (d.srv_b + d.srv_w) * x, n, d.name)
        self.free = t
        self.mix.add(c.i)
        got = self._down(c, t_grad, d.down_s * x, n, d.down_bytes * x)
        c.free = self._device(c, "W", self._device(c, "B", max(c.free, got), d.b * x, n), d.w * x, n)
        c.since_step += 1
        if c.since_step == acc:
            self._client_step(c, n)
        self.window += 1
        if self.window == acc:
            yield from self._server_step()

    def _server_step(self):
        """The server's step on what it accumulated (nothing: no step), inside the backhaul rounds when modelled."""
        if self.window:
            self.stepping = self.sync is not None
            if self.sync is not None:  # joint mode: the servers average the gradients first
                self.free = yield from self.sync.before_step(self.free)
            self.free = self._op("step", self.free, self.srv.step, -1, "")
            self.steps, self.window = self.steps + 1, 0
            if self.sync is not None:
                self.free = yield from self.sync.after_step(self.free)
            self.stepping = False

    def drained_step(self, t: float) -> float:
        """The step a server whose epoch is trained takes with the others (joint backhaul rounds); its end."""
        self.free = self._op("step", max(t, self.free), self.srv.step, -1, "")
        return self.free

    def _client_step(self, c: Client, mb: int) -> None:
        c.free = self._device(c, "step", c.free, c.d.step, mb)
        c.since_step = 0

    # -- adapters ----------------------------------------------------------------------------------------
    def _upload_adapters(self, c: Client) -> None:
        """``sync`` sent now: the client steps on a partial window and uploads (``c.arrival``: at the server)."""
        c.free = max(c.free, self._down(c, self.free, 0.0, -1))
        if c.since_step:
            self._client_step(c, -1)
        c.arrival = self._up(c, c.free, c.d.sync_up_s, -1, c.d.sync_bytes)

    def _fedavg(self) -> None:
        """Every client still there uploads; the server averages the uploads that arrive and sends the average down."""
        for c in self.clients:
            self._upload_adapters(c)
        came = [c for c in self.clients if c.arrival != -math.inf]
        t = max([self.free] + [c.arrival for c in came])
        for c in self.clients:
            c.arrival = None
        self.free = self._op("aggregate", t, self.srv.aggregate * len(came), -1, "")
        for c in came:
            self._down(c, self.free, c.d.sync_down_s, -1, c.d.sync_bytes)

    # -- lanes -------------------------------------------------------------------------------------------
    def _op(self, op: str, t: float, dur: float, mb: int, device: str) -> float:
        self.engine.record(self.lane, op, t, dur, mb, device)
        self.busy += dur
        self.end = max(self.end, t + dur)
        return t + dur

    def _device(self, c: Client, op: str, t: float, dur: float, mb: int) -> float:
        if self.motions is not None:
            return self._device_net(c, op, t, dur, mb)
        self.engine.record(c.d.name, op, t, dur, mb, c.d.name)
        self.engine.device_busy[c.d.name] += dur
        self.end = max(self.end, t + dur)
        return t + dur

    def _up(self, c: Client, t: float, dur: float, mb: int, nbytes: float) -> float:
        """A message queued on the uplink at ``t``; returns its arrival at the server."""
        if self.motions is not None:
            return self._up_net(c, t, dur, mb, nbytes)
        start = max(t, c.up_free)
        c.up_free = start + dur
        return self._sent("link:", c, start, dur, mb, nbytes, self.engine.up_bytes, c.d.up_l)

    def _down(self, c: Client, t: float, dur: float, mb: int, nbytes: float = 0.0) -> float:
        """A message queued on the downlink at ``t`` (a command: ``dur`` 0); returns its arrival."""
        if self.motions is not None:
            return self._down_net(c, t, dur, mb, nbytes)
        start = max(t, c.down_free)
        c.down_free = start + dur
        return self._sent("downlink:", c, start, dur, mb, nbytes, self.engine.down_bytes, c.d.down_l)

    def _sent(self, lane: str, c: Client, start: float, dur: float, mb: int, nbytes: float, counted: dict,
              latency: float) -> float:
        """A message on ``lane`` (``link:`` up, ``downlink:`` down) from ``start`` for ``dur``; returns its arrival."""
        name = c.d.name
        self.engine.record(lane + name, "send", start, dur, mb, name)
        counted[name] += nbytes
        self.end = max(self.end, start + dur + latency)
        return start + dur + latency

    # -- primitives: a gone client's are no-ops; an upload that never arrives arrives at -inf ----------
    def _begin(self, c, t: float) -> float:
        """A drop-churn client starts nothing before its first online instant (it joins then)."""
        m = self.motions[c.i]
        return max(t, m.start) if m.churn == "drop" and m.avail is not None else t

    def _outlasts(self, c, t: float, end: float) -> bool:
        """True, and the client is gone from then on, when what runs from ``t`` to ``end`` outlasts it."""
        m = self.motions[c.i]
        if end <= m.stop and end < math.inf:
            return False
        self.lost.add(c.i)
        m.gone = m.stop if m.stop < math.inf else gone_at(m.avail, t)
        if self.moves is not None:
            self.moves.changed()  # servers waiting for it may go on
        return True

    def _device_net(self, c, op: str, t: float, dur: float, mb: int) -> float:
        if c.i in self.lost:
            return t
        m = self.motions[c.i]
        t = self._begin(c, t)
        end = t + (dur if m.pause is None else span(m.pause, t, dur))
        if self._outlasts(c, t, end):
            return t
        record_online(self.engine, c.d.name, op, t, end, mb, c.d.name, m.pause, dur)
        self.engine.device_busy[c.d.name] += dur
        if op == "W" and mb >= 0:
            m.done += 1
        self.end = max(self.end, end)
        return end

    def _up_net(self, c, t: float, dur: float, mb: int, nbytes: float) -> float:
        if c.i in self.lost:
            return -math.inf
        m = self.motions[c.i]
        start = self._begin(c, max(t, c.up_free))
        leg = m.legs[m.leg_at(start)]  # the leg holding when it starts; dur is at the first leg's bandwidth
        secs = span_at(leg.up_rate(m.pause), start, dur, m.legs[0].bandwidth)
        if self._outlasts(c, start, start + secs):
            return -math.inf
        c.up_free, c.sent_at = start + secs, start
        if mb >= 0 and self.moves is None:  # alone: its handovers keep it here (jointly, _give records starts)
            c.starts.append(start)
        record_online(self.engine, "link:" + c.d.name, "send", start, start + secs, mb, c.d.name, m.pause, secs)
        m.send_s += online(m.pause, start, start + secs)
        m.sent += mb >= 0
        self.engine.up_bytes[c.d.name] += nbytes
        self.end = max(self.end, start + secs + leg.up_l)
        return start + secs + leg.up_l

    def _down_net(self, c, t: float, dur: float, mb: int, nbytes: float = 0.0) -> float:
        if c.i in self.lost:
            return t
        m = self.motions[c.i]
        start = self._begin(c, max(t, c.down_free))
        leg = m.legs[m.leg_at(start)]  # a handover's downlink carries what starts after it
        secs = span_at(leg.down_rate(m.pause), start, dur, m.legs[0].down_bw)
        if self._outlasts(c, start, start + secs):
            return t
        c.down_free = start + secs
        record_online(self.engine, "downlink:" + c.d.name, "send", start, start + secs, mb, c.d.name, m.pause, secs)
        m.recv_s += online(m.pause, start, start + secs)
        self.engine.down_bytes[c.d.name] += nbytes
        self.end = max(self.end, start + secs + leg.down_l)
        return start + secs + leg.down_l
