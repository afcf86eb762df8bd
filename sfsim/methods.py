"""Method (schedule) names shared by the simulator, the planner and the trainer."""

from __future__ import annotations

from sfsim.errors import SfsimError

#: Canonical method names with a one-line description, in the order reports list them.
METHODS = {
    "splitfrozen": "SplitFrozen: frozen device prefix forward-only, pipelined server LoRA with B/W split",
    "splitfrozen-sequential": "SplitFrozen work without pipelining (ablation)",
    "splitlora": "SplitLoRA: client LoRA prefix, cut-layer gradient down, sequential server, FedAvg",
    "fedlora": "FedLoRA: whole model with LoRA on every device, synchronous FedAvg rounds",
    "cenlora": "CenLoRA: all data at the server (centralised LoRA)",
}

#: The SplitFrozen family: the pipelined method and its sequential ablation (same device work).
SPLITFROZEN = ("splitfrozen", "splitfrozen-sequential")

#: SplitLoRA's client orders with what each means, for the simulator and the trainer alike.
CLIENT_ORDERS = {
    "interleaved": "clients' micro-batches mixed in the server order, FedAvg every fedavg_every steps "
                   "(SplitLoRA's reference code)",
    "sequential": "client after client, each over its whole epoch, adapters handed on to the next "
                  "(classic split learning)",
}

ALIASES = {"centralized": "cenlora", "centralised": "cenlora", "sequential": "splitfrozen-sequential"}


def canonical(name: str) -> str:
    """The canonical method name for ``name`` (accepts aliases such as ``centralized``)."""
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise SfsimError(f"unknown schedule/method {name!r}; choose one of: {', '.join(METHODS)}")
    return name
