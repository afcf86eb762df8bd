"""SplitFrozen with ``training.sync`` on the fast path: every server in one compiled loop with its backhaul rounds.

The rounds couple the servers (a round waits for every server's upload, and in ``sync`` mode each server's
worker waits for the average), so the servers are replayed together, as handovers are
(:func:`sfsim.fast.joint.replay_handover`), with :mod:`sfsim.fast.rounds` running the rounds in the SimPy
engine's event order. :func:`covers` says which runs it replays: ``every`` >= 1, either mode, or no
``training.sync`` over several epochs (each epoch's closing round alone); a policy that takes any arrived
micro-batch, one worker a server; devices of the dynamic network as handovers replay them
(:func:`sfsim.fast.handover.covers`) over one epoch. Over several epochs the servers open one epoch at a time after
its rounds (:func:`sfsim.fast.rounds.open_epoch`) and the devices wait for each (:data:`sfsim.fast.devices.EPOCHS`);
with the activation cache a server replays each later epoch from its start (:func:`sfsim.fast.joint._replays`).
Without backhaul rounds (one server, or no backhaul) the same loop can replay the epochs opened one at a time, each
after the one before and its epoch-end wait (:func:`covers_alone`, :func:`sfsim.fast.rounds.alone`); ``simulate``
replays those runs in the single-server kernel instead (:mod:`sfsim.fast.opening`: any policy, several workers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from sfsim.errors import SfsimError
from sfsim.fast import rounds
from sfsim.fast.devices import EPOCHS
from sfsim.fast.events import (
    _FLAGS,
    _FLIGHT,
    _N,
    _OVERFLOW,
    _POLICY,
    _SCOUNT,
    _SENT,
    _SLIMIT,
    _UNCLAIMED,
    MAX_DEVICES,
    POOL,
)
from sfsim.fast.handover import _collect, _pool_rows, _rows, _touched, program, replay_joint, state
from sfsim.fast.handover import covers as covers_moves
from sfsim.fast.joint import RING_FULL, replay_handover
from sfsim.fast.splitfrozen import layout, min_flight
from sfsim.network.backhaul import STUCK, Closed
from sfsim.schedules.splitfrozen import by_epochs


@dataclass
class _Static:
    """A static job's network as the joint loop reads it: each server sees every device, none moves."""

    views: list
    moving: dict


def covers(job, policy: str) -> str | None:
    """None when :func:`replay_job` replays ``job``'s backhaul rounds (``training.sync``, or without it each epoch's
    closing round over several epochs: :func:`sfsim.schedules.splitfrozen.closes_per_epoch`), else why not (one line)."""
    sync = job.sync
    what = "training.sync" if sync.every is not None else "the closing backhaul round at each epoch's end"
    net = getattr(job, "network", None)
    dynamic = getattr(net, "views", None) is not None
    if sync.epochs > 1 and (dynamic or not by_epochs(job, True)):  # moving devices: their epoch gates on SimPy only
        return f"{what} over several epochs with moving devices"
    if policy not in ("fifo", "round-robin", "proportional", "pool"):
        return f"{what} under policy {policy!r}"
    if any(s.count > 1 for s in job.servers):  # each worker's round process joins on its own: rounds overlap
        return f"{what} on a server with several workers"
    if dynamic and sync.every is not None and any(len({lg.server for lg in m.legs}) > 1 for m in net.moving.values()):
        return f"{what} with a handover between servers (a server waiting for its visitor answers rounds)"
    if dynamic:  # every server in the loop of handovers
        why = covers_moves(net, policy)
        if why is not None:
            return f"{what} on the dynamic network with {why}"
    if len(job.devices) + 8 * len(job.servers) + 8 >= MAX_DEVICES:
        return f"{what} with {len(job.devices):,} devices"
    return None


def covers_alone(job, policy: str) -> str | None:
    """None when :func:`replay_job` replays a static ``job`` without backhaul rounds whose servers open their epochs
    one at a time (several epochs: one server, or no backhaul; the runtime's server trains each epoch out, then its
    epoch-end wait when ``training.eval_samples`` is set, then sends each device the next epoch's ``start``; the
    SimPy pool's ``by_epochs`` from :func:`sfsim.schedules.splitfrozen.run`), else why not (one line)."""
    what = "several epochs opened one at a time without backhaul rounds"
    if getattr(getattr(job, "network", None), "views", None) is not None:  # their EpochBooks: SimPy only
        return f"{what} with moving devices"
    if policy not in ("fifo", "round-robin", "proportional", "pool"):
        return f"{what} under policy {policy!r}"
    if any(s.count > 1 for s in job.servers):
        return f"{what} on a server with several workers"
    if len(job.devices) + 8 * len(job.servers) + 8 >= MAX_DEVICES:
        return f"{what} with {len(job.devices):,} devices"
    return None


