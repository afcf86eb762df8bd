"""Fluid estimate of a SplitFrozen plan's makespan, and what bounds it.

A server that never idles while work is waiting (FIFO, W deferred into idle time but still done
before each optimizer step) finishes at ``max over instants tau of tau + (work arriving at or after
tau) / workers``. Arrivals are periodic per device (first at ``a``, then every ``p``), so the maximum
is reached at a device's first or last arrival: the estimate checks only those instants, per server.
Pure functions over a :class:`~sfsim.planner.model.StageTable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfsim.planner.model import StageTable


@dataclass(frozen=True)
class Group:
    """``n`` devices of type index ``t`` with cut ``k`` (blocks) on server index ``j``."""

    t: int
    k: int
    j: int
    n: int


CREDITS = Group(-1, -1, -1, 0)
"""Marker for "this server's credits (``training.buffer``) bound the makespan"."""


@dataclass(frozen=True)
class Estimate:
    """The fluid makespan and the term that attains it."""

    makespan_s: float
    server: int  # index of the server whose completion is the makespan
    limiting: Group | None  # the group whose last arrival sets it; None: the server's work; CREDITS
    busy_s: tuple[float, ...]  # per-server busy seconds (work / workers)


def server_completion(table: StageTable, gs: list[Group], j: int) -> tuple[float, Group | None, float]:
    """Fluid completion time of server ``j`` serving groups ``gs``, its limiting term and busy seconds."""
    return _server_completion(table, gs, j)


def _server_completion(table: StageTable, gs: list[Group], j: int) -> tuple[float, Group | None, float]:
    ki = np.array([table.k_index(g.k) for g in gs])
    ti = np.array([g.t for g in gs])
    a = table.a[ti, ki]  # (G,) first arrival of each group's devices
    p = table.p[ti, ki, j]  # (G,) period between their arrivals
    nmb = table.n_sent[ti]  # (G,) micro-batches each device sends
    # (G,) server work per sent micro-batch, in full ones: cached epochs replay, a partial last one counts its share
    scale = table.n_mb[ti] / nmb
    n = np.array([g.n for g in gs], dtype=float)
    w = table.w[ki, j]  # (G,) server seconds per micro-batch
    e = a + (nmb - 1) * p  # (G,) last arrival
    tau = np.concatenate([a, e])  # (2G,) candidate instants
    # micro-batches of group g arriving at or after tau: N - ceil((tau - a) / p), clipped to [0, N]
    done = np.ceil((tau[:, None] - a[None, :]) / p[None, :] - 1e-9)  # (2G, G)
    remaining = np.clip(nmb[None, :] - np.maximum(done, 0), 0, nmb[None, :])  # (2G, G)
    mb_left = remaining @ (n * scale)  # (2G,)
    step_share = table.step[j] / table.accumulate
    work = remaining @ (n * scale * w) + mb_left * step_share  # (2G,) seconds of one accelerator
    c = table.workers[j]
    # With several workers the last micro-batch still runs on one of them: at least its own w.
    longest = np.where(remaining > 0, w[None, :], 0).max(axis=1)  # (2G,)
    val = tau + np.maximum(work / c, longest + table.step[j])
    best = int(np.argmax(val))
    busy = float((nmb * scale * n * (w + step_share)).sum() / c)
    first = float(a.min())
    limiting = None if tau[best] <= first + 1e-12 else gs[best % len(gs)]
    # Credits: every sent micro-batch holds one of `buffer` credits for at least send + latency,
    # starting no earlier than the first forward ends; the last one still needs the server after.
    hold = table.hold[ti, ki]  # (G,)
    credit = table.f[ti, ki].min() + float((nmb * n * hold).sum()) / table.buffer + w.min() + table.step[j]
    if credit > val[best]:
        return float(credit), CREDITS, busy
    return float(val[best]), limiting, busy


def estimate(table: StageTable, groups: list[Group]) -> Estimate:
    """Fluid makespan of ``groups`` (every device in exactly one group) at ``table.lora_start``.

    Args:
        table: the stage table the groups index into.
        groups: the plan, as (type, cut, server, count) groups.

    Returns:
        An :class:`Estimate` (makespan, the server that finishes last, its limiting group if any).

    Example:
        >>> estimate(table, [Group(t=0, k=2, j=0, n=4)]).makespan_s
    """
    best = (-1.0, 0, None)
    busy = [0.0] * len(table.servers)
    for j in range(len(table.servers)):
        gs = [g for g in groups if g.j == j and g.n > 0]
        if not gs:
            continue
        val, lim, busy[j] = _server_completion(table, gs, j)
        if table.slow is not None:
            val *= table.slow[j]
        if val > best[0]:
            best = (val, j, lim)
    return Estimate(best[0], best[1], best[2], tuple(busy))
