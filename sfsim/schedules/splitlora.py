"""SplitLoRA: split federated learning with LoRA on both sides, replayed as the trainer runs it.

This follows :mod:`trainer.methods.splitlora` on the distributed runtime step for step, per server
(the shared server model runs on one accelerator, worker 0; FedAvg FLOPs are not counted):

* **A micro-batch**: the server sends the client a ``fwd`` command; the client runs ``F`` once it has
  the command and is free, and sends activations and labels up; the server runs ``F``, ``B`` (the
  cut-layer gradient goes down on lane ``downlink:<dev>`` now), ``W`` (fused: ``BW``, then the
  gradient), and a ``step`` after every ``accumulate`` (A) micro-batches it trained on; only then does
  it send that client its next ``fwd``. The client runs ``B`` and ``W`` when the gradient arrives and a
  ``step`` after every A of its own backward passes. A client never has two micro-batches out, and
  computes while the server serves the others. Commands (``fwd``, ``sync``) carry no payload: one
  downlink latency, queued behind what is already on that downlink (a gradient, an average).
* **Client order** (``training.client_order``, :data:`CLIENT_ORDERS`):

  - ``interleaved`` (SplitLoRA's reference code): the clients' micro-batches in the server's order.
    ``training.server_policy`` ``paced-proportional`` or ``proportional`` (the trainer's default
    ``--server-order proportional``) and ``paced-round-robin`` or ``round-robin`` are the trainer's
    fixed orders (:func:`sfsim.engine.pacing.server_order`, one per epoch): the server waits for the named
    client even when others have arrived. ``fifo`` (the scenario default) and ``pool`` take arrivals in
    order, as ``--server-order fifo`` on the distributed runtime (the trainer has no pool for
    SplitLoRA). Training goes in *segments* of ``fedavg_every`` server steps (``fedavg_every`` x A
    micro-batches; the count runs on across epochs): the server sends ``fwd`` only for its segment's
    micro-batches, steps on a partial window at its end, then FedAvg: every client gets ``sync``, steps
    on a partial window, uploads its adapters; once all have arrived the server runs ``aggregate``
    (``aggregate`` seconds per client) and sends the average down to every client. Each epoch ends
    with a segment end and a FedAvg.
  - ``sequential`` (classic split learning): client after client in device order, each over its whole
    epoch; after a client's last micro-batch the server steps on a partial window and sends ``sync``,
    the client steps on its own and uploads its adapters, and the server hands them down to the next
    client before its first ``fwd`` (the very first client of the run starts from the initial
    adapters). No FedAvg and no aggregate; ``fedavg_every`` and ``server_policy`` do not apply.

Until this model the simulator let clients run concurrently on a FIFO server lane with a FedAvg
barrier every ``fedavg_every`` micro-batches of each client and a step after every micro-batch; the
trainer does none of that (see ``tests/test_schedules.py`` for the hand-derived timelines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sfsim.engine.pacing import server_order
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes, StreamMixing
from sfsim.schedules import (
    Barrier,
    Job,
    RunConfig,
    Setup,
    aggregate_seconds,
    groups,
    link_seconds,
)

#: SplitLoRA's client orders (``training.client_order``; the trainer's ``--client-order``).
CLIENT_ORDERS = ("interleaved", "sequential")
#: ``training.server_policy`` -> the trainer's fixed order it stands for (absent: arrival order).
FIXED_ORDERS = {"paced-proportional": "proportional", "proportional": "proportional",
                "paced-round-robin": "round-robin", "round-robin": "round-robin"}


def build(setup: Setup, cache: bool = False) -> Job:
    """Stage durations and FLOPs for SplitLoRA (``setup.splits`` = client blocks per device).

    Returns:
        A :class:`~sfsim.schedules.Job`; ``cache`` is ignored (the client trains: nothing to reuse).
    """
    sc, cm, idx, L = setup.scenario, setup.cm, setup.server_index, setup.scenario.arch.n_layers
    servers = []
    for s in sc.servers:
        cuts = [setup.splits[d.name] for d in sc.devices if setup.assignment[d.name] == s.name] or [0]
        # one shared server model: LoRA on blocks min(cut)..L-1 and the head
        params = cm.trainable_params(range(min(cuts), L), head=True)
        servers.append(ServerTimes(s.name, s.count, cm.optimizer_seconds(params, s), 0.0))
    job = Job([], servers, server_flops={s.name: 0.0 for s in sc.servers})
    for d in sc.devices:
        k, srv = setup.splits[d.name], sc.server_by_name[setup.assignment[d.name]]
        _, n = setup.micro_batches(d)
        client, server = cm.splitlora_client(k), cm.splitlora_server(k)
        f, b, w = cm.seconds(client, d)
        sf, sb, sw = cm.seconds(server, srv)
        up, down = cm.uplink_bytes(k), cm.gradient_bytes(k)
        adapter_params = cm.trainable_params(range(k), head=False)
        sync = cm.adapter_bytes(range(k), head=False)
        dt = DeviceTimes(
            d.name, idx[srv.name], n, f=f, b=b, w=w, step=cm.optimizer_seconds(adapter_params, d),
            up_s=link_seconds(up, d.uplink), up_l=d.uplink.latency, down_s=link_seconds(down, d.downlink),
            down_l=d.downlink.latency, sync_up_s=link_seconds(sync, d.uplink),
            sync_down_s=link_seconds(sync, d.downlink), srv_f=sf, srv_b=sb, srv_w=sw,
            up_bytes=up, down_bytes=down, sync_bytes=sync, **setup.partial(d))
        job.devices.append(dt)
        job.device_flops[d.name] = dt.units(n) * client.total
        job.server_flops[srv.name] += dt.units(n) * server.total
        k_agg = servers[idx[srv.name]]
        servers[idx[srv.name]] = ServerTimes(k_agg.name, k_agg.count, k_agg.step,
                                             max(k_agg.aggregate, aggregate_seconds(adapter_params, srv, cm)))
    from sfsim.schedules import dynamic_split  # varying links, pause: sfsim/schedules/dynamic_split.py

    job.network = dynamic_split.network(setup, job)
    return job


def run(engine: Engine, job: Job, cfg: RunConfig, sequential: bool = False) -> None:
    """Start one process per server that replays the trainer's server loop over its clients."""
    if job.network is not None:  # the dynamic network: the same loop over its compute and links
        from sfsim.schedules import dynamic_split

        return dynamic_split.run(engine, job, cfg)
    for k, members in groups(job.devices).items():
        srv = job.servers[k]
        engine.mixing[srv.name] = StreamMixing([d.n if d.server == k else 0 for d in job.devices])
        for i in members:
            name = job.devices[i].name
            engine.device_busy[name] = engine.up_bytes[name] = engine.down_bytes[name] = 0.0
        engine.env.process(_Server(engine, srv, job.devices, members, cfg).run())
    for srv in job.servers:
        engine.server_busy.setdefault(srv.name, 0.0)


