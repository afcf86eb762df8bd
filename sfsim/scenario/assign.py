"""Device-to-server assignment when no plan gives one: pinned devices stay, the rest go least-loaded.

Rule (longest work first, then least load): every server starts with the work of the devices
pinned to it (``server:`` in the scenario). The other devices, largest server work first (file
order among equals), each go to the server on which the work then finishes first, i.e. the server
``j`` minimising ``(load_j + w_dj) / accelerators_j``, where ``w_dj`` = the device's micro-batches x
the server seconds of one of them on ``j`` (SplitFrozen: the suffix F + B + W at the device's cut;
SplitLoRA: its server part; CenLoRA: the whole model; FedLoRA: one aggregation share) and
``load_j`` the seconds already placed there. Ties go to the server listed first.

This balances server work, which is what a server count changes; it does not choose cuts or weigh
links, which the planner (``sfsim plan``) does together with the assignment.
"""

from __future__ import annotations

ASSIGNMENT_SOURCES = ("plan", "scenario", "least-loaded")
"""Where a simulation's assignment came from: a plan, the scenario's ``server:`` pins (or the only
server), or :func:`least_loaded` for the devices without a pin."""


def resolve_assignment(scenario, cm, schedule: str, cuts: dict[str, int], lora_start: int,
                       plan=None) -> tuple[dict[str, str], str]:
    """Device -> server for a simulation, and where it came from (one of :data:`ASSIGNMENT_SOURCES`).

    Args:
        scenario: the scenario; cm: its :class:`~sfsim.cost.model.CostModel`.
        schedule: canonical schedule name (sets each device's server work).
        cuts: device -> cut; lora_start: first LoRA block (SplitFrozen).
        plan: a plan; its assignment wins for the devices it names.

    Returns:
        ``(assignment, source)``.
    """
    if plan is not None:
        out = {d.name: d.server for d in scenario.devices}
        out.update(plan.assignment)
        return out, "plan"
    if len(scenario.servers) == 1 or all(d.server_pinned for d in scenario.devices):
        return {d.name: d.server for d in scenario.devices}, "scenario"
    return least_loaded(scenario, cm, schedule, cuts, lora_start), "least-loaded"


def least_loaded(scenario, cm, schedule: str, cuts: dict[str, int], lora_start: int) -> dict[str, str]:
    """Pinned devices keep their server; the others are placed longest work first on the least-loaded one.

    Example:
        >>> least_loaded(sc, CostModel(sc), "splitfrozen", {d.name: 1 for d in sc.devices}, 1)
        {'phone-0': 'regional', ...}
    """
    servers = scenario.servers
    epochs = scenario.training.epochs
    load = [0.0] * len(servers)
    index = {s.name: j for j, s in enumerate(servers)}
    out: dict[str, str] = {}
    free = []
    for pos, d in enumerate(scenario.devices):
        n = scenario.micro_batches(d) * epochs
        work = [n * _seconds(cm, schedule, cuts[d.name], lora_start, s) for s in servers]
        if d.server_pinned:
            out[d.name] = d.server
            load[index[d.server]] += work[index[d.server]]
        else:
            free.append((-min(w / s.count for w, s in zip(work, servers, strict=True)), pos, d.name, work))
    for _, _, name, work in sorted(free):
        # 12 digits: finishing times equal up to rounding tie, and a tie goes to the first server
        j = min(range(len(servers)), key=lambda j: (float(f"{(load[j] + work[j]) / servers[j].count:.12g}"), j))
        out[name] = servers[j].name
        load[j] += work[j]
    return {d.name: out[d.name] for d in scenario.devices}


def _seconds(cm, schedule: str, cut: int, lora_start: int, server) -> float:
    """Server seconds one micro-batch of a device with ``cut`` costs on ``server`` under ``schedule``."""
    if schedule in ("splitfrozen", "splitfrozen-sequential"):
        work = cm.server_suffix(cut, lora_start)
    elif schedule == "splitlora":
        work = cm.splitlora_server(cut)
    elif schedule == "cenlora":
        work = cm.full_model()
    else:  # fedlora: the server only averages adapters; spread devices by server speed
        return 1.0 / cm.effective_flops(server)
    return sum(cm.seconds(work, server))
