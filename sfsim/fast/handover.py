"""SplitFrozen with handovers on the fast path: the job's arrays for :mod:`sfsim.fast.joint`, its replay and figures.

A device that moves couples the servers, so they are replayed together in one compiled loop
(:func:`sfsim.fast.joint.replay_handover`); runs without handover keep the per-server replay of
:mod:`sfsim.fast.dynamic` and :mod:`sfsim.fast.splitfrozen`. :func:`covers` says which handover runs
this replays; :func:`replay_job` fills each moving device's :class:`~sfsim.network.legs.Motion` as the
SimPy process does (sent, radio seconds, busy, bytes, ``switched_at``).
"""

from __future__ import annotations

import math

import numpy as np

from sfsim.fast import mixing, rounds
from sfsim.fast.events import (
    _ACCUMULATE,
    _ALARM_AT,
    _ALARM_ID,
    _BUFFER,
    _BUSY,
    _CAP,
    _END,
    _FLAGS,
    _FLIGHT,
    _NSTREAM,
    _OVERFLOW,
    _PCAP,
    _POLICY,
    _PPEAK,
    _SBUF,
    _SCOUNT,
    _SLIMIT,
    _SOFT_CAP,
    _SOFT_UNTIL,
    _STEP,
    _TOTAL,
    _TURN,
    _UNCLAIMED,
    _WAIT_S,
    F_SLOTS,
    MAX_DEVICES,
    POOL,
    S_SLOTS,
)
from sfsim.fast.joint import _LEG0, _SENT_OUT, RING_FULL, replay_handover
from sfsim.fast.kernel import _N, _SENT
from sfsim.fast.rates import Program, Unsupported, stuck
from sfsim.fast.splitfrozen import POLICY_CODES, flags_for, layout, pool_args

STREAM_CAP = 64 * 2**20
"""Bytes of received streams a replay keeps (8 a micro-batch a server) to measure a server's mixing against the
totals it received in the end; above, a wrong first guess of those totals costs a second replay."""


def stream_room(job) -> int:
    """Per server room for the order it receives (every micro-batch of the devices that may come), or 0 (not kept)
    when all servers' rooms pass :data:`STREAM_CAP`."""
    bound = np.zeros(len(job.servers), np.int64)
    for i, d in enumerate(job.devices):
        mv = job.network.moving.get(i)
        for k in {leg.server for leg in mv.legs} if mv is not None else {d.server}:
            bound[k] += d.n
    room = int(bound.max()) if bound.size else 0
    return room if 8 * room * len(job.servers) <= STREAM_CAP else 0


def state(job, cfg, sequential: bool, ring: int, pool_rows: tuple, totals=None, room: int = 0) -> tuple:
    """The stacked per-server state of :func:`_loop` (``X``, ``Z``) and the workers' starts, before the run.

    ``pool_rows``: the ``pool`` policy's (words, activation bytes, per server (capacity, limit, credits)).
    ``totals``: per server and device the micro-batches its stream mixing is measured against (None: the
    devices it starts with; :func:`replay_job`). ``room``: per server room for the stream it receives (0: none).
    """
    devices, views = job.devices, job.network.views
    K, m = len(job.servers), len(devices)
    D2 = np.ascontiguousarray(np.stack([layout(views[k])[0] for k in range(K)]))
    N0 = layout(devices)[1]
    where = np.array([d.server for d in devices], np.int64)
    N2 = np.repeat(N0[None], K, 0)
    for k in range(K):
        N2[k, _N] = np.where(where == k, N0[_N], 0)
    N2 = np.ascontiguousarray(N2)
    total_all = int(N0[_N].sum())
    per_device = cfg.credits == "device"
    flight_max = (m * cfg.buffer if per_device else cfg.buffer) + m
    cap = min(total_all, flight_max) + 2
    words, act, PA = pool_rows
    S2, F2, CR, P2 = _scalars(job, cfg, sequential, N2, cap, PA)
    counts = np.array([s.count for s in job.servers], np.int64)
    nw = int(counts.sum())
    mixes = [mixing.start(N2[k, _N] if totals is None else totals[k]) for k in range(K)]
    X = (S2, F2, D2, N2, P2, np.zeros((K, 2, cap + m + 16)), np.zeros((K, 2, m + 16)), CR,
         np.zeros((K, m), np.bool_), np.zeros((K, m)), np.zeros((K, max(1, int(counts.max()))), np.int64),
         np.ascontiguousarray(N2[:, _N]))
    wcap = min(cfg.accumulate, total_all) + 2
    Z = (np.zeros((K, 2, m + 16)), np.zeros((K, cap), np.int64), np.zeros((K, cap), np.int64),
         np.zeros((K, 2, cap + 1), np.int64), *[np.ascontiguousarray(np.stack([x[q] for x in mixes])) for q in range(5)],
         np.zeros((K, room), np.int64), np.zeros((7, nw), np.int64), np.zeros((3, nw)),
         np.zeros((nw, wcap), np.int64), np.zeros((nw, wcap), np.int64), words, act, np.zeros(0, np.int64),
         np.zeros(m, np.int64))
    events = np.empty((2, 2 * m + nw + 4 * cap * K + soft_cap(len(job.network.moving), m) + 64))
    RN = np.zeros((K, ring), np.int64)
    RS = np.full((K, ring), -1, np.int64)
    return events, X, Z, RN, RS, counts, np.array(where)


