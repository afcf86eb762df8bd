"""Local search with the simulator around the analytic optimum.

The fluid model cannot see queueing details (several workers, credits, the W/step interleaving),
so plans it scores as equal can differ by a few percent in the simulator. Starting from the best
simulated candidate, this moves one group's cut by one block, one device's cut by one block, or
one device to another server, replays each neighbour (most promising by the fluid estimate first)
and keeps the first that is faster, until no neighbour helps or the simulation budget is spent.
:func:`nearby_plans` lists every plan within a few blocks of one (the whole space on small fleets),
for the planner to replay all of them when there are few enough.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

from sfsim.planner.fluid import Group, estimate, makespan_below
from sfsim.planner.model import StageTable


def merge(groups: list[Group]) -> list[Group]:
    """Combine groups with the same (type, cut, server) and drop empty ones."""
    acc: dict[tuple[int, int, int], Group] = {}
    for g in groups:
        if g.n > 0:
            key = (g.t, g.k, g.j)
            had = acc.get(key)
            acc[key] = g if had is None else Group(g.t, g.k, g.j, had.n + g.n)  # a lone group is kept as is
    return [acc[key] for key in sorted(acc)]


def _ok(table: StageTable, t: int, k: int, j: int) -> bool:
    # allowed[] holds device memory, pinning, and server memory at this cut (a server's memory
    # depends on the smallest cut it serves, so every cut being allowed keeps the plan feasible)
    return bool(table.cuts[0] <= k <= table.cuts[-1] and table.allowed[t, table.k_index(k), j])


def neighbours(table: StageTable, groups: list[Group]) -> Iterator[list[Group]]:
    """Plans one small move away from ``groups`` (each still meets every constraint)."""
    for idx, g in enumerate(groups):
        rest = groups[:idx] + groups[idx + 1:]
        one_less = rest + [Group(g.t, g.k, g.j, g.n - 1)]
        for dk in (1, -1):
            if _ok(table, g.t, g.k + dk, g.j):
                yield merge(rest + [Group(g.t, g.k + dk, g.j, g.n)])
                if g.n > 1:
                    yield merge(one_less + [Group(g.t, g.k + dk, g.j, 1)])
        if table.types[g.t].pinned is None:
            for j in range(len(table.servers)):
                for k in (g.k, g.k + 1, g.k - 1):
                    if j != g.j and _ok(table, g.t, k, j):
                        yield merge(one_less + [Group(g.t, k, j, 1)])
                        break


def wide_neighbours(table: StageTable, groups: list[Group]) -> Iterator[list[Group]]:
    """Plans that give one group, or one device of it, any other allowed (cut, server)."""
    for idx, g in enumerate(groups):
        rest = groups[:idx] + groups[idx + 1:]
        ks, js = table.allowed[g.t].nonzero()
        for ki, j in zip(ks, js, strict=True):
            k = int(table.cuts[ki])
            if (k, j) == (g.k, g.j) or (j != g.j and table.types[g.t].pinned is not None):
                continue
            yield merge(rest + [Group(g.t, k, int(j), g.n)])
            if g.n > 1:
                yield merge(rest + [Group(g.t, g.k, g.j, g.n - 1), Group(g.t, k, int(j), 1)])


def polish(table: StageTable, groups: list[Group], max_evals: int) -> list[Group]:
    """Hill-climb on the fluid estimate with :func:`wide_neighbours` (no simulation).

    The threshold search ignores when each device's first micro-batch arrives; on small fleets
    staggering cuts (one device early, one light on the server) can beat it, and this finds that.

    Args:
        table: the stage table.
        groups: the starting plan.
        max_evals: most fluid estimates to compute.

    Returns:
        The best plan found (``groups`` itself when nothing is better).
    """
    best = estimate(table, groups).makespan_s
    evals, improved = 0, True
    while improved and evals < max_evals:
        improved = False
        for c in wide_neighbours(table, groups):
            evals += 1
            m = makespan_below(table, c, best * (1 - 1e-9))  # None: not better
            if m is not None:
                groups, best, improved = c, m, True
                break
            if evals >= max_evals:
                break
    return groups


def refine(table: StageTable, groups: list[Group], makespan: float,
           simulate: Callable[[list[Group]], float], budget: int) -> tuple[list[Group], float, int]:
    """Hill-climb on simulated makespan from ``groups``.

    Args:
        table: the stage table.
        groups: the starting plan; ``makespan`` its simulated time.
        simulate: replays a grouped plan and returns its makespan.
        budget: the most simulations to spend.

    Returns:
        ``(groups, makespan, simulations used)`` of the best plan found.

    Example:
        >>> refine(table, start, sim(start), sim, budget=30)
    """
    used, seen = 0, {tuple(groups)}
    improved = True
    while improved and used < budget:
        improved = False
        cands = [c for c in neighbours(table, groups) if tuple(c) not in seen]
        cands.sort(key=lambda c: estimate(table, c).makespan_s)  # most promising first
        for c in cands:
            if used >= budget:
                break
            seen.add(tuple(c))
            m = simulate(c)
            used += 1
            if m < makespan * (1 - 1e-9):
                groups, makespan, improved = c, m, True
                break
    return groups, makespan, used


def _type_options(table: StageTable, groups: list[Group], radius: int) -> list[list[tuple[int, int]]]:
    """Per type, the allowed (cut, server) pairs whose cut is within ``radius`` of the type's cuts."""
    out = []
    for t in range(len(table.types)):
        cuts = [g.k for g in groups if g.t == t]
        lo, hi = min(cuts) - radius, max(cuts) + radius
        ks, js = table.allowed[t].nonzero()
        out.append([(int(table.cuts[k]), int(j)) for k, j in zip(ks, js, strict=True)
                    if lo <= table.cuts[k] <= hi])
    return out


def _space_size(table: StageTable, opts: list[list[tuple[int, int]]]) -> int:
    """Distinct plans: each type's identical devices take a multiset of its options."""
    n = 1
    for t, o in enumerate(opts):
        n *= math.comb(len(o) + table.types[t].count - 1, table.types[t].count)
    return n


def nearby_plans(table: StageTable, groups: list[Group], cap: int) -> list[list[Group]]:
    """Every plan whose cuts lie near ``groups``, in the widest neighbourhood of at most ``cap`` plans.

    Each device may take any allowed (cut, server) whose cut is within ``r`` blocks of its type's
    cuts in ``groups``; ``r`` is the largest for which the plans, counted up to renaming identical
    devices, number at most ``cap`` (on small fleets that is the whole space). Empty when even
    ``r = 0`` (any server, same cuts) has more than ``cap`` plans, as on large fleets.

    Args:
        table: the stage table.
        groups: the centre plan.
        cap: most plans to return.

    Returns:
        The plans (merged group lists), ``groups`` among them.

    Example:
        >>> len(nearby_plans(table, best, cap=400))
    """
    depth = int(table.cuts[-1] - table.cuts[0])
    for r in range(depth, -1, -1):
        opts = _type_options(table, groups, r)
        if _space_size(table, opts) <= cap:
            break
    else:
        return []
    per_type = [[[Group(t, k, j, 1) for k, j in combo]
                 for combo in itertools.combinations_with_replacement(o, table.types[t].count)]
                for t, o in enumerate(opts)]
    return [merge([g for part in parts for g in part]) for parts in itertools.product(*per_type)]
