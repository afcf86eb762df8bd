"""Every plan of a small fleet, replayed on the fast path: the planner's exact answer where it can afford one.

A plan gives each device type's devices cuts and servers (:class:`~sfsim.planner.fluid.Group`). When
the fleet has few enough plans (:data:`EXHAUSTIVE_PLANS`, counting a type's identical devices as
interchangeable) and the fast path (:mod:`sfsim.fast`) covers the run, :func:`fastest` replays all
of them: each device's stage times at each (cut, server) are built once by the schedule itself, and
a plan is a gather of those columns and one compiled replay per server, the same figures
``simulate()`` gives (a few tens of microseconds a plan).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np

from sfsim.engine.policies import PACED
from sfsim.fast.kernel import replay_server
from sfsim.fast.replay import uncovered
from sfsim.fast.splitfrozen import POLICY_CODES, flags_for, layout, min_flight, replay
from sfsim.planner.fluid import Group
from sfsim.planner.model import StageTable
from sfsim.schedules import ReplayConfig, ReplaySetup, get
from sfsim.schedules.splitfrozen import whole_epochs

EXHAUSTIVE_PLANS = 20_000
"""Most plans the planner replays all of (about a second on a few devices): beyond, it searches."""


def expand(table: StageTable, groups: list[Group]) -> tuple[dict[str, int], dict[str, str]]:
    """Per-device cuts and servers from groups (a type's devices fill its groups in file order)."""
    splits, assignment = {}, {}
    for t, info in enumerate(table.types):
        names = iter(info.devices)
        for g in sorted((g for g in groups if g.t == t), key=lambda g: (g.j, g.k)):
            for _ in range(g.n):
                name = next(names)
                splits[name], assignment[name] = g.k, table.servers[g.j].name
    return splits, assignment


def type_plans(table: StageTable, t: int) -> list[tuple[Group, ...]]:
    """Every way to spread type ``t``'s devices over its allowed (cut, server) pairs."""
    ks, js = table.allowed[t].nonzero()
    opts = [(int(table.cuts[k]), int(j)) for k, j in zip(ks, js, strict=True)]
    out = []
    for combo in itertools.combinations_with_replacement(opts, table.types[t].count):
        out.append(tuple(Group(t, k, j, n) for (k, j), n in sorted(Counter(combo).items())))
    return out


def plan_count(table: StageTable) -> int:
    """How many plans the fleet has (identical devices of a type interchangeable)."""
    total = 1
    for t, info in enumerate(table.types):
        total *= math.comb(int(table.allowed[t].sum()) + info.count - 1, info.count)
    return total


class Catalogue:
    """Each device's stage times at every (cut, server), as the fast path's kernel rows.

    Args:
        scenario, cm: the scenario and its cost model.
        table: the planner's stage table (its cuts, servers and LoRA start).
        schedule: ``splitfrozen`` or ``splitfrozen-sequential``.
    """

    def __init__(self, scenario, cm, table: StageTable, schedule: str):
        self.table, self.schedule = table, schedule
        self.cfg = ReplayConfig.from_training(scenario.training)
        self.index = {d.name: i for i, d in enumerate(scenario.devices)}
        names = [d.name for d in scenario.devices]
        rows, self.why = [], None
        module, cache = get(schedule), scenario.training.cache_activations
        for k in table.cuts:
            row = []
            for srv in table.servers:
                setup = ReplaySetup(scenario, cm, dict.fromkeys(names, int(k)), table.lora_start,
                              dict.fromkeys(names, srv.name))
                job = module.build(setup, cache=cache)
                self.why = self.why or uncovered(scenario, schedule, self.cfg, job)
                row.append(layout(job.devices))
            rows.append(row)
        self.epochs = whole_epochs(job)  # opened one at a time, as simulate() does (sfsim.fast.opening)
        if getattr(scenario.training, "eval_samples", None) is not None and scenario.training.epochs > 1:
            self.why = "the epoch-end wait, which a server's replay alone leaves out"
        elif self.epochs > 1 and job.sync is not None:
            self.why = "each epoch's closing backhaul round, which a server's replay alone leaves out"
        elif self.cfg.policy in PACED:
            self.why = "the paced policies replay one device order per server"
        elif self.cfg.policy == "pool":
            self.why = "the pool policy draws from each server's own devices and seed"
        self.servers = job.servers
        self.D = np.array([[r[0] for r in row] for row in rows])  # (cuts, servers, 8, devices)
        self.N = np.array([[r[1] for r in row] for row in rows])  # (cuts, servers, 3, devices)
        self.flags = flags_for(self.cfg, schedule == "splitfrozen-sequential")

    def makespan(self, groups) -> float:
        """The simulated makespan of a plan (what ``simulate(plan=...)`` returns)."""
        splits, assignment = expand(self.table, list(groups))
        order = sorted(splits, key=self.index.__getitem__)  # the scenario's device order
        dev = np.array([self.index[d] for d in order])
        ki = np.array([splits[d] for d in order]) - int(self.table.cuts[0])
        srv = {s.name: j for j, s in enumerate(self.table.servers)}
        jj = np.array([srv[assignment[d]] for d in order])
        cfg, empty, out = self.cfg, (np.zeros(0, np.int64),) * 4, 0.0
        for j, st in enumerate(self.servers):
            sel = jj == j
            D = np.ascontiguousarray(self.D[ki[sel], j, :, dev[sel]].T)
            N = np.ascontiguousarray(self.N[ki[sel], j, :, dev[sel]].T)
            if self.epochs > 1:  # the epochs one at a time: simulate()'s own server replay
                out = max(out, replay([None] * D.shape[1], st, cfg, self.schedule == "splitfrozen-sequential", (D, N),
                                      epochs=self.epochs)["makespan"])
                continue
            res = replay_server(D, N, int(st.count), float(st.step), int(cfg.buffer), int(cfg.accumulate),
                                self.flags, POLICY_CODES[cfg.policy], min_flight(D, N), empty)
            out = max(out, float(res[0]))
        return out


def fastest(scenario, cm, table: StageTable, schedule: str, limit: int | None = None):
    """``(makespan, groups)`` of the fastest plan of all, or None (more than ``limit`` plans, default
    :data:`EXHAUSTIVE_PLANS`, or a run the fast path does not cover).

    Ties keep the first plan found (types in order, their options by cut then server).
    """
    if plan_count(table) > (EXHAUSTIVE_PLANS if limit is None else limit):
        return None
    cat = Catalogue(scenario, cm, table, schedule)
    if cat.why is not None:
        return None
    best = None
    for combo in itertools.product(*(type_plans(table, t) for t in range(len(table.types)))):
        groups = [g for part in combo for g in part]
        m = cat.makespan(groups)
        if best is None or m < best[0]:
            best = (m, groups)
    return best
