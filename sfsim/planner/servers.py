"""Each server's simulated completion under a plan, one compiled replay per server: the search's exact yardstick.

Without backhaul sync, SplitFrozen's servers share nothing: a server's completion depends only on the
devices sent to it, so a search move that touches two servers needs two server replays, not a whole
run. Devices of one type are identical, so their kernel rows at a (cut, server) are built once, by the
schedule itself (:func:`sfsim.schedules.splitfrozen.build` on one stand-in device per type and server),
and a server's rows are a gather of those columns in the order ``simulate()`` gives its devices (file
order: types in order, a type's devices filling its groups by cut, see :func:`exhaustive.expand`).
So :meth:`ServerSim.completion` is the very figure ``simulate(plan=...)`` reports as that server's end.
"""

from __future__ import annotations

import copy
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sfsim.engine.policies import PACED
from sfsim.fast.replay import uncovered
from sfsim.fast.splitfrozen import THREADED_FROM, _cores, layout, replay
from sfsim.planner.fluid import Group
from sfsim.planner.model import StageTable
from sfsim.planner.search import least_loaded, per_device_load, to_groups
from sfsim.schedules import ReplayConfig, ReplaySetup, get
from sfsim.schedules.splitfrozen import whole_epochs

BUDGET = 1_000_000
"""What the search by server replays (:func:`improve`) may spend, in micro-batch
equivalents (a server replay costs its micro-batches, 2 per device and 1,000 a call): about 70 server
replays of the 10,000-device, 16-server benchmark, 150 of the 1,000-device, 4-server one at 20 micro-batches
a device and 20 at 200 (about 0.2-0.3 s each)."""

CAPS = 6
"""Period caps of the extra starts :func:`improve` replays (:func:`period_cuts`), spread evenly (by
ratio) from the shortest longest period any plan can have to the given plan's longest."""


