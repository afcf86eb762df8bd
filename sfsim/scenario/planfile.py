"""The plan file: per-device cuts, where LoRA starts, and which server each device uses.

Written by ``sfsim plan -o plan.yaml``; read by ``sfsim simulate --plan`` and ``sfsim run --plan``.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field
from pydantic.dataclasses import dataclass

from sfsim.errors import ConfigError
from sfsim.scenario.schema import STRICT, read_yaml, validate, write_atomic


@dataclass(config=STRICT, kw_only=True)
class Plan:
    """A split plan.

    Attributes:
        splits: device name -> cut k (the device runs embeddings + blocks 0..k-1).
        lora_start: first block with LoRA on the server (>= every cut).
        assignment: device name -> server name.
        makespan_s: the planner's predicted total time (s).
        bottleneck: what bounds the makespan, in words (e.g. ``"server edge-gpu"``).
        lower_bound_s: a proven lower bound on the best makespan, when the planner has one.
        schedule: the schedule the plan was made for.
        scenario: the scenario file it was made from.
        model: the model name it was made for (a plan is only valid for that depth).
    """

    splits: dict[str, int]
    lora_start: int = Field(ge=0)
    assignment: dict[str, str]
    makespan_s: float | None = None
    bottleneck: str = ""
    lower_bound_s: float | None = None
    schedule: str = "splitfrozen"
    scenario: str | None = None
    model: str | None = None

    def to_yaml(self) -> str:
        """The plan as YAML text."""
        body = {k: getattr(self, k) for k in ("schedule", "scenario", "model", "lora_start", "splits",
                                              "assignment", "makespan_s", "lower_bound_s", "bottleneck")}
        return "# sfsim plan: per-device cut, LoRA start and server assignment\n" + yaml.safe_dump(
            body, sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the plan atomically."""
        write_atomic(path, self.to_yaml())

    def check(self, scenario, file: str | None = None) -> None:
        """Raise ``ConfigError`` unless the plan fits ``scenario`` (devices, servers, depth)."""
        names = {d.name for d in scenario.devices}
        L = scenario.arch.n_layers
        for dev, k in self.splits.items():
            if dev not in names:
                raise ConfigError(file, f"splits.{dev}", "no such device in the scenario; re-run sfsim plan")
            if not 0 <= k < L:
                raise ConfigError(file, f"splits.{dev}", f"cut {k} is beyond the model's depth ({L} blocks)")
        missing = names - set(self.splits)
        if missing:
            raise ConfigError(file, "splits", f"no cut for device {sorted(missing)[0]!r}; re-run sfsim plan")
        if self.splits and self.lora_start < max(self.splits.values()):
            raise ConfigError(file, "lora_start", f"{self.lora_start} is below the largest cut "
                              f"{max(self.splits.values())}; LoRA must start at or above every cut")
        if self.lora_start >= L:
            raise ConfigError(file, "lora_start", f"{self.lora_start} is beyond the model's depth ({L} blocks)")
        servers = {s.name for s in scenario.servers}
        for dev, srv in self.assignment.items():
            if srv not in servers:
                raise ConfigError(file, f"assignment.{dev}", f"no server named {srv!r}; servers are: "
                                  f"{', '.join(sorted(servers))}")


def load_plan(path: str | Path, scenario=None) -> Plan:
    """Read a plan file (and check it against ``scenario`` when given)."""
    plan = validate(Plan, read_yaml(path), file=str(path))
    if scenario is not None:
        plan.check(scenario, file=str(path))
    return plan
