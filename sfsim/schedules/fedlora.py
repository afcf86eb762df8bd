"""FedLoRA: every device trains LoRA on the whole model; synchronous FedAvg rounds.

Round ``r``: each device of a server that still has data runs ``local_steps`` micro-batches (or
what it has left) of ``F``, ``B``, ``W`` through the whole model with a ``step`` after every
``accumulate`` micro-batches and one at the round's end for a partial window; it uploads its
adapters (every block and the head); the server runs ``aggregate`` when all participants' uploads
have arrived; each participant downloads the average and starts the next round. The first round
starts at time 0 with the initial adapters already on the devices; the last round also downloads.
FedAvg FLOPs are not counted. With handovers, time-varying links or availability every device runs
the process of :mod:`sfsim.schedules.dynamic_fed` instead (FedAvg groups that follow moves and drops).
"""

from __future__ import annotations

from sfsim.engine.pool import DeviceTimes, Engine
from sfsim.schedules import (
    Barrier,
    Job,
    RunConfig,
    Setup,
    aggregate_seconds,
    dynamic_fed,
    fedavg_groups,
    link_seconds,
    rounds,
)
from sfsim.schedules.splitlora import sync


def build(setup: Setup, cache: bool = False) -> Job:
    """Stage durations and FLOPs for FedLoRA (cuts are ignored: every device holds the whole model)."""
    from sfsim.engine.pool import ServerTimes

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
    job.network = dynamic_fed.network(setup, job)
    return job


def steps_in_round(k: int, accumulate: int) -> int:
    """Optimizer steps in a round of ``k`` micro-batches (one per window, the last may be partial)."""
    return -(-k // accumulate)


def run(engine: Engine, job: Job, cfg: RunConfig, sequential: bool = False) -> None:
    """Start one aggregation lane per server and one process per device on ``engine``."""
    if job.network is not None:
        return dynamic_fed.run(engine, job, cfg)
    per = cfg.local_steps
    for _srv, members, _lane, barriers in fedavg_groups(engine, job, per):
        for i in members:
            d = job.devices[i]
            n_steps = sum(steps_in_round(min(per, d.n - r * per), cfg.accumulate)
                          for r in range(rounds(d.n, per)))
            engine.device_busy[d.name] = d.units(d.n) * (d.f + d.b + d.w) + n_steps * d.step + d.first_extra(d.n)
            engine.up_bytes[d.name] = engine.down_bytes[d.name] = rounds(d.n, per) * d.sync_bytes
            if d.n:
                engine.env.process(_device(engine, barriers, d, per, cfg.accumulate))


def _device(engine: Engine, barriers: list[Barrier], d: DeviceTimes, per: int, accumulate: int):
    env, rec, name = engine.env, engine.record, d.name
    for r in range(rounds(d.n, per)):
        first, last = r * per, min(d.n, (r + 1) * per)
        t = env.now
        for n in range(first, last):
            x = d.size(n)  # the last micro-batch of an epoch may be partial
            for op, dur in (("F", d.fwd(n)), ("B", d.b * x), ("W", d.w * x)):
                rec(name, op, t, dur, n, name)
                t += dur
            if (n - first + 1) % accumulate == 0 or n + 1 == last:
                rec(name, "step", t, d.step, -1, name)
                t += d.step
        yield env.timeout(t - env.now)
        yield from sync(engine, barriers[r], d)
