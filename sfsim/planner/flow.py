"""The planner's flow: table, search, refine, replay, choose (see :mod:`sfsim.planner`)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from sfsim.errors import ConfigError, InfeasibleError
from sfsim.fast.splitfrozen import POLICY_CODES
from sfsim.methods import canonical
from sfsim.planner import exhaustive
from sfsim.planner.deadline import TIE_TOLERANCE, Score, cheapest, energy_cost, flop_cost
from sfsim.planner.exhaustive import expand
from sfsim.planner.fluid import Estimate, Group, estimate, server_completion
from sfsim.planner.model import (
    PIPELINED,
    SEQUENTIAL,
    StageTable,
    build_table,
    check_layers,
    explain_infeasible,
)
from sfsim.planner.refine import merge, nearby_plans, polish, refine
from sfsim.planner.report import Comparison, Row, bottleneck_words, format_result, rows_for
from sfsim.planner.search import candidates, fixed_cut, lower_bound, rank_uniform_cuts, reassigned
from sfsim.planner.servers import BUDGET, ServerSim, improve
from sfsim.scenario.planfile import Plan
from sfsim.units import format_quantity

__all__ = ["PlanResult", "Comparison", "Row", "plan", "OBJECTIVES", "SCHEDULES"]

OBJECTIVES = ("time", "energy")
"""Objectives the planner optimises: total training time (ties to less device compute), or device
energy under a deadline."""

SCHEDULES = PIPELINED + SEQUENTIAL
"""Schedules the planner can plan for (those with a per-device cut and a LoRA start)."""

SPLITLORA_CUT = 3
"""The fixed cut of SplitLoRA's reference code (client = embeddings + 3 blocks)."""

POLISH_EVALS = 1500
"""Most fluid estimates the analytic local search spends (about 0.1-0.3 s on a 1,000-device fleet)."""

POLISH_STARTS = 3
"""How many of the best analytic candidates the analytic local search starts from."""

UNIFORM_TRIES = 4
"""Single global cuts (best by a cheap bound) whose assignment is solved exactly for the comparison."""

REASSIGN_STARTS = 3
"""The best analytic starts whose cut choice is also replayed under the least-loaded assignment: the
fluid model scores assignments of equal busiest load alike, and the simulator's queueing does not
(10,000 devices x 16 servers: 54.6 s estimated for all, 89 s simulated for the rounded relaxation of
the best start, 70 s for the least-loaded assignment of the third)."""

REFINE_MAX = 40
"""Most simulator runs the local search spends on small fleets."""

SIM_MICRO_BATCHES = 80_000
"""Simulated micro-batches the planner may spend on replays in total (at least 3 runs: the plan and
the two comparisons); keeps a 1,000-device fleet under 2 s and lets small fleets replay more."""

FAST_REPLAY_BUDGET = 1_200_000
"""What the replays may spend when the fast path (:mod:`sfsim.fast`) replays them, in micro-batch
equivalents: a replay costs its micro-batches plus ``FAST_DEVICE_COST`` per device. About 7 replays
of a 1,000-device fleet, 3 at 200,000 micro-batches, 1 at 10,000 devices: flat in the run's length."""

FAST_DEVICE_COST = 150
"""A fast replay's cost per device in micro-batch equivalents: building a device's stage times takes
about as long as the compiled replay of 150 micro-batches."""

COMPARE_MICRO_BATCHES = 20_000
"""Runs of at most this many micro-batches simulate the two comparison lines; longer runs show the
fluid model's estimate for them (labelled), so that planning time stays flat in the run's length."""

NEARBY_MAX = 400
"""Most plans near the best candidate that small fleets replay all of (see :func:`refine.nearby_plans`)."""

NEARBY_MICRO_BATCHES = 20_000
"""Simulated micro-batches those replays may spend (about 0.2 s): bounds them on mid-sized fleets."""

CHEAPER_RUNS = 12
"""Most simulator runs the cheaper-plan search (time ties, energy) spends besides the nearby sweep."""

CHEAPER_MICRO_BATCHES = 20_000
"""Simulated micro-batches that search may spend, within what is left of ``SIM_MICRO_BATCHES``
(energy: at least one run). On the 1,000-device benchmark nothing is left for time ties: one more
replay would cost a quarter of the planning time (it found no cheaper tie there), and the report
says the ties were not searched."""

