"""What an evaluation at an epoch's end costs beyond its forward passes (``sfsim profile --role server``'s ``eval``).

``sfsim run``'s server evaluates after every epoch (:func:`trainer.methods.evaluate.score`): it splits the model at
its eval cut, tokenises the dev rows (:func:`trainer.data.tasks.encode`) and runs them forward
(:func:`~trainer.methods.evaluate.predict`). The forward is priced by the profile's grid
(:func:`sfsim.cost.epochend.eval_seconds`); this module times the rest, through the same functions:

* ``split``: splitting the model (seconds per evaluation);
* ``tokenise_row``: tokenising one dev row (seconds; a row of :data:`ROW_WORDS` words);
* ``first``: what the process's first evaluation takes beyond a later one (the tokenizer's and the eval
  forward's first calls), measured first, after the grid has warmed the blocks as training warms a server's.
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np

from trainer.data import tasks as tdata
from trainer.methods.evaluate import predict
from trainer.model.split import split_model

ROWS = 64  # dev rows per timed evaluation (trainer.methods.evaluate.predict's batch)
ROW_WORDS = 20  # words per synthetic row: an SST-2 sentence's length
TEXT = " ".join(["a", "gripping", "and", "quietly", "funny", "film"] * 4)


def _rows(n: int) -> tdata.TaskData:
    words = TEXT.split()[:ROW_WORDS]
    return tdata.TaskData(task="sst2", split="dev", texts=[" ".join(words[i % 3:]) for i in range(n)],
                          labels=np.zeros(n, dtype=np.int64), num_labels=2)


def eval_costs(lm, head, seq_len: int, repeats: int = 5) -> dict | None:
    """``{"split", "tokenise_row", "first"}`` seconds of an evaluation of :data:`ROWS` synthetic rows on ``lm``
    (a classification model with ``head``), as the module docstring says; None for a causal LM (its
    evaluation generates: not priced)."""
    if head is None:
        return None
    data = _rows(ROWS)
    head = copy.deepcopy(head).eval()

    def once() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        device, server = split_model(lm.model, 1, head=head, frozen_device=False)
        t1 = time.perf_counter()
        enc = tdata.encode(data, lm.tokenizer, seq_len)
        t2 = time.perf_counter()
        predict(device, server, enc)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    cold = sum(once())
    warm = [once() for _ in range(repeats)]
    split = statistics.median(w[0] for w in warm)
    tokenise = statistics.median(w[1] for w in warm)
    return {"split": split, "tokenise_row": tokenise / ROWS,
            "first": max(0.0, cold - statistics.median(sum(w) for w in warm))}
