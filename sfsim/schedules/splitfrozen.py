"""SplitFrozen (pipelined) and its sequential ablation.

Device ``i`` with cut ``k_i`` sends ``sent_i`` micro-batches (``n_i``, or one epoch when activations
are cached) with ``f`` = prefix forward seconds, ``s`` = uplink serialisation seconds
(``uplink_bytes(k_i) * 8 / bandwidth``) and ``l`` = uplink latency (a pure delay: the link may start
the next transfer after ``s``). Pipelined timing, micro-batch ``n``::

    F_start[0] = 0;  F_end[n] = F_start[n] + f
    send_start[n] = max(F_end[n], send_start[n-1] + s, time a credit is granted)
    arrival[n] = send_start[n] + s + l;  F_start[n+1] = send_start[n]

so the forward of ``n+1`` overlaps the transfer of ``n`` and the device holds at most one finished
activation. A positive gap ``send_start[n] - F_end[n]`` (link busy or no credit) is recorded as op
``wait`` on the device lane. Sequential ablation: the device starts ``F`` of ``n+1`` only when the
server has finished ``B`` and ``W`` of ``n`` (see :mod:`sfsim.engine.pool` for the server side).

With one device, ``n`` micro-batches, a big buffer, fused backward and no step cost the makespan is
``(f + s + l + srv) + (n - 1) * max(f, s, srv)`` pipelined and ``n * (f + s + l + srv)``
sequential, with ``srv`` = server F + B + W seconds.
"""

from __future__ import annotations

from sfsim.engine import dynamic
from sfsim.engine.dynamic import network
from sfsim.engine.pool import DeviceTimes, Engine, ServerPool, ServerTimes
from sfsim.schedules import Job, RunConfig, Setup, link_seconds


def build(setup: Setup, cache: bool = False) -> Job:
    """Stage durations and FLOPs for SplitFrozen from the cost model.

    Args:
        setup: scenario, cost model, cuts, LoRA start and assignment.
        cache: devices send one epoch; the server replays later epochs from its cache.

    Returns:
        A :class:`~sfsim.schedules.Job`.
    """
    sc, cm, ls = setup.scenario, setup.cm, setup.lora_start
    idx = setup.server_index
    trainable = cm.trainable_params(range(ls, sc.arch.n_layers), head=True)
    servers = [ServerTimes(s.name, s.count, cm.optimizer_seconds(trainable, s)) for s in sc.servers]
    job = Job([], servers, server_flops={s.name: 0.0 for s in sc.servers})
    for d in sc.devices:
        k, srv = setup.splits[d.name], sc.server_by_name[setup.assignment[d.name]]
        per_epoch, n = setup.micro_batches(d)
        sent = per_epoch if cache else n
        prefix, suffix = cm.device_prefix(k), cm.server_suffix(k, ls)
        sf, sb, sw = cm.seconds(suffix, srv)
        up = cm.uplink_bytes(k)
        enc, dec = cm.codec_seconds(d, "encode"), cm.codec_seconds(srv, "decode")  # wire codec (0 for fp32)
        dt = DeviceTimes(d.name, idx[srv.name], n, sent, f=cm.seconds(prefix, d)[0] + enc,
                         up_s=link_seconds(up, d.uplink), up_l=d.uplink.latency, srv_f=sf + dec, srv_b=sb, srv_w=sw,
                         up_bytes=up, act_bytes=cm.activation_bytes(k), **setup.partial(d))
        job.devices.append(dt)
        job.device_flops[d.name] = dt.units(sent) * prefix.f
        job.server_flops[srv.name] += dt.units(n) * suffix.total
    job.network = network(setup, job)
    return job


def run(engine: Engine, job: Job, cfg: RunConfig, sequential: bool = False) -> None:
    """Start the server pools and one process per device on ``engine`` (call ``engine.run()`` after).

    Devices of the job's dynamic network (handover, varying uplink, availability) run
    :func:`sfsim.engine.dynamic.device_process` instead, pipelined or ``sequential`` (checked by
    :func:`sfsim.engine.dynamic.check_supported`).
    """
    net = job.network
    views = getattr(net, "views", None)  # None: no network, or one that does not touch SplitFrozen
    pools = [ServerPool(engine, s, views[k] if views else job.devices, k, cfg.buffer, cfg.accumulate,
                        cfg.decompose, cfg.policy, sequential, cfg.credits, cfg.pool_memory, cfg.seed)
             for k, s in enumerate(job.servers)]
    proc = _sequential if sequential else _pipelined
    moving = net.moving if net else {}
    if moving:
        dynamic.prepare(engine, pools, cfg.buffer, moving, sequential)
        dynamic.start(engine, pools, job, moving, sequential)
    for i, d in enumerate(job.devices):
        engine.device_busy[d.name] = d.units(d.sent) * d.f + d.first_extra(d.sent)
        engine.up_bytes[d.name] = d.units(d.sent) * d.up_bytes
        engine.down_bytes[d.name] = 0.0
        if d.sent and i not in moving:
            engine.env.process(proc(engine, pools[d.server], i, d))


def _pipelined(engine: Engine, pool: ServerPool, i: int, d: DeviceTimes):
    """One device streaming micro-batches back to back (double buffering, credits)."""
    env, rec, at = engine.env, engine.record, engine.at
    f, s, lat, name, lane = d.f, d.up_s, d.up_l, d.name, "link:" + d.name
    acct, send = pool.account[i], pool.send if pool.senders is not None else pool.push
    f_start = 0.0
    link_free = 0.0
    for n in range(d.sent):
        x = 1.0 if d.last == 1.0 else d.size(n)  # the last micro-batch of an epoch may be partial
        fx = f * x + (d.warmup if n == 0 else 0.0)  # d.fwd(n), inlined on the hot path
        f_end = f_start + fx
        ready = f_end if f_end > link_free else link_free
        while True:  # get a credit at or after `ready` (see engine.Credits.wait)
            if ready > env._now:
                if acct.credits:
                    yield at(ready)  # one is free now: check again when ready
                    continue
                ev = env.event()
                acct.wait(ready, ev)
                if (yield ev):
                    break  # granted
                continue  # a credit came back before `ready`: try for it now
            if acct.credits:
                acct.credits -= 1
                break
            ev = env.event()
            acct.wait(env.now, ev)
            yield ev  # fires when granted
            break
        t0 = env._now
        if engine.events is not None:
            rec(name, "F", f_start, fx, n, name)
            rec(name, "wait", f_end, t0 - f_end, n, name)
            rec(lane, "send", t0, s * x, n, name)
        link_free = t0 + s * x
        send(link_free + lat, i, n)
        f_start = t0


def _sequential(engine: Engine, pool: ServerPool, i: int, d: DeviceTimes):
    """One device that waits for the server to finish each micro-batch before the next forward."""
    env, rec, name = engine.env, engine.record, d.name
    for n in range(d.sent):
        x, fx = d.size(n), d.fwd(n)
        f_start = env.now
        yield engine.at(f_start + fx)
        ev = pool.account[i].take()
        if ev is not None:
            yield ev
        t0 = env.now
        rec(name, "F", f_start, fx, n, name)
        rec(name, "wait", f_start + fx, t0 - f_start - fx, n, name)
        rec("link:" + name, "send", t0, d.up_s * x, n, name)
        release = pool.release[i] = env.event()
        pool.send(t0 + d.up_s * x + d.up_l, i, n)
        yield release
