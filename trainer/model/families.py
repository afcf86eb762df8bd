"""Model families the trainer splits: where each keeps its blocks and what every block is handed.

Three layouts: GPT-2 (``transformer.h``), BERT (``encoder.layer``) and one adapter for the decoders
whose blocks sit at ``model.layers`` (Llama, Qwen2, Qwen3, Mistral, Gemma 3, Phi-3). What differs
between those decoders is handled here and nowhere else:

- rotary embeddings are computed once per micro-batch and handed to every block; Gemma 3 has two
  (``full_attention`` and ``sliding_attention`` layers have their own base frequency);
- attention masks are per layer type: causal for full-attention layers, sliding-window causal for
  sliding layers (Gemma 3 and Qwen's ``layer_types``; every layer of a Mistral or Phi-3 with a
  ``sliding_window``);
- Gemma 3 scales its embeddings by sqrt(d): the scaled embedding module is moved as it is;
- q/k norms (Qwen3, Gemma 3), tied heads and fused projections (Phi-3's ``qkv_proj`` and
  ``gate_up_proj``) live inside the blocks or the head and need nothing from the split.

A family is named after its Hugging Face ``model_type`` (``gemma3_text`` is ``gemma3``).
"""

from __future__ import annotations

import torch
from torch import nn

from sfsim.errors import SfsimError

DECODERS = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3")
"""Decoder families with blocks at ``model.layers`` (one adapter)."""
FAMILIES = ("gpt2", *DECODERS, "bert")
_OF_MODEL_TYPE = {"gemma3_text": "gemma3", **{f: f for f in FAMILIES if f != "gemma3"}}
FULL, SLIDING = "full_attention", "sliding_attention"


def family_of_type(model_type: str | None) -> str:
    """The family of a Hugging Face ``model_type``; a one-line SfsimError for one outside the adapters."""
    if model_type not in _OF_MODEL_TYPE:
        raise SfsimError(f"model type {model_type!r} is not supported: the trainer splits "
                         f"{', '.join(sorted(_OF_MODEL_TYPE))} models")
    return _OF_MODEL_TYPE[model_type]


def family_of(model: nn.Module) -> str:
    """The family of a loaded Hugging Face model (see :data:`FAMILIES`), else a one-line SfsimError."""
    cfg = getattr(model, "config", None)
    family = family_of_type(getattr(cfg, "model_type", None))
    if family == "gemma3" and getattr(cfg, "use_bidirectional_attention", False):
        raise SfsimError("a Gemma 3 with use_bidirectional_attention (an embedding model) is not supported: "
                         "use a causal Gemma 3 checkpoint")
    return family


def is_decoder(family: str) -> bool:
    """True for causal decoders (GPT-2 and the ``model.layers`` families), False for BERT."""
    return family != "bert"


def layers(model: nn.Module, family: str) -> nn.ModuleList:
    """The model's transformer blocks in order."""
    if family == "gpt2":
        return model.transformer.h
    if family in DECODERS:
        return model.model.layers
    return model.encoder.layer


def pieces(model: nn.Module, family: str):
    """(embedding modules, final norm, LM head, rotary embedding) of a supported model."""
    if family == "gpt2":
        t = model.transformer
        return nn.ModuleDict({"wte": t.wte, "wpe": t.wpe, "drop": t.drop}), t.ln_f, model.lm_head, None
    if family in DECODERS:
        m = model.model  # Gemma 3's embed_tokens multiplies by sqrt(d) itself
        return nn.ModuleDict({"embed_tokens": m.embed_tokens}), m.norm, model.lm_head, m.rotary_emb
    return nn.ModuleDict({"bert": model.embeddings}), None, None, None


def embed(family: str, e: nn.ModuleDict, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
          past: int) -> torch.Tensor:
    """Token (+ position, + token type) embeddings: (B, T) ids at positions past.. -> (B, T, d)."""
    if family == "gpt2":
        pos = torch.arange(past, past + input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, T)
        return e["drop"](e["wte"](input_ids) + e["wpe"](pos))
    if family in DECODERS:
        return e["embed_tokens"](input_ids)
    return e["bert"](input_ids=input_ids, token_type_ids=token_type_ids)


def layer_type(config, family: str, index: int) -> str:
    """``full_attention`` or ``sliding_attention`` for model block ``index``, as the unsplit model decides."""
    types = getattr(config, "layer_types", None)
    if types and family in ("qwen2", "qwen3", "gemma3"):
        return types[index]
    if family in ("mistral", "phi3") and getattr(config, "sliding_window", None) is not None:
        return SLIDING  # these models pick the sliding mask for every layer when a window is set
    return FULL


def decoder_contexts(config, family: str, rotary: nn.Module, indices: list[int], hidden: torch.Tensor,
                     attention_mask: torch.Tensor | None, cache, pos: torch.Tensor) -> dict[str, dict]:
    """Per layer type present in ``indices``: the keyword arguments its blocks need (mask, rotary, cache).

    With a KV ``cache`` the mask of each type is sized from the first block of that type held here,
    which is the cache layer the unsplit model would ask.
    """
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    first: dict[str, int] = {}
    for i in indices:
        first.setdefault(layer_type(config, family, i), i)
    shared_rope = None if family == "gemma3" else rotary(hidden, position_ids=pos)  # (cos, sin), each (1, T, d_head)
    out = {}
    for kind, idx in first.items():
        make = create_sliding_window_causal_mask if kind == SLIDING else create_causal_mask
        mask = make(config=config, inputs_embeds=hidden, attention_mask=attention_mask, cache=cache,
                    position_ids=pos, **({} if cache is None else {"layer_idx": idx}))
        rope = rotary(hidden, pos, kind) if family == "gemma3" else shared_rope
        ctx = {"attention_mask": mask, "position_embeddings": rope, "position_ids": pos}
        if cache is not None:
            ctx.update(cache=cache, use_cache=True)
        out[kind] = ctx
    return out
