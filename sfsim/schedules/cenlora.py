"""CenLoRA (alias ``centralized``): all data already at the server; no device work, no traffic.

Each server trains on the micro-batches of the devices assigned to it: its ``count`` workers take
them from one shared source (whole-model ``F`` then ``B`` or fused ``BW``); every ``accumulate``
micro-batches a worker runs its queued W's and a ``step``, plus a final one for a partial window.
The source is always ready, so deferred W's simply run before each step. Micro-batches are
attributed to devices in proportional order (as a shuffled central dataset would mix them), which
is what ``stream_mixing`` sees. With no device links and the data at the server from the start,
handovers, time-varying links and availability do not apply: the result says so
(``SimResult.dynamic_network``, :func:`sfsim.schedules.network.applies`).

With several servers and ``training.sync`` the steps (counted over a server's workers) join the servers'
backhaul rounds as in the runtime (:class:`sfsim.network.backhaul.ServerRounds`): before each step with
``every: 1`` in ``sync`` mode, else after every ``every``-th; then the servers go epoch by epoch as the runtime
(a step on each epoch's partial window, the closing rounds once every worker is done).

Over several epochs with ``training.eval_samples`` each server waits between two epochs as the runtime's
``train_server`` (evaluation, adapter, checkpoint: :mod:`sfsim.cost.epochend`, lane ``epoch-end:<server>``; after the
closing rounds with several servers): its epochs then go one at a time as the runtime's (each shuffled on its own,
a step on its partial window), without backhaul rounds too.
"""

from __future__ import annotations

from sfsim.engine.pool import DeviceTimes, Engine, ProportionalPolicy, ServerTimes, StreamMixing
from sfsim.network.backhaul import ServerRounds, sync_spec
from sfsim.schedules.common import Job, ReplayConfig, ReplaySetup, groups
from sfsim.schedules.network import not_applicable


def build(setup: ReplaySetup, cache: bool = False) -> Job:
    """Stage durations and FLOPs for CenLoRA (whole model with LoRA in every block, on the server)."""
    sc, cm, idx, L = setup.scenario, setup.cm, setup.server_index, setup.scenario.arch.n_layers
    full = cm.full_model()
    params = cm.trainable_params(range(L), head=True)
    servers = [ServerTimes(s.name, s.count, cm.optimizer_seconds(params, s), warmup=cm.server_warmup(s))
               for s in sc.servers]
    job = Job([], servers, server_flops={s.name: 0.0 for s in sc.servers})
    for d in sc.devices:
        srv = sc.server_by_name[setup.assignment[d.name]]
        _, n = setup.micro_batches(d)
        sf, sb, sw = cm.seconds(full, srv)
        dt = DeviceTimes(d.name, idx[srv.name], n, sent=0, srv_f=sf, srv_b=sb, srv_w=sw, **setup.partial(d))
        job.devices.append(dt)
        job.device_flops[d.name] = 0.0
        job.server_flops[srv.name] += dt.units(n) * full.total
    job.network = not_applicable(setup.scenario)
    job.sync = sync_spec(sc, cm.adapter_bytes(range(L), head=True))  # the server's optimizer: LoRA and head
    return job


class _Source:
    """The server's local data: micro-batches handed out in proportional (well-mixed) order.

    ``epoch``: only that epoch's micro-batches (with backhaul sync, each epoch ends with its rounds), recorded in
    ``mixing`` (the server's, made by epoch 0).
    """

    def __init__(self, engine: Engine, srv: ServerTimes, job: Job, members: list[int], epoch: int | None = None,
                 mixing: StreamMixing | None = None):
        totals = [job.devices[i].n if i in set(members) else 0 for i in range(len(job.devices))]
        spans = {i: (0, job.devices[i].n) for i in members}
        if epoch is not None:
            per = {i: job.devices[i].per_epoch or job.devices[i].n for i in members}
            spans = {i: (min(epoch * per[i], job.devices[i].n), min((epoch + 1) * per[i], job.devices[i].n))
                     for i in members}
        counts = [spans[i][1] - spans[i][0] if i in spans else 0 for i in range(len(job.devices))]
        self.policy = ProportionalPolicy([max(t, 1) for t in counts])
        for i, (lo, hi) in spans.items():
            self.policy.push_many(i, lo, hi - lo)
        self.mixing = mixing if mixing is not None else StreamMixing(totals)
        engine.mixing[srv.name] = self.mixing

    def take(self) -> tuple[int, int] | None:
        """The next (device, micro-batch), or None when the data is used up."""
        if not self.policy:
            return None
        i, n = self.policy.pop()
        self.mixing.add(i)
        return i, n