def soft_cap(timers: int, devices: int) -> int:
    """The soft timers (handover and drop deadlines) queued at once before the superseded go: twice the live
    ones (``timers``: one a moving device) and the ``devices``, so that clearing them
    (:func:`sfsim.fast.events.soft_room`) stays rare; memory grows with the devices, not with their waits."""
    return 2 * timers + 2 * devices + 64


def _scalars(job, cfg, sequential: bool, N2: np.ndarray, cap: int, PA: np.ndarray) -> tuple:
    """Per server the kernel's scalars ``S`` and ``F``, credits and policy rows, as replay_dynamic sets them.

    A server holds one place per handover that may bring a device to it (ServerPool.expect).
    """
    K, m = N2.shape[0], N2.shape[2]
    S2, F2 = np.zeros((K, S_SLOTS), np.int64), np.zeros((K, F_SLOTS))
    expected = np.zeros(K, np.int64)
    for mv in job.network.moving.values():
        for leg in mv.legs[1:]:
            expected[leg.server] += 1
    CR = np.zeros((K, max(m, 1)), np.int64)
    P2 = np.zeros((K, 3, m), np.int64)
    code = POLICY_CODES[cfg.policy]
    for k in range(K):
        total = int(N2[k, _N].sum())
        S2[k, _UNCLAIMED], S2[k, _TOTAL] = total + expected[k], total
        S2[k, _BUFFER], S2[k, _ACCUMULATE], S2[k, _POLICY] = cfg.buffer, cfg.accumulate, code
        S2[k, _FLAGS], S2[k, _TURN], S2[k, _ALARM_ID], S2[k, _CAP] = flags_for(cfg, sequential), -1, -1, cap
        F2[k, _ALARM_AT], F2[k, _STEP], F2[k, _FLIGHT] = math.inf, job.servers[k].step, 0.0  # open_arrivals: 0
        F2[k, _SOFT_UNTIL] = -math.inf
        S2[k, _SOFT_CAP] = soft_cap(len(job.network.moving), m)
        CR[k, 0] = cfg.buffer
        if cfg.credits == "device":
            CR[k, :] = 1 if sequential else cfg.buffer
        if code == POOL:
            S2[k, _PCAP], S2[k, _SLIMIT], S2[k, _SBUF] = PA[k]
            P2[k, 0] = np.where(N2[k, _N] > 0, N2[k, _SENT], 0)
            P2[k, 2] = P2[k, 0] > 0
            S2[k, _SCOUNT] = int(P2[k, 2].sum())
        else:
            P2[k, 1] = -1
    return S2, F2, CR, P2


def program(net) -> tuple:
    """The rates of the moving devices: the program and, per device, its pause node and each leg's uplink node."""
    prog, nodes = Program(), {}
    for i, mv in net.moving.items():
        nodes[i] = (prog.add(mv.pause), [prog.add(leg.up_rate(mv.pause)) for leg in mv.legs])
    return prog, nodes


