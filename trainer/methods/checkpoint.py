"""Save and reload a run's trained adapter and head in peft's ``save_pretrained`` layout (safetensors).

Folder layout (``OUT/adapter``): ``adapter_model.safetensors`` with peft's key names
(``base_model.model.<module>.lora_A.weight``, no adapter name), ``head.safetensors`` with the task head,
and ``adapter_config.json`` (peft fields plus an ``sfsim`` section: method, eval cut, head shape).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sfsim.errors import SfsimError
from sfsim.schema import write_atomic
from trainer.heads import ClassificationHead
from trainer.lora import add_lora, load_lora_state_dict, lora_state_dict

_PREFIX = "base_model.model."
_ADAPTER = ".default"  # peft's default adapter name, dropped from saved keys as save_pretrained does


def peft_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``encoder.layer.3...query.lora_A.default.weight`` -> ``base_model.model.encoder.layer.3...lora_A.weight``."""
    return {_PREFIX + k.replace(_ADAPTER + ".", "."): v.detach().contiguous() for k, v in sd.items()}


def module_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`peft_keys`."""
    out = {}
    for k, v in sd.items():
        k = k[len(_PREFIX):] if k.startswith(_PREFIX) else k
        for part in ("lora_A", "lora_B"):
            k = k.replace(f".{part}.", f".{part}{_ADAPTER}.")
        out[k] = v
    return out


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def save_adapter(folder: str | Path, model: torch.nn.Module, head: torch.nn.Module | None, config: dict) -> None:
    """Write the model's LoRA weights, the head and ``config`` to ``folder``, each file atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_tensors(peft_keys(lora_state_dict(model)), folder / "adapter_model.safetensors")
    if head is not None:
        _save_tensors({k: v.detach().contiguous() for k, v in head.state_dict().items()}, folder / "head.safetensors")
    write_atomic(folder / "adapter_config.json", json.dumps(config, indent=1))


def load_adapter(folder: str | Path, lm) -> tuple[torch.nn.Module | None, dict]:
    """Add LoRA to ``lm.model`` as saved in ``folder``, load its weights; return (head or None, config)."""
    folder = Path(folder)
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise SfsimError(f"{cfg_path} is missing: point --out at a folder written by sfsim run")
    cfg = json.loads(cfg_path.read_text())
    extra = cfg["sfsim"]
    if extra["family"] != lm.family:
        raise SfsimError(f"{folder}: the adapter was trained on a {extra['family']} model, not {lm.family}")
    add_lora(lm.model, blocks=cfg["layers_to_transform"], targets=cfg["target_modules"], rank=cfg["r"],
             alpha=cfg["lora_alpha"], dropout=cfg["lora_dropout"])
    load_lora_state_dict(lm.model, module_keys(load_file(str(folder / "adapter_model.safetensors"))))
    head = None
    if extra["num_labels"] is not None:
        head = ClassificationHead(lm.hidden, extra["num_labels"], extra["pooling"])
        head.load_state_dict(load_file(str(folder / "head.safetensors")))
    return head, cfg