def replay_job(job, cfg, sequential: bool, epoch_end: dict[str, float] | None = None, epochs: int | None = None
               ) -> tuple[list[dict], np.ndarray, np.ndarray, Closed | None]:
    """Replay a SplitFrozen ``job`` with ``training.sync`` (:func:`covers`): per server figures, per device busy
    seconds and uplink bytes (as :func:`sfsim.fast.handover.replay_job`), and the rounds' bytes and count.

    ``epoch_end``: server name -> its wait at each epoch's end (:func:`sfsim.cost.epochend.epoch_end_seconds`;
    the SimPy engine's ``Engine.epoch_end``), over several epochs. A static job without backhaul rounds
    (``job.sync`` None: one server, or no backhaul) over ``epochs`` epochs opened one at a time for that wait alone
    (:func:`covers_alone`) has no rounds: None for them."""
    K, spec = len(job.servers), job.sync

    made: list[tuple] = []  # the last rounds' state made, to tell a round that waits for ever from other stops

    def fresh(workers: int) -> tuple:
        if spec is None:  # no rounds: each server opens its next epoch when its last worker ends (and its wait)
            made[:] = [rounds.state(K, workers, len(job.devices))]
        else:
            made[:] = [rounds.state(K, workers, len(job.devices), spec.servers, spec.every, spec.mode, spec.payload,
                                    spec.closing)]
        return made[0]
    if getattr(getattr(job, "network", None), "views", None) is not None:  # devices of the dynamic network
        try:
            outs, busy, up, B = replay_joint(job, cfg, sequential, fresh)
        except RuntimeError as e:  # a round nobody else joins stops its server: micro-batches stay unprocessed
            if "never processed" in str(e) and made and rounds.still_open(made[0]):
                raise SfsimError(f"backhaul: a sync round waited for ever; {STUCK}") from None
            raise
        return outs, busy, up, _closed(B, job)
    outs, busy, up, B = _replay_static(job, cfg, sequential, fresh, epoch_end or {},
                                       spec.epochs if epochs is None else epochs)
    return outs, busy, up, None if spec is None else _closed(B, job)


def _replay_static(job, cfg, sequential: bool, fresh, epoch_end: dict[str, float], epochs: int) -> tuple:
    """Every server of a static ``job`` in the loop of handovers (none moves) with ``fresh(workers)``'s rounds state
    over ``epochs`` epochs; returns per server figures, per device busy and uplink bytes, and that state."""
    K = len(job.servers)
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
        events = np.empty((2, events.shape[1] + 5 * K + 16))  # the rounds' timers: READY, ARRIVE, EV, OPEN, GO
        B = fresh(int(counts.sum()))
        if epochs > 1:  # by_epochs: the servers open one epoch at a time
            waits = np.array([epoch_end.get(s.name, 0.0) for s in job.servers], np.float64)
            _by_epochs(X, B, epochs, where, counts, waits)
            Z[-1][:] = X[3][0, _SENT]  # per device its next cached micro-batch (sfsim.fast.joint._replays)
        makespan = replay_handover(events, X, Z, Y, L, RP, RN, RS, counts, cur, B)
        flags = X[0][:, _OVERFLOW]
        if (flags == RING_FULL).any():
            ring *= 4
            continue
        if flags.any():
            raise RuntimeError("fast path: an event heap ran out of room (a bug: use engine simpy)")
        outs, busy, up = _collect(static, makespan, X, Z, Y, L, touched)
        return outs, busy, up, B


def _by_epochs(X, B, epochs: int, where: np.ndarray, counts: np.ndarray, waits: np.ndarray) -> None:
    """The servers' books for one epoch at a time (WorkerLoop.by_epochs): each epoch's micro-batches, the mixing
    pool's senders, the devices' gates, each server's wait at an epoch's end."""
    S2, N2, P2 = X[0], X[3], X[4]
    per = N2[:, _N] // epochs  # per server and device: micro-batches of an epoch
    S2[:, _FLAGS] |= EPOCHS
    S2[:, _UNCLAIMED] = per.sum(axis=1)
    if (S2[:, _POLICY] == POOL).any():  # the mixing pool's "could still send": this epoch's only
        P2[:, 0] = per
        P2[:, 2] = (per > 0) & (P2[:, 1] < S2[:, _SLIMIT][:, None])
        S2[:, _SCOUNT] = P2[:, 2].sum(axis=1)
    rounds.gates(B, epochs, where, counts, S2[:, _UNCLAIMED].copy(), waits)


def _closed(B: tuple, job) -> Closed:
    """The rounds' bytes per server and count, once none is left open."""
    if rounds.still_open(B):  # the SimPy engine fails the same way (Rounds._check)
        raise SfsimError(f"backhaul: a sync round waited for ever; {STUCK}")
    sent, count = rounds.totals(B, [s.name for s in job.servers])
    return Closed(sent, count)