def _rows(job, nodes: dict) -> tuple[tuple, tuple]:
    """``Y`` (per device its row, per row pause/legs/start/stop/bits) and ``L`` (per leg at/server/uplink/latency)."""
    devices, moving = job.devices, job.network.moving
    m, r = len(devices), max(1, len(moving))
    DY = np.full(m, -1, np.int64)
    YI, YF, YS = np.zeros((r, 4), np.int64), np.zeros((r, 3)), np.zeros(r)
    YN = np.full((r, 4), -1, np.int64)
    LA, LS, LU, LL = [], [], [], []
    for y, (i, mv) in enumerate(moving.items()):
        DY[i] = y
        pause, ups = nodes[i]
        YI[y] = (pause, len(LA), len(mv.legs), 0)
        YF[y] = (mv.start, mv.stop, devices[i].up_bytes * 8.0)
        for leg, node in zip(mv.legs, ups, strict=True):
            LA.append(float(leg.at))
            LS.append(leg.server)
            LU.append(node)
            LL.append(float(leg.up_l))
    L = (np.array(LA + [0.0]), np.array(LS + [0], np.int64), np.array(LU + [-1], np.int64), np.array(LL + [0.0]),
         np.full(len(LA) + 1, -1, np.int64))
    return (DY, YI, YF, YS, YN), L


def _touched(moving) -> set:
    """Servers whose received stream is measured (a device hands over or churns there)."""
    out = set()
    for mv in moving.values():
        if len(mv.legs) > 1 or mv.avail is not None:
            out |= {leg.server for leg in mv.legs}
    return out


def _measured(X, touched: set) -> np.ndarray | None:
    """Per server the totals its stream mixing is measured against, when the replay's guess was wrong (else None).

    A server where devices hand over or churn measures against what it received in the end; the others against
    what their devices had to send, whatever reached them (:meth:`sfsim.engine.pool.ServerPool.mix_received`).
    """
    guess, got = X[3][:, _N], X[11]
    totals = np.array([got[k] if k in touched else guess[k] for k in range(guess.shape[0])], np.int64)
    return None if np.array_equal(totals, guess) else totals


def _pool_rows(job, cfg, sequential: bool) -> tuple:
    """The ``pool`` policy's generator state per server (row k), activation bytes and per server (capacity, limit,
    credits) (:func:`splitfrozen.pool_args`)."""
    K = len(job.servers)
    PA = np.zeros((K, 3), np.int64)
    act = np.array([d.act_bytes for d in job.devices], np.float64)
    if cfg.policy != "pool":
        return np.zeros((K, 0), np.int64), act, PA
    states = []  # one generator per server, as each server's MixingPool seeds its own random.Random
    for k in range(K):
        view = job.network.views[k]
        N = layout(view)[1]
        N[_N] = np.where(np.array([d.server for d in job.devices]) == k, N[_N], 0)
        w, act, PA[k] = pool_args(view, N, cfg, sequential)
        states.append(w)
    return np.stack(states), act, PA


