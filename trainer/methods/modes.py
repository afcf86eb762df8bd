"""The one training mode every method's model parts train in, and their trainable parameters."""

from __future__ import annotations

from torch import nn


def training_mode(*modules: nn.Module | None) -> None:
    """Put model parts in the one training mode every method uses: the pretrained network's own dropout off,
    dropout only on the LoRA inputs (the scenario's ``lora.dropout``).

    Every block then computes the same function whichever side runs it and whichever method trains:
    SplitFrozen's frozen device prefix must run without dropout (its activations are then fixed and
    cacheable), so SplitLoRA's client part, FedLoRA's and CenLoRA's whole models and every server part
    run their frozen weights the same way. Attention and hidden-state dropout read their module's
    ``training`` flag, so the whole part goes to eval mode and only peft's ``lora_dropout`` modules
    back to training mode.
    """
    for m in modules:
        if m is None:
            continue
        m.eval()
        for name, sub in m.named_modules():
            if name.rpartition(".")[2] == "lora_dropout":
                sub.train()


def trainable_params(*modules: nn.Module | None) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` of the given modules, each once."""
    seen, out = set(), []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out