@dataclass(eq=False)
class _Client:
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


class _Server:
    """The trainer's SplitLoRA server loop for one server's clients: times by arithmetic, then one wait."""

    def __init__(self, engine: Engine, srv: ServerTimes, devices: list[DeviceTimes], members: list[int],
                 cfg: RunConfig):
        self.engine, self.srv, self.cfg, self.lane = engine, srv, cfg, srv.lane(0)
        self.clients = [_Client(i, devices[i]) for i in members if devices[i].n]
        self.mix = engine.mixing[srv.name]
        self.free = self.end = self.busy = 0.0  # server free at; last instant of the run; busy seconds
        self.steps = self.window = 0  # server steps so far; micro-batches since its last step
        self.relay = False  # sequential: some client has handed its adapters on

    def run(self):
        """The SimPy process: every epoch in the client order, then wait until the last event."""
        per = {c: c.d.per_epoch or c.d.n for c in self.clients}
        epochs = max((-(-c.d.n // per[c]) for c in self.clients), default=0)
        for e in range(epochs):
            counts = {c: k for c in self.clients if (k := min(per[c], c.d.n - e * per[c])) > 0}
            if self.cfg.client_order == "sequential":
                self._sequential(counts)
            else:
                self._interleaved(counts)
        self.engine.server_busy[self.srv.name] = self.busy
        yield self.engine.at(self.end)

    # -- the two client orders (trainer.methods.splitlora: server_epoch, _sequential) -------------------
    def _interleaved(self, counts: dict[_Client, int]) -> None:
        every, acc = self.cfg.fedavg_every, self.cfg.accumulate
        kind = FIXED_ORDERS.get(self.cfg.policy)
        by_name = {c.d.name: c for c in counts}
        order = [by_name[n] for n in server_order({c.d.name: k for c, k in counts.items()}, kind)] if kind else None
        left = dict(counts)  # micro-batches each client has still to train on this epoch
        while left:
            quota = (every - self.steps % every) * acc  # micro-batches to the next FedAvg
            if order is not None:
                seg, order = order[:quota], order[quota:]
                self._fixed_segment(seg, left)
            else:
                self._arrival_segment(quota, left)
            self._server_step()  # a partial window at the segment's end
            if self.steps % every == 0 and left:
                self._fedavg()
        self._fedavg()

    def _sequential(self, counts: dict[_Client, int]) -> None:
        for c, k in counts.items():
            if self.relay:  # the previous client's adapters, down before the first fwd
                self._down(c, self.free, c.d.sync_down_s, -1, c.d.sync_bytes)
            self._issue(c, self.free)
            for j in range(k):
                self._serve(c)
                if j + 1 < k:
                    self._issue(c, self.free)
            self._server_step()
            self._upload_adapters(c)
            self.free, c.arrival = max(self.free, c.arrival), None  # the server waits for them
            self.relay = True

    # -- segments between FedAvg rounds (trainer: _segment) ----------------------------------------------
    def _fixed_segment(self, seg: list[_Client], left: dict[_Client, int]) -> None:
        """Serve ``seg`` in its order, waiting for each named client's micro-batch."""
        todo = {c: 0 for c in left}
        for c in seg:
            todo[c] += 1
        for c in left:
            if todo[c]:
                self._issue(c, self.free)
        for c in seg:
            self._serve(c)
            todo[c] -= 1
            self._count_down(left, c)
            if todo[c]:
                self._issue(c, self.free)

    def _arrival_segment(self, quota: int, left: dict[_Client, int]) -> None:
        """Serve ``quota`` micro-batches in arrival order (ties: device order).

        A turn of a client that is gone (arrival ``-inf``, set by :mod:`sfsim.schedules.dynamic_split` on the
        dynamic network) is skipped and does not count toward ``quota``.
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
            self._serve(c)
            self._count_down(left, c)
            served, issued = served + (not skipped), issued - skipped
            if issued < quota and unissued[c]:
                self._issue(c, self.free)
                unissued[c] -= 1
                issued += 1
                out.append(c)

    @staticmethod
    def _count_down(left: dict[_Client, int], c: _Client) -> None:
        left[c] -= 1
        if not left[c]:
            del left[c]

    # -- one micro-batch ---------------------------------------------------------------------------------
    def _issue(self, c: _Client, t: float) -> None:
        """``fwd`` sent at ``t``: the client's forward and upload of its next micro-batch."""
        d, n = c.d, c.next
        c.next, c.mb, x = n + 1, n, d.size(n)  # the last micro-batch of an epoch may be partial
        start = max(c.free, self._down(c, t, 0.0, n))
        c.free = self._device(c, "F", start, d.fwd(n), n)
        c.arrival = self._up(c, c.free, d.up_s * x, n, d.up_bytes * x)

    def _serve(self, c: _Client) -> None:
        """Server F, B (gradient down), W, maybe its step; the client's B, W, maybe its step."""
        d, n, acc = c.d, c.mb, self.cfg.accumulate
        x = d.size(n)
        t = self._op("F", max(self.free, c.arrival), d.srv_f * x, n, d.name)
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
            self._server_step()

    def _server_step(self) -> None:
        """The server's step on what it accumulated (nothing: no step)."""
        if self.window:
            self.free = self._op("step", self.free, self.srv.step, -1, "")
            self.steps, self.window = self.steps + 1, 0

    def _client_step(self, c: _Client, mb: int) -> None:
        c.free = self._device(c, "step", c.free, c.d.step, mb)
        c.since_step = 0

    # -- adapters ----------------------------------------------------------------------------------------
    def _upload_adapters(self, c: _Client) -> None:
        """``sync`` sent now: the client steps on a partial window and uploads (``c.arrival``: at the server)."""
        c.free = max(c.free, self._down(c, self.free, 0.0, -1))
        if c.since_step:
            self._client_step(c, -1)
        c.arrival = self._up(c, c.free, c.d.sync_up_s, -1, c.d.sync_bytes)

    def _fedavg(self) -> None:
        """Every client uploads; the server averages once all have arrived and sends the average down."""
        for c in self.clients:
            self._upload_adapters(c)
        t = max([self.free] + [c.arrival for c in self.clients])
        for c in self.clients:
            c.arrival = None
        self.free = self._op("aggregate", t, self.srv.aggregate * len(self.clients), -1, "")
        for c in self.clients:
            self._down(c, self.free, c.d.sync_down_s, -1, c.d.sync_bytes)

    # -- lanes -------------------------------------------------------------------------------------------
    def _op(self, op: str, t: float, dur: float, mb: int, device: str) -> float:
        self.engine.record(self.lane, op, t, dur, mb, device)
        self.busy += dur
        self.end = max(self.end, t + dur)
        return t + dur

    def _device(self, c: _Client, op: str, t: float, dur: float, mb: int) -> float:
        self.engine.record(c.d.name, op, t, dur, mb, c.d.name)
        self.engine.device_busy[c.d.name] += dur
        self.end = max(self.end, t + dur)
        return t + dur

    def _up(self, c: _Client, t: float, dur: float, mb: int, nbytes: float) -> float:
        """A message queued on the uplink at ``t``; returns its arrival at the server."""
        start = max(t, c.up_free)
        c.up_free = start + dur
        self.engine.record("link:" + c.d.name, "send", start, dur, mb, c.d.name)
        self.engine.up_bytes[c.d.name] += nbytes
        self.end = max(self.end, start + dur + c.d.up_l)
        return start + dur + c.d.up_l

    def _down(self, c: _Client, t: float, dur: float, mb: int, nbytes: float = 0.0) -> float:
        """A message queued on the downlink at ``t`` (a command: ``dur`` 0); returns its arrival."""
        start = max(t, c.down_free)
        c.down_free = start + dur
        self.engine.record("downlink:" + c.d.name, "send", start, dur, mb, c.d.name)
        self.engine.down_bytes[c.d.name] += nbytes
        self.end = max(self.end, start + dur + c.d.down_l)
        return start + dur + c.d.down_l


def sync(engine: Engine, barrier: Barrier, d: DeviceTimes):
    """Upload adapters, wait for the barrier's aggregate, download the average (a process step)."""
    env, rec = engine.env, engine.record
    rec("link:" + d.name, "send", env.now, d.sync_up_s, -1, d.name)
    yield env.timeout(d.sync_up_s + d.up_l)
    yield barrier.arrive()
    rec("downlink:" + d.name, "send", env.now, d.sync_down_s, -1, d.name)
    yield env.timeout(d.sync_down_s + d.down_l)
