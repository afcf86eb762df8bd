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


def _per_type(table: StageTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n_sent, n_mb / n_sent, hold)`` of ``table``, computed once (each is a fresh array per access)."""
    got = table.memo.get("per_type")
    if got is None:
        nmb = table.n_sent
        got = table.memo["per_type"] = (nmb, table.n_mb / nmb, table.hold)
    return got


def _server_completion(table: StageTable, gs: list[Group], j: int) -> tuple[float, Group | None, float]:
    n_sent, per_sent, hold_tk = _per_type(table)
    k0 = int(table.cuts[0])
    ti = np.array([g.t for g in gs])
    ki = np.array([g.k - k0 for g in gs])
    a = table.a[ti, ki]  # (G,) first arrival of each group's devices
    p = table.p[ti, ki, j]  # (G,) period between their arrivals
    nmb = n_sent[ti]  # (G,) micro-batches each device sends
    # (G,) server work per sent micro-batch, in full ones: cached epochs replay, a partial last one counts its share
    scale = per_sent[ti]
    n = np.array([g.n for g in gs], dtype=float)
    w = table.w[ki, j]  # (G,) server seconds per micro-batch
    e = a + (nmb - 1) * p  # (G,) last arrival
    tau = np.concatenate([a, e])  # (2G,) candidate instants
    # micro-batches of group g arriving at or after tau: N - ceil((tau - a) / p), clipped to [0, N]
    done = np.ceil((tau[:, None] - a) / p - 1e-9)  # (2G, G)
    remaining = np.maximum(nmb - np.maximum(done, 0), 0)  # (2G, G); never above N
    ns = n * scale
    mb_left = remaining @ ns  # (2G,)
    step_share = table.step[j] / table.accumulate
    work = remaining @ (ns * w) + mb_left * step_share  # (2G,) seconds of one accelerator
    c = table.workers[j]
    # With several workers the last micro-batch still runs on one of them: at least its own w.
    longest = np.where(remaining > 0, w, 0).max(axis=1)  # (2G,)
    val = tau + np.maximum(work / c, longest + table.step[j])
    best = int(val.argmax())
    busy = float((nmb * scale * n * (w + step_share)).sum() / c)
    limiting = None if tau[best] <= float(a.min()) + 1e-12 else gs[best % len(gs)]
    # Credits: every sent micro-batch holds one of `buffer` credits for at least send + latency,
    # starting no earlier than the first forward ends; the last one still needs the server after.
    hold = hold_tk[ti, ki]  # (G,)
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
    for j, gs in enumerate(_by_server(table, groups)):
        if not gs:
            continue
        val, lim, busy[j] = _completion(table, j, gs)
        if table.slow is not None:
            val *= table.slow[j]
        if val > best[0]:
            best = (val, j, lim)
    return Estimate(best[0], best[1], best[2], tuple(busy))


def makespan_below(table: StageTable, groups: list[Group], bound: float) -> float | None:
    """``estimate(table, groups).makespan_s`` when it is below ``bound``, else None.

    Servers whose groups were scored before are checked first, so a plan that leaves a server at or
    above ``bound`` as it was (a local search move elsewhere) costs no new completion.
    """
    memo, slow, top, todo = table.memo, table.slow, -1.0, []
    for j, gs in enumerate(_by_server(table, groups)):
        done = memo.get((j, gs)) if gs else None
        if done is None:
            if gs:
                todo.append((j, gs))  # not scored yet: only if no scored server reaches the bound
            continue
        val = done[0] if slow is None else done[0] * slow[j]
        if val >= bound:
            return None
        top = max(top, val)
    for j, gs in todo:
        val = _completion(table, j, gs)[0]
        if slow is not None:
            val *= slow[j]
        if val >= bound:
            return None
        top = max(top, val)
    return top


def _by_server(table: StageTable, groups: list[Group]) -> list[tuple[Group, ...]]:
    """Each server's non-empty groups, in plan order."""
    out: list[list[Group]] = [[] for _ in table.servers]
    for g in groups:
        if g.n > 0:
            out[g.j].append(g)
    return [tuple(gs) for gs in out]


def _completion(table: StageTable, j: int, gs: tuple[Group, ...]) -> tuple[float, Group | None, float]:
    """:func:`server_completion`, remembered in ``table.memo`` (it depends only on the server's own groups)."""
    done = table.memo.get((j, gs))
    if done is None:
        done = table.memo[(j, gs)] = _server_completion(table, list(gs), j)
    return done
