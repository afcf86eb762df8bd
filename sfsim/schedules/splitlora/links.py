"""SplitLoRA on the dynamic network: time-varying uplinks and downlinks, and availability (pause, drop).

SplitLoRA's server loop (:mod:`sfsim.schedules.splitlora.server`) computes a server's run by arithmetic
over three primitives: a client's compute, a message on its uplink, a message on its downlink. On a
dynamic network :class:`LinkServer` replaces those, under the shared rules of
:mod:`sfsim.network.legs`:

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

from sfsim.network.legs import INF, gone_at, online, record_online, span, steady
from sfsim.network.linkrate import finish
from sfsim.schedules.splitlora.server import Server


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


class LinkServer(Server):
    """SplitLoRA's server loop whose clients' compute and links follow the dynamic network (see module)."""

    def __init__(self, engine, srv, clients, cfg, mix, motions, lost: set[int]):
        super().__init__(engine, srv, clients, cfg, mix)
        self.motions = motions
        self.lost = lost  # clients gone for good (drop, or windows over)

    # -- primitives: a gone client's are no-ops; an upload that never arrives arrives at -inf ----------
    def _begin(self, c, t: float) -> float:
        """A drop-churn client starts nothing before its first online instant (it joins then)."""
        m = self.motions[c.i]
        return max(t, m.start) if m.churn == "drop" and m.avail is not None else t

    def _outlasts(self, c, t: float, end: float) -> bool:
        """True, and the client is gone from then on, when what runs from ``t`` to ``end`` outlasts it."""
        m = self.motions[c.i]
        if end <= m.stop and end < INF:
            return False
        self.lost.add(c.i)
        m.gone = m.stop if m.stop < INF else gone_at(m.avail, t)
        return True

    def _device(self, c, op: str, t: float, dur: float, mb: int) -> float:
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

    def _up(self, c, t: float, dur: float, mb: int, nbytes: float) -> float:
        if c.i in self.lost:
            return -INF
        m = self.motions[c.i]
        start = self._begin(c, max(t, c.up_free))
        leg = m.legs[m.leg_at(start)]  # the leg holding when it starts; dur is at the first leg's bandwidth
        secs = span_at(leg.up_rate(m.pause), start, dur, m.legs[0].bandwidth)
        if self._outlasts(c, start, start + secs):
            return -INF
        c.up_free, c.sent_at = start + secs, start
        record_online(self.engine, "link:" + c.d.name, "send", start, start + secs, mb, c.d.name, m.pause, secs)
        m.send_s += online(m.pause, start, start + secs)
        m.sent += mb >= 0
        self.engine.up_bytes[c.d.name] += nbytes
        self.end = max(self.end, start + secs + leg.up_l)
        return start + secs + leg.up_l

    def _down(self, c, t: float, dur: float, mb: int, nbytes: float = 0.0) -> float:
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

    # -- where a client's absence changes the loop (else as sfsim.schedules.splitlora.server) -----------------
    def _serve(self, c) -> None:
        if c.arrival == -INF:  # never arrived: the turn is skipped
            c.arrival = None
            return
        super()._serve(c)

    def _fedavg(self) -> None:
        """Every client still there uploads; the server averages the uploads that arrive, sends the average down."""
        for c in self.clients:
            self._upload_adapters(c)
        came = [c for c in self.clients if c.arrival != -INF]
        t = max([self.free] + [c.arrival for c in came])
        for c in self.clients:
            c.arrival = None
        self.free = self._op("aggregate", t, self.srv.aggregate * len(came), -1, "")
        for c in came:
            self._down(c, self.free, c.d.sync_down_s, -1, c.d.sync_bytes)
