"""SplitLoRA's schedule: stage times from the cost model (:func:`build`) and the server loops' processes (:func:`run`)."""

from __future__ import annotations

import bisect
import math

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes, StreamMixing
from sfsim.network.backhaul import ServerRounds, SyncSpec, sync_spec
from sfsim.schedules.common import Job, ReplayConfig, ReplaySetup, aggregate_seconds, groups, link_seconds
from sfsim.schedules.network import every_device, trace_moves
from sfsim.schedules.splitlora.moves import hands_over, run_jointly
from sfsim.schedules.splitlora.server import Client, Server

#: SplitLoRA's client orders (``training.client_order``; the trainer's ``--client-order``).


def build(setup: ReplaySetup, cache: bool = False) -> Job:
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
        servers.append(ServerTimes(s.name, s.count, cm.optimizer_seconds(params, s), 0.0, cm.server_warmup(s)))
    job = Job([], servers, server_flops={s.name: 0.0 for s in sc.servers})
    for d in sc.devices:
        k, srv = setup.splits[d.name], sc.server_by_name[setup.assignment[d.name]]
        _, n = setup.micro_batches(d)
        client, server = cm.splitlora_client(k), cm.splitlora_server(k)
        f, b, w = cm.seconds(client, d)
        sf, sb, sw = cm.seconds(server, srv)
        # the wire codec (0 for fp32): activations encoded on the client and decoded on the server, the
        # cut-layer gradient encoded on the server (before it goes down) and decoded on the client
        f, b = f + cm.codec_seconds(d, "encode"), b + cm.codec_seconds(d, "decode")
        sf, sb = sf + cm.codec_seconds(srv, "decode"), sb + cm.codec_seconds(srv, "encode")
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
                                             max(k_agg.aggregate, aggregate_seconds(adapter_params, srv, cm)),
                                             k_agg.warmup)
    job.network = network(setup, job)
    cut = max(setup.splits.values(), default=0)  # the runtime's one cut for every client
    payload = cm.adapter_bytes(range(cut, L), head=True)  # the server's optimizer: its LoRA and the head
    closing = payload + cm.adapter_bytes(range(cut), head=False)  # + the clients' average
    job.sync = sync_spec(sc, payload, closing) or unshaped_rounds(sc, job, payload, closing)
    return job


def unshaped_rounds(sc, job: Job, payload: float, closing: float) -> SyncSpec | None:
    """Each epoch's closing round on links that take no time, where no server declares a backhaul link but the epochs
    must end together: handovers between servers and the epoch-end wait (``training.eval_samples``, several epochs).

    ``sfsim run`` on several servers always ends each epoch with its closing round (:func:`trainer.run.launch._server_sync`:
    its links only unshaped), a barrier, and then each server evaluates and saves (``train_server``) before it sends
    its next epoch's first commands, a client that moved taking its next epoch on the server holding it then. Without
    the wait the rounds take no time and the loops keep their epochs back to back (:func:`sync_spec`: nothing
    modelled); with it they wait for each other as the runtime's do. None where this does not apply."""
    tr = sc.training
    if (len(sc.servers) < 2 or tr.eval_samples is None or tr.epochs < 2 or job.network is None
            or not hands_over(job.network.motions)):
        return None
    return SyncSpec(tuple((s.name, math.inf, 0.0) for s in sc.servers), None, "sync", payload, closing, tr.epochs)


def network(setup, job):
    """The job's :class:`sfsim.schedules.network.FedNetwork`, or None when nothing moves or varies."""
    net = every_device(setup, job)
    if net is not None:
        for d, m in zip(setup.scenario.devices, net.motions.values(), strict=True):
            m.done = 0  # counted as the clients' W's end; m.sent as their uploads end
            m.srv_flops = setup.cm.splitlora_server(setup.splits[d.name]).total
    return net


def run(engine: Engine, job: Job, cfg: ReplayConfig, sequential: bool = False) -> None:
    """Start one process per server that replays the trainer's server loop over its clients.

    Each server's loop (:class:`Server`) computes its run ahead by arithmetic, over constant links or
    following the clients' links and presence on the dynamic network; with handovers the servers'
    loops run jointly in time (:mod:`sfsim.schedules.splitlora.moves`).
    """
    engine.arm(job.servers)  # the server's first forward pays its warm-up (Server._serve)
    net = job.network
    if net is not None and hands_over(net.motions):
        run_jointly(engine, job, cfg, net)
    else:
        lost: set[int] = set()
        by_server, everyone = groups(job.devices), []
        rounds = job.sync.start(engine) if job.sync is not None else None
        for k in (range(len(job.servers)) if rounds is not None else by_server):  # with sync: every server
            srv, members = job.servers[k], by_server.get(k, [])
            mix = engine.mixing[srv.name] = StreamMixing([d.n if d.server == k else 0 for d in job.devices])
            for i in members:
                name = job.devices[i].name
                engine.device_busy[name] = engine.up_bytes[name] = engine.down_bytes[name] = 0.0
            clients = [Client(i, job.devices[i]) for i in members if job.devices[i].n]
            everyone += clients
            loop = Server(engine, srv, clients, cfg, mix, net.motions if net is not None else None, lost)
            if rounds is not None:
                loop.sync = ServerRounds(rounds, k, job.sync.payload, job.sync.closing, always_close=True,
                                         step=loop.drained_step)
                loop.epochs = job.sync.epochs
            engine.env.process(loop.run())
        if net is not None:  # handovers that keep each device on its server
            engine.on_finish(lambda: switched(net.motions, everyone))

        for srv in job.servers:
            engine.server_busy.setdefault(srv.name, 0.0)
    if net is not None and engine.events is not None:
        for i, m in net.moving.items():
            engine.on_finish(lambda d=job.devices[i], m=m: trace_moves(engine, d, m))


def switched(motions, clients) -> None:
    """Count each motion's micro-batches whose upload started before each of its handovers."""
    starts = {c.i: c.starts for c in clients}
    for i, m in motions.items():
        if len(m.legs) > 1:
            m.switched_at = [bisect.bisect_left(starts.get(i, []), leg.at) for leg in m.legs[1:]]