def replay_job(job, cfg, sequential: bool) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Replay a SplitFrozen ``job`` whose devices hand over (all servers together); as :func:`sfsim.fast.dynamic.replay_job`.

    Fills each moving device's :class:`~sfsim.network.legs.Motion` (sent, radio seconds, busy, bytes,
    ``switched_at``) as the SimPy process does. A server measures its stream mixing against the
    micro-batches it received in the end, which the first replay only guesses (those it starts with):
    where a device came or left, the stream each server received is measured with the totals found, or,
    where keeping the streams would pass :data:`STREAM_CAP`, the same run is replayed once more with
    those totals, so memory stays O(devices x servers) on long runs.
    """
    return replay_joint(job, cfg, sequential, None)[:3]


def replay_joint(job, cfg, sequential: bool, fresh) -> tuple[list[dict], np.ndarray, np.ndarray, tuple]:
    """:func:`replay_job` with the backhaul rounds' state ``fresh()`` (:func:`sfsim.fast.rounds.state`; None: no
    rounds), made anew for each try; returns its figures and that state after the run."""
    devices, moving = job.devices, job.network.moving
    prog, nodes = program(job.network)
    # how far the drawn processes are drawn: a first guess of the run's end (twice the servers' work spread over
    # their workers, or a device's own), doubled when passed
    work = sum(d.n * (d.srv_f + d.srv_b + d.srv_w) for d in devices) / max(1, sum(s.count for s in job.servers))
    horizon = max(1.0, 2.0 * work)
    for i, mv in moving.items():
        d = devices[i]
        horizon = max(horizon, 2.0 * d.sent * (d.f + d.up_s + d.up_l) + (mv.start if mv.start < math.inf else 0.0)
                      + mv.legs[-1].at)
    total = sum(d.n for d in devices)
    # the ring of pushes' micro-batch numbers: room for every push of the run, or 2**16, grown when a slot is busy
    ring, totals, touched = 1 << min(16, max(10, total.bit_length())), None, _touched(moving)
    room = stream_room(job) if touched else 0
    while True:
        RP = None  # the last try's rates go before this one's are drawn
        prog.draw_all(horizon)
        RP = prog.arrays()
        Y, L = _rows(job, nodes)
        events, X, Z, RN, RS, counts, cur = state(job, cfg, sequential, ring, _pool_rows(job, cfg, sequential),
                                                  totals, room if totals is None else 0)
        B = rounds.state(len(job.servers), int(counts.sum()), len(devices)) if fresh is None else fresh(int(counts.sum()))
        if fresh is not None:  # the rounds' timers: READY, ARRIVE and EV per server
            events = np.empty((2, events.shape[1] + 3 * len(job.servers) + 16))
        makespan = replay_handover(events, X, Z, Y, L, RP, RN, RS, counts, cur, B)
        flags = X[0][:, _OVERFLOW]
        if stuck(RP):
            horizon = max(2.0 * horizon, 2.0 * float(RP[4][:-1].max()))
        elif (flags == RING_FULL).any():
            ring *= 4
        elif flags.any():
            raise RuntimeError("fast path: an event heap ran out of room (a bug: use engine simpy)")
        elif totals is None and (totals := _measured(X, touched)) is not None and not room:  # a wrong guess
            del events, X, Z, RN, RS, B  # before the next replay's
        else:
            streamed = touched if totals is not None and room else frozenset()  # a wrong guess, the streams kept
            return (*_collect(job, makespan, X, Z, Y, L, touched, streamed), B)


def _collect(job, makespan: float, X, Z, Y, L, touched: set, streamed: frozenset = frozenset()) -> tuple[
        list[dict], np.ndarray, np.ndarray]:
    """Per-server figures, and per device busy seconds and uplink bytes (the moving ones' as they went).

    ``streamed``: servers whose mixing is measured over the stream they kept, with the totals they received.
    """
    S2, F2, TOT = X[0], X[1], X[11]
    M2, T2, ST = Z[4], Z[5], Z[9]
    devices, results = job.devices, []
    for k in range(len(job.servers)):
        if S2[k, _UNCLAIMED]:  # the SimPy engine fails the same way
            raise RuntimeError(f"fast path: {int(S2[k, _UNCLAIMED])} micro-batches never processed")
        total = int(TOT[k].sum() if k in touched else S2[k, _TOTAL])
        value, count = float(T2[k, 0]), int(M2[k, mixing.COUNT])
        if k in streamed:
            value, count = mixing.stream_value(ST[k, :int(S2[k, _NSTREAM])], TOT[k])
        results.append({"makespan": float(makespan), "busy": float(F2[k, _BUSY]), "wait": float(F2[k, _WAIT_S]),
                        "end": float(F2[k, _END]), "mixing": value / count if count else None, "total": total,
                        "peak": float(F2[k, _PPEAK])})
    busy = np.array([d.units(d.sent) * d.f + d.first_extra(d.sent) for d in devices], np.float64)
    up = np.array([d.units(d.sent) * d.up_bytes for d in devices], np.float64)
    YI, YS, YN = Y[1], Y[3], Y[4]
    for y, (i, mv) in enumerate(job.network.moving.items()):
        d, n = devices[i], max(0, int(YN[y, _SENT_OUT]))
        first = int(YI[y, _LEG0])
        mv.sent, mv.send_s = n, float(YS[y])
        mv.switched_at = [int(x) for x in L[4][first + 1:first + len(mv.legs)]]
        mv.busy, mv.up_bytes = d.units(n) * d.f + d.first_extra(n), d.units(n) * d.up_bytes
        busy[i], up[i] = mv.busy, mv.up_bytes
    return results, busy, up


def covers(net, policy: str) -> str | None:
    """None when :func:`replay_job` replays network ``net`` (some device hands over) under ``policy``, else why not."""
    if policy not in ("fifo", "round-robin", "proportional", "pool"):
        return f"handover under policy {policy!r}"  # a paced order has no turn for a device that joins
    if any(d.sent < d.n for d in net.views[0]):
        return "handover with cached activations"  # later epochs replay on the first server's cache
    if len(net.views[0]) + 1 >= MAX_DEVICES:
        return f"handover with {len(net.views[0]):,} devices (the one loop over all servers takes < {MAX_DEVICES - 1:,})"
    try:
        program(net)
    except Unsupported as err:
        return str(err)
    return None