def run(engine: Engine, job: Job, cfg: ReplayConfig, sequential: bool = False) -> None:
    """Start ``count`` worker processes per server that holds data (with backhaul sync: :func:`_synced`)."""
    engine.arm(job.servers)  # each worker lane's first forward pays its server's warm-up
    if job.sync is not None:
        _synced(engine, job, cfg)
        return
    if _epoch_ends(engine, job) > 1:  # the servers' epoch-end wait: epoch by epoch
        _by_epochs(engine, job, cfg)
        return
    for k, members in groups(job.devices).items():
        srv = job.servers[k]
        source = _Source(engine, srv, job, members)
        busy = [0.0]
        engine.on_finish(lambda busy=busy, name=srv.name: engine.server_busy.__setitem__(name, busy[0]))
        for w in range(srv.count):
            engine.env.process(_worker(engine, source, srv, w, job.devices, cfg, busy))
    for d in job.devices:
        engine.device_busy[d.name] = engine.up_bytes[d.name] = engine.down_bytes[d.name] = 0.0
    for srv in job.servers:
        engine.server_busy.setdefault(srv.name, 0.0)


def _worker(engine: Engine, source: _Source, srv: ServerTimes, w: int, devices: list[DeviceTimes],
            cfg: ReplayConfig, busy: list[float]):
    env, rec, lane = engine.env, engine.record, srv.lane(w)
    queued: list[tuple[int, int]] = []
    done = 0
    while True:
        nxt = source.take()
        t0 = t = env.now
        if nxt is not None:
            i, n = nxt
            d = devices[i]
            x = d.size(n)  # the last micro-batch of an epoch may be partial
            f_s = d.srv_f * x + engine.warm_up(lane)  # the lane's first forward: its warm-up (ServerTimes.warmup)
            rec(lane, "F", t, f_s, n, d.name)
            t += f_s
            if cfg.decompose:
                rec(lane, "B", t, d.srv_b * x, n, d.name)
                t += d.srv_b * x
                queued.append((i, n))
            else:
                rec(lane, "BW", t, (d.srv_b + d.srv_w) * x, n, d.name)
                t += (d.srv_b + d.srv_w) * x
            done += 1
        if done and (done == cfg.accumulate or nxt is None):
            for i, n in queued:
                w_s = devices[i].srv_w * devices[i].size(n)
                rec(lane, "W", t, w_s, n, devices[i].name)
                t += w_s
            queued.clear()
            rec(lane, "step", t, srv.step)
            t += srv.step
            done = 0
        busy[0] += t - t0
        if t > t0:
            yield env.timeout(t - t0)
        if nxt is None:
            return


