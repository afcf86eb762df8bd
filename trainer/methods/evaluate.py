"""Scoring a (split) model: classification accuracy, F1 and macro-F1 (and the majority-class baseline's),
and GSM8K exact match by greedy decoding."""

from __future__ import annotations

import numpy as np
import torch

from trainer.data import gsm8k_final_number
from trainer.runtime import device_kwargs, trim


@torch.no_grad()
def predict(device, server, data: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Argmax class of every row (``server(device(ids, mask), mask)`` gives (B, C) logits): (N,) int64."""
    out = []
    for s in range(0, data["input_ids"].shape[0], batch_size):
        b = trim({k: v[s:s + batch_size] for k, v in data.items()})
        h = device(b["input_ids"], b["attention_mask"], **device_kwargs(b))  # (B, T, d)
        out.append(server(h, b["attention_mask"]).argmax(-1))  # (B,)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(device, server, data: dict[str, torch.Tensor], batch_size: int = 64) -> float:
    """Share of rows whose argmax logit equals the label."""
    preds = predict(device, server, data, batch_size)
    return int((preds == data["labels"]).sum()) / max(len(preds), 1)


def classification_scores(preds, labels, num_labels: int) -> dict:
    """Accuracy, macro-F1 over all ``num_labels`` classes and, for two classes, F1 of class 1.

    A class's F1 is 2·TP / (2·TP + FP + FN), and 0 when the class is never predicted nor present
    (so a model that never answers a class scores 0 on it, as in scikit-learn's ``zero_division=0``).
    Macro-F1 is the plain mean over classes; ``f1`` (binary tasks: MRPC's "paraphrase", SST-2's
    "positive") is ``None`` for more classes.

    Example:
        >>> classification_scores([1, 1, 1, 1], [1, 1, 1, 0], 2)
        {'accuracy': 0.75, 'macro_f1': 0.428571, 'f1': 0.857143, 'per_class_f1': [0.0, 0.857143]}
    """
    p = np.asarray(preds, dtype=np.int64).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    per = []
    for c in range(num_labels):
        tp = int(np.sum((p == c) & (y == c)))
        wrong = int(np.sum((p == c) != (y == c)))  # FP + FN
        per.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    r = lambda v: round(float(v), 6)  # noqa: E731
    return {"accuracy": r(np.mean(p == y)) if len(y) else 0.0, "macro_f1": r(np.mean(per)),
            "f1": r(per[1]) if num_labels == 2 else None, "per_class_f1": [r(v) for v in per]}


def majority_baseline(labels, num_labels: int) -> dict:
    """Scores of always answering the most frequent class of ``labels`` (ties: the lower id).

    Example:
        >>> majority_baseline([1, 1, 0], 2)["class"], majority_baseline([1, 1, 0], 2)["accuracy"]
        (1, 0.666667)
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    top = int(np.argmax(np.bincount(y, minlength=num_labels))) if len(y) else 0
    return {"class": top, **classification_scores(np.full(len(y), top), y, num_labels)}


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
