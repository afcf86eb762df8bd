"""Exact threshold search for cuts and server assignment, with a small integer program per step.

Why this search (and not one big integer program over cuts and assignment): the makespan is the
larger of two terms, the slowest device's pipeline ``fin[t, k, j]`` and the busiest server's load.
Fix a threshold T on the first term. Then every device type t on server j should take, among its
cuts with ``fin <= T``, the one that leaves the server the least work (the largest such cut: each
block moved to the device is a frozen forward the server no longer runs); mixing cuts within a
(type, server) never lowers either term. What is left is assigning the devices of each type to
servers so that the busiest server's load is smallest: an integer program with one integer count
per (type, server) pair (HiGHS, :mod:`sfsim.planner.program`; tiny: types x servers variables). The load at T
can only fall as T grows (more cuts become usable), so ``max(T, load(T))`` is minimised where the
two cross: a binary search over the sorted distinct ``fin`` values finds it with O(log(types x cuts
x servers)) integer programs (a step whose rounded linear relaxation already clears its threshold
by ``SURE_BELOW`` needs none: the program would decide the same). The same search with the integer program relaxed to a linear program
gives a proven lower bound. A joint MILP with big-M links between cut choice and device finish
would be exact too, but it has types x cuts x servers binaries and is far slower on the 1,000-device
benchmark than a dozen tiny programs.
"""

from __future__ import annotations

import heapq

import numpy as np

from sfsim.planner.fluid import Group
from sfsim.planner.model import StageTable
from sfsim.planner.program import solve

MIP_GAP = 1e-3
"""Relative optimality gap the assignment integer program stops at."""

MIP_DEVICES = 200
"""Fleets of more devices take the rounded relaxation as it is: it is within one device's load per
server of the bound, and the integer program rarely closes that gap there (it could not prove a
better one on the 1,000-device, 16-server benchmark in minutes)."""

MIP_NODES = 200
"""Most branch-and-bound nodes the integer program explores (a deterministic limit: some 1,000-device,
16-server programs run for minutes without it); it then returns the best assignment found, and
:func:`assign` the better of it and the rounded relaxation."""

UNLOAD_MOVES = 200
"""Most single-device moves that polish a rounded relaxation before it is compared with its bound."""

SURE_BELOW = 1e-2
"""Margin by which a rounded relaxation's load must clear a threshold for the binary search to
take "at most the threshold" without solving the integer program there (the program could return
no more than that load times ``1 + MIP_GAP``, plus solver tolerances far below this margin)."""


def best_cuts(table: StageTable, T: float) -> np.ndarray:
    """For each (type, server), the cut index with the least server work among those with fin <= T.

    Returns:
        int array (types, servers): an index on the k axis, or -1 where no cut fits under T.
    """
    ok = table.fin <= T * (1 + 1e-12)  # (types, cuts, servers)
    # least server work w[k, j]; ties go to the faster device (smaller fin)
    w = np.broadcast_to(table.w[None, :, :], ok.shape)
    key = np.where(ok, w + 1e-12 * table.fin / max(float(np.nanmax(np.where(ok, table.fin, 0))), 1e-300),
                   np.inf)
    idx = np.argmin(key, axis=1)  # (types, servers)
    return np.where(ok.any(axis=1), idx, -1)


