"""Split a model (GPT-2, BERT or a ``model.layers`` decoder) at a cut into a device part and a server part.

Where each family keeps its pieces and what its blocks are handed is in ``trainer.model.families``.

The two parts share modules with the original model (no copy): inject LoRA into a deep copy if the
unsplit model must stay untouched. Blocks keep their model index as their name (``blocks.7.attn.c_attn``)
so LoRA can target blocks by index (see ``trainer.model.lora``).
"""

from __future__ import annotations

import torch
from torch import nn

from sfsim.errors import SfsimError
from trainer.model.families import DECODERS, decoder_contexts, embed, family_of, layer_type, layers, pieces


def past_length(cache, layer: int | None) -> int:
    """Positions already in a KV ``cache`` for model block ``layer`` (0 without a cache or block)."""
    return 0 if cache is None or layer is None else cache.get_seq_length(layer)


class _Blocks(nn.Module):
    """Blocks of one part, named by their model index, plus what each family needs to call them."""

    def __init__(self, family: str, config, blocks: dict[int, nn.Module], rotary: nn.Module | None):
        super().__init__()
        self.family, self.config = family, config
        self.blocks = nn.ModuleDict({str(i): b for i, b in blocks.items()})
        self.rotary = rotary  # decoders' rotary embedding (buffers only); None for GPT-2 and BERT

    def context(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, cache=None) -> dict:
        """Keyword arguments of the blocks, per layer type (``full_attention``, ``sliding_attention``; BERT
        and GPT-2: ``full_attention`` only): the 4-D mask (causal, sliding-window or bidirectional) and, for
        the ``model.layers`` decoders, rotary embeddings. :meth:`kwargs` picks one block's.

        With a KV ``cache`` (decoders, generation) ``hidden`` holds only the new positions and
        ``attention_mask`` (B, past + T) covers the cached ones too.
        """
        from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

        if self.family == "bert":
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
            return {"full_attention": {"attention_mask": mask}}
        first = self.indices[0] if self.blocks else None
        past = past_length(cache, first)
        # the unsplit models use positions 0..T-1 whatever the padding; do the same so logits match
        pos = torch.arange(past, past + hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, T)
        if self.family in DECODERS:
            return decoder_contexts(self.config, self.family, self.rotary, self.indices, hidden, attention_mask,
                                    cache, pos)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=cache, position_ids=pos, **({} if cache is None else {"layer_idx": first}))
        ctx = {"attention_mask": mask}
        if cache is not None:
            ctx.update(cache=cache, use_cache=True)
        return {"full_attention": ctx}

    def kwargs(self, ctx: dict, index: int) -> dict:
        """The keyword arguments of model block ``index`` out of :meth:`context`'s."""
        return ctx[layer_type(self.config, self.family, index)]

    def run(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, cache=None) -> torch.Tensor:
        """Run the blocks in order on ``hidden`` (B, T, d) (appending their keys and values to ``cache``)."""
        if cache is not None and not self.blocks:
            return hidden
        ctx = self.context(hidden, attention_mask, cache)
        for i, block in self.blocks.items():
            hidden = block(hidden, **self.kwargs(ctx, int(i)))
        return hidden  # (B, T, d)

    @property
    def indices(self) -> list[int]:
        """Model indices of the blocks held here."""
        return [int(k) for k in self.blocks]