class ServerSim:
    """Simulated server completions of plans (:class:`~sfsim.planner.fluid.Group` lists), remembered per server.

    Args:
        scenario, cm: the scenario and its cost model.
        table: the planner's stage table (its types, cuts, servers and LoRA start).
        schedule: ``splitfrozen`` or ``splitfrozen-sequential``.

    ``why`` is None when the fast path replays the fleet's servers one by one, else the reason it
    cannot (the dynamic network, the paced and ``pool`` policies, backhaul sync): then there is no
    yardstick and the caller keeps to whole replays. ``closing``: each epoch's closing backhaul round
    follows the servers' ends (several servers with backhaul links), so the run's makespan is more
    than the largest server's.
    """

    def __init__(self, scenario, cm, table: StageTable, schedule: str):
        self.scenario, self.cm, self.table, self.schedule = scenario, cm, table, schedule
        self.cfg = ReplayConfig.from_training(scenario.training)
        self.sequential = schedule == "splitfrozen-sequential"
        self.rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cut index -> (9, T, J), (3, T, J)
        self.memo: dict[tuple, float] = {}
        self.runs = 0  # server replays so far
        self.closing = False
        self.why = self._why()

    @classmethod
    def covering(cls, scenario, cm, table: StageTable, schedule: str) -> ServerSim | None:
        """A :class:`ServerSim` of the fleet, or None where the fast path cannot replay its servers one by one."""
        sim = cls(scenario, cm, table, schedule)
        return sim if sim.why is None else None

    def _why(self) -> str | None:
        if self.table.dynamic:
            return "the dynamic network"
        if self.cfg.policy in PACED or self.cfg.policy == "pool":
            return f"the {self.cfg.policy} policy orders each server's devices by name or seed"
        if self.scenario.training.sync is not None:
            return "backhaul sync"
        if getattr(self.scenario.training, "eval_samples", None) is not None and self.scenario.training.epochs > 1:
            return "the epoch-end wait, which a server's replay alone leaves out"
        self._rows(0)
        return self._why_job

    def _stand_ins(self):
        """A copy of the scenario with one device per (type, server), and their names."""
        sc, names = copy.copy(self.scenario), []
        devices = []
        for info in self.table.types:
            for srv in self.table.servers:
                names.append((f"{info.name}@{srv.name}", srv.name))
                devices.append(dataclasses.replace(info.rep, name=names[-1][0], server=srv.name))
        sc.devices = devices
        return sc, names

    def _rows(self, ki: int) -> tuple[np.ndarray, np.ndarray]:
        """Kernel rows of every type on every server at cut index ``ki``: (9, types, servers), (3, types, servers)."""
        if ki not in self.rows:
            sc, names = self._stand_ins()
            k = int(self.table.cuts[ki])
            setup = ReplaySetup(sc, self.cm, {n: k for n, _ in names}, self.table.lora_start, dict(names))
            job = get(self.schedule).build(setup, cache=sc.training.cache_activations)
            if not self.rows:
                self._why_job = uncovered(sc, self.schedule, self.cfg, job)
                self.servers = job.servers
                self.epochs = whole_epochs(job)  # opened one at a time, as simulate() does (sfsim.fast.opening)
                self.closing = job.sync is not None  # each epoch's closing backhaul round follows the servers
            D, N = layout(job.devices)
            shape = (len(self.table.types), len(self.table.servers))
            self.rows[ki] = (D.reshape(D.shape[0], *shape), N.reshape(N.shape[0], *shape))
        return self.rows[ki]

    def completion(self, j: int, groups: tuple[Group, ...]) -> float:
        """Server ``j``'s simulated makespan serving ``groups`` (its own, in any order; 0 with none)."""
        key = self._key(j, groups)
        got = self.memo.get(key)
        if got is None:
            got = self.memo[key] = self._replay(j, key[1])
        return got

    def _replay(self, j: int, mine: tuple[tuple[int, int, int], ...]) -> float:
        if not mine:
            return 0.0
        k0 = int(self.table.cuts[0])
        cols_d, cols_n = [], []
        for t, k, n in mine:  # sorted by type, then cut: simulate()'s device order on this server
            D, N = self._rows(k - k0)
            cols_d.append(np.repeat(D[:, t, j][:, None], n, axis=1))
            cols_n.append(np.repeat(N[:, t, j][:, None], n, axis=1))
        D, N = np.ascontiguousarray(np.hstack(cols_d)), np.ascontiguousarray(np.hstack(cols_n))
        self.runs += 1  # the fast path's own server replay (the kernel simulate() runs; no device names needed)
        return replay([None] * D.shape[1], self.servers[j], self.cfg, self.sequential, (D, N),
                      epochs=self.epochs)["makespan"]

    def makespan_below(self, groups: list[Group], bound: float) -> float | None:
        """The largest server makespan under ``groups`` when it is below ``bound``, else None.

        Servers are replayed busiest first (by the fluid model's busy seconds), and the first one
        at or above ``bound`` ends it: a losing plan usually costs one server replay, not all.
        """
        by: list[list[Group]] = [[] for _ in self.table.servers]
        for g in groups:
            by[g.j].append(g)
        busy = [sum(g.n * float(self.table.n_mb[g.t] * self.table.w[g.k - int(self.table.cuts[0]), j])
                    for g in gs) / self.table.workers[j] for j, gs in enumerate(by)]
        top = 0.0
        for j in sorted(range(len(by)), key=lambda j: -busy[j]):
            top = max(top, self.completion(j, tuple(by[j])))
            if top >= bound:
                return None
        return top

    def ends(self, groups: list[Group]) -> np.ndarray:
        """Every server's completion under ``groups`` (servers in order)."""
        by = [[] for _ in self.table.servers]
        for g in groups:
            by[g.j].append(g)
        keys = [self._key(j, gs) for j, gs in enumerate(by)]
        todo = [k for k in dict.fromkeys(keys) if k not in self.memo]
        size = sum(n * float(self.table.n_sent[t]) for _, mine in todo for t, _, n in mine)
        threads = min(len(todo), _cores())
        if threads > 1 and size >= THREADED_FROM:  # the kernel releases the GIL: one server per core
            for k in {k for _, mine in todo for _, k, _ in mine}:
                self._rows(k - int(self.table.cuts[0]))  # built here, not on the threads
            with ThreadPoolExecutor(threads) as pool:
                for k, v in zip(todo, pool.map(lambda k: self._replay(*k), todo), strict=True):
                    self.memo[k] = v
        return np.array([self.completion(j, tuple(gs)) for j, gs in enumerate(by)])

    @staticmethod
    def _key(j: int, groups) -> tuple:
        """Server ``j`` and its groups as (type, cut, count), sorted: what its replay depends on."""
        return j, tuple(sorted((g.t, g.k, g.n) for g in groups if g.n > 0))


def balance(sim: ServerSim, groups: list[Group], budget: float) -> tuple[list[Group], float]:
    """Lower the simulated makespan of ``groups`` by moves on its slowest server, judged by server replays.

    The fluid model sees a server's compute and its credits as two separate budgets; the simulator
    does not: a credit is held while its micro-batch waits for a worker, and a device takes the next
    credit only after its own forward, so on a server whose credits are busy the devices with the
    longest period finish last, well after the fluid estimate. Each step takes the slowest server
    and tries, group by group (the groups with the longest device period first), a cut one block
    lower or higher (a shorter device period, or less server work) and moving a share of the group
    to each of the three least loaded servers that can take it at its cut; the first move that
    lowers the slowest server's time without raising another's past it is kept. It stops when no
    move helps or ``budget`` (micro-batch equivalents of server replays, :func:`_cost`) is spent.

    Returns:
        ``(groups, makespan)``: the plan and its largest server makespan.
    """
    table = sim.table
    groups = [g for g in groups if g.n > 0]
    ends = sim.ends(groups)
    spent = 0.0
    while spent < budget:
        j = int(np.argmax(ends))
        move = None
        for cand, touched in _moves(table, groups, j, ends):
            got = {i: sim.completion(i, tuple(g for g in cand if g.j == i)) for i in touched}
            spent += sum(_cost(table, cand, i) for i in touched)
            if got[j] < ends[j] * (1 - 1e-9) and all(got[i] < ends[j] * (1 - 1e-9) for i in touched):
                move = cand, got
                break
            if spent >= budget:
                break
        if move is None:
            break
        groups = move[0]
        for i, v in move[1].items():
            ends[i] = v
    return groups, float(ends.max())


