"""Choose the wire codec with the plan: the cheapest codec whose measured accuracy cost is within a budget.

Each admissible codec (``sfsim.cost.wire.admissible``: its measured accuracy cost in
``ACCURACY_COST_POINTS`` is at most the budget) is planned as its own scenario (``training.wire_dtype``
set to it); the codec whose plan minimises the objective (total time, or device joules under the
deadline) wins, ties going to the larger codec (less accuracy risk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sfsim.cost.wire import ACCURACY_COST_POINTS, CODECS, admissible
from sfsim.errors import ConfigError, InfeasibleError
from sfsim.planner.flow import PlanResult, plan


@dataclass
class CodecChoice:
    """The chosen codec, its plan, and what each candidate gave.

    Attributes:
        codec: the chosen ``training.wire_dtype``.
        result: its plan.
        costs: admissible codec -> its plan's objective value (seconds or joules; ``None``: infeasible).
        refused: codec -> its measured accuracy cost in points (``None``: never measured) for those over budget.
        budget_points: the accuracy budget (``None``: unlimited).
    """

    codec: str
    result: PlanResult
    costs: dict[str, float | None] = field(default_factory=dict)
    refused: dict[str, float | None] = field(default_factory=dict)
    budget_points: float | None = None

    def line(self) -> str:
        """The report line: the codec, the candidates' costs and the ones refused."""
        unit = "J" if self.result.objective == "energy" else "s"
        tried = ", ".join(f"{c} {'infeasible' if v is None else f'{v:.4g} {unit}'}" for c, v in self.costs.items())
        budget = "no accuracy budget" if self.budget_points is None else f"accuracy budget {self.budget_points:g} points"
        out = f"wire codec: {self.codec} ({budget}; {tried})"
        if self.refused:
            out += "; over budget: " + ", ".join(
                f"{c} ({'not measured' if v is None else f'-{v:g} points'})" for c, v in self.refused.items())
        return out + f"; run it with sfsim run --wire-dtype {self.codec}"


def choose_codec(load: Callable[[str], object], codecs: list[str], budget_points: float | None,
                 **plan_kw) -> CodecChoice:
    """Plan with each admissible codec and keep the best (see the module docstring).

    Args:
        load: codec name -> the scenario with ``training.wire_dtype`` set to it.
        codecs: candidate codec names (``sfsim plan --codecs``).
        budget_points: most accuracy points a codec may cost against fp32 (``None``: any).
        plan_kw: passed on to :func:`sfsim.planner.flow.plan`.

    Raises:
        ConfigError: an unknown codec, a negative budget, or no candidate within the budget.
        InfeasibleError: no admissible codec has a feasible plan.
    """
    try:
        ok = admissible(list(dict.fromkeys(codecs)), budget_points)
    except ValueError as err:
        raise ConfigError(None, "--codecs", str(err)) from None
    refused = {c: ACCURACY_COST_POINTS.get(c) for c in dict.fromkeys(codecs) if c not in ok}
    if not ok:
        raise ConfigError(None, "--accuracy-budget", f"no codec of {', '.join(codecs)} costs at most "
                          f"{budget_points:g} points of accuracy; raise the budget or add fp32")
    costs, best = {}, None
    for c in sorted(ok, key=lambda c: -list(CODECS).index(c)):  # smallest codec first: ties keep the larger
        try:
            res = plan(load(c), **plan_kw)
        except InfeasibleError:
            costs[c] = None
            continue
        costs[c] = res.device_j if res.objective == "energy" else res.makespan_s
        if best is None or costs[c] <= costs[best[0]]:
            best = (c, res)
    if best is None:
        raise InfeasibleError(f"no feasible plan with any of the codecs {', '.join(ok)}")
    return CodecChoice(best[0], best[1], {c: costs[c] for c in ok}, refused, budget_points)