def per_device_load(table: StageTable, kk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seconds one device of type t adds to server j with cut index ``kk[t, j]``, per resource.

    Returns:
        ``(compute, credits)``, each (types, servers): worker seconds / workers, and credit
        seconds (send + latency per micro-batch) / buffer; inf where ``kk`` is -1.
    """
    nT, nJ = kk.shape
    k = np.clip(kk, 0, None)
    w = table.w[k, np.arange(nJ)[None, :]]  # (types, servers)
    per_mb = w + table.step[None, :] / table.accumulate
    compute = table.n_mb[:, None] * per_mb / table.workers[None, :]
    hold = table.hold[np.arange(nT)[:, None], k]  # (types, servers)
    credits = table.n_sent[:, None] * hold / table.buffer
    if table.slow is not None:  # calibrated from a simulation: queueing the fluid model misses
        compute, credits = compute * table.slow[None, :], credits * table.slow[None, :]
    bad = kk < 0
    return np.where(bad, np.inf, compute), np.where(bad, np.inf, credits)


def assign(table: StageTable, kk: np.ndarray, integral: bool = True) -> tuple[float, np.ndarray] | None:
    """Split each type's devices over servers to minimise the busiest server's load.

    Args:
        table: the stage table.
        kk: cut index per (type, server), -1 where that server cannot take the type.
        integral: integer device counts (True) or the linear relaxation (False, a lower bound).

    Returns:
        ``(load, counts)`` with counts of shape (types, servers), or None when some type has no server.
        Remembered in ``table.memo``: the search asks for the same cut choice many times.
    """
    key = ("assign", kk.tobytes(), integral, None if table.slow is None else table.slow.tobytes())
    if key not in table.memo:
        table.memo[key] = _assign(table, kk, integral)
    got = table.memo[key]
    return None if got is None else (got[0], got[1].copy())


def _assign(table: StageTable, kk: np.ndarray, integral: bool) -> tuple[float, np.ndarray] | None:
    """:func:`assign`, computed."""
    cost, cred = per_device_load(table, kk)  # (types, servers) each
    counts = np.array([t.count for t in table.types], dtype=float)
    usable = np.isfinite(cost)
    if not usable.any(axis=1).all():
        return None
    if (usable.sum(axis=1) == 1).all():  # nothing to choose: every type has one server
        n = np.where(usable, counts[:, None], 0.0)
        return _busiest(usable, cost, cred, n), n
    if not integral:
        return _program(cost, cred, usable, counts, False)
    # the relaxation rounded is often provably as good as the program would return (within MIP_GAP)
    relaxed = _program(cost, cred, usable, counts, False)
    if relaxed is None:
        return None
    n = _round(table, usable, relaxed[1], cost, cred)
    rounded = None if n is None else (_busiest(usable, cost, cred, n), n)
    if rounded is not None and (rounded[0] <= relaxed[0] * (1 + MIP_GAP) or counts.sum() > MIP_DEVICES):
        return rounded
    solved = _program(cost, cred, usable, counts, True)  # may stop at MIP_NODES with a worse answer
    if rounded is None or (solved is not None and solved[0] < rounded[0]):
        return solved
    return rounded


def _program(cost: np.ndarray, cred: np.ndarray, usable: np.ndarray, counts: np.ndarray,
             integral: bool) -> tuple[float, np.ndarray] | None:
    """:func:`assign`'s program: counts per usable (type, server) pair minimising the busiest load."""
    pairs = np.argwhere(usable)  # (P, 2) rows of (type, server)
    P, (nT, nJ) = len(pairs), usable.shape
    c_pair = cost[pairs[:, 0], pairs[:, 1]]
    q_pair = cred[pairs[:, 0], pairs[:, 1]]
    # variables: counts for each pair, then z (the busiest load); tiny weight on total work breaks ties
    obj = np.concatenate([c_pair * 1e-7 / max(c_pair.sum(), 1e-300), [1.0]])
    a_type = np.zeros((nT, P + 1))
    a_type[pairs[:, 0], np.arange(P)] = 1.0
    a_srv = np.zeros((2 * nJ, P + 1))  # rows: each server's compute, then each server's credits
    a_srv[pairs[:, 1], np.arange(P)] = c_pair
    a_srv[nJ + pairs[:, 1], np.arange(P)] = q_pair
    a_srv[:, P] = -1.0
    ub = np.concatenate([counts[pairs[:, 0]], [np.inf]])
    integ = np.concatenate([np.full(P, integral), [False]])
    # A 0.1% optimality gap is far below what the fluid model can resolve and keeps HiGHS fast on
    # min-max problems, whose many symmetric optima are slow to prove.
    got = solve(obj, np.vstack([a_type, a_srv]), np.concatenate([counts, np.full(2 * nJ, -np.inf)]),
                np.concatenate([counts, np.zeros(2 * nJ)]), ub, integ if integral else None, MIP_GAP, MIP_NODES)
    if got is None:
        return None
    x = np.round(got[:P]) if integral else got[:P]
    n = np.zeros((nT, nJ))
    n[pairs[:, 0], pairs[:, 1]] = x
    return _busiest(usable, cost, cred, n), n


def rounded_load(table: StageTable, kk: np.ndarray) -> float:
    """An upper bound on the integer program's optimum: the busiest load of the relaxation rounded.

    Returns:
        The busiest server's load of :func:`_round`'s assignment; inf when there is none (no
        relaxation, or a solution too far off to round).
    """
    r = assign(table, kk, integral=False)
    if r is None:
        return float("inf")
    cost, cred = per_device_load(table, kk)
    usable = np.isfinite(cost)
    n = _round(table, usable, r[1])
    return float("inf") if n is None else _busiest(usable, cost, cred, n)


def _round(table: StageTable, usable: np.ndarray, relaxed: np.ndarray, cost: np.ndarray | None = None,
           cred: np.ndarray | None = None) -> np.ndarray | None:
    """Relaxed counts made whole: each type's floored, then its remaining devices placed.

    Without loads (``cost``, ``cred``) the remaining devices go to the type's largest fractional
    parts; with them, one at a time (dearest first) to the usable server whose busiest resource
    then stays lowest, which keeps the rounded load close to the relaxation's.

    Returns:
        Integer counts (types, servers) on usable pairs (a feasible assignment), or None when the
        relaxed solution is too far off to round.
    """
    x = np.where(usable, np.clip(relaxed, 0, None), 0.0)  # (types, servers)
    n = np.floor(x + 1e-9)
    left = np.array([info.count for info in table.types]) - n.sum(axis=1).astype(int)
    if (left < 0).any() or (left > usable.sum(axis=1)).any():
        return None
    if cost is None:
        for t in range(len(left)):
            frac = np.where(usable[t], x[t] - n[t], -np.inf)
            n[t, np.argsort(-frac, kind="stable")[:left[t]]] += 1
        return n
    c, q = np.where(usable, cost, 0.0), np.where(usable, cred, 0.0)
    comp, hold = (c * n).sum(axis=0), (q * n).sum(axis=0)  # per server
    for t in sorted(np.flatnonzero(left), key=lambda t: -np.max(np.where(usable[t], c[t], 0.0))):
        for _ in range(left[t]):
            after = np.where(usable[t], np.maximum(comp + c[t], hold + q[t]), np.inf)
            j = int(np.argmin(after))
            n[t, j] += 1
            comp[j] += c[t, j]
            hold[j] += q[t, j]
    _unload(usable, c, q, n, comp, hold)
    return n


def _unload(usable: np.ndarray, c: np.ndarray, q: np.ndarray, n: np.ndarray, comp: np.ndarray,
            hold: np.ndarray, moves: int = UNLOAD_MOVES) -> None:
    """Move single devices off the busiest server while that lowers it and the receiver stays below it.

    ``n``, ``comp`` and ``hold`` (counts, per-server compute and credit loads) change in place; the
    busiest load never rises.
    """
    for _ in range(moves):
        peak = np.maximum(comp, hold)
        src = int(np.argmax(peak))
        top = peak[src]
        # (types, servers): the source's and each receiver's busiest resource after moving one device
        left = np.maximum(comp[src] - c[:, src], hold[src] - q[:, src])[:, None]
        got = np.maximum(comp[None, :] + c, hold[None, :] + q)
        ok = usable & (n[:, src] >= 1)[:, None] & (got < top * (1 - 1e-12))
        ok[:, src] = False
        if ok.any():
            after = np.where(ok, np.maximum(left, got), np.inf)
            t, j = np.unravel_index(int(np.argmin(after)), after.shape)
            _move(n, c, q, comp, hold, t, src, j)
        elif not _swap(usable, c, q, n, comp, hold, src, top):
            return


def _move(n, c, q, comp, hold, t, src, j) -> None:
    """One device of type ``t`` moves from server ``src`` to ``j``."""
    n[t, src] -= 1
    n[t, j] += 1
    comp[src] -= c[t, src]
    hold[src] -= q[t, src]
    comp[j] += c[t, j]
    hold[j] += q[t, j]


def _swap(usable, c, q, n, comp, hold, src, top) -> bool:
    """Exchange a device of type a on ``src`` for one of type b on another server, when both end below ``top``."""
    # (a, b, j): src gives a device of type a to j and takes one of type b from it
    s_comp = comp[src] - c[:, src][:, None, None] + c[:, src][None, :, None]
    s_hold = hold[src] - q[:, src][:, None, None] + q[:, src][None, :, None]
    j_comp = comp[None, None, :] + c[:, None, :] - c[None, :, :]
    j_hold = hold[None, None, :] + q[:, None, :] - q[None, :, :]
    after = np.maximum(np.maximum(s_comp, s_hold), np.maximum(j_comp, j_hold))
    ok = ((n[:, src] >= 1) & usable[:, src])[:, None, None] & usable[None, :, src, None]
    ok = ok & usable[:, None, :] & (n >= 1)[None, :, :] & (after < top * (1 - 1e-12))
    ok[:, :, src] = False
    ok[np.arange(len(n)), np.arange(len(n)), :] = False  # a type for itself changes nothing
    if not ok.any():
        return False
    a, b, j = np.unravel_index(int(np.argmin(np.where(ok, after, np.inf))), after.shape)
    _move(n, c, q, comp, hold, a, src, j)
    _move(n, c, q, comp, hold, b, j, src)
    return True


def _busiest(usable: np.ndarray, cost: np.ndarray, cred: np.ndarray, n: np.ndarray) -> float:
    """The largest per-server compute or credit load of counts ``n``."""
    comp = (np.where(usable, cost, 0) * n).sum(axis=0)
    hold = (np.where(usable, cred, 0) * n).sum(axis=0)
    return float(max(comp.max(), hold.max()))


def thresholds(table: StageTable) -> np.ndarray:
    """Sorted distinct finite ``fin`` values: the only device-side thresholds worth trying."""
    f = table.fin[np.isfinite(table.fin)]
    return np.unique(f)


def _crossing(table: StageTable, Ts: np.ndarray, integral: bool) -> tuple[int, dict]:
    """Index of the first threshold whose load is at most it, and the assignments solved on the way."""
    cache: dict[int, tuple[float, np.ndarray, np.ndarray] | None] = {}

    def at(i):
        if i not in cache:
            kk = best_cuts(table, Ts[i])
            r = assign(table, kk, integral)
            cache[i] = None if r is None else (r[0], r[1], kk)
        return cache[i]

    lo, hi = 0, len(Ts) - 1
    while lo < hi:  # invariant: the answer lies in [lo, hi]; infeasible thresholds count as "load too high"
        mid = (lo + hi) // 2
        if integral and rounded_load(table, best_cuts(table, Ts[mid])) * (1 + SURE_BELOW) <= Ts[mid]:
            hi = mid  # the integer program would say so too: skip it (it is the slow step)
            continue
        r = at(mid)
        if r is not None and r[0] <= Ts[mid]:
            hi = mid
        else:
            lo = mid + 1
    at(lo)
    return lo, cache


def lower_bound(table: StageTable) -> float:
    """A proven lower bound on the makespan at this LoRA start (linear relaxation of the search).

    Every plan has some largest device finish T* (a lower bound on its makespan) and, at T*, server
    loads no smaller than the relaxed optimum; both ignore the start-up before the first arrival.
    """
    Ts = thresholds(table)
    if not len(Ts):
        return float("inf")
    i, cache = _crossing(table, Ts, integral=False)
    best = max(Ts[i], cache[i][0]) if cache[i] is not None else float("inf")
    if i > 0:
        prev = cache.get(i - 1) or _solve(table, Ts[i - 1], False)
        if prev is not None:
            best = min(best, max(Ts[i - 1], prev[0]))
    return float(best)


def _solve(table, T, integral):
    kk = best_cuts(table, T)
    r = assign(table, kk, integral)
    return None if r is None else (r[0], r[1], kk)


def to_groups(table: StageTable, kk: np.ndarray, n: np.ndarray) -> list[Group]:
    """Turn per-(type, server) counts and cut indices into plan groups."""
    out = []
    for t, j in np.argwhere(n > 0.5):
        out.append(Group(int(t), int(table.cuts[kk[t, j]]), int(j), int(round(n[t, j]))))
    return out


def candidates(table: StageTable, spread: int = 2) -> list[list[Group]]:
    """Plans around the crossing threshold (the analytic optimum and its neighbours), best first.

    Args:
        table: the stage table at one LoRA start.
        spread: how many thresholds on each side of the crossing to also return.

    Returns:
        Lists of :class:`Group`, one per candidate plan (empty when nothing is feasible).

    Example:
        >>> plans = candidates(build_table(cm, sc, 11, 1, "splitfrozen"))
    """
    Ts = thresholds(table)
    if not len(Ts):
        return []
    i, cache = _crossing(table, Ts, integral=True)
    scored = []
    for m in range(max(0, i - spread), min(len(Ts), i + spread + 1)):
        r = cache.get(m) or _solve(table, Ts[m], True)
        if r is not None:
            scored.append((max(Ts[m], r[0]), to_groups(table, r[2], r[1])))
    scored.sort(key=lambda x: x[0])
    return [g for _, g in scored]


def rank_uniform_cuts(table: StageTable, top: int | None = None) -> list[int]:
    """Cuts every device type can use, most promising first (by the linear relaxation).

    The key is the larger of the slowest type's pipeline on its best server and the busiest
    server's load when device counts may be fractional (a linear program: fast). With ``top``, only
    the ``top`` first (the same as the full ranking's): cuts are tried by their pipeline term, which
    bounds their key from below, and the rest are dropped once it exceeds the ``top``-th key found.
    """
    device = {int(k): float(table.fin[:, ki, :].min(axis=1).max()) for ki, k in enumerate(table.cuts)}
    out: list[tuple[float, int]] = []
    for k in sorted(device, key=lambda k: (device[k], k)):
        if top is not None and len(out) >= top and device[k] > sorted(out)[top - 1][0]:
            break  # its key, and every later one's, is at least its pipeline term
        ki = table.k_index(k)
        kk = np.where(table.allowed[:, ki, :], ki, -1)
        r = assign(table, kk, integral=False)
        if r is not None:
            out.append((max(device[k], r[0]), k))
    return [k for _, k in sorted(out)][:top]


def fixed_cut(table: StageTable, cut: int) -> list[Group] | None:
    """The best assignment when every device uses the same ``cut`` (None if infeasible)."""
    if not table.cuts[0] <= cut <= table.cuts[-1]:
        return None
    ki = table.k_index(cut)
    kk = np.where(table.allowed[:, ki, :], ki, -1)
    r = assign(table, kk, True)
    return None if r is None else to_groups(table, kk, r[1])


RULES = ("program", "fractions", "least")
"""The assignment rules :func:`reassigned` knows (see there)."""


def reassigned(table: StageTable, groups: list[Group], rules: tuple[str, ...] = RULES) -> list[list[Group]]:
    """The cut choice of ``groups`` assigned to servers by other rules, for the simulator to choose among.

    The fluid model cannot tell apart assignments of equal busiest load, and the simulator's queueing
    can: on the 10,000-device, 16-server benchmark, where every server's credits are busy to the
    bound, the rounded and polished relaxation simulates 79 s and a least-loaded assignment 70 s at
    the same estimate. Each type keeps its most common cut (on every server where that cut is allowed
    and its pipeline ends no later than the plan's slowest; the plan's own pairs are kept).

    Args:
        table: the stage table.
        groups: a plan.
        rules: which of :data:`RULES` to apply: ``program`` (:func:`assign`: the integer program or
            the rounded relaxation), ``fractions`` (the relaxation rounded by largest fractional
            parts) and ``least`` (least-loaded: devices placed dearest type first, each on the server
            whose busiest resource then stays lowest).

    Returns:
        One plan per rule that gives one, in ``rules`` order; empty when there is nothing to choose.
    """
    nT, nJ = len(table.types), len(table.servers)
    top = max(float(table.fin[g.t, table.k_index(g.k), g.j]) for g in groups)
    kk = np.full((nT, nJ), -1)
    for t in range(nT):
        mine = [g for g in groups if g.t == t]
        ki = table.k_index(max({g.k for g in mine}, key=lambda k: (sum(g.n for g in mine if g.k == k), k)))
        ok = table.allowed[t, ki, :] & (table.fin[t, ki, :] <= top * (1 + 1e-12))
        kk[t] = np.where(ok, ki, -1)
        for g in mine:
            if kk[t, g.j] < 0:
                kk[t, g.j] = table.k_index(g.k)
    cost, cred = per_device_load(table, kk)
    usable = np.isfinite(cost)
    if (usable.sum(axis=1) <= 1).all():
        return []
    counts = np.array([t.count for t in table.types], dtype=float)
    out = []
    for rule in rules:
        if rule == "program":
            r = assign(table, kk, True)
            n = None if r is None else r[1]
        elif rule == "fractions":
            r = _program(cost, cred, usable, counts, False)
            n = None if r is None else _round(table, usable, r[1])
        else:
            n = least_loaded(usable, cost, cred, counts)
        if n is not None:
            out.append(to_groups(table, kk, n))
    return out


def least_loaded(usable: np.ndarray, cost: np.ndarray, cred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Counts (types, servers): devices placed one at a time, dearest type first, each on the usable
    server whose busiest resource (compute or credits) is then lowest (the first such server on ties).

    Within a type only the server that took the last device changes its key, so a heap keyed by
    (busiest resource after one more device, server) gives each choice in O(log servers).
    """
    c, q = np.where(usable, cost, 0.0), np.where(usable, cred, 0.0)
    n = np.zeros_like(c)
    nJ = c.shape[1]
    comp, hold = [0.0] * nJ, [0.0] * nJ
    for t in sorted(range(len(c)), key=lambda t: -np.max(np.maximum(c[t], q[t]))):
        ct, qt = c[t].tolist(), q[t].tolist()
        heap = [(max(comp[j] + ct[j], hold[j] + qt[j]), j) for j in range(nJ) if usable[t, j]]
        heapq.heapify(heap)
        for _ in range(int(counts[t])):
            j = heapq.heappop(heap)[1] if heap else 0
            n[t, j] += 1
            comp[j] += ct[j]
            hold[j] += qt[j]
            if usable[t, j]:
                heapq.heappush(heap, (max(comp[j] + ct[j], hold[j] + qt[j]), j))
    return n
