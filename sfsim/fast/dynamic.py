"""SplitFrozen on the fast path with the dynamic network: varying uplinks, pause and drop; handovers in one loop.

:func:`covers` says whether a job's network is one this replays; :func:`replay_job` replays it,
server by server (without handover or backhaul sync the servers share nothing but the run's end,
below; with handovers all servers together, :mod:`sfsim.fast.handover`), and fills each moving device's :class:`~sfsim.network.legs.Motion` as the SimPy process does.

Soft timers (the drop deadlines) do not make a run last, but one fires if the run is still going
elsewhere: a server left with only soft timers and work it cannot start (a device cut off holds
its credit until it leaves) is replayed again with its soft timers before the others' end. A soft
timer at exactly that end runs on SimPy only when it was queued first: here it does not run.
"""

from __future__ import annotations

import math

import numpy as np

from sfsim.engine.policies import PACED
from sfsim.fast import handover, mixing
from sfsim.fast.kernel import (
    _N,
    OUT_BUSY,
    OUT_END,
    OUT_MAKESPAN,
    OUT_OVERFLOW,
    OUT_PEAK,
    OUT_STALLED,
    OUT_STUCK,
    OUT_TOTAL,
    OUT_TV_COUNT,
    OUT_TV_SUM,
    OUT_UNCLAIMED,
    OUT_WAIT,
)
from sfsim.fast.rates import Program, Unsupported
from sfsim.fast.splitfrozen import layout, paced_segments, run
from sfsim.network.linkrate import Product, Steps


def covers(net, policy: str) -> str | None:
    """None when the fast path replays network ``net`` (a SplitFrozen :class:`Network`) under ``policy``, else why not.

    A paced order reads the devices' micro-batch counts at each epoch (:func:`sfsim.engine.policies.paced_order`):
    with availability a device may leave mid-run and change the later epochs' orders, which the fast
    path does not follow.
    """
    if any(len(m.legs) > 1 for m in net.moving.values()):
        return handover.covers(net, policy)
    if policy in PACED and any(m.avail is not None or _may_end(m.legs[0].rate) for m in net.moving.values()):
        return f"availability under policy {policy!r}"
    try:
        program(net)
    except Unsupported as err:
        return str(err)
    return None


def _may_end(rate) -> bool:
    """Whether an uplink's rate may drop to 0 for good (a trace that does not repeat)."""
    if isinstance(rate, Product):
        return _may_end(rate.a) or _may_end(rate.b)
    return isinstance(rate, Steps) and rate.period is None


def program(net) -> tuple[Program, dict[int, tuple[int, int]]]:
    """The rates of the moving devices: the program, and per device its (uplink, pause) nodes."""
    prog, nodes = Program(), {}
    for i, m in net.moving.items():
        nodes[i] = (prog.add(m.legs[0].up_rate(m.pause)), prog.add(m.pause))
    return prog, nodes


def replay_job(job, cfg, sequential: bool) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Replay a SplitFrozen ``job`` with a dynamic network (see :func:`covers`); as :func:`sfsim.fast.splitfrozen.replay_job`."""
    devices, moving = job.devices, job.network.moving
    if any(len(m.legs) > 1 for m in moving.values()):  # moving devices couple the servers: one loop for all
        return handover.replay_job(job, cfg, sequential)
    D, N = layout(devices)
    prog, nodes = program(job.network)
    rows = {i: _row(devices[i], m, nodes[i]) for i, m in moving.items()}
    horizon = 1.0  # how far the drawn processes are drawn: a first guess of the run's end, doubled when passed
    for i in nodes:
        d, start = devices[i], rows[i][1][0]
        horizon = max(horizon, 2.0 * d.sent * (d.f + d.up_s + d.up_l) + (start if start < math.inf else 0.0))
    where = np.array([d.server for d in devices], np.int64)
    touched = {m.legs[0].server for m in moving.values() if m.avail is not None}  # ServerPool.mix_received
    kept = touched if 8 * int(N[_N].sum()) <= handover.STREAM_CAP else set()  # servers that keep their stream
    while True:
        RP = None  # the last try's rates go before this one's are drawn
        prog.draw_all(horizon)
        RP = prog.arrays()
        outs = _servers(job, cfg, sequential, D, N, where, rows, RP, kept)
        if not any(o[0][OUT_STUCK] for o in outs):
            break
        horizon = max(2.0 * horizon, 2.0 * float(RP[4][:-1].max()))
    return _collect(job, _measured(job, cfg, sequential, D, N, where, rows, RP, outs, touched), moving, where,
                    touched)


def _row(d, m, node: tuple[int, int]) -> tuple:
    """Device ``d``'s row of :mod:`sfsim.fast.moving`: (rate nodes, start/stop/bits/latency, seconds sent)."""
    leg = m.legs[0]
    return node, (m.start, m.stop, d.up_bytes * 8.0, leg.up_l), m.send_s


def _servers(job, cfg, sequential, D, N, where, rows, RP, kept: set) -> list[tuple]:
    """Every server's replay ``(out, Y, local devices, soft_until, stream)``; servers left waiting on soft timers go
    on to the run's end. Servers in ``kept`` keep the stream they receive."""
    outs = [_server(job, cfg, sequential, D, N, where, rows, RP, k, -math.inf, kept=k in kept)
            for k in range(len(job.servers))]
    end = max(o[0][OUT_MAKESPAN] for o in outs)
    for _ in range(len(outs) if len(outs) > 1 else 0):
        if not any(o[0][OUT_STALLED] for o in outs):
            break
        outs = [_server(job, cfg, sequential, D, N, where, rows, RP, k, end, kept=k in kept) if o[0][OUT_STALLED]
                else o for k, o in enumerate(outs)]
        new_end = max(o[0][OUT_MAKESPAN] for o in outs)
        if new_end == end:
            break
        end = new_end
    return outs