EXHAUSTIVE_LIMIT = 2000
"""Type-level plans (one cut and server per type) below which all are also scored analytically."""


@dataclass
class PlanResult:
    """A plan with its simulated makespan, bounds, per-group table and comparisons.

    Attributes:
        splits: device -> cut (blocks on the device).
        lora_start: first LoRA block on the servers.
        assignment: device -> server.
        makespan_s: the simulated total time of this plan (``sfsim simulate --plan`` gives the same).
        estimate_s: the planner's analytic (fluid) estimate of it.
        bottleneck: what bounds the makespan, in words.
        lower_bound_s: a lower bound on any plan's makespan under the same constraints (None with a
            dynamic network: the analytic model then uses effective rates, see
            :mod:`sfsim.planner.dynamics`, and proves nothing).
        gap: ``makespan_s / lower_bound_s - 1`` (None without a bound).
        rows: one :class:`Row` per (device type, cut, server) group, for the table.
        comparisons: SplitFrozen at the best single global cut and at SplitLoRA's cut 3 (not SplitLoRA
            itself: ``sfsim simulate --schedule splitlora`` compares methods), simulated the same way.
        schedule, scenario, model: what the plan was made for.
        search_s: seconds spent planning (search + simulations).
        replay_s: of ``search_s``, the seconds spent in simulator replays.
        simulated: how many candidate plans were replayed with the simulator.
        objective, deadline_s, tie_tolerance: what the plan minimises (see the module docstring).
        ties_searched: whether the time objective searched its ties (runs too long for the replay
            budget skip it, and the report says so).
        device_flop, device_j: the plan's device FLOPs and device joules (simulated).
        fastest: makespan, device FLOPs and joules of the fastest plan found.
    """

    splits: dict[str, int]
    lora_start: int
    assignment: dict[str, str]
    makespan_s: float
    estimate_s: float
    bottleneck: str
    lower_bound_s: float | None
    gap: float | None
    rows: list[Row] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    schedule: str = "splitfrozen"
    scenario: str | None = None
    model: str | None = None
    search_s: float = 0.0
    replay_s: float = 0.0
    simulated: int = 0
    min_lora_layers: int = 1
    lora_layers: int = 1  # blocks with LoRA on the servers
    lora_fixed: bool = False  # the scenario's training.lora_start fixed it
    objective: str = "time"
    deadline_s: float | None = None  # objective energy: the most time the plan may take
    tie_tolerance: float = TIE_TOLERANCE  # objective time: plans this close to the fastest tie
    ties_searched: bool = False  # objective time: the replay budget allowed the tie search
    device_flop: float = 0.0  # FLOPs summed over the devices (simulated)
    device_j: float | None = None  # joules summed over the devices (None: no power figures)
    fastest: Score | None = None  # the fastest plan found, before ties or energy traded time away
    dynamic: str = ""  # the scenario's handovers, varying links and availability in words ("": none)

    def to_plan(self) -> Plan:
        """The plan file record (:class:`sfsim.scenario.planfile.Plan`)."""
        return Plan(splits=dict(self.splits), lora_start=self.lora_start, assignment=dict(self.assignment),
                    makespan_s=self.makespan_s, bottleneck=self.bottleneck,
                    lower_bound_s=self.lower_bound_s, schedule=self.schedule, scenario=self.scenario,
                    model=self.model)

    def save(self, path) -> None:
        """Write the plan file atomically (read it with ``sfsim simulate --plan``)."""
        self.to_plan().save(path)

    def table(self) -> str:
        """The human-readable report ``sfsim plan`` prints."""
        return format_result(self)


