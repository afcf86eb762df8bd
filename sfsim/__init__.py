"""sfsim: plan, simulate and run split fine-tuning (SplitFrozen and baselines) on edge fleets.

Python API::

    import sfsim
    sc = sfsim.load_scenario("profiles/edge.yaml")
    res = sfsim.simulate(sc, schedule="splitfrozen")      # or splits=3, or splits={"pi5-0": 2, ...}
    plan = sfsim.plan(sc)                                  # heterogeneity-aware cuts and assignment
"""

from sfsim.errors import ConfigError, SfsimError
from sfsim.scenario.config import Scenario, load_scenario, scenario_from_dict
from sfsim.scenario.planfile import Plan, load_plan

__all__ = ["ConfigError", "SfsimError", "Plan", "Scenario", "load_plan", "load_scenario",
           "scenario_from_dict", "simulate", "plan"]


# Imported eagerly: a lazy wrapper named ``simulate`` would be replaced by the submodule
# ``sfsim.simulate`` as soon as anything imports that module.
from sfsim.simulate import simulate  # noqa: E402


def plan(scenario, **constraints):
    """Choose per-device cuts, LoRA start and server assignment; see :func:`sfsim.planner.plan`."""
    from sfsim.planner import plan as _plan

    return _plan(scenario, **constraints)
