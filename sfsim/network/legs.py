"""Legs and motions: which server and links a device of the dynamic network has when, and what it did.

Every schedule's one device process and server loop (:mod:`sfsim.schedules.splitfrozen`, :mod:`sfsim.schedules.splitlora`,
:mod:`sfsim.schedules.fedlora`) share these rules; a static device is one leg with constant rates:

* A device is on one *leg* at a time: a server, an uplink and a downlink, from its start or from a
  handover's ``at`` on (:mod:`sfsim.network.mobility`). **A transfer uses the leg holding when it starts**,
  in both directions: a micro-batch or an adapter upload that starts at or after ``at`` goes to the
  new server; a gradient or a FedAvg download that starts at or after ``at`` comes over the new
  downlink (from whichever server sent it).
* A transfer of ``bits`` that starts at ``t`` ends where the integral of the link's rate from ``t``
  reaches ``bits`` (:func:`sfsim.network.linkrate.finish`); under ``churn: pause`` the rate is multiplied by
  the device's 0/1 availability, and so is compute (an op cut by an outage resumes where it stopped).
  :func:`span` returns ``bits / rate x size`` exactly when one rate holds over the whole transfer,
  which is the static schedules' arithmetic: a constant "trace" reproduces a static run bit for bit.
* Under ``churn: drop`` a device leaves for good at its first outage (``Motion.stop``); under
  ``pause`` a device whose windows end with work left leaves when it goes offline for good
  (:func:`gone_at`). An op or a transfer that would end after that is lost, and counts neither as
  busy time, FLOPs, bytes nor radio seconds.

Units: seconds, bits for amounts on links, bit/s for rates; server seconds per *full* micro-batch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from sfsim.network.availability import availability_for, next_online, online_until
from sfsim.network.linkrate import Constant, Product, Rate, finish, link_rate


@dataclass
class Leg:
    """A device's server and links from time ``at`` on.

    Attributes:
        at: when the leg starts (0 for the first, a handover's ``at`` for the others).
        server: index of its server.
        bandwidth, up_s, up_l: uplink nominal bit/s, seconds per full micro-batch, latency.
        rate: the uplink's time-varying rate (None: constant ``bandwidth``).
        down_bw, down_l, down: downlink nominal bit/s, latency and varying rate (None: constant).
    """

    at: float
    server: int
    bandwidth: float
    up_s: float
    up_l: float
    rate: Rate | None = None
    down_bw: float = 0.0
    down_l: float = 0.0
    down: Rate | None = None

    def up_rate(self, pause: Rate | None) -> Rate:
        """The uplink's rate (bit/s) as a transfer sees it: varying or constant, times availability."""
        r = self.rate or Constant(self.bandwidth)
        return Product(r, pause) if pause is not None else r

    def down_rate(self, pause: Rate | None) -> Rate:
        """The downlink's rate (bit/s) as a transfer sees it."""
        r = self.down or Constant(self.down_bw)
        return Product(r, pause) if pause is not None else r


@dataclass
class Motion:
    """How one device moves and when it is online, and what it did (filled during the run).

    ``sent`` counts the micro-batches that reached training: sent to a server (SplitFrozen,
    SplitLoRA) or inside an adapter upload that was sent (FedLoRA). ``done`` counts those whose
    device work ended (None: ``sent``), ``steps`` the device optimizer steps that ended.
    """

    legs: list[Leg]
    avail: Rate | None = None
    churn: str = "pause"
    srv_flops: float = 0.0                 # server FLOP per full micro-batch (same blocks on every server)
    sent: int = 0
    switched_at: list[int] = field(default_factory=list)  # micro-batches sent before each handover
    busy: float = 0.0
    up_bytes: float = 0.0
    send_s: float = 0.0                     # seconds its uplink spent sending (for the radio's energy)
    downloads: int = 0                      # FedAvg averages fully received
    recv_s: float = 0.0                     # seconds its downlink spent receiving
    done: int | None = None
    steps: int = 0
    uploads: list[float] = field(default_factory=list)  # start times of its FedAvg uploads
    syncs_sent: int = 0                     # FedAvg uploads fully sent
    gone: float = math.inf                       # when it left for good (drop, or windows over)
    replayed: tuple[int, float] | None = None  # the cache and drop churn: replays trained (count, sizes)

    @property
    def pause(self) -> Rate | None:
        """The availability that pauses compute and links (None without availability or with drop)."""
        return self.avail if self.avail is not None and self.churn == "pause" else None

    @property
    def start(self) -> float:
        """Its first online instant (0 without availability; ``inf`` if never online)."""
        return next_online(self.avail, 0.0) if self.avail is not None else 0.0

    @property
    def stop(self) -> float:
        """Drop: the end of its first online period (it leaves then); else ``inf``."""
        if self.avail is None or self.churn != "drop":
            return math.inf
        return online_until(self.avail, self.start)

    def leg_at(self, t: float) -> int:
        """Index of the leg holding at time ``t`` (a handover at exactly ``t`` holds)."""
        j = 0
        while j + 1 < len(self.legs) and self.legs[j + 1].at <= t:
            j += 1
        return j


def needs_motion(d, downlink: bool) -> bool:
    """True when device type ``d`` hands over, declares availability, or has a varying uplink (or downlink)."""
    return bool(d.handover) or d.availability is not None or d.uplink.varies or (downlink and d.downlink.varies)


def leg_links(sc, d) -> list[tuple]:
    """``(at, server name, uplink, its rate, downlink, its rate)`` per leg of scenario device ``d``.

    A handover may change the uplink and the downlink (its ``uplink`` / ``downlink`` keys); a link
    it does not name keeps the previous leg's, and with it its channel realisation (the same rate
    object: a fading or Gilbert-Elliott channel does not restart at a handover that leaves it alone).
    A new link's rate is seeded ``{seed}:{device}:uplink:{j}`` / ``...:downlink:{j}`` for handover ``j + 1``.
    Rates are None for constant links. The planner draws the same channels from here.
    """
    seed, key = sc.training.seed, f"devices[{[t.name for t in sc.device_types].index(d.type)}]"
    out, up, down, drate = [], d.uplink, d.downlink, None
    stops = [(0.0, d.server, None, None)] + [(h.at, h.to, h.uplink, h.downlink) for h in d.handover]
    for j, (at, srv, new_up, new_down) in enumerate(stops):
        up = new_up or up
        where = f"{key}.handover[{j - 1}]" if j else key
        rate = link_rate(up, sc.resolve_path, f"{seed}:{d.name}:uplink:{j}", sc.source, f"{where}.uplink")
        if j == 0 or new_down is not None:
            down = new_down or down
            drate = link_rate(down, sc.resolve_path, f"{seed}:{d.name}:downlink:{j}", sc.source, f"{where}.downlink")
        out.append((at, srv, up, rate, down, drate))
    return out


def legs_of(setup, d, up_bytes: float) -> list[Leg]:
    """The legs of scenario device ``d``: its assigned server and links, then one per handover (:func:`leg_links`).

    Args:
        setup: the schedule's :class:`~sfsim.schedules.ReplaySetup`.
        d: a scenario device.
        up_bytes: bytes of one full micro-batch on its uplink (for ``up_s``).
    """
    idx, legs = setup.server_index, []
    for j, (at, srv, up, rate, down, drate) in enumerate(leg_links(setup.scenario, d)):
        srv = setup.assignment[d.name] if j == 0 else srv
        legs.append(Leg(at, idx[srv], up.bandwidth, up_bytes * 8.0 / up.bandwidth, up.latency, rate,
                        down.bandwidth, down.latency, drate))
    return legs


def availability_of(sc, d) -> Rate | None:
    """Scenario device ``d``'s 0/1 availability (its file or model, seeded as everywhere), or None."""
    if d.availability is None:
        return None
    key = f"devices[{[t.name for t in sc.device_types].index(d.type)}].availability"
    return availability_for(d.availability, d.name, d.type, sc.resolve_path, sc.training.seed, sc.source, key)


def motion_of(setup, d, up_bytes: float, srv_flops: float = 0.0) -> Motion:
    """The :class:`Motion` of scenario device ``d`` (legs, availability, churn)."""
    churn = d.availability.churn if d.availability is not None else "pause"
    return Motion(legs_of(setup, d, up_bytes), availability_of(setup.scenario, d), churn, srv_flops)


class Legs(Rate):
    """A device's link across its handovers: leg ``j``'s rate holds on ``[starts[j], starts[j+1])``."""

    def __init__(self, starts: list[float], rates: list[Rate]):
        self.starts, self.rates = starts, rates

    def segment(self, t: float) -> tuple[float, float]:
        """The holding leg's rate at ``t``, until its own change or the next handover."""
        j = bisect.bisect_right(self.starts, t) - 1
        r, until = self.rates[j].segment(t)
        nxt = self.starts[j + 1] if j + 1 < len(self.starts) else math.inf
        return r, min(until, nxt)


def uplink_rate(sc, d) -> Rate:
    """Scenario device ``d``'s uplink rate over time across its handover legs (constant legs included)."""
    legs = leg_links(sc, d)
    rates = [rate if rate is not None else Constant(float(up.bandwidth)) for _, _, up, rate, _, _ in legs]
    return rates[0] if len(rates) == 1 else Legs([float(at) for at, *_ in legs], rates)


def first_leg_rates(sc, d) -> tuple[Rate | None, Rate | None]:
    """(uplink, downlink) rates of scenario device ``d``'s first leg (None: constant bandwidth)."""
    _, _, _, up, _, down = leg_links(sc, d)[0]
    return up, down


def span(rate: Rate | None, t: float, amount: float, x: float = 1.0) -> float:
    """Seconds from ``t`` until ``amount x x`` is done at ``rate`` (``inf`` if never; None: rate 1).

    When one rate ``r`` holds over the whole of it the answer is ``amount / r * x``, the static
    schedules' arithmetic (``bits / bandwidth`` per full micro-batch, times its size), so that a
    constant rate reproduces a static run exactly.

    Example:
        >>> span(Constant(8.0), 0.0, 16.0, 0.5)
        1.0
    """
    if rate is None:
        return amount * x
    r, until = rate.segment(t)
    if r > 0:
        d = amount / r * x
        if t + d > until:
            r, until = steady(rate, t, t + d)
        if t + d <= until:
            return d
    end = finish(rate, t, amount * x)
    return end - t if end < math.inf else math.inf


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
    return end - t if end < math.inf else math.inf


def steady(rate: Rate, t: float, horizon: float = math.inf) -> tuple[float, float]:
    """``(rate at t, until when it stays that rate)``, joining equal steps (a flat trace repeats every period).

    Stops looking once the end passes ``horizon``.
    """
    r, until = rate.segment(t)
    while until < min(horizon, math.inf):
        r2, nxt = rate.segment(until)
        if r2 != r:
            break
        until = nxt
    return r, until


def online(avail: Rate | None, a: float, b: float) -> float:
    """Online seconds within ``[a, b)`` (all of it without availability)."""
    if avail is None:
        return b - a
    t, total = a, 0.0
    while t < b:
        r, until = avail.segment(t)
        end = min(until, b)
        total += (end - t) if r > 0 else 0.0
        t = end
    return total


def gone_at(avail: Rate, t: float) -> float:
    """From when on (at or after ``t``) ``avail`` is offline for good; ``inf`` if it comes back."""
    while True:
        r, until = avail.segment(t)
        if until == math.inf:
            return t if r <= 0 else math.inf
        t = until


def record_online(engine, lane: str, op: str, a: float, b: float, n: int, name: str, avail: Rate | None,
                  dur: float | None = None) -> None:
    """Record ``op`` over the online parts of ``[a, b)`` (all of it without availability: ``dur``, else ``b - a``)."""
    if avail is None:
        engine.record(lane, op, a, b - a if dur is None else dur, n, name)
        return
    t = a
    while t < b:
        r, until = avail.segment(t)
        end = min(until, b)
        if r > 0:
            engine.record(lane, op, t, end - t, n, name)
        t = end