class Replay:
    """Replays grouped plans with :func:`sfsim.simulate`, remembering each plan's makespan and server ends.

    With ``sim`` (:class:`~sfsim.planner.servers.ServerSim`), a plan's makespan alone comes from its
    servers' replays (the same figure, without building the whole run); its device FLOPs and joules
    (:meth:`score`) still from :func:`sfsim.simulate`.
    """

    def __init__(self, scenario, schedule: str, table: StageTable, sim: ServerSim | None = None):
        self.scenario, self.schedule, self.table, self.sim = scenario, schedule, table, sim
        self.cache: dict[tuple, Score] = {}
        self.quick: dict[tuple, float] = {}  # plan -> makespan from server replays
        self.ends: dict[tuple, dict[str, float]] = {}  # plan -> server -> when its last op ends
        self.runs = 0  # simulator runs so far, or budgeted as such (see server_ends)
        self.seconds = 0.0  # spent in them

    def __call__(self, groups: list[Group]) -> float:
        """The simulator's makespan for ``groups``."""
        if self.sim is None:
            return self.score(groups).makespan_s
        key = tuple(merge(groups))
        if key in self.cache:
            return self.cache[key].makespan_s
        if key not in self.quick:
            t0 = time.perf_counter()
            self.quick[key] = float(self.sim.ends(groups).max())
            self.seconds += time.perf_counter() - t0
            self.runs += 1
        return self.quick[key]

    @property
    def simulated(self) -> int:
        """How many distinct plans were replayed."""
        return len(self.cache.keys() | self.quick.keys())

    def score(self, groups: list[Group]) -> Score:
        """The simulator's makespan, device FLOPs and device joules for ``groups`` (cached)."""
        key = tuple(merge(groups))
        if key not in self.cache:
            res = self._simulate(key, groups)
            self.cache[key] = Score(float(res.makespan_s), res.device_flops_total,
                                    None if res.energy is None else float(res.energy["device_total_j"]))
        return self.cache[key]

    def server_ends(self, groups: list[Group]) -> dict[str, float]:
        """Server name -> when its last op ends (0: it ran nothing), from a replay of ``groups``.

        Counted as one run even when ``groups`` was replayed already (the usual case: the best
        replayed plan), so the planner's replay budget, and with it the plan, does not depend on it.
        """
        key = tuple(merge(groups))
        if key not in self.ends:
            self._simulate(key, groups)
        else:
            self.runs += 1
        return self.ends[key]

    def _simulate(self, key: tuple, groups: list[Group]):
        from sfsim import simulate

        splits, assignment = expand(self.table, groups)
        p = Plan(splits=splits, lora_start=self.table.lora_start, assignment=assignment, schedule=self.schedule)
        t0 = time.perf_counter()
        res = simulate(self.scenario, schedule=self.schedule, plan=p)
        self.seconds += time.perf_counter() - t0
        self.runs += 1
        self.ends[key] = res.server_end_s
        return res


def _type_level(table: StageTable) -> list[list[Group]]:
    """Every plan giving each type one (cut, server), when there are few enough of them."""
    opts = []
    for t, info in enumerate(table.types):
        ks, js = table.allowed[t].nonzero()
        opts.append([Group(t, int(table.cuts[k]), int(j), info.count) for k, j in zip(ks, js, strict=True)])
    n = 1
    for o in opts:
        n *= len(o)
    if n > EXHAUSTIVE_LIMIT:
        return []
    return [list(c) for c in itertools.product(*opts)]


def _rank_key(table: StageTable, groups: list[Group]) -> tuple[float, float]:
    """Fluid makespan (to 6 digits), then the busiest server's work: among equals, keep headroom."""
    est = estimate(table, groups)
    return float(f"{est.makespan_s:.6g}"), max(est.busy_s)


def _best_simulated(replay: Replay, plans: list[list[Group]], verify: int):
    """Score plans analytically, replay the best ``verify`` distinct ones; (makespan, groups)."""
    table = replay.table
    scored = {tuple(merge(g)): None for g in plans}
    ranked = sorted(scored, key=lambda g: _rank_key(table, list(g)))
    best = None
    for g in ranked[:verify]:
        sim = replay(list(g))
        if best is None or sim < best[0]:
            best = (sim, list(g))
    return best


