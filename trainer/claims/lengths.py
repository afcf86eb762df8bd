"""How many rows a maximum length truncates: the measurement behind :data:`trainer.claims.scale.TRUNCATION`.

``python -m trainer.claims.lengths MODEL TASK DATA_DIR`` prints, for the task's train and dev files,
the row counts, the longest row in tokens and the share of rows longer than each candidate length,
tokenised as the trainer does (pairs with the tokenizer's pair template, or joined by a newline for
decoders; special tokens included).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from trainer.data import tasks as tdata

LENGTHS = (64, 72, 96, 104, 128)


def token_lengths(tokenizer, data: tdata.TaskData) -> np.ndarray:
    """Tokens per row with special tokens, as :func:`trainer.data.tasks.encode` would see them untruncated."""
    texts = data.texts
    if texts and isinstance(texts[0], tuple):
        if tokenizer.sep_token is not None:
            enc = tokenizer([a for a, _ in texts], [b for _, b in texts])
        else:
            enc = tokenizer([f"{a}\n{b}" for a, b in texts])
    else:
        enc = tokenizer(list(texts))
    return np.array([len(ids) for ids in enc["input_ids"]])


def truncation(lengths: np.ndarray, limits=LENGTHS) -> dict:
    """Rows, longest row and the share of rows over each limit (rounded to 4 places).

    Example:
        >>> truncation(np.array([10, 70, 100]), (64, 96))
        {'rows': 3, 'max_tokens': 100, 'over': {64: 0.6667, 96: 0.3333}}
    """
    return {"rows": int(len(lengths)), "max_tokens": int(lengths.max()),
            "over": {m: round(float(np.mean(lengths > m)), 4) for m in limits}}


def main(argv: list[str]) -> int:
    """Print the truncation table of one model and task as JSON."""
    from trainer.model.loading import load_model

    model, task, data_dir = argv
    tok = load_model(model).tokenizer
    out = {split: truncation(token_lengths(tok, tdata.load_task(task, data_dir, split))) for split in ("train", "dev")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