def _measured(job, cfg, sequential, D, N, where, rows, RP, outs, touched: set) -> list[tuple]:
    """``outs``, with each ``touched`` server whose devices left early replayed again for its stream mixing.

    A server whose devices churn measures its stream against the micro-batches it received in the end
    (:meth:`sfsim.engine.pool.ServerPool.mix_received`), which the first replay only guesses (its
    devices' micro-batches). Where a device left early the guess was wrong, and the server is replayed
    once more (the same run) with the totals the first replay found: memory stays O(devices), where
    keeping the received stream to measure at the end grew with the run; a server that kept its stream
    (below :data:`~sfsim.fast.handover.STREAM_CAP`) measures it with those totals instead.
    """
    out = list(outs)
    for k, (o, Y, sel, soft_until, stream) in enumerate(outs):
        if k in touched and not np.array_equal(Y[5], N[_N, sel]):
            if stream.size:
                o = o.copy()
                o[OUT_TV_SUM], o[OUT_TV_COUNT] = mixing.stream_value(stream[:int(Y[5].sum())], Y[5])
                out[k] = (o, Y, sel, soft_until, stream)
            else:
                out[k] = _server(job, cfg, sequential, D, N, where, rows, RP, k, soft_until, Y[5].copy())
    return out


def _server(job, cfg, sequential, D, N, where, rows, RP, k, soft_until, totals=None, kept=False) -> tuple:
    """Replay server ``k`` with its moving devices' rows; soft timers before ``soft_until`` run regardless.

    ``totals``: per local device the micro-batches its stream mixing is measured against (None: its
    devices' micro-batches, :func:`_measured`). ``kept``: the server keeps the stream it receives.
    """
    sel = np.flatnonzero(where == k)
    Dk, Nk = np.ascontiguousarray(D[:, sel]), np.ascontiguousarray(N[:, sel])
    mine = [i for i in sel.tolist() if i in rows]
    DY = np.full(len(sel), -1, np.int64)
    local = {i: q for q, i in enumerate(sel.tolist())}
    for y, i in enumerate(mine):
        DY[local[i]] = y
    r = max(1, len(mine))
    YI, YF, YS = np.zeros((r, 2), np.int64), np.zeros((r, 4)), np.zeros(r)
    YN = np.full((r, 3), -1, np.int64)
    for y, i in enumerate(mine):
        YI[y], YF[y], YS[y] = rows[i]
    Y = (DY, YI, YF, YS, YN, np.zeros(len(sel), np.int64) if totals is None else totals)
    soft_room = handover.soft_cap(sum(rows[i][1][1] < math.inf for i in mine), len(sel))  # drop deadlines
    paced = (paced_segments([job.devices[i] for i in sel], PACED[cfg.policy]) if cfg.policy in PACED
             else (np.zeros(0, np.int64),) * 4)
    stream = np.zeros(int(Nk[_N].sum()) if kept else 0, np.int64)
    out = run(Dk, Nk, job.servers[k], cfg, sequential, [job.devices[i] for i in sel], paced, 0.0,
              Y, RP, stream, soft_room, soft_until)
    return out, Y, sel, soft_until, stream


def _collect(job, outs, moving, where, touched: set) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per-server figures, and per device busy seconds and uplink bytes (the moving ones' as they went)."""
    devices, results = job.devices, []
    busy = np.array([d.units(d.sent) * d.f + d.first_extra(d.sent) for d in devices], np.float64)
    up = np.array([d.units(d.sent) * d.up_bytes for d in devices], np.float64)
    for k, (out, Y, sel, *_) in enumerate(outs):
        if out[OUT_OVERFLOW] or out[OUT_STUCK]:
            raise RuntimeError("fast path: an event heap ran out of room (a bug: use engine simpy)")
        if out[OUT_UNCLAIMED]:  # the SimPy engine fails the same way
            raise RuntimeError(f"fast path: {int(out[OUT_UNCLAIMED])} micro-batches never processed")
        count, value = int(out[OUT_TV_COUNT]), float(out[OUT_TV_SUM])
        total = int(Y[5].sum() if k in touched else out[OUT_TOTAL])  # churn: what it received in the end
        results.append({"makespan": float(out[OUT_MAKESPAN]), "busy": float(out[OUT_BUSY]),
                        "wait": float(out[OUT_WAIT]), "end": float(out[OUT_END]),
                        "mixing": value / count if count else None, "total": total, "peak": float(out[OUT_PEAK])})
        for q, i in enumerate(sel.tolist()):
            y = Y[0][q]
            if y < 0:
                continue
            m, d = moving[i], devices[i]
            n = max(0, int(Y[4][y, 2]))
            m.sent, m.send_s = n, float(Y[3][y])
            m.busy, m.up_bytes = d.units(n) * d.f + d.first_extra(n), d.units(n) * d.up_bytes
            busy[i], up[i] = m.busy, m.up_bytes
    return results, busy, up
