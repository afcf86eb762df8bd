"""Does a chosen setup fit in memory? One check and one message for ``simulate`` and ``plan``.

What each schedule keeps (the cost model's memory formulas, :mod:`sfsim.cost.model`):

==========================  ==================================================  ======================================
schedule                    device                                              server
==========================  ==================================================  ======================================
splitfrozen(-sequential)    prefix weights + one forward working set            suffix from its smallest cut, LoRA
                                                                                state, ``buffer + count`` micro-batches
                                                                                (``credits: device``: the credits of
                                                                                all its devices beyond ``buffer``
                                                                                add their uplink bytes each)
splitlora                   client blocks with LoRA, trained                    suffix from its smallest cut, all LoRA,
                                                                                one micro-batch in flight
fedlora                     the whole model with LoRA, trained                  (adapters only: not checked)
cenlora                     (nothing)                                           the whole model with LoRA, trained
==========================  ==================================================  ======================================
"""

from __future__ import annotations

from sfsim.errors import InfeasibleError
from sfsim.units import format_quantity


def shortfall(who: str, need: float, have: float, purpose: str, fix: str) -> str:
    """``'device pi-0 needs 1.2 GiB for 3 blocks but has 1 GiB (short by 205 MiB); <fix>'``."""
    size = lambda x: format_quantity(x, "size")  # noqa: E731
    return f"{who} needs {size(need)} {purpose} but has {size(have)} (short by {size(need - have)}); {fix}"


def check_memory(scenario, cm, schedule: str, cuts: dict[str, int], lora_start: int,
                 assignment: dict[str, str]) -> None:
    """Raise :class:`InfeasibleError` (one line) when a device or server cannot hold its part.

    Args:
        scenario: the scenario (devices and servers with their ``memory``).
        cm: its :class:`~sfsim.cost.model.CostModel`.
        schedule: canonical method name.
        cuts: device -> cut; lora_start: first LoRA block (SplitFrozen).
        assignment: device -> server name.
    """
    L, tr = scenario.arch.n_layers, scenario.training
    if schedule != "cenlora":
        need_at = {}  # cut -> (bytes, purpose, fix): devices share cuts, so each is computed once
        for d in scenario.devices:
            k = cuts[d.name]
            if k not in need_at:
                need_at[k] = _device_need(cm, schedule, k, L)
            need, purpose, fix = need_at[k]
            if need > d.memory:
                raise InfeasibleError(shortfall(f"device {d.name}", need, d.memory, purpose, fix))
    lowest: dict[str, int] = {}  # server -> smallest cut among its devices
    for d, s in assignment.items():
        lowest[s] = min(lowest.get(s, cuts[d]), cuts[d])
    for srv in scenario.servers:
        if srv.name not in lowest or schedule == "fedlora":
            continue
        low = lowest[srv.name]
        if schedule.startswith("splitfrozen"):
            buffered = tr.buffer
            need = cm.server_memory(low, lora_start, tr.buffer + srv.count)
            if tr.credits == "device":  # every device may have its own credits' worth waiting here
                mine = sum(1 for s in assignment.values() if s == srv.name)
                buffered = mine * (1 if schedule == "splitfrozen-sequential" else tr.buffer)
                need += max(0, buffered - tr.buffer) * cm.uplink_bytes(low)  # as received, not yet started
            purpose = f"for blocks {low}..{L - 1} and {buffered} buffered micro-batches"
            fix = "raise the smallest cut on it, lower the buffer or micro_batch, or give it more memory"
        elif schedule == "splitlora":
            need, purpose = cm.server_memory(low, low, 1), f"to train blocks {low}..{L - 1}"
            fix = "raise the cuts on it or give it more memory"
        else:  # cenlora
            need, purpose = cm.device_train_memory(range(L)), f"to train all {L} blocks (cenlora)"
            fix = "give it more memory or lower seq_len or micro_batch"
        if need > srv.memory:
            raise InfeasibleError(shortfall(f"server {srv.name}", need, srv.memory, purpose, fix))


def _device_need(cm, schedule: str, k: int, L: int) -> tuple[float, str, str]:
    if schedule == "splitlora":
        return (cm.device_train_memory(range(k), cut=k), f"to train its {k} client blocks",
                "give it a smaller cut (training.splitlora_cut or --split) or more memory")
    if schedule == "fedlora":
        return (cm.device_train_memory(range(L)), f"to train all {L} blocks (fedlora)",
                "give it more memory or lower seq_len or micro_batch")
    return (cm.device_memory(k), f"for its {k}-block prefix",
            "give it a smaller cut ('sfsim plan' picks cuts that fit) or more memory")
