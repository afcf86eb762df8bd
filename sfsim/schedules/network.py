"""How the scenario's dynamic network enters every schedule: who moves, what is refused, what the result says.

The network itself (legs, rates, pause and drop) is :mod:`sfsim.network.legs`; each schedule's one
device process and server loop follow it (a static device is one leg with constant rates):

* ``splitfrozen`` and ``splitfrozen-sequential``: :mod:`sfsim.schedules.splitfrozen` (a device that
  moves, churns or has a varying uplink takes the general branch of its process);
* ``splitlora``: :mod:`sfsim.schedules.splitlora` (the server loop's links and compute follow the
  network; with handovers the servers' loops run jointly in time);
* ``fedlora``: :mod:`sfsim.schedules.fedlora` (FedAvg rounds whose membership follows handovers and drops);
* ``cenlora`` has no device links (its data is at the server from the start): the dynamic network
  does not apply, and the result says so (``SimResult.dynamic_network``, :func:`applies`).

Refused (one line each, :func:`check_supported`), and why:

* SplitFrozen's handovers and availability with the ``proportional`` and paced policies: their
  server order is a schedule of turns computed before the run from every starting device's
  micro-batch count (:mod:`sfsim.engine.pacing`), and the pacing credits follow that schedule. Skipping the
  turns of a device that has dropped or moved away is clear, but a device that *joins* a server has
  no turns in its schedule, and re-drawing the schedule mid-run (over what counts, from which turn
  on) is a policy the trainer does not have; the result would be a made-up policy, not the trainer's.
* With the ``pool`` policy (:class:`sfsim.engine.pacing.MixingPool`): its capacity is fixed before the run
  from the widest activations among the devices planned to send there, and it draws early only when
  "every device has all the micro-batches its credits allow already in the pool". A visitor's wider
  activations would break the memory bound, and "every device" has no meaning while devices may
  still join (wait for a device that may never come, or draw without it): the rule needs a choice
  the trainer has not made.
* (No longer refused: ``cache_activations`` with a device that hands over *and* may drop. A cached micro-batch is
  replayed by the server that received it, so a mover leaves part of its first epoch cached on each server of its
  legs; one rule for all of them (:mod:`sfsim.engine.cacheparts`, :func:`watch_departures`): a replay trains only if
  its server starts it before the device's drop instant, and the runtime's device tells every server it sent to
  (``trainer.transport.departure``).)
* SplitLoRA's handovers with the ``sequential`` client order or a fixed server order (see
  :mod:`sfsim.schedules.splitlora.moves`).

Not modelled: a forward cut off by a drop or by the end of the windows counts neither as busy
time nor as FLOPs; the planner plans for the starting assignment and the nominal bandwidths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sfsim.engine.cacheparts import Departures
from sfsim.engine.pacing import FIXED_ORDERS
from sfsim.errors import SfsimError
from sfsim.methods import SPLITFROZEN
from sfsim.network.availability import next_online, offline_periods, online_until
from sfsim.network.legs import Motion, motion_of, needs_motion
from sfsim.outputs.trace import TraceEvent

POLICIES_WITH_MOVES = ("fifo", "round-robin")
"""Server policies that take devices joining and leaving a server mid-run (handover, churn)."""
NOT_FOR_CENLORA = ("not applicable: cenlora has its data at the server from the start and no device links, "
                   "so handovers, time-varying links and availability do not change it")
NOTHING_DOWN = ("not applicable: only the downlink varies, and SplitFrozen sends nothing down")


class Unsupported(SfsimError):
    """A schedule or setting the dynamic network is not simulated for (``--schedule all`` skips it, saying so)."""


def needs_dynamics(scenario, downlink: bool = False) -> bool:
    """True when some device hands over, has a time-varying uplink (or ``downlink``) or declares availability."""
    return any(needs_motion(d, downlink) for d in scenario.devices)


def applies(scenario, schedule: str) -> str | None:
    """What becomes of the scenario's dynamic network under ``schedule`` (``SimResult.dynamic_network``).

    Returns:
        None when the scenario has none; ``"simulated"``; or ``"not applicable: <why>"`` (cenlora,
        or SplitFrozen with only a varying downlink).
    """
    if not needs_dynamics(scenario, downlink=True):
        return None
    if schedule == "cenlora":
        return NOT_FOR_CENLORA
    if schedule in SPLITFROZEN and not needs_dynamics(scenario):
        return NOTHING_DOWN
    return "simulated"


def check_supported(scenario, schedule: str, cfg, cache: bool) -> None:
    """Refuse, in one line, a combination the dynamic network is not simulated for (see the module docstring)."""
    if schedule == "splitlora":
        mover = next((d.name for d in scenario.devices if d.handover), None)
        if mover is not None and cfg.client_order == "sequential":
            raise Unsupported(f"splitlora: {mover} hands over, and the sequential client order (client after "
                              "client, each over its whole epoch) has no place for a client arriving mid-run; "
                              "use client_order interleaved")
        if mover is not None and cfg.policy in FIXED_ORDERS:
            raise Unsupported(f"splitlora: {mover} hands over, and server policy {cfg.policy!r} is a fixed order "
                              "drawn per epoch over the starting clients, with no turn for a client that joins; "
                              "use fifo or pool")
    if schedule not in SPLITFROZEN:
        return  # fedlora takes every combination; cenlora has no device links
    moves = any(d.handover or d.availability is not None for d in scenario.devices)
    if moves and cfg.policy not in POLICIES_WITH_MOVES:
        raise Unsupported(f"server policy {cfg.policy!r} cannot take devices that join or leave a server "
                         f"(handover, availability); use {' or '.join(POLICIES_WITH_MOVES)}")


def watch_departures(pools, job, moving, policy: str = "fifo") -> Departures | None:
    """With the activation cache, the devices that may drop for good (churn ``drop``, a finite drop instant) and
    send fewer micro-batches than they train: every server's pool stops replaying each from its drop instant on
    (:class:`~sfsim.engine.cacheparts.Departures`; the rule: :mod:`sfsim.engine.cacheparts`). None when there are none."""
    at = {i: m.stop for i, m in (moving or {}).items()
          if m.churn == "drop" and m.stop < math.inf and job.devices[i].sent < job.devices[i].n}
    if not at:
        return None
    if policy not in POLICIES_WITH_MOVES:  # as check_supported: a paced order has no rule for a device that leaves
        raise Unsupported(f"server policy {policy!r} cannot take devices that leave a server (the activation cache "
                          f"with churn: drop); use {' or '.join(POLICIES_WITH_MOVES)}")
    departures = Departures(at)
    for pool in pools:
        pool.departures = departures
    return departures


@dataclass
class Untouched:
    """The dynamic network of a job it does not apply to (cenlora): nothing moves; the result says why."""

    moving: dict[int, Motion]


def not_applicable(scenario) -> Untouched | None:
    """An :class:`Untouched` network when the scenario has a dynamic network, else None."""
    return Untouched({}) if needs_dynamics(scenario, downlink=True) else None


@dataclass
class FedNetwork:
    """A FedLoRA or SplitLoRA job's dynamic network: every device's motion, and the ones the result reports."""

    motions: dict[int, Motion]
    moving: dict[int, Motion]


def every_device(setup, job) -> FedNetwork | None:
    """The job's :class:`FedNetwork` (a motion for every device), or None when nothing moves or varies."""
    devices = setup.scenario.devices
    if not any(needs_motion(d, downlink=True) for d in devices):
        return None
    motions = {i: motion_of(setup, d, dt.up_bytes) for i, (d, dt) in enumerate(zip(devices, job.devices, strict=True))}
    return FedNetwork(motions, {i: m for i, m in motions.items() if needs_motion(devices[i], downlink=True)})


