"""SplitFrozen's dynamic network at setup: which devices move, churn or see a varying uplink (:class:`Motion` each),
and each server's view of the devices (its own F/B/W seconds for visitors). :mod:`sfsim.schedules.splitfrozen`
re-exports these names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sfsim.network.backhaul import SyncSpec
from sfsim.network.legs import Motion, motion_of, needs_motion
from sfsim.schedules.network import Untouched, needs_dynamics, not_applicable


@dataclass
class Network:
    """A SplitFrozen job's dynamic devices (index -> :class:`Motion`) and each server's view of the devices."""

    moving: dict[int, Motion]
    views: list[list]


def closing_barrier(sc, payload: float) -> SyncSpec | None:
    """Each epoch's closing round on links that take no time, on several servers over several epochs with neither
    ``training.sync`` nor a ``backhaul`` link (:func:`sfsim.network.backhaul.sync_spec` models nothing then), else None.

    ``sfsim run`` on several servers always ends an epoch with its closing round (``train_epoch`` -> ``finish_sync``
    -> ``ServerSync.finish``, over the servers' admitted channels, unshaped without a link): every server's adapters
    and head are averaged so that they evaluate and save one logical model. The round takes no time here, but it is a
    barrier: a server whose epoch ended early waits for the slowest before its epoch-end wait and its next epoch
    (issue 21: the simulator let it run an epoch ahead). After the last epoch it changes no instant."""
    tr = sc.training
    if len(sc.servers) < 2 or tr.sync is not None or tr.epochs < 2 or any(s.backhaul is not None for s in sc.servers):
        return None
    return SyncSpec(tuple((s.name, math.inf, 0.0) for s in sc.servers), None, "sync", payload, payload, tr.epochs)


def network(setup, job) -> Network | Untouched | None:
    """The job's :class:`Network`, or None when no device moves, churns or has a varying uplink.

    Only a varying downlink: :class:`~sfsim.schedules.network.Untouched` (SplitFrozen sends nothing down).
    """
    if not needs_dynamics(setup.scenario):
        return not_applicable(setup.scenario)
    moving = motions(setup, job)
    return Network(moving, pool_views(setup, job, moving))


def motions(setup, job) -> dict[int, Motion]:
    """Device index -> :class:`Motion` for every device of ``job`` that needs the dynamic process."""
    sc, cm, out = setup.scenario, setup.cm, {}
    for i, (d, dt) in enumerate(zip(sc.devices, job.devices, strict=True)):
        if needs_motion(d, downlink=False):  # nothing goes down in SplitFrozen
            suffix = cm.server_suffix(setup.splits[d.name], setup.lora_start)
            out[i] = motion_of(setup, d, dt.up_bytes, suffix.total)
    return out


def pool_views(setup, job, moving: dict[int, Motion]) -> list[list]:
    """Per server: the devices as that server sees them (its own F/B/W seconds for visitors).

    A moving device's uplink time is set to 0 and its latency to its smallest, so that the pool's
    bound on how soon a micro-batch can arrive stays a lower bound.
    """
    sc, cm = setup.scenario, setup.cm
    views = []
    for k, srv in enumerate(sc.servers):
        row = []
        for i, d in enumerate(job.devices):
            m = moving.get(i)
            if m is None:
                row.append(d)
                continue
            lat = min(leg.up_l for leg in m.legs)
            if any(leg.server == k for leg in m.legs):
                suffix = cm.server_suffix(setup.splits[d.name], setup.lora_start)
                f, b, w = cm.seconds(suffix, srv)
                d = dataclasses.replace(d, srv_f=f, srv_b=b, srv_w=w)
            row.append(dataclasses.replace(d, up_s=0.0, up_l=lat))
        views.append(row)
    return views
