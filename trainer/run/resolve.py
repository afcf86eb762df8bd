"""Which split a run trains: cuts, LoRA start and server assignment, resolved by the simulator's own rules.

``sfsim run`` and ``sfsim simulate`` on the same scenario, method and options always run the same
split: the cuts come from :func:`sfsim.simulate.resolve_splits`, SplitFrozen's LoRA start from
:func:`sfsim.simulate.resolve_lora_start` and the device -> server assignment from
:func:`sfsim.scenario.assign.resolve_assignment`, called exactly as :func:`sfsim.simulate.simulate`
calls them. The trainer only adds what the simulator cannot know: the loaded model's depth (a tiny test
model may be shallower than the scenario's architecture) and its own LoRA blocks for the baselines.

Defaults (nothing given): SplitFrozen cuts every device at ``training.split``, else 1; SplitLoRA at
``training.splitlora_cut``. The planner's cuts are *not* the default of either half: a plan costs a
search, and the simulator's figures for a scenario without ``--plan`` must not move; pass
``--plan plan.yaml`` (from ``sfsim plan``) to both halves to train what the planner chose.

Each resolved value says where it came from (:data:`SOURCES`), and ``metrics.json`` records it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfsim.cost.model import CostModel
from sfsim.errors import SfsimError
from sfsim.model.loratargets import resolve_for_family
from sfsim.scenario.assign import resolve_assignment
from sfsim.scenario.planfile import Plan, load_plan
from sfsim.simulate import SPLITFROZEN, resolve_lora_start, resolve_splits
from trainer.model.lora import default_targets

SOURCES = ("flag", "plan", "scenario", "default", "least-loaded", "method")
"""Where a cut, a LoRA start or an assignment came from: a command-line flag, the plan, the scenario file,
the simulator's default, the simulator's least-loaded assignment, or the method's own rule."""


@dataclass(frozen=True)
class Split:
    """A run's resolved split.

    Attributes:
        cuts: device -> cut (blocks on the device).
        lora_start: first LoRA block (SplitFrozen and CenLoRA; the others' blocks follow their method).
        assignment: device -> server name.
        sources: ``cuts``, ``lora_start``, ``assignment`` -> one of :data:`SOURCES`.
    """

    cuts: dict[str, int]
    lora_start: int
    assignment: dict[str, str]
    sources: dict[str, str]


def resolve_split(scenario, method: str, n_layers: int, split: int | None = None, plan: str | None = None,
                  lora_start: int | None = None, where: str = "") -> Split:
    """The cuts, LoRA start and assignment of a run of ``method`` on ``scenario`` (see the module docstring).

    Args:
        scenario: the loaded scenario.
        method: canonical method name.
        n_layers: blocks of the model the run loads.
        split: ``--split`` (every device), or None.
        plan: ``--plan`` file, or None.
        lora_start: ``--lora-start``, or None.
        where: prefix of error messages (the scenario file).

    Returns:
        A :class:`Split`.

    Raises:
        SfsimError: a cut or LoRA start outside the model, in one line.
    """
    p: Plan | None = load_plan(plan, scenario) if plan is not None else None
    tr = scenario.training
    if method == "splitlora" and split is None:  # simulate(): a plan's cuts are SplitFrozen's
        cuts = resolve_splits(scenario, None, None, default=tr.splitlora_cut)
        cut_src = "scenario"
    else:
        cuts = resolve_splits(scenario, split, p if method in SPLITFROZEN else None)
        cut_src = "flag" if split is not None else "plan" if p is not None and method in SPLITFROZEN else \
            "scenario" if tr.split is not None else "default"
    for n, k in cuts.items():
        if not 0 <= k < n_layers:
            raise SfsimError(f"{where}cut {k} for device {n} ({cut_src}) is beyond the model's depth: it has "
                             f"{n_layers} blocks, use a cut in 0..{n_layers - 1} (--split)")
    if method in SPLITFROZEN:
        ls = resolve_lora_start(scenario, cuts, lora_start, p)
        ls_src = "flag" if lora_start is not None else "plan" if p is not None else \
            "scenario" if tr.lora_start is not None else "default"
    else:
        ls = lora_start if lora_start is not None else 0 if method == "cenlora" else max(cuts.values())
        ls_src = "flag" if lora_start is not None else "method"
    if not 0 <= ls < n_layers:
        raise SfsimError(f"--lora-start {ls} is beyond the model's depth ({n_layers} blocks): use 0..{n_layers - 1}")
    first_lora = ls if method in SPLITFROZEN else max(cuts.values())
    assignment, src = resolve_assignment(scenario, CostModel(scenario), method, cuts, first_lora,
                                         p if method != "fedlora" and method != "cenlora" else None)
    return Split(cuts, ls, assignment, {"cuts": cut_src, "lora_start": ls_src, "assignment": src})


def lora_targets(scenario, lm) -> list[str]:
    """The scenario's LoRA targets resolved for this model's family (``sfsim.model.loratargets``).

    Aliases (``q``, ``v``, ``attn``, ``mlp``, ...) mean the same modules in every family; module names
    of another family fall back to this family's defaults with a note, so a scenario written for GPT-2
    (``c_attn``) can drive a MiniLM or SmolLM2 run unchanged.
    """
    targets = scenario.training.lora.targets
    try:
        return list(resolve_for_family(lm.family, targets))
    except ValueError as err:
        if not targets or scenario.arch.family == lm.family:
            raise SfsimError(f"training.lora.targets: {err}") from None
    print(f"note: the scenario's LoRA targets {targets} are for {scenario.arch.family} models; "
          f"using {default_targets(lm.family)} for this {lm.family} model (aliases such as qkv, attn or mlp "
          "name the same modules in every family)")
    return list(resolve_for_family(lm.family, None))


def periods(scenario, cuts: dict[str, int]) -> dict[str, float]:
    """Relative seconds between a device's micro-batches for the fifo order: cut / device FLOP rate."""
    out = {}
    for d in scenario.devices:
        rate = d.flops or 1e11  # devices with a latency profile: an assumed 100 GFLOPS
        out[d.name] = max(cuts[d.name], 1) / rate
    return out


__all__ = ["SOURCES", "Split", "lora_targets", "periods", "resolve_split"]
