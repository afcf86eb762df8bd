"""SplitFrozen with ``training.sync`` on the fast path: every server in one compiled loop with its backhaul rounds.

The rounds couple the servers (a round waits for every server's upload, and in ``sync`` mode each server's
worker waits for the average), so the servers are replayed together, as handovers are
(:func:`sfsim.fast.joint.replay_handover`), with :mod:`sfsim.fast.rounds` running the rounds in the SimPy
engine's event order. :func:`covers` says which runs it replays: one epoch (``every`` >= 1, either mode), a
policy that takes any arrived micro-batch, one worker a server; devices of the dynamic network as handovers replay
them (:func:`sfsim.fast.handover.covers`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from sfsim.errors import SfsimError
from sfsim.fast import rounds
from sfsim.fast.events import _FLIGHT, _OVERFLOW, MAX_DEVICES
from sfsim.fast.handover import _collect, _pool_rows, _rows, _touched, program, replay_joint, state
from sfsim.fast.handover import covers as covers_moves
from sfsim.fast.joint import RING_FULL, replay_handover
from sfsim.fast.splitfrozen import layout, min_flight
from sfsim.network.backhaul import Closed


@dataclass
class _Static:
    """A static job's network as the joint loop reads it: each server sees every device, none moves."""

    views: list
    moving: dict


def covers(job, policy: str) -> str | None:
    """None when :func:`replay_job` replays ``job``'s backhaul rounds (``training.sync``), else why not (one line)."""
    sync = job.sync
    if sync.epochs > 1:
        return "training.sync over several epochs (each ends with its rounds)"
    if policy not in ("fifo", "round-robin", "proportional", "pool"):
        return f"training.sync under policy {policy!r}"
    if any(s.count > 1 for s in job.servers):  # each worker's round process joins on its own: rounds overlap
        return "training.sync on a server with several workers"
    if any(d.sent < d.n for d in job.devices):
        return "training.sync with cached activations"
    net = getattr(job, "network", None)
    if getattr(net, "views", None) is not None:  # every server in the loop of handovers
        why = covers_moves(net, policy)
        if why is not None:
            return f"training.sync on the dynamic network with {why}"
    if len(job.devices) + 4 * len(job.servers) + 4 >= MAX_DEVICES:
        return f"training.sync with {len(job.devices):,} devices"
    return None


def replay_job(job, cfg, sequential: bool) -> tuple[list[dict], np.ndarray, np.ndarray, Closed]:
    """Replay a SplitFrozen ``job`` with ``training.sync`` (:func:`covers`): per server figures, per device busy
    seconds and uplink bytes (as :func:`sfsim.fast.handover.replay_job`), and the rounds' bytes and count."""
    K, spec = len(job.servers), job.sync

    def fresh(workers: int) -> tuple:
        return rounds.state(K, workers, len(job.devices), spec.servers, spec.every, spec.mode, spec.payload,
                            spec.closing)
    if getattr(getattr(job, "network", None), "views", None) is not None:  # devices of the dynamic network
        outs, busy, up, B = replay_joint(job, cfg, sequential, fresh)
        return outs, busy, up, _closed(B, job)
    static = copy.copy(job)
    static.network = _Static([job.devices] * K, {})
    prog, nodes = program(static.network)
    prog.draw_all(1.0)
    RP = prog.arrays()
    D, N = layout(job.devices)
    where = np.array([d.server for d in job.devices], np.int64)
    flights = [min_flight(D[:, where == k], N[:, where == k]) for k in range(K)]  # each pool's own bound
    ring = 1 << min(16, max(10, int(N[0].sum()).bit_length()))
    while True:
        Y, L = _rows(static, nodes)
        events, X, Z, RN, RS, counts, cur = state(static, cfg, sequential, ring, _pool_rows(static, cfg, sequential))
        touched = _touched(static.network.moving)
        X[1][:, _FLIGHT] = flights
        events = np.empty((2, events.shape[1] + 3 * K + 16))  # the rounds' timers: READY, ARRIVE and EV per server
        B = fresh(int(counts.sum()))
        makespan = replay_handover(events, X, Z, Y, L, RP, RN, RS, counts, cur, B)
        flags = X[0][:, _OVERFLOW]
        if (flags == RING_FULL).any():
            ring *= 4
            continue
        if flags.any():
            raise RuntimeError("fast path: an event heap ran out of room (a bug: use engine simpy)")
        outs, busy, up = _collect(static, makespan, X, Z, Y, L, touched)
        return outs, busy, up, _closed(B, job)


def _closed(B: tuple, job) -> Closed:
    """The rounds' bytes per server and count, once none is left open."""
    if rounds.still_open(B):  # the SimPy engine fails the same way (Rounds._check)
        raise SfsimError("backhaul: a sync round waited for ever; this run's rounds are not simulated correctly, "
                         "please report it")
    sent, count = rounds.totals(B, [s.name for s in job.servers])
    return Closed(sent, count)
