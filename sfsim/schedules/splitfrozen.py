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

from simpy.events import PENDING

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
        dt = DeviceTimes(d.name, idx[srv.name], n, sent, f=cm.seconds(prefix, d)[0],
                         up_s=link_seconds(up, d.uplink), up_l=d.uplink.latency, srv_f=sf, srv_b=sb, srv_w=sw,
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
    moving = net.moving if net else {}
    if moving:
        dynamic.prepare(engine, pools, cfg.buffer, moving, sequential)
        dynamic.start(engine, pools, job, moving, sequential)
    for i, d in enumerate(job.devices):
        engine.device_busy[d.name] = d.units(d.sent) * d.f + d.first_extra(d.sent)
        engine.up_bytes[d.name] = d.units(d.sent) * d.up_bytes
        engine.down_bytes[d.name] = 0.0
        if d.sent and i not in moving:
            if sequential:
                engine.env.process(_sequential(engine, pools[d.server], i, d))
            else:
                _Pipelined(engine, pools[d.server], i, d)


class _Pipelined:
    """One device streaming micro-batches back to back (double buffering, credits), as callbacks.

    The same steps as a SimPy process (see the module docstring for the timing), written as a small
    state machine whose callbacks are :class:`~sfsim.engine.pool.DeviceEvent` s: a server worker may
    run them inline (:meth:`~sfsim.engine.pool.Engine.until`), which keeps the hot path short.
    """

    __slots__ = ("engine", "env", "d", "i", "acct", "send", "n", "x", "fx", "f_start", "f_end", "ready",
                 "link_free", "event")

    def __init__(self, engine: Engine, pool: ServerPool, i: int, d: DeviceTimes):
        self.engine, self.env, self.d, self.i = engine, engine.env, d, i
        self.acct, self.send = pool.account[i], pool.send if pool.senders is not None else pool.push
        self.n, self.x, self.fx = 0, 1.0, 0.0
        self.f_start = self.f_end = self.ready = self.link_free = 0.0
        self.event = engine.device_event()  # reused for every credit wait: one is pending at a time
        engine.start(self._next)

    def _next(self, _ev=None) -> None:
        """Forward micro-batch ``n`` from ``f_start``; when it and the link are done, get a credit and send."""
        d, n = self.d, self.n
        if n == d.sent:
            return
        x = 1.0 if d.last == 1.0 else d.size(n)  # the last micro-batch of an epoch may be partial
        fx = d.f * x + (d.warmup if n == 0 else 0.0)  # d.fwd(n), inlined on the hot path
        f_end = self.f_start + fx
        self.x, self.fx, self.f_end = x, fx, f_end
        self.ready = f_end if f_end > self.link_free else self.link_free
        self._try()

    def _try(self, _ev=None) -> None:
        """Get a credit at or after ``ready`` (see engine.Credits.wait), then send."""
        acct, ready, engine = self.acct, self.ready, self.engine
        if ready > self.env._now:
            if acct.credits:  # one is free now: check again when ready
                engine.device_at(ready).callbacks.append(self._try)
                return
            acct.wait(ready, self._pending(self._send))  # True: granted; False: try again now
        elif acct.credits:
            acct.credits -= 1
            self._send()
        else:
            acct.wait(self.env._now, self._pending(self._send))  # fires when granted

    def _pending(self, callback):
        """The device's credit event, pending again, with ``callback``."""
        ev = self.event
        ev.callbacks, ev._value = [callback], PENDING
        return ev

    def _send(self, ev=None) -> None:
        """Send micro-batch ``n`` now (a credit is held), then forward the next one (``ev`` False: no credit yet)."""
        if ev is not None and ev._value is False:
            self._try()  # a credit came back before `ready`: try for it now
            return
        d, n, x, t0 = self.d, self.n, self.x, self.env._now
        if self.engine.events is not None:
            rec, name = self.engine.record, d.name
            rec(name, "F", self.f_start, self.fx, n, name)
            rec(name, "wait", self.f_end, t0 - self.f_end, n, name)
            rec("link:" + name, "send", t0, d.up_s * x, n, name)
        link_free = self.link_free = t0 + d.up_s * x
        self.send(link_free + d.up_l, self.i, n)
        self.f_start = t0
        self.n = n = n + 1
        if n == d.sent:
            return
        x = 1.0 if d.last == 1.0 else d.size(n)  # _next, inlined on the hot path (n > 0: no warm-up)
        fx = d.f * x
        f_end = t0 + fx
        self.x, self.fx, self.f_end = x, fx, f_end
        ready = self.ready = f_end if f_end > link_free else link_free
        acct = self.acct
        if ready > t0 and not acct.credits:  # _try's usual case, inlined: wait for a credit
            ev = self.event
            ev.callbacks, ev._value = [self._send], PENDING
            acct.wait(ready, ev)
        else:
            self._try()


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
