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

import numpy as np

from sfsim.fast.jit import njit

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

    Devices share their server seconds per cut (a table of cuts x servers), and the placement loop
    is compiled (:func:`_place`); the figures are those of the rule in the module docstring.

    Example:
        >>> least_loaded(sc, CostModel(sc), "splitfrozen", {d.name: 1 for d in sc.devices}, 1)
        {'phone-0': 'regional', ...}
    """
    servers, devices = scenario.servers, scenario.devices
    index = {s.name: j for j, s in enumerate(servers)}
    cut_of, at = np.unique(np.array([cuts[d.name] for d in devices], np.int64), return_inverse=True)
    per_mb = np.array([[_seconds(cm, schedule, int(k), lora_start, s) for s in servers] for k in cut_of])
    epochs = scenario.training.epochs
    n = np.array([scenario.micro_batches(d) * epochs for d in devices], np.int64)
    work = n[:, None] * per_mb.reshape(len(cut_of), len(servers))[at.reshape(-1)]  # (devices, servers)
    load = np.zeros(len(servers))
    out: dict[str, str] = {}
    pinned = np.array([d.server_pinned for d in devices], bool)
    for pos in np.flatnonzero(pinned):  # file order: the loads add up as placed
        j = index[devices[pos].server]
        load[j] += work[pos, j]
        out[devices[pos].name] = devices[pos].server
    count = np.array([s.count for s in servers], np.float64)
    free = np.flatnonzero(~pinned)
    key = -(work[free] / count).min(axis=1) if len(servers) else np.zeros(len(free))
    order = free[np.argsort(key, kind="stable")]  # largest work first, file order among equals
    rows = np.ascontiguousarray(work[order])
    choice = np.full(len(order), -1, np.int64)
    i = 0
    while i < len(order):
        i = _place(rows, load, count, choice, i)
        if i < len(order):  # a near-tie the compiled loop leaves to the rounded comparison
            j = min(range(len(servers)), key=lambda j: (_rounded((load[j] + rows[i, j]) / count[j]), j))
            choice[i] = j
            load[j] += rows[i, j]
            i += 1
    for pos, j in zip(order.tolist(), choice.tolist(), strict=True):
        out[devices[pos].name] = servers[j].name
    return {d.name: out[d.name] for d in devices}


def _rounded(v: float) -> float:
    """``v`` to 12 significant digits: finishing times equal up to rounding tie (the first server wins)."""
    return float(f"{v:.12g}")


@njit
def _place(rows, load, count, choice, start):
    """Place devices ``start..`` (rows of server work, in placement order) on the least-loaded server.

    A server wins when its finishing time is the smallest by more than any rounding to 12 digits
    could bridge (so the rounded comparison would pick it too), or when it ties exactly with later
    servers (the first wins). Returns the index of the first device it cannot decide that way (a
    near-tie), or ``len(rows)`` when all are placed.
    """
    m, J = rows.shape
    for i in range(start, m):
        best = 0
        vb = (load[0] + rows[i, 0]) / count[0]
        for j in range(1, J):
            v = (load[j] + rows[i, j]) / count[j]
            if v < vb:
                best, vb = j, v
        for j in range(J):
            v = (load[j] + rows[i, j]) / count[j]
            if v != vb and v - vb <= _NEAR * max(abs(v), abs(vb)):
                return i  # another server is within rounding of the best: decide in Python
            if v == vb and j < best:
                best = j
        choice[i] = best
        load[best] += rows[i, best]
    return m


_NEAR = 3e-11
"""Relative gap under which two finishing times might round to the same 12 significant digits."""


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
