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
from sfsim.scenario.schema import write_atomic
from trainer.model.heads import ClassificationHead
from trainer.model.lora import add_lora, load_lora_state_dict, lora_state_dict

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


# -- resumable training checkpoints -------------------------------------------------------------------
CHECKPOINT = "checkpoint.safetensors"

NEXT = "checkpoint.next.safetensors"
"""Several servers: a server's checkpoint written but not yet committed (``trainer.run.resume.agree_across_servers``)."""


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], optimizers: dict, progress: dict,
                    name: str = CHECKPOINT) -> Path:
    """Write one resumable checkpoint file atomically: weights, optimizer state, RNG and progress.

    Args:
        folder: the run's output folder (the file is ``folder/checkpoint.safetensors``).
        tensors: trainable weights (``full_state``) and anything else to restore by name.
        optimizers: name -> ``torch.optim.Optimizer``; each parameter's state is saved as
            ``opt.<name>.<index>.<key>`` (index in the optimizer's parameter order).
        progress: JSON-able dict (epoch, cursors, histories); stored as the file's metadata.
        name: the file's name in ``folder``.

    Returns:
        The checkpoint's path.
    """
    out = {f"w.{k}": v.detach().contiguous() for k, v in tensors.items()}
    out.update(_optimizer_tensors(optimizers))
    out["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # a CUDA server's LoRA dropout draws from it
        out["rng.cuda"] = torch.stack(torch.cuda.get_rng_state_all())  # (GPUs, state bytes)
    path = Path(folder) / name
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(out, str(tmp), metadata={"progress": json.dumps(progress)})
    os.replace(tmp, path)
    return path


def load_checkpoint(folder: str | Path, optimizers: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Read :func:`save_checkpoint`'s file: restore optimizers and the RNG; return (weights, progress)."""
    from safetensors import safe_open

    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise SfsimError(f"{path} is missing: nothing to resume (runs write it with --checkpoint-every N "
                         "and at the end of every epoch)")
    try:
        with safe_open(str(path), framework="pt") as f:
            progress = json.loads(f.metadata()["progress"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as err:  # a torn or foreign file: one line, not a traceback
        raise SfsimError(f"{path}: not a readable sfsim checkpoint ({err})") from None
    _load_optimizers(optimizers, tensors)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.device_count() == len(tensors["rng.cuda"]):  # same GPUs: same draws
        torch.cuda.set_rng_state_all(list(tensors["rng.cuda"]))
    return {k[2:]: v for k, v in tensors.items() if k.startswith("w.")}, progress


def _optimizer_tensors(optimizers: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, opt in optimizers.items():
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            for k, v in opt.state.get(p, {}).items():
                t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
                out[f"opt.{name}.{i}.{k}"] = t.detach().contiguous()
    return out


def _load_optimizers(optimizers: dict, tensors: dict[str, torch.Tensor]) -> None:
    for name, opt in optimizers.items():
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            # saved from any device, restored to the parameter's (AdamW keeps its step count on the CPU)
            st = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.{i}.")}
            st = {k: v if k == "step" else v.to(p.device) for k, v in st.items()}
            if st:
                opt.state[p] = st


def save_device_state(out: str | Path, device: str, tensors: dict[str, torch.Tensor], optimizers: dict,
                      ckpt: int) -> None:
    """A device's training state for checkpoint ``ckpt``: ``out/state/<device>.safetensors``, atomically."""
    folder = Path(out) / "state"
    folder.mkdir(parents=True, exist_ok=True)
    data = {f"w.{k}": v.detach().contiguous().clone() for k, v in tensors.items()}
    data.update(_optimizer_tensors(optimizers))
    data["rng.torch"] = torch.get_rng_state()
    path = folder / f"{device}.safetensors"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(data, str(tmp), metadata={"checkpoint": str(ckpt)})
    if path.is_file():  # the previous generation stays until the server has written its checkpoint past it
        os.replace(path, folder / f"{device}.prev.safetensors")
    os.replace(tmp, path)


def wanted_device_checkpoint(folder: str | Path, device: str | None = None) -> int | None:
    """The device checkpoint id that the server's checkpoint in ``folder`` was written with (None: no readable
    checkpoint there, as on a device's own host). With several servers (``folder/servers/<name>`` holds each other
    server's), the id of the server that asked ``device`` to save (its checkpoint lists it): each server counts its
    own steps, so a device that handed over must take the generation of the server holding it then."""

    found = None
    for path in cut_files(folder):
        progress = read_progress(path)
        if progress is None:  # absent, torn or foreign: the device loads its latest state and the server checks it
            continue
        want = progress.get("device_checkpoint")
        if not isinstance(want, int):
            continue
        if device is not None and device in (progress.get("devices") or ()):
            return want
        if found is None and path.parent == Path(folder):
            found = want
    return found


def cut_files(folder: str | Path) -> list[Path]:
    """The checkpoint files of the run in ``folder`` that are one cut of it: server 0's committed checkpoint and each
    other server's (``folder/servers/<name>``) of the same epoch, committed or only written (:data:`NEXT`).

    Server 0's commit is the run's (``trainer.run.resume._checkpoint``): every server has written its checkpoint before
    it and the others commit only after it, so a run stopped between the two has server 0's epoch written at every
    server, and ``agree_across_servers`` commits it there on resume; read before that (server 0 takes the run's clock
    and devices their generation at the rendezvous), a server's committed checkpoint is the epoch before."""
    main = Path(folder) / CHECKPOINT
    epoch = (read_progress(main) or {}).get("epoch")
    found = [main]
    servers = Path(folder) / "servers"
    for sub in sorted(p for p in servers.iterdir() if p.is_dir()) if servers.is_dir() else ():
        path = sub / CHECKPOINT
        if epoch is not None and (read_progress(path) or {}).get("epoch") != epoch and \
                (read_progress(sub / NEXT) or {}).get("epoch") == epoch:
            path = sub / NEXT
        found.append(path)
    return found


def read_progress(path: Path) -> dict | None:
    """The progress record of the checkpoint file ``path`` (None: absent, torn or foreign)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["progress"])
    except Exception:  # noqa: BLE001 - a torn checkpoint is reported by the restore itself, in one line
        return None


def load_device_state(out: str | Path, device: str, optimizers: dict,
                      want: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
    """Read :func:`save_device_state`'s file: restore optimizers and the RNG; return (checkpoint id, weights).

    ``want``: the server's checkpoint id. A run killed after the devices saved checkpoint N+1 but before the
    server wrote it resumes from N, the device's previous generation (kept for that); where neither
    generation matches, the server refuses in one line (:func:`trainer.run.resume.check_device_checkpoint`)."""
    from safetensors import safe_open

    folder = Path(out) / "state"
    path, prev = folder / f"{device}.safetensors", folder / f"{device}.prev.safetensors"
    if not path.is_file():
        raise SfsimError(f"{path} is missing: device {device} has no saved state to resume from")
    if want is not None and prev.is_file():
        with safe_open(str(prev), framework="pt") as f:
            if int(f.metadata()["checkpoint"]) == want:
                path = prev
    with safe_open(str(path), framework="pt") as f:
        ckpt = int(f.metadata()["checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    _load_optimizers(optimizers, tensors)
    torch.set_rng_state(tensors["rng.torch"])
    return ckpt, {k[2:]: v for k, v in tensors.items() if k.startswith("w.")}
