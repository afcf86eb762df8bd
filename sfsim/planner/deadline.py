"""The cheapest plan that meets a deadline: least device energy, or least device compute.

Two uses in :func:`sfsim.planner.plan`:

- ``objective="energy"``: the cost is the devices' total energy (joules, from each device type's
  ``power`` figures, as :func:`sfsim.cost.energy.run_energy` counts it) and the deadline is ``--deadline``.
- ``objective="time"``: once the fastest plan is found, plans within ``tie_tolerance`` of its
  makespan count as ties; the cost is the devices' total FLOPs, so ties go to the plan that
  computes least on the devices (the server does the rest).

Cost and makespan always come from the simulator (:class:`Score`); the analytic model only
proposes. A device's compute and radio energy depend on its cut alone, so apart from idle power x
makespan the cost is a sum over devices, and at a fixed fluid deadline ``D'`` the cheapest plan is
a small integer program (:func:`cheapest_at`): one integer count per allowed (type, cut, server)
with ``fin <= D'``, each type's devices all placed, and every server's compute and credit loads
(the two server terms of :func:`sfsim.planner.search.assign`) at most ``D'``. Those terms are
looser than the fluid estimate, so ``D'`` shrinks until the estimate meets the target (small
tables only: up to ``MILP_MAX_VARS`` entries). A greedy on the fluid estimate (:func:`greedy`)
then cheapens that plan or the fastest one. The fluid target is the deadline scaled by how far the
simulator's makespan exceeds the fluid one on the fastest plan; for energy also a few targets
between the fastest plan and the deadline, since idle power rewards finishing sooner. Each
candidate is replayed (a late one shrinks its target once), then the search descends on
simulated cost over one-move neighbours and, on small fleets, replays every nearby plan (the
whole space when it is a few hundred plans), so that tiny fleets get the exact optimum. On large
fleets the fluid model can be far off for cheaper plans (on the 1,000-device benchmark a plan it
put at 9.97 s simulated to 12.9 s), so there the search may find nothing cheaper in its budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sfsim.planner.fluid import Group, estimate
from sfsim.planner.model import StageTable
from sfsim.planner.program import solve
from sfsim.planner.refine import merge, nearby_plans, neighbours
from sfsim.planner.search import MIP_GAP

MILP_MAX_VARS = 400
"""Allowed (type, cut, server) entries up to which the integer program proposes plans; above, its
solve time (about a second for 1,000 devices of 10 types on 4 servers) would double planning time,
and the fluid greedy alone proposes."""

FLUID_EVALS = 150
"""Most fluid estimates one greedy pass spends (about 0.1-0.2 s on a 1,000-device fleet)."""

TIE_TOLERANCE = 0.005
"""Plans within this fraction of the fastest makespan tie on time (0.5 %: about what the simulator's
queueing details move a plan by, so a smaller gain is not worth computing more on the devices)."""


@dataclass(frozen=True)
class Score:
    """What one simulator replay of a plan says about it."""

    makespan_s: float
    device_flop: float  # FLOPs summed over devices
    device_j: float | None  # joules summed over devices (None: no device declares power)


@dataclass(frozen=True)
class Cost:
    """An analytic per-device cost to minimise, and what the simulator's :class:`Score` calls it.

    Attributes:
        per_device: array (types, cuts): one device's cost of type t at each cut (FLOPs, or
            joules of compute above idle plus radio).
        per_second: cost per second of makespan (the devices' summed idle watts; 0 for FLOPs).
        name: ``"flop"`` or ``"energy"``: which :class:`Score` field is the true cost.
    """

    per_device: np.ndarray
    per_second: float
    name: str

    def of(self, score: Score) -> float:
        """The true (simulated) cost of a replayed plan."""
        return score.device_flop if self.name == "flop" else float(score.device_j)

    def analytic(self, table: StageTable, groups: list[Group]) -> float:
        """The cost the fluid model predicts for ``groups``."""
        dev = sum(g.n * self.per_device[g.t, table.k_index(g.k)] for g in groups)
        return float(dev + (self.per_second * estimate(table, groups).makespan_s if self.per_second else 0.0))


def flop_cost(table: StageTable, prefix_flop: np.ndarray) -> Cost:
    """Device FLOPs: each device's sent micro-batches x its prefix's FLOPs (``prefix_flop``: (cuts,))."""
    return Cost(table.n_sent[:, None] * prefix_flop[None, :], 0.0, "flop")


def energy_cost(table: StageTable, uplink_bytes: np.ndarray) -> Cost:
    """Device joules (see :mod:`sfsim.cost.energy`) as compute above idle + radio per device, + idle W x makespan.

    ``uplink_bytes``: (cuts,) bytes per micro-batch at each cut. Every device must have ``power``.
    """
    rows = []
    idle = 0.0
    for t, info in enumerate(table.types):
        pw = info.rep.power
        n = table.n_sent[t]
        if pw.energy_per_bit is not None:
            radio = pw.energy_per_bit * 8.0 * uplink_bytes * n
        else:
            radio = (pw.transmit or 0.0) * table.s[t] * n
        rows.append((pw.compute - pw.idle) * table.f[t] * n + radio)
        idle += pw.idle * info.count
    return Cost(np.array(rows), idle, "energy")


def cheapest_at(table: StageTable, cost: Cost, fluid_deadline: float) -> list[Group] | None:
    """The plan of least analytic device cost whose fluid terms all fit under ``fluid_deadline``.

    Args:
        table: the stage table.
        cost: the per-device cost (its ``per_second`` part is constant here and left out).
        fluid_deadline: bound on every device's pipeline finish and every server's loads (s).

    Returns:
        The plan's groups, or None when no plan fits.

    Example:
        >>> cheapest_at(table, flop_cost(table, prefix_flop), 250.0)
    """
    slow = table.slow if table.slow is not None else np.ones(len(table.servers))
    ok = table.allowed & (table.fin <= fluid_deadline)  # (types, cuts, servers)
    idx = np.argwhere(ok)  # (P, 3) rows of (type, cut index, server)
    if not len(idx) or not ok.any(axis=(1, 2)).all():
        return None
    t, k, j = idx[:, 0], idx[:, 1], idx[:, 2]
    P, nT, nJ = len(idx), len(table.types), len(table.servers)
    # seconds one device adds to its server's compute and credit terms (as in search.per_device_load)
    comp = table.n_mb[t] * (table.w[k, j] + table.step[j] / table.accumulate) / table.workers[j] * slow[j]
    cred = table.n_sent[t] * table.hold[t, k] / table.buffer * slow[j]
    c = cost.per_device[t, k]
    # a tiny weight on server work keeps equal-cost plans light on the servers
    obj = c / max(float(np.abs(c).max()), 1e-300) + 1e-6 * comp / max(float(comp.max()), 1e-300)
    a_type = np.zeros((nT, P))
    a_type[t, np.arange(P)] = 1.0
    a_srv = np.zeros((2 * nJ, P))
    a_srv[j, np.arange(P)] = comp
    a_srv[nJ + j, np.arange(P)] = cred
    counts = np.array([info.count for info in table.types], dtype=float)
    got = solve(obj, np.vstack([a_type, a_srv]), np.concatenate([counts, np.full(2 * nJ, -np.inf)]),
                np.concatenate([counts, np.full(2 * nJ, fluid_deadline)]), counts[t], np.ones(P, bool), MIP_GAP)
    if got is None:
        return None
    x = np.round(got)
    return merge([Group(int(t[i]), int(table.cuts[k[i]]), int(j[i]), int(x[i])) for i in range(P) if x[i] > 0])


def _targets(table, cost, fastest, fastest_sim, deadline) -> list[float]:
    """Fluid makespans worth aiming at: the deadline in fluid time, and for energy a few sooner ones."""
    low = estimate(table, fastest).makespan_s
    top = deadline * low / max(fastest_sim, 1e-300)  # the simulator's makespan exceeds the fluid one by this
    if not cost.per_second:
        return [top]
    return sorted({float(x) for x in np.geomspace(max(low, 1e-9), max(top, low), 4)}, reverse=True)


def _fit(table: StageTable, cost: Cost, target: float) -> list[Group] | None:
    """The integer program's plan, its fluid deadline shrunk until the fluid model says it meets ``target``."""
    fd = target
    for _ in range(3):
        g = cheapest_at(table, cost, fd)
        if g is None:
            return None
        est = estimate(table, g).makespan_s
        if est <= target * (1 + 1e-9):
            return g
        fd *= target / est * (1 - 1e-3)
    return None


def _moves(table: StageTable, cost: Cost, groups: list[Group]) -> list[tuple[float, int, int, int, int]]:
    """Moves that lower the device cost, cheapest first: ``(cost change, group, cut, server, devices)``.

    A move gives a group, or one device of it, any other allowed (cut, server) (the moves of
    :func:`sfsim.planner.refine.wide_neighbours`), costed without building the plans.
    """
    out = []
    for i, g in enumerate(groups):
        ks, js = table.allowed[g.t].nonzero()
        delta = cost.per_device[g.t, ks] - cost.per_device[g.t, table.k_index(g.k)]  # (options,)
        pinned = table.types[g.t].pinned is not None
        for ki, j, d in zip(ks, js, delta, strict=True):
            if d < 0 and not (pinned and j != g.j):
                k = int(table.cuts[ki])
                out.append((float(d) * g.n, i, k, int(j), g.n))
                if g.n > 1:
                    out.append((float(d), i, k, int(j), 1))
    return sorted(out, key=lambda m: m[0])


def greedy(table: StageTable, cost: Cost, groups: list[Group], target: float, evals: int = FLUID_EVALS) -> list[Group]:
    """Cheapen ``groups`` while the fluid makespan stays within ``target``.

    Each step takes the first move of :func:`_moves` (the largest saving first) that the fluid
    model keeps in time and that lowers the analytic cost (device part plus idle power x makespan).

    Args:
        table: the stage table.
        cost: what to minimise.
        groups: the starting plan.
        target: most fluid seconds a plan may take.
        evals: most fluid estimates to spend.

    Returns:
        The cheapest plan reached (``groups`` itself when no move helps).
    """
    here, used, moved = cost.analytic(table, groups), 0, True
    while moved and used < evals:
        moved = False
        for d, i, k, j, n in _moves(table, cost, groups):
            if used >= evals:
                break
            g = groups[i]
            c = merge(groups[:i] + groups[i + 1:] + [Group(g.t, g.k, g.j, g.n - n), Group(g.t, k, j, n)])
            used += 1
            est = estimate(table, c).makespan_s
            val = cost.analytic(table, c) if cost.per_second else here + d
            if est <= target * (1 + 1e-9) and val < here * (1 - 1e-9):
                groups, here, moved = c, val, True
                break
    return groups


class _Search:
    """The best plan so far under the deadline, and the replays spent finding it."""

    def __init__(self, table, score, cost, deadline, start):
        self.table, self.score, self.cost, self.deadline = table, score, cost, deadline
        self.best = (start, score(start))
        self.used = 0

    def better(self, s: Score) -> bool:
        """In time, and cheaper (or as cheap and sooner) than the best so far."""
        c, b = self.cost.of(s), self.cost.of(self.best[1])
        if s.makespan_s > self.deadline:
            return False
        return c < b - 1e-12 * abs(b) or (c <= b + 1e-12 * abs(b) and s.makespan_s < self.best[1].makespan_s)

    def consider(self, groups: list[Group]) -> Score:
        """Replay ``groups`` and keep it if it is better."""
        s = self.score(groups)
        self.used += 1
        if self.better(s):
            self.best = (groups, s)
        return s

    def descend(self, budget: int) -> None:
        """Move to the first one-move neighbour that is better, cheapest by the analytic cost first."""
        seen = {tuple(self.best[0])}
        moved = True
        while moved and self.used < budget:
            moved = False
            here = self.cost.analytic(self.table, self.best[0])
            cands = [(self.cost.analytic(self.table, c), c) for c in neighbours(self.table, self.best[0])
                     if tuple(c) not in seen]
            for _, c in sorted((x for x in cands if x[0] < here), key=lambda x: x[0]):
                if self.used >= budget:
                    break
                seen.add(tuple(c))
                self.consider(c)
                if self.best[0] is c:
                    moved = True
                    break


def cheapest(table: StageTable, score: Callable[[list[Group]], Score], cost: Cost, fastest: list[Group],
             deadline: float, budget: int, nearby: int) -> tuple[list[Group], Score]:
    """The cheapest plan the search finds whose simulated makespan is at most ``deadline``.

    Args:
        table: the stage table.
        score: replays a plan (cached) and returns its :class:`Score`.
        cost: what to minimise.
        fastest: a plan that meets the deadline (the fastest found); the answer is never dearer.
        deadline: most simulated seconds the plan may take.
        budget: most replays for the integer-program candidates and the descent.
        nearby: most plans for the nearby-plans sweep (0: skip it); it replays every plan near
            the best when there are at most this many (on tiny fleets, the whole space).

    Returns:
        ``(groups, score)`` of the chosen plan.

    Example:
        >>> g, s = cheapest(table, replay.score, flop_cost(table, flop), best, 1.005 * best_s, 20, 400)
    """
    search = _Search(table, score, cost, deadline, fastest)
    small = int(table.allowed.sum()) <= MILP_MAX_VARS
    for target in _targets(table, cost, fastest, search.best[1].makespan_s, deadline):
        for _ in range(2):  # a plan the simulator finds late shrinks the target once
            if search.used >= budget:
                break
            g = _fit(table, cost, target) if small else None
            if g is None or cost.analytic(table, g) >= cost.analytic(table, fastest):
                g = fastest
            g = greedy(table, cost, g, target)
            if tuple(merge(g)) == tuple(merge(fastest)):
                break
            s = search.consider(g)
            if s.makespan_s <= deadline:
                break
            target *= deadline / s.makespan_s * (1 - 1e-3)
    search.descend(budget)
    if nearby:
        for g in nearby_plans(table, search.best[0], nearby):
            search.consider(g)
    return search.best
