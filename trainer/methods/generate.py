"""Greedy decoding through a split model with a KV cache, and GSM8K exact match on it.

Each step runs only the new token through the device and server parts: the keys and values of the
prompt and of the tokens generated so far stay in one ``transformers.DynamicCache`` that both parts
append to (blocks keep their model index, so the device's and the server's layers never collide).
Without it every step re-ran the whole prefix: with GSM8K prompts of about 100 tokens and 128 new
tokens, about 60x more token-forwards through the 30 blocks of SmolLM2. The LM head runs on the
last position only (SmolLM2's vocabulary is 49,152 wide: the prompt's other logits are not needed).

Positions are 0..T-1 over the (left-padded) rows, then T, T+1, ... for new tokens: the same positions
as a forward pass over the whole sequence, so cached and uncached decoding give the same tokens (up to
float rounding in the attention sums).
"""

from __future__ import annotations

import json

import torch

from trainer.data.tasks import gsm8k_final_number
from trainer.transport.runtime import trim


def _logits(server, hidden: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
    """Next-token logits of the last position: server blocks, final norm, LM head on (B, 1, d) -> (B, V)."""
    h = server.hidden_states(hidden, mask, cache)  # (B, T, d)
    return server.lm_head(h[:, -1:])[:, -1]  # (B, V)


@torch.no_grad()
def greedy_generate(device, server, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    max_new_tokens: int, eos_id: int | None, use_cache: bool = True) -> list[list[int]]:
    """Greedy decoding through the split model (``server(device(ids, mask), mask)`` gives (B, T, V)).

    Args:
        input_ids, attention_mask: left-padded prompts (B, T).
        max_new_tokens: tokens to generate at most.
        eos_id: stop a row once it emits this id.
        use_cache: keep a KV cache (default); False re-runs the whole prefix at every step (the reference).

    Returns:
        The generated token ids of each row (without the prompt, without EOS).
    """
    from transformers import DynamicCache

    ids, mask = input_ids, attention_mask
    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    cache = DynamicCache(config=server.body.config) if use_cache else None
    step_ids = ids  # what goes through the model this step: the prompt, then one token (B, 1)
    for _ in range(max_new_tokens):
        nxt = _logits(server, device(step_ids, mask, cache=cache), mask, cache).argmax(-1)  # (B,)
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
        step_ids = nxt[:, None] if use_cache else ids
    return out


def exact_match(device, server, prompts: dict[str, torch.Tensor], finals: list[str | None], tokenizer,
                max_new_tokens: int = 128, batch_size: int = 8, record: list | None = None) -> float:
    """GSM8K: share of prompts whose generated final number equals the reference final number.

    Prompts are decoded in batches of ``batch_size`` in order of length (so a batch pads little), each
    batch with its all-padding columns dropped. ``record``, when given, receives one dict per prompt
    in row order (see :func:`generation_row`): what was generated and how it was scored.
    """
    rows_out: dict[int, dict] = {}
    n, correct = prompts["input_ids"].shape[0], 0
    lengths = prompts["attention_mask"].sum(1)  # (N,)
    order = sorted(range(n), key=lambda i: (int(lengths[i]), i))
    for s in range(0, n, batch_size):
        rows = order[s:s + batch_size]
        b = trim({k: v[rows] for k, v in prompts.items()})
        gen = greedy_generate(device, server, b["input_ids"], b["attention_mask"], max_new_tokens,
                              tokenizer.eos_token_id)
        for i, toks in zip(rows, gen, strict=True):
            text = tokenizer.decode(toks, skip_special_tokens=True)
            pred = gsm8k_final_number(text)
            correct += int(pred is not None and pred == finals[i])
            rows_out[i] = generation_row(i, text, pred, finals[i], len(toks), max_new_tokens)
    if record is not None:
        record.extend(rows_out[i] for i in range(n))
    return correct / max(n, 1)


def generation_row(row: int, text: str, predicted: str | None, reference: str | None, n_tokens: int,
                   max_new_tokens: int) -> dict:
    """One scored generation: the dev row, the text, the final numbers, and why it may have failed.

    ``marked``: the text holds GSM8K's ``#### N`` answer mark (else the last number was taken);
    ``hit_limit``: decoding stopped at ``max_new_tokens`` rather than at EOS (the answer may be cut off).

    Example:
        >>> generation_row(3, "6 * 7 = 42\\n#### 42", "42", "42", 9, 160)["correct"]
        True
    """
    return {"row": row, "correct": predicted is not None and predicted == reference, "predicted": predicted,
            "reference": reference, "marked": "####" in text, "hit_limit": n_tokens >= max_new_tokens,
            "tokens": n_tokens, "output": text}


def generation_shares(rows: list[dict]) -> dict[str, float]:
    """Shares of scored generations that hold the ``#### N`` mark and that stopped at the token limit.

    Example:
        >>> generation_shares([{"marked": True, "hit_limit": False}, {"marked": False, "hit_limit": True}])
        {'marked': 0.5, 'hit_limit': 0.5}
    """
    n = max(len(rows), 1)
    return {"marked": round(sum(r["marked"] for r in rows) / n, 6),
            "hit_limit": round(sum(r["hit_limit"] for r in rows) / n, 6)}


def write_generations(path, rows: list[dict]) -> None:
    """``generations.jsonl``: one scored generation per line, written atomically."""
    from sfsim.scenario.schema import write_atomic

    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
