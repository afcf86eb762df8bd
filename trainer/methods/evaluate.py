"""Scoring a (split) model: classification accuracy, and GSM8K exact match by greedy decoding."""

from __future__ import annotations

import torch

from trainer.data import gsm8k_final_number
from trainer.runtime import device_kwargs, trim


@torch.no_grad()
def accuracy(device, server, data: dict[str, torch.Tensor], batch_size: int = 64) -> float:
    """Share of rows whose argmax logit equals the label (``server(device(ids, mask), mask)`` gives (B, C))."""
    n, correct = data["input_ids"].shape[0], 0
    for s in range(0, n, batch_size):
        b = trim({k: v[s:s + batch_size] for k, v in data.items()})
        h = device(b["input_ids"], b["attention_mask"], **device_kwargs(b))  # (B, T, d)
        logits = server(h, b["attention_mask"])  # (B, C)
        correct += int((logits.argmax(-1) == b["labels"]).sum())
    return correct / max(n, 1)


@torch.no_grad()
def greedy_generate(device, server, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
    """Greedy decoding through the split model (no KV cache: every step re-runs the whole prefix).

    Args:
        input_ids, attention_mask: left-padded prompts (B, T).
        max_new_tokens: tokens to generate at most.
        eos_id: stop a row once it emits this id.

    Returns:
        The generated token ids of each row (without the prompt, without EOS).
    """
    ids, mask = input_ids, attention_mask
    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = server(device(ids, mask), mask)  # (B, T, V)
        nxt = logits[:, -1].argmax(-1)  # (B,)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                if eos_id is not None and t == eos_id:
                    done[i] = True
                else:
                    out[i].append(t)
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], 1)  # (B, T+1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return out


def exact_match(device, server, prompts: dict[str, torch.Tensor], finals: list[str | None], tokenizer,
                max_new_tokens: int = 128, batch_size: int = 8) -> float:
    """GSM8K: share of prompts whose generated final number equals the reference final number."""
    n, correct = prompts["input_ids"].shape[0], 0
    for s in range(0, n, batch_size):
        gen = greedy_generate(device, server, prompts["input_ids"][s:s + batch_size],
                              prompts["attention_mask"][s:s + batch_size], max_new_tokens, tokenizer.eos_token_id)
        for i, toks in enumerate(gen):
            pred = gsm8k_final_number(tokenizer.decode(toks, skip_special_tokens=True))
            correct += int(pred is not None and pred == finals[s + i])
    return correct / max(n, 1)