def trace_moves(engine, d, m: Motion) -> None:
    """Instant ``handover`` ops on the device lane, and its ``offline`` periods up to the end of the run."""
    end = engine.env.now
    for leg in m.legs[1:]:
        if leg.at <= end:
            engine.events.append(TraceEvent(d.name, "handover", leg.at, 0.0, -1, d.name))
    if m.avail is None:
        return
    if m.churn == "drop":
        join = next_online(m.avail, 0.0)
        leave = online_until(m.avail, join) if join < math.inf else math.inf
        periods = [(0.0, min(join, end)), (min(leave, end), end)]
    else:
        periods = offline_periods(m.avail, end)
    for a, b in periods:
        engine.record(d.name, "offline", a, b - a, -1, d.name)


def report(res, setup, job, moving: dict[int, Motion]) -> None:
    """Put the dynamic network's outcome into a SimResult: handovers, samples not trained, real FLOPs.

    Every schedule's motions mean the same here: ``sent`` micro-batches reached training (sent to a
    server, or inside a sent adapter upload), ``switched_at`` counts them before each handover,
    ``done`` (default ``sent``) those whose device work ended, which the device FLOPs scale with.
    A handover due after the run's end is not one that happened (the device's process has ended, as in the
    runtime, which records the handovers due by then): it is not listed, as it is not traced.
    """
    sc, names = setup.scenario, [s.name for s in setup.scenario.servers]
    mb = sc.training.micro_batch
    res.dynamic_network = applies(sc, res.schedule)
    if res.dynamic_network != "simulated":  # nothing moved: every sample trains
        res.samples_not_trained = {d.name: 0 for d in sc.devices if d.availability is not None}
        return
    for i, m in moving.items():
        d, dev = job.devices[i], sc.devices[i]
        for j, leg in enumerate(m.legs[1:], start=1):
            if leg.at > res.makespan_s:
                break
            before = m.switched_at[j - 1]
            res.handovers.append({"device": d.name, "at_s": leg.at, "from": names[m.legs[j - 1].server],
                                  "to": names[leg.server], "sent_before": before, "sent_after": m.sent - before})
        if dev.availability is not None:
            res.samples_not_trained[d.name] = round((d.units(d.n) - reached_units(d, m)) * mb)
        res.uplink_send_s[d.name] = m.send_s
        if m.recv_s:
            res.downlink_recv_s[d.name] = m.recv_s
        done = m.sent if m.done is None else m.done
        if done != d.sent:  # all done: the static count stays exact
            res.device_flops[d.name] = job.device_flops[d.name] * (d.units(done) / d.units(d.sent) if d.sent else 0.0)
        if (len(m.legs) == 1 and m.avail is None) or not m.srv_flops:
            continue  # a varying link only, or no server FLOPs: every micro-batch trains where the schedule put it
        # Server FLOPs: each leg's share of the micro-batches, on the server that trained them.
        cuts = [0] + m.switched_at + [reached(d, m)]
        first = names[m.legs[0].server]
        res.server_flops[first] -= d.units(d.n) * m.srv_flops
        for leg, a, b in zip(m.legs, cuts, cuts[1:], strict=False):
            res.server_flops[names[leg.server]] += (d.units(b) - d.units(a)) * m.srv_flops
    lost = sum(d.n - reached(d, m) for i, m in moving.items() for d in [job.devices[i]])
    res.micro_batches -= lost


def reached(d, m: Motion) -> int:
    """The micro-batches of device ``d`` that reached training: those it sent (``m.sent``), and with the activation
    cache (it sends one epoch, ``d.sent < d.n``) the later epochs' replays when it sent its whole epoch; a device that
    left before has no replays (its cache is not read: ``sfsim.engine.worker``, the runtime's ``_from_cache``). One that
    may drop: the replays its servers started before its drop instant (``m.replayed``, :func:`watch_departures`)."""
    if d.sent < d.n and m.replayed is not None:
        return m.sent + m.replayed[0]
    return d.n if d.sent < d.n and m.sent == d.sent else m.sent


def reached_units(d, m: Motion) -> float:
    """:func:`reached` in full micro-batches (a partial one counts its share): what the untrained samples come from."""
    if d.sent < d.n and m.replayed is not None:
        return d.units(m.sent) + m.replayed[1]
    return d.units(reached(d, m))
