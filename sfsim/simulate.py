"""``simulate()``: resolve cuts and assignment, build a schedule's stage times, replay it, collect a SimResult.

Cut resolution (``splits``): ``None`` -> the plan's cuts when a plan is given, else
``training.split``, else cut 1 for every device; an int -> that cut for every device; a dict
device -> cut (devices not named get the default). A cut ``k`` may be ``0..L-1``: ``k = 0`` means
the device runs only the embeddings and sends them. SplitLoRA uses ``training.splitlora_cut`` as
its client depth unless ``splits`` is given explicitly (a plan's cuts are for SplitFrozen).

LoRA start: ``lora_start`` argument, else the plan's, else ``training.lora_start``, else the largest
cut; it must lie in ``max cut .. L-1``. Assignment: the plan's when given, else each device's
``server`` pin, and the devices without one least-loaded over the servers
(:func:`sfsim.scenario.assign.least_loaded`); ``SimResult.assignment_source`` says which. Each server
trains its own replica on its devices' micro-batches; with ``training.sync`` the servers average their
adapters over their backhaul links in the runtime's rounds (:mod:`sfsim.network.backhaul`; not the baselines'
with handovers, which ``sfsim simulate`` notes), and without it (handovers or not) close each epoch with one round when
they declare a backhaul link (as ``sfsim run``). Handovers, time-varying
links and device availability are simulated for every schedule but cenlora, which has no device
links (:mod:`sfsim.schedules.network`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sfsim.cost.energy import run_energy
from sfsim.cost.epochend import epoch_end_seconds
from sfsim.cost.memory import check_memory
from sfsim.cost.model import CostModel
from sfsim.engine.pacing import FIXED_ORDERS
from sfsim.engine.pool import PACED, PACED_NEEDS_DEVICE_CREDITS, POLICIES, Engine
from sfsim.errors import ConfigError, SfsimError
from sfsim.fast.replay import choose_engine, replay
from sfsim.fast.unreplayable import Unreplayable
from sfsim.methods import CLIENT_ORDERS, SPLITFROZEN, canonical
from sfsim.network.backhaul import PoolRounds, close_epochs
from sfsim.network.mobility import stages
from sfsim.outputs.result import SimResult
from sfsim.scenario.assign import resolve_assignment
from sfsim.scenario.config import Scenario
from sfsim.scenario.planfile import Plan, load_plan
from sfsim.schedules import ReplayConfig, ReplaySetup, get
from sfsim.schedules.network import check_supported, report

TAKES = {"splitfrozen": ("splits", "plan", "lora_start", "policy"),
         "splitfrozen-sequential": ("splits", "plan", "lora_start", "policy"),
         "splitlora": ("splits", "plan", "client_order"), "fedlora": (), "cenlora": ()}
"""The options each schedule takes (``plan`` for splitlora: its assignment; the client cut stays
``training.splitlora_cut``; ``client_order`` overrides ``training.client_order``). :func:`simulate`
ignores the others, so that one loop can run every schedule; the CLI refuses them for a single
schedule (:func:`check_options`) and passes each schedule only its own with ``--schedule all``
(:func:`applicable`)."""

_WHY_NOT = {
    "splits": {"fedlora": "fedlora trains the whole model on every device, so it has no cut",
               "cenlora": "cenlora trains at the server, so it has no cut"},
    "plan": {"fedlora": "a plan holds SplitFrozen cuts and servers; fedlora has no cut",
             "cenlora": "a plan holds SplitFrozen cuts and servers; cenlora has no cut"},
    "lora_start": "only SplitFrozen has a frozen server part below its LoRA blocks",
    "policy": "only SplitFrozen's server chooses among waiting micro-batches (the others serve in order)",
    "client_order": "only SplitLoRA has clients that take turns (training.client_order is ignored elsewhere)",
}
_BOTH = "give cuts or a plan, not both: the plan fixes every cut (CLI: --split or --plan)"
_FLAGS = {"splits": "--split", "plan": "--plan", "lora_start": "--lora-start", "policy": "--policy",
          "client_order": "--client-order"}


def applicable(schedule: str, **options) -> dict:
    """The ``options`` (given ones, i.e. not None) that ``schedule`` takes; for ``--schedule all``."""
    return {k: v for k, v in options.items() if v is not None and k in TAKES[canonical(schedule)]}


def check_options(schedule: str, **options) -> None:
    """Refuse options that ``schedule`` would ignore, or that contradict each other (one line)."""
    name = canonical(schedule)
    given = [k for k, v in options.items() if v is not None]
    if "splits" in given and "plan" in given:
        raise SfsimError(_BOTH)
    for key in given:
        if key not in TAKES[name]:
            why = _WHY_NOT[key] if isinstance(_WHY_NOT[key], str) else _WHY_NOT[key].get(name, "")
            raise SfsimError(f"{name} takes no {key} ({_FLAGS[key]}): {why}; drop it")


def resolve_splits(scenario: Scenario, splits=None, plan: Plan | None = None,
                   default: int | None = None) -> dict[str, int]:
    """Device -> cut from the ``splits`` argument, a plan or the scenario (see module docstring).

    Args:
        scenario: the scenario.
        splits: None, an int (every device) or a dict device -> cut.
        plan: a plan whose cuts apply when ``splits`` is None.
        default: cut for devices not otherwise given (default: training.split, else 1).

    Returns:
        A dict with a cut for every device.

    Example:
        >>> resolve_splits(sc, {"pi5-0": 2})["pi5-0"]
        2
    """
    L, names = scenario.arch.n_layers, [d.name for d in scenario.devices]
    if default is None:
        default = scenario.training.split if scenario.training.split is not None else 1
    if splits is None and plan is not None:
        splits = dict(plan.splits)
    if splits is None:
        out = dict.fromkeys(names, default)
    elif isinstance(splits, bool) or not isinstance(splits, (int, dict)):
        raise SfsimError(f"splits must be an int or a dict device -> cut, got {splits!r}")
    elif isinstance(splits, int):
        out = dict.fromkeys(names, splits)
    else:
        unknown = sorted(set(splits) - set(names))
        if unknown:
            raise SfsimError(f"split: no device named {unknown[0]!r}; devices are: {', '.join(names[:8])}"
                             + (", ..." if len(names) > 8 else ""))
        out = {n: splits.get(n, default) for n in names}
    for dev, k in out.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < L:
            raise SfsimError(f"split for {dev}: cut {k!r} is outside 0..{L - 1} "
                             f"({scenario.arch.name} has {L} blocks); pick a cut in that range")
    return out


def resolve_lora_start(scenario: Scenario, splits: dict[str, int], lora_start: int | None = None,
                       plan: Plan | None = None) -> int:
    """First LoRA block: argument, plan, ``training.lora_start``, else the largest cut; checked."""
    L = scenario.arch.n_layers
    for cand in (lora_start, plan.lora_start if plan is not None else None, scenario.training.lora_start):
        if cand is not None:
            ls = cand
            break
    else:
        ls = max(splits.values())
    top = max(splits.values())
    if not top <= ls < L:
        raise SfsimError(f"lora_start {ls} must be in {top}..{L - 1}: at or above every cut (largest {top}) "
                         f"and below the model's {L} blocks")
    return ls


def simulate(scenario: Scenario, schedule: str = "splitfrozen", splits=None, plan: Plan | str | Path | None = None,
             lora_start: int | None = None, trace: bool = False, policy: str | None = None,
             client_order: str | None = None, engine: str = "auto") -> SimResult:
    """Simulate one schedule on a scenario.

    Args:
        scenario: a loaded :class:`~sfsim.scenario.config.Scenario`.
        schedule: a method name from :data:`sfsim.methods.METHODS` (or an alias).
        splits: None, an int or a dict device -> cut (see the module docstring).
        plan: a :class:`~sfsim.scenario.planfile.Plan`, a :class:`~sfsim.planner.PlanResult` (what
            :func:`sfsim.plan` returns) or a plan file path (cuts, LoRA start, assignment).
        lora_start: first LoRA block on the server (SplitFrozen).
        trace: keep every op as a :class:`~sfsim.outputs.trace.TraceEvent` (memory grows with the run).
        policy: server policy (:data:`sfsim.engine.pool.POLICIES`); default training.server_policy.
        client_order: SplitLoRA's client order (``interleaved`` or ``sequential``, see
            :mod:`sfsim.schedules.splitlora`); default training.client_order; other schedules ignore it.
        engine: ``auto`` (the exact fast path :mod:`sfsim.fast` where it covers the run, else SimPy;
            ``SimResult.engine_note`` says why), ``fast`` (an error where it does not) or ``simpy``.

    Returns:
        A :class:`~sfsim.outputs.result.SimResult`.

    Example:
        >>> res = simulate(load_scenario("profiles/edge.yaml"), "splitfrozen", splits=3)
        >>> res.makespan_s > 0
        True
    """
    name = canonical(schedule)
    plan = _plan_of(scenario, splits, plan)
    cfg = run_config(scenario, name, policy, client_order)
    setup, ls, source = _setup(scenario, name, splits, plan, lora_start)
    check_supported(scenario, name, cfg, scenario.training.cache_activations)
    res = _replay(name, setup, cfg, ls, trace, engine)
    res.assignment_source = source
    res.client_order = cfg.client_order if name == "splitlora" else None
    return res


def _plan_of(scenario: Scenario, splits, plan) -> Plan | None:
    """The plan argument as a checked :class:`~sfsim.scenario.planfile.Plan` (loaded from a file, or a PlanResult's)."""
    if splits is not None and plan is not None:
        raise SfsimError(_BOTH)
    if isinstance(plan, (str, Path)):
        plan = load_plan(plan, scenario)
    elif hasattr(plan, "to_plan"):  # a PlanResult from sfsim.plan()
        plan = plan.to_plan()
    if plan is not None:
        plan.check(scenario)
    return plan


def run_config(scenario: Scenario, name: str, policy: str | None = None, client_order: str | None = None) -> ReplayConfig:
    """The schedule knobs of ``scenario``'s training with the caller's ``policy`` and ``client_order``, checked.

    The scenario's own values are checked when it loads (:class:`~sfsim.scenario.config.Training`);
    here, what the arguments change, and the one rule that depends on the schedule (a paced
    SplitFrozen server needs per-device credits).
    """
    if policy is not None and policy not in POLICIES:
        raise SfsimError(f"unknown server policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    if client_order is not None and client_order not in CLIENT_ORDERS:
        raise SfsimError(f"unknown client order {client_order!r}; choose one of: {', '.join(CLIENT_ORDERS)}")
    cfg = ReplayConfig.from_training(scenario.training, policy)
    if client_order is not None:
        cfg = replace(cfg, client_order=client_order)
    if name in SPLITFROZEN and cfg.policy in PACED and cfg.credits == "server":
        raise ConfigError(scenario.source, "training.credits", f"server policy {cfg.policy!r} "
                          f"{PACED_NEEDS_DEVICE_CREDITS}")
    return cfg


def _setup(scenario: Scenario, name: str, splits, plan: Plan | None, lora_start: int | None):
    """(:class:`ReplaySetup`, LoRA start or None, assignment source): cuts, LoRA start and servers resolved, memory checked."""
    if name == "splitlora" and splits is None:
        cuts = resolve_splits(scenario, None, None, default=scenario.training.splitlora_cut)
    else:
        cuts = resolve_splits(scenario, splits, plan)
    if name == "splitlora" and 0 in cuts.values():
        dev = next(d for d, k in cuts.items() if k == 0)
        raise SfsimError(f"splitlora: device {dev} has cut 0, so its client has no block to train and the "
                         "cut-layer gradient would go nowhere; give it a cut of 1 or more")
    ls = resolve_lora_start(scenario, cuts, lora_start, plan) if name in SPLITFROZEN else None
    cm, first_lora = CostModel(scenario), ls if ls is not None else max(cuts.values())
    assignment, source = resolve_assignment(scenario, cm, name, cuts, first_lora, plan)
    check_memory(scenario, cm, name, cuts, first_lora, assignment)
    for after_handovers in stages(scenario.devices, assignment):  # the servers devices move to hold them too
        check_memory(scenario, cm, name, cuts, first_lora, after_handovers)
    return ReplaySetup(scenario, cm, cuts, first_lora, assignment), ls, source


def _replay(name: str, setup: ReplaySetup, cfg: ReplayConfig, ls: int | None, trace: bool, engine: str = "auto") -> SimResult:
    """Build the schedule's job, replay it on a fresh engine and collect the result."""
    scenario, tr = setup.scenario, setup.scenario.training
    module = get(name)
    job = module.build(setup, cache=tr.cache_activations)
    why = choose_engine(engine, scenario, name, cfg, job, trace)
    waits = epoch_end_seconds(scenario, setup.cm, setup.assignment)  # placed by schedules with epoch barriers
    if why is None:
        try:
            sim, makespan = replay(job, cfg, schedule=name, epoch_end=waits)
        except Unreplayable as err:  # a state met during the replay: SimPy replays it (engine fast: one line)
            if engine == "fast":
                raise SfsimError(f"engine fast: {err}; use engine auto or simpy") from None
            why = str(err)
    if why is not None:
        sim = Engine(trace=trace)
        sim.epoch_end = waits
        if name in SPLITFROZEN and job.sync is not None and job.sync.every is not None:  # training.sync
            PoolRounds(sim, job.sync, job.servers)
        module.run(sim, job, cfg, sequential=name == "splitfrozen-sequential")
        makespan = sim.run()
        if (job.sync is not None and job.sync.every is None and sim.sync is None  # not replayed per epoch (by_epochs)
                and name in SPLITFROZEN):  # each epoch's closing round, from the servers' ends
            sim.sync, makespan = close_epochs(job.sync, sim.server_end, makespan, sim.record)
    for srv in sim.epoch_end_waited:  # busy evaluating and saving between the epochs (sfsim.cost.epochend)
        sim.server_busy[srv] = sim.server_busy.get(srv, 0.0) + (tr.epochs - 1) * sim.epoch_end[srv]
    res = _result(name, scenario, job, sim, makespan, setup, ls, _policy_used(name, cfg))
    res.engine, res.engine_note = ("fast", None) if why is None else ("simpy", why or None)
    res.epoch_end_s = {k: v for k, v in sim.epoch_end.items() if k in sim.epoch_end_waited}
    if job.network is not None:
        report(res, setup, job, job.network.moving)
    res.energy = run_energy(res, scenario)
    if sim.sync is not None:
        res.backhaul_bytes_by_server, res.sync_rounds = dict(sim.sync.bytes), sim.sync.rounds
    return res


def _policy_used(name: str, cfg: ReplayConfig) -> str | None:
    """The server policy a schedule followed: SplitFrozen's, or the order of SplitLoRA's interleaved clients."""
    if name in SPLITFROZEN:
        return cfg.policy
    if name == "splitlora" and cfg.client_order == "interleaved":
        return f"paced-{FIXED_ORDERS[cfg.policy]}" if cfg.policy in FIXED_ORDERS else "fifo"
    return None


def _result(name, scenario, job, engine, makespan, setup, ls, policy) -> SimResult:
    util = {s.name: (engine.server_busy.get(s.name, 0.0) / (s.count * makespan) if makespan > 0 else 0.0)
            for s in scenario.servers}
    mixing = {srv: m.value for srv, m in engine.mixing.items() if m.value is not None}
    weights = {srv: engine.mixing[srv].total for srv in mixing}
    total_w = sum(weights.values())
    overall = sum(mixing[s] * weights[s] for s in mixing) / total_w if total_w else None
    return SimResult(
        schedule=name, makespan_s=makespan, micro_batches=sum(d.n for d in job.devices),
        device_flops=dict(job.device_flops), server_flops=dict(job.server_flops),
        device_busy_s=dict(engine.device_busy), server_busy_s={s.name: engine.server_busy.get(s.name, 0.0)
                                                               for s in scenario.servers},
        server_utilization=util, uplink_bytes_by_device=dict(engine.up_bytes),
        downlink_bytes_by_device=dict(engine.down_bytes), splits=dict(setup.splits), lora_start=ls,
        assignment=dict(setup.assignment), policy=policy, stream_mixing=overall,
        stream_mixing_by_server=mixing, server_wait_s=dict(engine.server_wait), server_end_s=dict(engine.server_end),
        pool_peak_bytes=dict(engine.pool_peak_bytes), events=engine.events,
        device_types={d.name: d.type for d in scenario.devices},
        server_workers={s.name: s.count for s in scenario.servers})
