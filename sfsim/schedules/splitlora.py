"""SplitLoRA: split federated learning with LoRA on both sides (as in the SplitLoRA reference code).

Per client micro-batch: client ``F`` (embeddings + ``k`` LoRA blocks) -> ``send`` activations and
labels up -> the server's one shared model, first come first served (``F``, ``B``, ``W``, ``step``
per client batch) -> the cut-layer gradient goes down (lane ``downlink:<dev>``) -> client ``B``,
``W`` and ``step`` -> the next micro-batch. With ``decompose`` the server sends the gradient right
after ``B`` (its ``W`` and ``step`` overlap the downlink); fused, it sends after ``BW`` and ``step``
(the reference code's order). The shared server model runs on one accelerator (worker 0).

Every ``fedavg_every`` client steps (and after a client's last step) the clients of a server
upload their adapters, the server runs ``aggregate`` once all have arrived and every client
downloads the average: a synchronous barrier. A client that has no micro-batch left skips later
rounds. FedAvg FLOPs are not counted (a few per adapter parameter).
"""

from __future__ import annotations

from sfsim.engine import DeviceTimes, Engine, FifoLane, ServerTimes, StreamMixing
from sfsim.schedules import (
    Barrier,
    Job,
    RunConfig,
    Setup,
    aggregate_seconds,
    fedavg_groups,
    link_seconds,
    rounds,
)


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
    return job


def run(engine: Engine, job: Job, cfg: RunConfig, sequential: bool = False) -> None:
    """Start one FIFO server lane per server and one process per client on ``engine``."""
    every = cfg.fedavg_every
    for srv, members, lane, barriers in fedavg_groups(engine, job, every):
        k = job.devices[members[0]].server
        mix = engine.mixing[srv.name] = StreamMixing([d.n if d.server == k else 0 for d in job.devices])
        for i in members:
            d = job.devices[i]
            engine.device_busy[d.name] = d.units(d.n) * (d.f + d.b + d.w) + d.n * d.step + d.first_extra(d.n)
            n_sync = rounds(d.n, every)
            engine.up_bytes[d.name] = d.units(d.n) * d.up_bytes + n_sync * d.sync_bytes
            engine.down_bytes[d.name] = d.units(d.n) * d.down_bytes + n_sync * d.sync_bytes
            if d.n:
                engine.env.process(_client(engine, lane, barriers, srv, i, d, every, cfg.decompose, mix))


def _client(engine: Engine, lane: FifoLane, barriers: list[Barrier], srv: ServerTimes, i: int,
            d: DeviceTimes, every: int, decompose: bool, mix: StreamMixing):
    env, rec, name = engine.env, engine.record, d.name
    up, down = "link:" + name, "downlink:" + name
    grad_after = 1 if decompose else 2  # index of the op after which the gradient leaves
    for n in range(d.n):
        x = d.size(n)  # the last micro-batch of an epoch may be partial
        if decompose:
            server_ops = [("F", d.srv_f * x), ("B", d.srv_b * x), ("W", d.srv_w * x), ("step", srv.step)]
        else:
            server_ops = [("F", d.srv_f * x), ("BW", (d.srv_b + d.srv_w) * x), ("step", srv.step)]
        t = env.now
        fx = d.fwd(n)
        rec(name, "F", t, fx, n, name)
        rec(up, "send", t + fx, d.up_s * x, n, name)
        yield env.timeout(fx + d.up_s * x + d.up_l)
        t_grad = lane.serve(server_ops, n, name)[grad_after]
        mix.add(i)
        rec(down, "send", t_grad, d.down_s * x, n, name)
        yield env.timeout(t_grad + d.down_s * x + d.down_l - env.now)
        t = env.now
        for op, dur in (("B", d.b * x), ("W", d.w * x), ("step", d.step)):
            rec(name, op, t, dur, n, name)
            t += dur
        yield env.timeout(t - env.now)
        if (n + 1) % every == 0 or n + 1 == d.n:
            yield from sync(engine, barriers[n // every], d)


def sync(engine: Engine, barrier: Barrier, d: DeviceTimes):
    """Upload adapters, wait for the barrier's aggregate, download the average (a process step)."""
    env, rec = engine.env, engine.record
    rec("link:" + d.name, "send", env.now, d.sync_up_s, -1, d.name)
    yield env.timeout(d.sync_up_s + d.up_l)
    yield barrier.arrive()
    rec("downlink:" + d.name, "send", env.now, d.sync_down_s, -1, d.name)
    yield env.timeout(d.sync_down_s + d.down_l)
