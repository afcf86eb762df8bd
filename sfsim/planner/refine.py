"""Local search with the simulator around the analytic optimum.

The fluid model cannot see queueing details (several workers, credits, the W/step interleaving),
so plans it scores as equal can differ by a few percent in the simulator. Starting from the best
simulated candidate, this moves one group's cut by one block, one device's cut by one block, or
one device to another server, replays each neighbour (most promising by the fluid estimate first)
and keeps the first that is faster, until no neighbour helps or the simulation budget is spent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sfsim.planner.fluid import Group, estimate
from sfsim.planner.model import StageTable


def merge(groups: list[Group]) -> list[Group]:
    """Combine groups with the same (type, cut, server) and drop empty ones."""
    acc: dict[tuple[int, int, int], int] = {}
    for g in groups:
        if g.n > 0:
            acc[(g.t, g.k, g.j)] = acc.get((g.t, g.k, g.j), 0) + g.n
    return [Group(t, k, j, n) for (t, k, j), n in sorted(acc.items())]


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
            m = estimate(table, c).makespan_s
            if m < best * (1 - 1e-9):
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