class DevicePart(nn.Module):
    """Embeddings + blocks 0..cut-1; maps (input_ids, attention_mask) to the cut activation (B, T, d).

    With ``frozen=True`` (default) its weights never train: requires_grad is off, it stays in eval mode,
    forwards run under ``torch.inference_mode()`` and the output is a normal tensor (cloned outside
    inference mode) that the server can use in autograd.
    """

    def __init__(self, family: str, embeddings: nn.ModuleDict, body: _Blocks, frozen: bool = True):
        super().__init__()
        self.family, self.embeddings, self.body, self.frozen = family, embeddings, body, frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    @property
    def cut(self) -> int:
        """Number of blocks on the device."""
        return len(self.body.blocks)

    def train(self, mode: bool = True) -> DevicePart:
        """Switch train/eval mode; a frozen part always stays in eval mode (no dropout)."""
        return super().train(mode and not self.frozen)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, past: int = 0) -> torch.Tensor:
        """Token (+ position, + token type) embeddings: (B, T) ids at positions past.. -> (B, T, d)."""
        return embed(self.family, self.embeddings, input_ids, token_type_ids, past)

    def _forward(self, input_ids, attention_mask, token_type_ids, cache=None):
        hidden = self.embed(input_ids, token_type_ids, past_length(cache, 0))
        return self.body.run(hidden, attention_mask, cache)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, d) activation at the cut.

        ``cache``: a KV cache (``transformers.DynamicCache``) for decoding: ``input_ids`` are then the new
        tokens only and ``attention_mask`` covers cached and new positions (see ``trainer.methods.evaluate``).
        """
        if not self.frozen:
            return self._forward(input_ids, attention_mask, token_type_ids, cache)
        super().train(False)  # even if someone called .train() on the whole model: no dropout on the device
        with torch.inference_mode():
            out = self._forward(input_ids, attention_mask, token_type_ids, cache)
        return out.clone()  # leave inference mode: a normal tensor the server may save for backward


class ServerPart(nn.Module):
    """Blocks cut..L-1 + final norm + output layer; maps (hidden, attention_mask) to the model's output.

    Output: LM logits (B, T, V) for decoders, last_hidden_state (B, T, d) for BERT, or, when a
    ``head`` is given, the head's output on the final hidden states (e.g. (B, C) for a classifier).
    """

    def __init__(self, family: str, body: _Blocks, final_norm: nn.Module | None, lm_head: nn.Module | None,
                 head: nn.Module | None = None):
        super().__init__()
        self.family, self.body = family, body
        self.final_norm = final_norm if final_norm is not None else nn.Identity()
        self.lm_head = lm_head if head is None else None  # a task head replaces the LM head
        self.head = head
        self.logit_cap = getattr(body.config, "final_logit_softcapping", None)  # Gemma: cap * tanh(z / cap)

    @property
    def first_block(self) -> int:
        """Model index of the first block run on the server."""
        return self.body.indices[0] if self.body.blocks else -1

    def hidden_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache=None) -> torch.Tensor:
        """Server blocks + final norm: (B, T, d) -> (B, T, d)."""
        return self.final_norm(self.body.run(hidden, attention_mask, cache))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """(B, T, d) activation at the cut -> the model's (or the head's) output (``cache``: as the device's)."""
        h = self.hidden_states(hidden, attention_mask, cache)
        if self.head is not None:
            return self.head(h, attention_mask)
        return self.logits(h) if self.lm_head is not None else h  # (B, T, V) or (B, T, d)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """LM head on final hidden states (B, T, d) -> (B, T, V), soft-capped where the model caps them."""
        z = self.lm_head(h)
        if self.logit_cap is None:
            return z
        return torch.tanh(z / self.logit_cap) * self.logit_cap


def split_model(model: nn.Module, cut: int, *, head: nn.Module | None = None,
                frozen_device: bool = True) -> tuple[DevicePart, ServerPart]:
    """Split ``model`` after ``cut`` blocks into (device part, server part).

    Args:
        model: a GPT2LMHeadModel, BertModel or a causal LM of a ``model.layers`` family
            (``trainer.model.families.DECODERS``: Llama, Qwen2, Qwen3, Mistral, Gemma 3, Phi-3).
        cut: blocks on the device, 0..L-1 (0 keeps only the embeddings on the device).
        head: optional task head run by the server on the final hidden states instead of the LM head.
        frozen_device: freeze the device part (inference mode, no grad); False for methods that train it.

    Returns:
        ``(device, server)`` with ``server(device(ids, mask), mask)`` equal to the unsplit model's output.

    Example:
        >>> from trainer.model.loading import tiny_model
        >>> lm = tiny_model("gpt2", n_layers=4)
        >>> dev, srv = split_model(lm.model, 1)
        >>> dev.cut, srv.first_block
        (1, 1)
    """
    family = family_of(model)
    blocks = layers(model, family)
    n = len(blocks)
    if not isinstance(cut, int) or isinstance(cut, bool) or not 0 <= cut < n:
        raise SfsimError(f"cut {cut} is beyond the model's depth: {type(model).__name__} has {n} blocks, "
                         f"use a cut in 0..{n - 1}")
    emb, norm, lm_head, rotary = pieces(model, family)
    cfg = model.config
    dev_body = _Blocks(family, cfg, {i: blocks[i] for i in range(cut)}, rotary)
    srv_body = _Blocks(family, cfg, {i: blocks[i] for i in range(cut, n)}, rotary)
    device = DevicePart(family, emb, dev_body, frozen=frozen_device)
    return device, ServerPart(family, srv_body, norm, lm_head, head)
