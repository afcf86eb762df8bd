"""SplitLoRA on the dynamic network: time-varying uplinks and downlinks, and availability that pauses.

SplitLoRA's server loop (:mod:`sfsim.schedules.splitlora`) computes a server's run by arithmetic
over three primitives: a client's compute, a message on its uplink, a message on its downlink. On a
dynamic network :class:`DynamicServer` replaces just those, under the shared rules of
:mod:`sfsim.dynamic_legs`:

* a message (activations, adapters up; a gradient, a FedAvg average, a command down) queued at
  ``t`` starts when its link is free and takes the integral of the link's rate: ``bits`` at the
  link's nominal ``bandwidth`` take ``dur`` seconds in the static schedule, so they end where the
  rate's integral from the start reaches ``dur x bandwidth`` (exactly ``dur`` on a constant rate);
* under ``churn: pause`` compute and transfers progress only while the client is online (a command,
  zero bits, reaches it when it is back online); the server waits for it as it would for a slow
  client, so every micro-batch still trains.

The result's ``uplink_send_s`` / ``downlink_recv_s`` are the seconds the links really spent (for
the radio's energy). Refused in one line (:func:`sfsim.dynamic.check_supported`): handovers and
``churn: drop``, and a client whose availability windows end with work left. The server loop plays
each server's whole run ahead by arithmetic, so a client cannot leave one server's loop mid-run and
join another's (or leave without a trace) there; that needs the loops to interleave.
"""

from __future__ import annotations

from sfsim.dynamic_legs import INF, online, record_online, steady
from sfsim.errors import SfsimError
from sfsim.linkrate import finish
from sfsim.schedules.splitlora import _Server


def network(setup, job):
    """The job's :class:`sfsim.dynamic_fed.FedNetwork`, or None when nothing moves or varies."""
    from sfsim.dynamic_fed import network as fed_network

    net = fed_network(setup, job)
    if net is not None:
        for i, m in net.motions.items():
            m.sent = job.devices[i].n  # pause only: every micro-batch trains in the end
    return net


def span_at(rate, t: float, dur: float, bandwidth: float) -> float:
    """Seconds from ``t`` for what takes ``dur`` seconds at ``bandwidth`` (bit/s), at ``rate``; ``inf`` if never.

    ``dur x bandwidth / r`` when one rate ``r`` holds throughout (``dur`` itself when ``r`` is the
    nominal bandwidth: a constant rate reproduces the static schedule exactly).
    """
    r, until = rate.segment(t)
    if r > 0:
        d = dur * (bandwidth / r)
        if t + d > until:
            r, until = steady(rate, t, t + d)
            d = dur * (bandwidth / r)
        if t + d <= until:
            return d
    end = finish(rate, t, dur * bandwidth)
    return end - t if end < INF else INF


class DynamicServer(_Server):
    """SplitLoRA's server loop whose clients' compute and links follow the dynamic network."""

    def __init__(self, engine, srv, devices, members, cfg, motions):
        super().__init__(engine, srv, devices, members, cfg)
        self.motions = motions

    def _never(self, c, what: str) -> SfsimError:
        return SfsimError(f"splitlora: {c.d.name} goes offline for good with {what} left; SplitLoRA cannot drop a "
                          "client yet: give it availability that lasts, or simulate splitfrozen or fedlora")

    def _device(self, c, op: str, t: float, dur: float, mb: int) -> float:
        pause = self.motions[c.i].pause
        end = t + (dur if pause is None else span_at(pause, t, dur, 1.0))
        if end == INF:
            raise self._never(c, "compute")
        record_online(self.engine, c.d.name, op, t, end, mb, c.d.name, pause, dur)
        self.engine.device_busy[c.d.name] += dur
        self.end = max(self.end, end)
        return end

    def _up(self, c, t: float, dur: float, mb: int, nbytes: float) -> float:
        m = self.motions[c.i]
        leg = m.legs[0]
        start = max(t, c.up_free)
        secs = span_at(leg.up_rate(m.pause), start, dur, leg.bandwidth)
        if secs == INF:
            raise self._never(c, "an upload")
        c.up_free = start + secs
        record_online(self.engine, "link:" + c.d.name, "send", start, start + secs, mb, c.d.name, m.pause, secs)
        m.send_s += online(m.pause, start, start + secs)
        self.engine.up_bytes[c.d.name] += nbytes
        self.end = max(self.end, start + secs + c.d.up_l)
        return start + secs + c.d.up_l

    def _down(self, c, t: float, dur: float, mb: int, nbytes: float = 0.0) -> float:
        m = self.motions[c.i]
        leg = m.legs[0]
        start = max(t, c.down_free)
        secs = span_at(leg.down_rate(m.pause), start, dur, leg.down_bw)
        if secs == INF:
            raise self._never(c, "a download")
        c.down_free = start + secs
        record_online(self.engine, "downlink:" + c.d.name, "send", start, start + secs, mb, c.d.name, m.pause, secs)
        m.recv_s += online(m.pause, start, start + secs)
        self.engine.down_bytes[c.d.name] += nbytes
        self.end = max(self.end, start + secs + c.d.down_l)
        return start + secs + c.d.down_l


def run(engine, job, cfg) -> None:
    """:func:`sfsim.schedules.splitlora.run` with :class:`DynamicServer` as every server's loop."""
    from sfsim.dynamic import trace_moves
    from sfsim.engine import StreamMixing
    from sfsim.schedules import groups

    net = job.network
    for k, members in groups(job.devices).items():
        srv = job.servers[k]
        engine.mixing[srv.name] = StreamMixing([d.n if d.server == k else 0 for d in job.devices])
        for i in members:
            name = job.devices[i].name
            engine.device_busy[name] = engine.up_bytes[name] = engine.down_bytes[name] = 0.0
        engine.env.process(DynamicServer(engine, srv, job.devices, members, cfg, net.motions).run())
    for srv in job.servers:
        engine.server_busy.setdefault(srv.name, 0.0)
    if engine.events is not None:
        for i, m in net.moving.items():
            engine.on_finish(lambda d=job.devices[i], m=m: trace_moves(engine, d, m))