def _cost(table: StageTable, groups: list[Group], j: int) -> float:
    """A server replay's cost in micro-batch equivalents: its micro-batches, plus 2 per device and 1,000 per call."""
    return sum(g.n * (float(table.n_sent[g.t]) + 2.0) for g in groups if g.j == j) + 1000.0


def _moves(table: StageTable, groups: list[Group], j: int, ends: np.ndarray):
    """Candidate plans that change server ``j``'s groups, with the servers each one touches."""
    k0 = int(table.cuts[0])
    mine = sorted((g for g in groups if g.j == j), key=lambda g: -float(table.p[g.t, g.k - k0, j]))
    others = [g for g in groups if g not in mine]
    light = [int(i) for i in np.argsort(ends) if i != j][:3]
    if mine:  # every group at (about) the longest period one block lower: they finish together
        top = float(table.p[mine[0].t, mine[0].k - k0, j])
        lead = [g for g in mine if float(table.p[g.t, g.k - k0, j]) >= 0.97 * top]
        if len(lead) > 1:
            lowered = [Group(g.t, g.k - 1, j, g.n) if g in lead and g.k > table.cuts[0]
                       and table.allowed[g.t, g.k - 1 - k0, j] else g for g in mine]
            if lowered != mine:
                yield _merged(others + lowered), (j,)
    for g in mine:
        rest = [h for h in mine if h is not g]
        for dk in (-1, 1):
            k = g.k + dk
            if table.cuts[0] <= k <= table.cuts[-1] and table.allowed[g.t, k - k0, j]:
                yield _merged(others + rest + [Group(g.t, k, j, g.n)]), (j,)
        for i in light:
            if not table.allowed[g.t, g.k - k0, i]:
                continue
            for m in sorted({max(1, g.n // 8), max(1, g.n // 2)}):
                moved = [Group(g.t, g.k, j, g.n - m), Group(g.t, g.k, i, m)]
                yield _merged(others + rest + moved), (j, i)


def _merged(groups: list[Group]) -> list[Group]:
    """Groups with equal (type, cut, server) summed, empty ones dropped."""
    n: dict[tuple[int, int, int], int] = {}
    for g in groups:
        n[(g.t, g.k, g.j)] = n.get((g.t, g.k, g.j), 0) + g.n
    return [Group(t, k, j, c) for (t, k, j), c in n.items() if c > 0]


def improve(sim: ServerSim, groups: list[Group], budget: float) -> tuple[list[Group], float]:
    """The best by server replays of ``groups`` and the :func:`period_cuts` starts, then :func:`balance` on it.

    Returns:
        ``(groups, makespan)``: the plan and its largest server makespan.
    """
    table = sim.table
    counts = np.array([t.count for t in table.types], dtype=float)
    best = (float(sim.ends(groups).max()), groups)
    k0 = int(table.cuts[0])
    top = max(float(table.p[g.t, g.k - k0, g.j]) for g in groups)
    low = float(np.where(table.allowed, table.p, np.inf).min(axis=(1, 2)).max())
    for kk in period_cuts(table, np.geomspace(low, max(top, low), CAPS)):
        cost, cred = per_device_load(table, kk)
        usable = np.isfinite(cost)
        if not usable.any(axis=1).all():
            continue
        g = to_groups(table, kk, least_loaded(usable, cost, cred, counts))
        m = sim.makespan_below(g, best[0] * (1 - 1e-9))
        if m is not None:
            best = (m, g)
    return balance(sim, best[1], budget)


def period_cuts(table: StageTable, caps) -> list[np.ndarray]:
    """Cut indices (types, servers; -1 where not allowed), one array per period cap: each type takes
    its largest cut whose device period is at most the cap (its shortest-period cut when none is).

    On a server whose credits are busy, every device waits about as long for each credit, and takes
    it only after its own forward: the devices with the longest period finish last, however the
    fluid model balances the loads. A cap on the period evens their finishes; the blocks a device
    runs within it come at no cost in time, and each takes a frozen forward off its server.
    """
    out = []
    for cap in caps:
        kk = np.full((len(table.types), len(table.servers)), -1)
        for t in range(len(table.types)):
            for j in range(len(table.servers)):
                ok = table.allowed[t, :, j]
                if not ok.any():
                    continue
                under = ok & (table.p[t, :, j] <= cap * (1 + 1e-12))
                p = np.where(ok, table.p[t, :, j], np.inf)
                kk[t, j] = int(np.flatnonzero(under).max()) if under.any() else int(np.argmin(p))
        if not any((kk == x).all() for x in out):
            out.append(kk)
    return out
