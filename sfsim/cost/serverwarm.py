"""A server's first-forward warm-up, as ``sfsim simulate`` reports it (the figure: :meth:`CostModel.server_warmup`).

A server latency profile's ``first_step`` (:class:`sfsim.cost.latency.FirstStep`) is what a fresh server
process's first training micro-batch pays beyond a steady one; the schedules whose server trains (SplitFrozen,
SplitLoRA, CenLoRA) add it to each server worker's first forward of the run. A server profile without it models
no warm-up (0 s): :func:`missing_note` says so where it matters.
"""

from __future__ import annotations

from sfsim.cost.latency import load_latency_profile

TRAINING_SERVERS = ("splitfrozen", "splitfrozen-sequential", "splitlora", "cenlora")
"""Schedules whose server trains (and so warms up); FedLoRA's only averages."""


def missing_note(scenario, schedules: list[str]) -> str | None:
    """One line naming the servers whose latency profile has no ``first_step`` (their warm-up simulated as 0 s),
    when a schedule whose server trains ran; None otherwise (or when every such server has one, or none has a
    profile: a ``flops``-rated server is nominal throughout)."""
    if not set(schedules) & set(TRAINING_SERVERS):
        return None
    bare = [s.name for s in scenario.servers if s.latency_profile is not None
            and load_latency_profile(scenario.resolve_path(s.latency_profile)).first_step is None]
    if not bare:
        return None
    return (f"note: server {', '.join(bare)}: the latency profile has no first_step, so the server's first "
            "micro-batch warm-up is simulated as 0 s; sfsim profile --role server measures it")