def _epoch_ends(engine: Engine, job: Job) -> int:
    """The run's epochs when some server waits at an epoch's end (:mod:`sfsim.cost.epochend`), else 0."""
    if not any(w > 0 for w in engine.epoch_end.values()):
        return 0
    return max((-(-d.n // (d.per_epoch or d.n)) for d in job.devices if d.n), default=0)


def _by_epochs(engine: Engine, job: Job, cfg: ReplayConfig) -> None:
    """:func:`run` one epoch at a time, each server's epoch-end wait between two (no backhaul rounds)."""
    by_server, epochs = groups(job.devices), _epoch_ends(engine, job)
    for k, srv in enumerate(job.servers):  # every server evaluates between epochs, one without data too
        busy = [0.0]
        engine.on_finish(lambda busy=busy, name=srv.name: engine.server_busy.__setitem__(name, busy[0]))
        engine.env.process(_epochs(engine, job, cfg, k, by_server.get(k, []), None, busy, epochs))
    for d in job.devices:
        engine.device_busy[d.name] = engine.up_bytes[d.name] = engine.down_bytes[d.name] = 0.0


def _epoch_end(engine: Engine, name: str):
    """Server ``name``'s wait between two epochs (evaluation, adapter, checkpoint: :mod:`sfsim.cost.epochend`), as the
    runtime's ``train_server``: its next epoch starts after it."""
    wait = engine.epoch_end.get(name, 0.0)
    if wait > 0:
        engine.record(f"epoch-end:{name}", "epoch_end", engine.env.now, wait)
        engine.epoch_end_waited.add(name)
        yield engine.at(engine.env.now + wait)


def _synced(engine: Engine, job: Job, cfg: ReplayConfig) -> None:
    """:func:`run` with the servers' backhaul rounds, epoch by epoch as the runtime: each epoch's micro-batches, a
    step on its partial window, then the closing rounds once the server's workers are done (every server, one
    without data too); a worker's steps join the rounds (counted over the server's workers)."""
    backhaul, by_server = job.sync.start(engine), groups(job.devices)
    for k, srv in enumerate(job.servers):
        sync = ServerRounds(backhaul, k, job.sync.payload, job.sync.closing,
                            step=lambda t, srv=srv: _drained_step(engine, srv, t))
        busy = [0.0]
        engine.on_finish(lambda busy=busy, name=srv.name: engine.server_busy.__setitem__(name, busy[0]))
        engine.env.process(_epochs(engine, job, cfg, k, by_server.get(k, []), sync, busy, job.sync.epochs))
    for d in job.devices:
        engine.device_busy[d.name] = engine.up_bytes[d.name] = engine.down_bytes[d.name] = 0.0


def _epochs(engine: Engine, job: Job, cfg: ReplayConfig, k: int, members: list[int], sync: ServerRounds | None,
            busy: list[float], epochs: int):
    """Server ``k``'s epochs: its workers over the epoch's micro-batches, then the epoch's last backhaul rounds
    (``sync``; None: none) and, but after the last, its epoch-end wait."""
    srv, mixing = job.servers[k], None
    for e in range(epochs):
        workers = []
        if members:
            source = _Source(engine, srv, job, members, epoch=e, mixing=mixing)
            mixing, alive = source.mixing, [srv.count]
            workers = [engine.env.process(
                _synced_worker(engine, source, srv, w, job.devices, cfg, busy, sync, alive) if sync is not None
                else _worker(engine, source, srv, w, job.devices, cfg, busy)) for w in range(srv.count)]
        yield engine.env.all_of(workers)
        if sync is not None:
            yield from sync.finish(engine.env.now)
        if e + 1 < epochs:
            yield from _epoch_end(engine, srv.name)


def _drained_step(engine: Engine, srv: ServerTimes, t: float) -> float:
    """The step a server with nothing left takes with the others (joint rounds): on its first lane."""
    engine.record(srv.lane(0), "step", t, srv.step)
    return t + srv.step


def _synced_worker(engine: Engine, source: _Source, srv: ServerTimes, w: int, devices: list[DeviceTimes],
                   cfg: ReplayConfig, busy: list[float], sync: ServerRounds, alive: list[int]):
    """:func:`_worker` whose steps join the backhaul rounds (the server's last step: its last worker's last)."""
    env, rec, lane = engine.env, engine.record, srv.lane(w)
    queued: list[tuple[int, int]] = []
    done = 0
    while True:
        nxt = source.take()
        t = env.now
        if nxt is not None:
            i, n = nxt
            d = devices[i]
            x = d.size(n)
            f_s = d.srv_f * x + engine.warm_up(lane)  # the lane's first forward: its warm-up (ServerTimes.warmup)
            ops = [("F", f_s), ("B", d.srv_b * x)] if cfg.decompose else [("F", f_s), ("BW", (d.srv_b + d.srv_w) * x)]
            for op, dur in ops:
                rec(lane, op, t, dur, n, d.name)
                t += dur
                busy[0] += dur
            queued += [(i, n)] if cfg.decompose else []
            done += 1
        if done and (done == cfg.accumulate or nxt is None):
            for i, n in queued:
                w_s = devices[i].srv_w * devices[i].size(n)
                rec(lane, "W", t, w_s, n, devices[i].name)
                t, busy[0] = t + w_s, busy[0] + w_s
            queued.clear()
            last = not source.policy and alive[0] == 1  # the data is used up and no other worker is busy
            t = yield from sync.before_step(t, last)
            rec(lane, "step", t, srv.step)
            t, busy[0], done = t + srv.step, busy[0] + srv.step, 0
            t = yield from sync.after_step(t, last)
        if t > env.now:
            yield env.timeout(t - env.now)
        if nxt is None:
            alive[0] -= 1
            return
