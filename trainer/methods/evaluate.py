"""Scoring a (split) model: classification accuracy, F1 and macro-F1 (and the majority-class baseline's),
and GSM8K exact match by greedy decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.data import tasks as tdata

# GSM8K decoding (KV cache, length-sorted batches) lives in trainer.methods.generate
from trainer.methods.generate import (  # noqa: F401 (re-exported)
    exact_match,
    generation_shares,
    greedy_generate,
    write_generations,
)
from trainer.model.split import split_model
from trainer.transport.runtime import device_kwargs, trim


@torch.no_grad()
def predict(device, server, data: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Argmax class of every row (``server(device(ids, mask), mask)`` gives (B, C) logits): (N,) int64."""
    out = []
    for s in range(0, data["input_ids"].shape[0], batch_size):
        b = trim({k: v[s:s + batch_size] for k, v in data.items()})
        h = device(b["input_ids"], b["attention_mask"], **device_kwargs(b))  # (B, T, d)
        out.append(server(h, b["attention_mask"]).argmax(-1))  # (B,)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def answer_loss(device, server, data: dict[str, torch.Tensor], batch_size: int = 16) -> float | None:
    """Teacher-forced cross-entropy per answer token, prompt and padding ignored (labels ``-100``).

    ``data`` is :func:`trainer.data.tasks.encode` of a generation task: input_ids, attention_mask (N, T) and
    labels (N, T) with the answer's ids; the mean is over every answer token of every row (not per row).
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, data["input_ids"].shape[0], batch_size):
            b = trim({k: v[s:s + batch_size] for k, v in data.items()})
            h = device(b["input_ids"], b["attention_mask"], **device_kwargs(b))  # (B, T, d)
            logits = server(h, b["attention_mask"])  # (B, T, V)
            target = b["labels"][:, 1:]  # (B, T-1): logits at t predict token t+1
            total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                             target.reshape(-1), ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return round(total / count, 6) if count else None  # every answer cut off by max_len: no figure


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


def score(method, lm, head, dev, cfg, n_eval: int, generations: Path | None = None) -> dict:
    """Scores of the global model on the first ``n_eval`` dev rows: ``accuracy`` (GSM8K: exact match) and,
    for classification, ``macro_f1``, ``f1`` (class 1 of two) and ``per_class_f1``. GSM8K's scored
    generations go to ``generations`` (JSON lines) when given. ``method`` gives the eval cut
    (``eval_cut()``); ``cfg`` the run's ``max_len`` and ``gen_tokens``; ``dev`` is the task's dev data."""
    lm.model.eval()
    if head is not None:
        head.eval()
    device, server = split_model(lm.model, method.eval_cut(), head=head, frozen_device=False)
    idx = list(range(n_eval))
    if dev.is_generation:
        prompts, rows = tdata.encode_prompts(dev, lm.tokenizer, cfg.max_len, indices=idx), []
        em = exact_match(device, server, prompts, [dev.finals[i] for i in idx], lm.tokenizer, cfg.gen_tokens,
                         record=rows)
        if generations is not None:
            write_generations(generations, rows)
        loss = answer_loss(device, server, tdata.encode(dev, lm.tokenizer, cfg.max_len, indices=idx))
        return {"accuracy": em, "answer_loss": loss, **generation_shares(rows)}
    preds = predict(device, server, tdata.encode(dev, lm.tokenizer, cfg.max_len, indices=idx))
    return classification_scores(preds.numpy(), dev.labels[:n_eval], dev.num_labels)