def _calibrated(replay: Replay, groups: list[Group], makespan: float) -> tuple[list[Group], float]:
    """Re-plan once with each server slowed by how much the simulator's queueing exceeds the fluid model.

    A replay of the current plan (the one already made) gives every server's real completion; dividing by its
    fluid completion gives a per-server slowdown (at least 1) that the search then respects. The
    new plan is kept only if the simulator finds it faster.
    """
    table = replay.table
    ends = replay.server_ends(groups)
    slow = np.ones(len(table.servers))
    for j, srv in enumerate(table.servers):
        gs = [g for g in groups if g.j == j]
        if gs and ends.get(srv.name, 0.0) > 0:
            slow[j] = max(1.0, ends[srv.name] / server_completion(table, gs, j)[0])
    cal = dataclasses.replace(table, slow=slow)
    cal.memo = table.memo  # its entries do not depend on ``slow``
    pool = candidates(cal)
    if not pool:
        return groups, makespan
    best = polish(cal, min(pool, key=lambda g: _rank_key(cal, g)), POLISH_EVALS // POLISH_STARTS)
    m = replay(best)
    return (best, m) if m < makespan else (groups, makespan)


def _reassign(replay: Replay, tries: list[list[Group]], groups: list[Group], makespan: float,
              runs: int) -> tuple[list[Group], float]:
    """The fastest in the simulator of ``groups`` (replayed: ``makespan``) and ``tries``, other
    assignments of its and the best analytic starts' cut choices (:func:`search.reassigned`).

    On the fast path without server replays these replays are outside the budget (a 10,000-device
    replay takes well under a second, and the budget there affords only the plan itself); on the
    SimPy engine, and where the search on server replays follows, they spend it.
    """
    fast = _fast(replay.scenario, replay.table) and replay.sim is None
    before = replay.runs
    for g in tries:
        if not fast and replay.runs >= runs:
            break
        m = replay(g)
        if m < makespan * (1 - 1e-9):
            groups, makespan = g, m
    if fast:
        replay.runs = before
    return groups, makespan


def _nearby(replay: Replay, groups: list[Group], makespan: float, budget: int) -> tuple[list[Group], float]:
    """Replay every plan near ``groups`` when there are at most ``budget`` of them; the fastest wins.

    With few devices, micro-batches and credits the fluid model's ranking is too coarse (plans it
    puts tens of places apart differ by 1-2 % in the simulator), and the space is small: on fleets
    of a few devices this replays all of it at the chosen LoRA start. On mid-sized fleets the
    neighbourhood is re-centred on each better plan found, until none is or the budget is spent.
    """
    start = replay.runs
    while (left := budget - (replay.runs - start)) > 0:
        improved = False
        for g in nearby_plans(replay.table, groups, min(NEARBY_MAX, left)):
            m = replay(g)  # cached: re-centring replays only the new neighbours
            if m < makespan * (1 - 1e-9):
                groups, makespan, improved = g, m, True
        if not improved:  # the best is the best of its own neighbourhood
            break
    return groups, makespan


def _lora_start(scenario, min_device_layers: int, min_lora_layers: int) -> int:
    L, fixed = scenario.arch.n_layers, scenario.training.lora_start
    if fixed is None:
        return L - min_lora_layers
    if L - fixed < min_lora_layers or fixed < min_device_layers:
        raise InfeasibleError(
            f"training.lora_start {fixed} leaves {L - fixed} LoRA blocks and allows cuts up to {fixed}, "
            f"but --min-lora-layers {min_lora_layers} and --min-device-layers {min_device_layers} ask "
            "for more; change training.lora_start or the minimums")
    return fixed


def plan(scenario, schedule: str = "splitfrozen", objective: str = "time", min_device_layers: int = 1,
         min_lora_layers: int = 1, verify: int = 3, refine_budget: int | None = None,
         cost_model=None, deadline: float | None = None, tie_tolerance: float = TIE_TOLERANCE) -> PlanResult:
    """Choose every device's cut, the LoRA start and the server assignment that finish training soonest.

    Args:
        scenario: a loaded :class:`sfsim.scenario.config.Scenario`.
        schedule: ``splitfrozen`` (pipelined) or ``splitfrozen-sequential``.
        objective: ``time`` (total training time; ties go to less device compute) or ``energy``
            (least device joules with the makespan at most ``deadline``).
        min_device_layers: fewest blocks every device keeps (raw tokens never leave a device: 1).
        min_lora_layers: fewest LoRA blocks on the servers.
        verify: how many of the best analytic candidates to replay with the simulator.
        refine_budget: most extra simulations for the local search (default: what is left of
            ``SIM_MICRO_BATCHES`` simulated micro-batches, at most ``REFINE_MAX`` runs).
        cost_model: a :class:`sfsim.cost.model.CostModel` to reuse (default: built from ``scenario``).
        deadline: seconds; required with ``objective="energy"``, refused with ``time``.
        tie_tolerance: with ``objective="time"``, plans within this fraction of the fastest
            makespan tie and the one with the fewest device FLOPs wins (0: the fastest, full stop).

    Returns:
        A :class:`PlanResult`; its ``makespan_s`` is the simulated time of the chosen plan.

    Raises:
        InfeasibleError: no plan meets the memory and layer constraints, or the deadline (says
            which and by how much).
        ConfigError: unknown schedule or objective, a missing or needless deadline, devices
            without power figures under ``objective="energy"``.

    Example:
        >>> res = plan(load_scenario("profiles/edge.yaml"))
        >>> res.splits["rpi5-0"], res.lora_start, res.bottleneck
    """
    t0 = time.perf_counter()
    schedule, table, lb, cm = _prepare(scenario, schedule, objective, min_device_layers, min_lora_layers,
                                       cost_model, deadline, tie_tolerance)
    sim = ServerSim.covering(scenario, cm, table, schedule) if _fast(scenario, table) else None
    replay = Replay(scenario, schedule, table, None if sim is None or sim.closing else sim)
    total = sum(t.count * t.sent for t in table.types)
    # long runs: the comparison lines come from the fluid model and only the plan itself is replayed
    simulate_refs = total <= COMPARE_MICRO_BATCHES
    runs = max(3 if simulate_refs else 1, _runs(scenario, table, total))  # simulator runs affordable
    # single global cuts: the few most promising by a cheap bound, plus SplitLoRA's
    ks = dict.fromkeys(rank_uniform_cuts(table, UNIFORM_TRIES) + [SPLITLORA_CUT])
    uniform = {k: g for k in ks if (g := fixed_cut(table, k)) is not None}
    refs = _references(replay, uniform, tops=2 if runs >= 8 else 1, simulate=simulate_refs)
    groups, makespan = _exact(replay, cm, *_search(replay, uniform, runs, verify, refine_budget, total))
    groups, makespan = _by_servers(replay, sim, groups, makespan)
    sims = [(m, k) for _, k, m in refs if m is not None] if simulate_refs else []
    if sims and min(sims)[0] < makespan:  # never worse than the best single global cut
        makespan, k = min(sims)
        groups = uniform[k]
    lb = min(lb, makespan)
    fastest = replay.score(groups)
    groups, chosen, searched = _trade(replay, cm, groups, objective, deadline, tie_tolerance, lb,
                                      max(0, runs - replay.runs), total)
    res = _result(scenario, table, replay, groups, chosen, None if table.dynamic else lb, refs)
    return dataclasses.replace(res, schedule=schedule, search_s=time.perf_counter() - t0,
                               min_lora_layers=min_lora_layers, objective=objective, deadline_s=deadline,
                               tie_tolerance=tie_tolerance, ties_searched=searched, fastest=fastest)


def _fast(scenario, table: StageTable) -> bool:
    """Whether the fast path (:mod:`sfsim.fast`) replays this fleet's plans."""
    tr = scenario.training
    return (not table.dynamic and tr.server_policy in POLICY_CODES
            and (tr.sync is None or len(scenario.servers) == 1))


def _runs(scenario, table: StageTable, total: int) -> int:
    """How many replays the budget affords: by micro-batches on the SimPy engine, by the fast path's cost there."""
    if not _fast(scenario, table):
        return SIM_MICRO_BATCHES // max(total, 1)
    return FAST_REPLAY_BUDGET // (total + FAST_DEVICE_COST * sum(t.count for t in table.types))


def _by_servers(replay: Replay, sim: ServerSim | None, groups: list[Group], makespan: float) -> tuple[list[Group], float]:
    """The plan improved by server replays (:func:`sfsim.planner.servers.improve`); kept only if a whole
    replay finds it faster (not counted as a run: the replay budget, and the plan, stay as without it)."""
    if sim is None:
        return groups, makespan
    got, _ = improve(sim, groups, BUDGET)
    before = replay.runs
    m = replay.score(got).makespan_s
    replay.runs = before
    return (got, m) if m < makespan * (1 - 1e-9) else (groups, makespan)


def _exact(replay: Replay, cm, groups: list[Group], makespan: float) -> tuple[list[Group], float]:
    """On fleets with few enough plans, the fastest of all of them (:mod:`sfsim.planner.exhaustive`)."""
    table = replay.table
    exact = None if table.dynamic else exhaustive.fastest(replay.scenario, cm, table, replay.schedule)
    if exact is not None and exact[0] < makespan:
        return exact[1], replay(exact[1])
    return groups, makespan


def _search(replay: Replay, uniform: dict, runs: int, verify: int, refine_budget: int | None,
            total: int) -> tuple[list[Group], float]:
    """Analytic candidates, the best replayed, calibrated, the nearby plans and a local search."""
    table = replay.table
    pool = candidates(table) + _type_level(table) + list(uniform.values())
    starts = sorted({tuple(merge(g)): g for g in pool}.values(), key=lambda g: _rank_key(table, g))
    pool = [polish(table, g, POLISH_EVALS // POLISH_STARTS) for g in starts[:POLISH_STARTS]] + pool
    # half of what is left replays the best candidates, the rest goes to the local search
    makespan, groups = _best_simulated(replay, pool, max(1, min(verify, (runs - replay.runs) // 2)))
    tries = reassigned(table, groups) + [a for g in starts[:REASSIGN_STARTS] for a in reassigned(table, g, ("least",))]
    groups, makespan = _reassign(replay, tries, groups, makespan, runs)
    if runs - replay.runs >= 2 and len(table.servers) > 1:
        groups, makespan = _calibrated(replay, groups, makespan)
    nearby = min(runs - replay.runs - REFINE_MAX, NEARBY_MICRO_BATCHES // max(total, 1))
    groups, makespan = _nearby(replay, groups, makespan, nearby)
    if refine_budget is None:
        refine_budget = min(REFINE_MAX, max(0, runs - replay.runs))
    groups, makespan, _ = refine(table, groups, makespan, replay, refine_budget)
    return groups, makespan


def _result(scenario, table: StageTable, replay: Replay, groups: list[Group], chosen: Score, bound: float | None,
            refs: list[tuple]) -> PlanResult:
    """The :class:`PlanResult` of the chosen plan (the caller fills in what the request asked for)."""
    makespan = chosen.makespan_s
    est = estimate(table, groups)
    splits, assignment = expand(table, groups)
    comparisons = [Comparison(label, k, m, None if m is None else 1 - makespan / m,
                              "" if m is not None else note) for (label, k, m), note in
                   zip(refs, ("no single cut fits every device",
                              "infeasible here (memory, depth or the minimum-layer rules)"), strict=True)]
    return PlanResult(
        splits=splits, lora_start=table.lora_start, assignment=assignment, makespan_s=makespan,
        estimate_s=est.makespan_s, bottleneck=bottleneck_words(table, est, makespan), lower_bound_s=bound,
        gap=None if bound is None else makespan / bound - 1 if bound > 0 else 0.0, rows=rows_for(table, groups),
        comparisons=comparisons, scenario=scenario.source, model=scenario.arch.name,
        replay_s=replay.seconds, simulated=replay.simulated, lora_layers=scenario.arch.n_layers - table.lora_start,
        lora_fixed=scenario.training.lora_start is not None, device_flop=chosen.device_flop,
        device_j=chosen.device_j, dynamic=table.dynamic)


def _trade(replay: Replay, cm, fastest: list[Group], objective: str, deadline: float | None,
           tie_tolerance: float, lb: float, left: int, total: int) -> tuple[list[Group], Score, bool]:
    """Trade the fastest plan's time for device compute (ties) or energy (deadline).

    ``left`` is what remains of the replay budget (at most ``CHEAPER_MICRO_BATCHES`` of it is
    spent: long runs replay no candidates for ties, and the report says so; energy, asked for,
    replays at least one).

    Returns:
        ``(groups, score, ties_searched)`` of the chosen plan.
    """
    table, best = replay.table, replay.score(fastest)
    runs = min(CHEAPER_RUNS, CHEAPER_MICRO_BATCHES // max(total, 1), left)
    nearby_cap = min(NEARBY_MAX, NEARBY_MICRO_BATCHES // max(total, 1), left)
    if objective == "energy":
        if deadline < best.makespan_s:
            raise InfeasibleError(_deadline_words(deadline, best.makespan_s, lb))
        cost = energy_cost(table, np.array([cm.uplink_bytes(int(k)) for k in table.cuts], dtype=float))
        return (*cheapest(table, replay.score, cost, fastest, deadline, max(1, runs), nearby_cap), False)
    if tie_tolerance > 0 and runs > 0:
        cost = flop_cost(table, np.array([cm.device_prefix(int(k)).total for k in table.cuts], dtype=float))
        return (*cheapest(table, replay.score, cost, fastest, best.makespan_s * (1 + tie_tolerance), runs,
                          nearby_cap), True)
    return fastest, best, False


def _deadline_words(deadline: float, fastest: float, lb: float) -> str:
    """One line: the deadline is shorter than the fastest plan found, by how much, and the proven bound."""
    t = lambda x: format_quantity(x, "time")  # noqa: E731
    bound = (f"no plan can finish in under {t(lb)}" if deadline < lb else
             f"the proven lower bound is {t(lb)}, but no plan found beats {t(fastest)}")
    return (f"--deadline {t(deadline)} is shorter than the fastest plan found, {t(fastest)} (short by "
            f"{t(fastest - deadline)}, {fastest / deadline - 1:.1%}; {bound}); raise --deadline to at least "
            f"{t(fastest)}")


def _check_objective(scenario, objective: str, deadline: float | None, tie_tolerance: float) -> None:
    """Refuse an unknown objective, a missing or needless deadline, and energy without power figures."""
    if objective not in OBJECTIVES:
        raise ConfigError(None, "--objective", f"unknown objective {objective!r}; choose: {', '.join(OBJECTIVES)}")
    if not tie_tolerance >= 0:
        raise ConfigError(None, "--tie-tolerance", f"must be >= 0 (a fraction of the fastest time), got {tie_tolerance}")
    if objective == "time":
        if deadline is not None:
            raise ConfigError(None, "--deadline", "goes with --objective energy (the time objective takes the "
                              "fastest plan); add --objective energy or drop --deadline")
        return
    if deadline is None:
        raise ConfigError(None, "--deadline", "--objective energy needs a deadline, the most time the plan "
                          "may take (e.g. --deadline 10min); sfsim plan without --objective shows the fastest")
    if not deadline > 0:
        raise ConfigError(None, "--deadline", f"must be > 0, got {deadline}")
    bare = list(dict.fromkeys(d.type for d in scenario.devices if getattr(d, "power", None) is None))
    if bare:
        raise ConfigError(scenario.source, "devices", f"--objective energy needs power figures on every device; "
                          f"{', '.join(bare)} {'has' if len(bare) == 1 else 'have'} none: add e.g. "
                          "power: {compute: 6 W, idle: 1.5 W, transmit: 2.5 W}")


def _prepare(scenario, schedule, objective, min_device_layers, min_lora_layers, cost_model, deadline=None,
             tie_tolerance=TIE_TOLERANCE):
    """Validate the request, build the stage table, its lower bound and the cost model."""
    from sfsim.cost.model import CostModel

    schedule = canonical(schedule)  # one-line SfsimError for unknown names
    if schedule not in SCHEDULES:
        raise ConfigError(None, "--schedule", f"cannot plan for {schedule!r}; the planner plans "
                          f"{', '.join(SCHEDULES)} (the schedules with per-device cuts)")
    _check_objective(scenario, objective, deadline, tie_tolerance)
    check_layers(scenario.arch.n_layers, min_device_layers, min_lora_layers, scenario.arch.name)
    lora_start = _lora_start(scenario, min_device_layers, min_lora_layers)
    cm = cost_model or CostModel(scenario)
    table = build_table(cm, scenario, lora_start, min_device_layers, schedule)
    if not table.allowed.any(axis=(1, 2)).all():
        raise InfeasibleError(explain_infeasible(table, min_device_layers))
    return schedule, table, lower_bound(table), cm


def _references(replay: Replay, uniform: dict[int, list[Group]], tops: int, simulate: bool = True) -> list[tuple]:
    """``(label, cut, makespan)`` of SplitFrozen at the best single global cut and at SplitLoRA's cut 3.

    Both use the planner's assignment rule (the same integer program), so the comparison isolates
    the value of per-device cuts. Simulated (the best single cut replays the ``tops`` best by the
    fluid model), or with ``simulate=False`` the fluid estimates, labelled so.
    """
    k3, table = SPLITLORA_CUT, replay.table
    score = replay if simulate else (lambda g: estimate(table, g).makespan_s)
    how = "" if simulate else ", fluid estimate"
    fixed = score(uniform[k3]) if k3 in uniform else None
    out = []
    if uniform:
        ranked = sorted(uniform, key=lambda k: estimate(table, uniform[k]).makespan_s)[:tops]
        sim, k = min([(score(uniform[k]), k) for k in ranked] + ([(fixed, k3)] if fixed is not None else []))
        out.append((f"SplitFrozen at the best single cut (k={k}{how})", k, sim))
    else:
        out.append(("best single cut", None, None))
    out.append((f"SplitFrozen at SplitLoRA's cut (k={k3}{how})", k3, fixed))
    return out


__all__ += ["Estimate", "expand"]
