"""LoRA (via peft) on chosen blocks only, adapter state dicts and their FedAvg."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from sfsim.errors import SfsimError
from sfsim.model.arch import DEFAULT_LORA_TARGETS

DEFAULT_TARGETS = {f: list(ts) for f, ts in DEFAULT_LORA_TARGETS.items()}  # the simulator's defaults, per family
# names a block list goes by: ours (split parts) and the unsplit HF models' (transformer.h, model.layers, encoder.layer)
_BLOCK_LISTS = ("blocks", "h", "layers", "layer")


def default_targets(family: str) -> list[str]:
    """LoRA target modules of a model family: gpt2 c_attn, phi3 qkv_proj, bert query/value, other decoders q_proj/v_proj."""
    if family not in DEFAULT_TARGETS:
        raise SfsimError(f"unknown model family {family!r}: use one of {', '.join(DEFAULT_TARGETS)}")
    return list(DEFAULT_TARGETS[family])


def target_regex(blocks: Iterable[int], targets: Sequence[str]) -> str:
    """Regex over full module names matching ``targets`` inside the given block indices.

    A bare target is a module name anywhere in the block, a dotted one a path from the block
    (``attn.c_proj``): the rule of :func:`sfsim.model.flops.target_matches`. ``sfsim.model.loratargets`` turns
    aliases (``qkv``, ``mlp``, ...) into such names.

    Example:
        >>> target_regex([2, 3], ["q_proj", "mlp.c_proj"])
        '(?:.*\\\\.)?(?:blocks|h|layers|layer)\\\\.(?:2|3)\\\\.(?:(?:.*\\\\.)?q_proj|mlp\\\\.c_proj)'
    """
    idx = "|".join(str(i) for i in sorted(set(blocks)))
    names = "|".join(re.escape(t) if "." in t else rf"(?:.*\.)?{re.escape(t)}" for t in targets)
    lists = "|".join(_BLOCK_LISTS)
    return rf"(?:.*\.)?(?:{lists})\.(?:{idx})\.(?:{names})"


def add_lora(module: nn.Module, *, blocks: Iterable[int], targets: list[str], rank: int, alpha: float,
             dropout: float = 0.0) -> nn.Module:
    """Freeze ``module`` and inject peft LoRA into ``targets`` of the given block indices (in place).

    Only the LoRA weights train afterwards; mark a task head trainable yourself. LoRA B starts at
    zero, so the output is unchanged until the first update.

    Args:
        module: a split part (blocks named ``blocks.<i>``) or an unsplit HF model.
        blocks: model block indices that get adapters (e.g. ``range(lora_start, n_layers)``).
        targets: module names or in-block paths, e.g. ``default_targets(family)`` or what
            ``sfsim.model.loratargets.resolve_for_family`` returns for aliases.
        rank, alpha, dropout: LoRA rank r, scaling numerator alpha, dropout on the LoRA input.

    Returns:
        ``module`` itself, with adapters injected.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    blocks = sorted(set(blocks))
    if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise SfsimError(f"LoRA needs rank >= 1, alpha > 0 and 0 <= dropout < 1 (got {rank}, {alpha}, {dropout})")
    module.requires_grad_(False)
    if not blocks:
        return module
    pattern = target_regex(blocks, targets)
    hits = [m for name, m in module.named_modules() if re.fullmatch(pattern, name)]
    if not hits:
        raise SfsimError(f"LoRA targets {targets} match no module in blocks {blocks}: "
                         "check the block indices and use default_targets(family)")
    # GPT-2 stores c_attn as Conv1D (weight transposed); tell peft so instead of letting it warn
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in hits)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                     fan_in_fan_out=fan_in_fan_out, bias="none")
    inject_adapter_in_model(cfg, module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of all LoRA weights of ``module``, keyed by parameter name."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}


def load_lora_state_dict(module: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Copy LoRA weights from ``sd`` into ``module``; the key sets must match exactly."""
    params = {n: p for n, p in module.named_parameters() if "lora_" in n}
    missing, extra = sorted(set(params) - set(sd)), sorted(set(sd) - set(params))
    if missing or extra:
        raise SfsimError(f"LoRA state dict does not fit the module: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for n, p in params.items():
            if sd[n].shape != p.shape:
                raise SfsimError(f"LoRA weight {n} has shape {tuple(sd[n].shape)}, expected {tuple(p.shape)}")
            p.copy_(sd[n])


def fedavg(state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts with equal keys (weights, e.g. sample counts, are normalised)."""
    if not state_dicts or len(state_dicts) != len(weights):
        raise SfsimError(f"fedavg needs one weight per state dict (got {len(state_dicts)} and {len(weights)})")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise SfsimError(f"fedavg weights must be >= 0 with a positive sum (got {list(weights)})")
    keys = set(state_dicts[0])
    if any(set(sd) != keys for sd in state_dicts):
        raise SfsimError("fedavg: the state dicts have different keys (adapters on different blocks?)")
    return {k: sum(sd[k] * (w / total) for sd, w in zip(state_dicts, weights, strict=True)) for k in state_dicts[0]}
