"""The scenario's dynamic network in a distributed run: time-varying links and availability, by sleeping.

Clock: every rate and availability is a function of the seconds since the run's common start, the
origin all processes share after :func:`trainer.transport.distributed.sync_clock` (``Meter.now()``). Training
begins right after it (the hellos and the first ``start``: milliseconds), as the simulator's starts
at 0, so a rate change at ``t`` in the scenario falls at ``t`` in both. A resumed run's clock starts at 0
at its checkpoint, which is the run's clock ``origin`` (server 0 tells every process in the rendezvous,
:class:`trainer.transport.rendezvous.Start`): its rates are :class:`Shifted` and its :class:`Presence` takes
``origin``, so a device resumed at 40 s sees the rate and the pause that hold at 40 s, not those at 0.

Links (``--emulate links|all``): a message of ``b`` bits handed to the link at ``s`` (or when the
link frees) leaves it where the integral of the rate from ``s`` reaches ``b``
(:func:`sfsim.network.linkrate.finish`) and reaches the peer ``latency`` later. The rate is the simulator's
own object (:func:`sfsim.network.linkrate.link_rate`, seeded with the simulator's strings
``{seed}:{device}:uplink:0`` and ``{seed}:{device}:downlink:0``, see ``sfsim.network.legs``), so a
trace, a Gilbert-Elliott channel or fading gives both the same rate at the same time.

Availability (``--emulate`` other than ``none``; :class:`Presence`), as :mod:`sfsim.network.availability`:

* ``pause``: compute (:class:`trainer.run.measure.Meter`) and the uplink progress only online: a forward
  waits for the next online instant, one cut by an outage ends where its online time reaches its
  length (sleeping through the outage), and the uplink's rate is multiplied by the availability.
* ``drop``: the device waits for its first online instant and is gone from the first outage after it.

A device *leaves* (:class:`~trainer.transport.runtime.DeviceLeft`) when a micro-batch cannot be sent in full
while it is present: with ``drop`` its forward or its send would end after the outage, with ``pause``
it would never end (the windows are over). Its method then tells the server (a ``leave`` message
with the samples it will not send) so that the server stops waiting for it; ``metrics.json`` reports
``samples_not_trained`` per device, as the simulator's JSON does. Unlike the simulator, which
foresees it, a device waiting for a credit learns that it has left when the credit comes.

Availability is emulated for every method whose devices have links (as in the simulator, CenLoRA's
devices upload their data once and the dynamic network does not apply to it): SplitFrozen's device
leaves when a micro-batch cannot be sent; SplitLoRA's when a commanded forward or its send cannot end
(the samples from that micro-batch on are not trained); FedLoRA's when a round's local steps or its
adapter upload cannot end (that round is lost, as the simulator's rule "a round whose upload was cut
off is lost"). Time-varying links apply to every method.

Handover (``--emulate`` other than ``none``; split methods in arrival order, :func:`check`): the leg
holding when a micro-batch's send (FedLoRA: a round's upload) starts takes it (:func:`legs`), as in the
simulator; see :mod:`trainer.transport.handover` for the messages that move a device between server
processes (SplitFrozen's own are in ``trainer.methods.splitfrozen``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sfsim.errors import SfsimError
from sfsim.network.availability import next_online, online_until
from sfsim.network.legs import availability_of, first_leg_rates, leg_links
from sfsim.network.linkrate import Constant, Product, Rate, finish
from trainer.transport.runtime import DeviceLeft


def check(scenario, method: str, emulate: str, what: str, server_order: str = "fifo",
          client_order: str | None = None) -> None:
    """Refuse, in one line, a handover the runtime cannot emulate: a split method's server takes a visiting
    device's micro-batches in arrival order only, and SplitLoRA's sequential client order has no place for a
    client arriving mid-run (as in the simulator). CenLoRA has no device links: its handovers change nothing."""
    if emulate == "none":
        return
    moving = [d.name for d in scenario.devices if d.handover]
    if not moving or not emulates_availability(method):
        return
    if method == "splitlora" and (client_order or scenario.training.client_order) == "sequential":
        raise SfsimError(f"{what}: device {moving[0]} hands over to another server; SplitLoRA's sequential client "
                         "order (client after client, each over its whole epoch) has no place for a client arriving "
                         "mid-run: use training.client_order interleaved")
    if method.startswith("split") and server_order != "fifo":
        raise SfsimError(f"{what}: device {moving[0]} hands over to another server; a server takes a visiting "
                         f"device's micro-batches in arrival order only (--server-order {server_order} is a "
                         "schedule of turns fixed before the run): use --server-order fifo")


def legs(scenario, d, first: str) -> list[tuple[float, str, Rate | None, Rate | None, tuple]]:
    """Device ``d``'s legs: ``(at s, server, uplink rate, downlink rate, (uplink, downlink))`` from ``first``
    (its resolved server), then one per handover (the simulator's :func:`sfsim.network.legs.leg_links`);
    a pausing device's uplinks carry only while it is online."""
    avail = availability(scenario, d)
    out = []
    for j, (at, srv, up, up_rate, down, down_rate) in enumerate(leg_links(scenario, d)):
        if avail is not None and d.availability.churn == "pause":
            up_rate = Product(up_rate or Constant(up.bandwidth), avail)
        out.append((at, first if j == 0 else srv, up_rate, down_rate, (up, down)))
    return out


def unemulated(scenario, method: str, emulate: str | None) -> str | None:
    """One line when ``--emulate none`` leaves the scenario's handovers or availability out of the run (their times
    are the emulated run's seconds: without emulation every device stays on its first server and online), else None."""
    if emulate not in (None, "none") or not emulates_availability(method):
        return None
    named = lambda ds: ", ".join(ds[:3]) + (f" and {len(ds) - 3} more" if len(ds) > 3 else "")  # noqa: E731
    what = [f"{key} ({named(ds)})" for key, ds in (
        ("handovers", [d.name for d in scenario.devices if d.handover]),
        ("availability", [d.name for d in scenario.devices if d.availability is not None])) if ds]
    if not what:
        return None
    return (f"--emulate none: the scenario's {' and '.join(what)} are not applied (every device stays on its first "
            "server and online); use --emulate all to run them")


def emulates_availability(method: str) -> bool:
    """Whether a device's availability applies to ``method`` (CenLoRA's data is at the server from the start)."""
    return method != "cenlora"


def availability(scenario, d) -> Rate | None:
    """Device ``d``'s 0/1 availability, the simulator's (same file, same seed), or None."""
    return availability_of(scenario, d)


def link_rates(scenario, d, with_availability: bool = True) -> tuple[Rate | None, Rate | None]:
    """(uplink, downlink) rates of device ``d`` (None: constant bandwidth); a pausing device's uplink
    carries only while it is online."""
    up, down = first_leg_rates(scenario, d)  # the simulator's channels (handovers are refused here)
    avail = availability(scenario, d) if with_availability else None
    if avail is not None and d.availability.churn == "pause":
        up = Product(up or Constant(d.uplink.bandwidth), avail)
    return up, down


class Shifted(Rate):
    """``rate`` on a resumed run's clock, which starts at the run's clock ``origin``: its value at ``t`` is
    ``rate``'s at ``origin + t`` (drawn channels are the same draws: they are drawn from the run's 0 on)."""

    def __init__(self, rate: Rate, origin: float):
        self.rate, self.origin = rate, origin

    def segment(self, t: float) -> tuple[float, float]:
        """``rate``'s segment at ``origin + t``, its end moved back by ``origin`` (and always after ``t``)."""
        r, until = self.rate.segment(t + self.origin)
        end = until - self.origin
        return r, end if end > t else math.nextafter(t, math.inf)


def shifted(rate: Rate | None, origin: float) -> Rate | None:
    """``rate`` seen from ``origin`` on (:class:`Shifted`; unchanged at 0 or for a constant link, None)."""
    return rate if rate is None or origin == 0 else Shifted(rate, origin)


class Presence:
    """When one device is present, on this attempt's clock, and the sleeps that emulate it (module docstring).

    Args:
        avail: its 0/1 availability (:mod:`sfsim.network.availability`), on the run's clock.
        churn: ``pause`` or ``drop``.
        now: this attempt's clock (``Meter.now``).
        origin: the run's clock at this attempt's 0 (a resumed run's checkpoint; 0 for a fresh run). A ``drop``
            device's join and departure are the run's (one that left before the checkpoint is gone at once).
    """

    def __init__(self, avail: Rate, churn: str, now: Callable[[], float], origin: float = 0.0):
        if churn not in ("pause", "drop"):
            raise ValueError(f'"churn" must be pause or drop, got {churn!r}')
        self.avail, self.churn, self.now = shifted(avail, origin), churn, now
        join = next_online(avail, 0.0)
        #: the instant the device is gone (drop: its first outage after joining; pause: never, by this rule)
        leave = online_until(avail, join) if churn == "drop" and join < math.inf else math.inf
        if churn == "drop" and join == math.inf:
            leave = 0.0
        self.join, self.leave = join - origin, leave - origin

    def wait(self, lane: str) -> float:
        """Sleep until the device is online and return that instant (the caller records how late it woke:
        :class:`trainer.run.emulation.Lag`); raise :class:`DeviceLeft` if it never is online again."""
        t = self.now()
        at = next_online(self.avail, t) if self.churn == "pause" else max(t, self.join)
        if at == math.inf or at >= self.leave:
            raise DeviceLeft(lane, "never online again" if self.churn == "pause" else "dropped out")
        _sleep(at - t)
        return at

    def finish(self, lane: str, start: float, work_s: float) -> float:
        """Sleep until ``work_s`` seconds of compute begun at ``start`` are done online; return that instant.

        Raises:
            DeviceLeft: the work cannot end while the device is present (after sleeping up to its departure).
        """
        end = finish(self.avail, start, work_s) if self.churn == "pause" else start + work_s
        if end == math.inf or end >= self.leave:
            if self.leave < math.inf:
                _sleep(self.leave - self.now())
            raise DeviceLeft(lane, "dropped out" if self.churn == "drop" else "never online again")
        _sleep(end - self.now())
        return end

    def online_parts(self, a: float, b: float) -> list[tuple[float, float]]:
        """The online intervals within ``[a, b)`` (where compute really progressed)."""
        if self.churn == "drop":
            return [(a, b)]
        out, t = [], a
        while t < b:
            r, until = self.avail.segment(t)
            end = min(until, b)
            if r > 0:
                out.append((t, end))
            t = end
        return out


def presence(scenario, name: str, now: Callable[[], float], origin: float = 0.0) -> Presence | None:
    """Device ``name``'s :class:`Presence` from the run's clock ``origin`` on, or None when it is always online."""
    d = next(d for d in scenario.devices if d.name == name)
    avail = availability(scenario, d)
    return None if avail is None else Presence(avail, d.availability.churn, now, origin)


def _sleep(dt: float) -> None:
    if dt > 0:
        time.sleep(dt)


__all__ = ["Presence", "Shifted", "shifted", "check", "emulates_availability", "availability", "legs", "link_rates", "presence"]


def departed(scenario, names: list[str], now: Callable[[], float], origin: float = 0.0):
    """A server's test ``(device, t) -> bool``: is the device gone for good at ``t`` (this attempt's clock): a
    pausing device never online again, a dropping one from its departure on. What a server sends it then reaches
    no device, so its downlink counts nothing, as in the simulator (no download to it completes). None when no
    device of ``names`` has availability."""
    ps = {n: p for n in names if (p := presence(scenario, n, now, origin)) is not None}
    if not ps:
        return None

    def gone(name: str, t: float) -> bool:
        p = ps.get(name)
        if p is None:
            return False
        return t >= p.leave if p.churn == "drop" else next_online(p.avail, t) == math.inf

    # no download reaches a dropping device before its join (one never online is gone from 0: no join to wait for)
    gone.joins = {n: p.join for n, p in ps.items() if p.churn == "drop" and p.join < math.inf}
    return gone
