"""Accuracy cost of each activation codec: SplitFrozen, MiniLM-L6 on SST-2 or MNLI, iid and label-skew:1.

Every run goes through ``trainer.run.runner.run`` (the code of ``sfsim run --launch inprocess``) with the
claims report's MiniLM settings (bench/sst2_minilm_4dev.yaml: 4 devices, cut 2, micro-batch 16,
1 epoch, max length 64) and ``--wire-dtype`` the codec; only the codec changes between the runs of a
seed. Results go to ``bench/results/codecs/<codec>-<partition>-s<seed>/metrics.json`` (a run that
exists is not run again) and the table to ``bench/results/codecs/table.md`` (docs/codecs.md quotes it);
``--task mnli`` (MNLI, the balanced 9k subset in ../shared/data) puts both under ``bench/results/codecs/mnli/``.

Usage (not CI; needs ../shared/data and the MiniLM-L6 weights; about a minute per run on one thread)::

    PYTHONPATH=$PWD .venv/bin/python bench/experiment_codecs.py [--seeds 0,1] [--codecs fp32,fp16,bf16,int8,int4]
        [--partitions iid,label-skew:1] [--train-samples 1000] [--task sst2|mnli] [--table-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sfsim.cost.wire import CODECS  # noqa: E402
from sfsim.scenario.schema import write_atomic  # noqa: E402
from trainer.run.runner import RunConfig, run  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "codecs"
SCENARIO = HERE / "sst2_minilm_4dev.yaml"


TASKS = ("sst2", "mnli")


def _dir(task: str) -> Path:
    """Where a task's runs and table go (SST-2's at the top, as before MNLI was added)."""
    return OUT if task == "sst2" else OUT / task


def run_one(codec: str, partition: str, seed: int, train_samples: int, task: str = "sst2") -> dict:
    """One SplitFrozen run with ``codec`` on the wire (skipped when its metrics exist)."""
    out = _dir(task) / f"{codec}-{partition.replace(':', '')}-s{seed}"
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    cfg = RunConfig(devices=str(SCENARIO), model="minilm-l6", task=task, method="splitfrozen", partition=partition,
                    out=str(out), split=2, epochs=1, train_samples=train_samples, max_len=64, seed=seed,
                    launch="inprocess", progress=False, count_flops=False, wire_dtype=codec)
    t0 = time.perf_counter()
    m = run(cfg)
    print(f"{task} {codec} {partition} seed {seed}: accuracy {m['eval_accuracy']:.4f}, uplink {m['uplink_bytes']} B, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return m


def table(codecs: list[str], partitions: list[str], seeds: list[int], task: str = "sst2") -> str:
    """Markdown: accuracy per codec and partition (mean over seeds, paired change against fp32), bytes, link time."""
    rows = ["| codec | partition | seeds | accuracy % (per seed) | change vs fp32, points (mean, min..max) | "
            "uplink MB | x less than fp32 | uplink busy s (4 links at 80 Mbps, summed) | codec encode + decode s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for part in partitions:
        runs = {(c, s): _load(c, part, s, task) for c in {"fp32", *codecs} for s in seeds}  # fp32: the reference
        for c in codecs:
            have = [s for s in seeds if runs[(c, s)] is not None and runs[("fp32", s)] is not None]
            if not have:
                continue
            acc = [100 * runs[(c, s)]["eval_accuracy"] for s in have]
            delta = [a - 100 * runs[("fp32", s)]["eval_accuracy"] for a, s in zip(acc, have, strict=True)]
            up = statistics.mean(runs[(c, s)]["uplink_bytes"] for s in have)
            up32 = statistics.mean(runs[("fp32", s)]["uplink_bytes"] for s in have)
            link = statistics.mean(sum(runs[(c, s)]["uplink_time_modelled_s"].values()) for s in have)
            codec_s = statistics.mean(sum(runs[(c, s)]["phase_s"].get(k, 0.0) for k in ("codec_encode", "codec_decode"))
                                      for s in have)
            rows.append(f"| {c} | {part} | {','.join(map(str, have))} | {statistics.mean(acc):.2f} "
                        f"({', '.join(f'{a:.2f}' for a in acc)}) | {statistics.mean(delta):+.2f} "
                        f"({min(delta):+.2f}..{max(delta):+.2f}) | {up / 1e6:.2f} | {up32 / up:.2f} | {link:.2f} | "
                        f"{codec_s:.2f} |")
    return "\n".join(rows) + "\n"


def _load(codec: str, partition: str, seed: int, task: str = "sst2") -> dict | None:
    path = _dir(task) / f"{codec}-{partition.replace(':', '')}-s{seed}" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    """Run the grid (what is missing of it), then write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--partitions", default="iid,label-skew:1")
    ap.add_argument("--train-samples", type=int, default=1000)
    ap.add_argument("--task", default="sst2", choices=TASKS)
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    codecs, parts = a.codecs.split(","), a.partitions.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    if not a.table_only:
        for seed in seeds:
            for part in parts:
                for c in codecs:
                    run_one(c, part, seed, a.train_samples, a.task)
    out = _dir(a.task)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "table.md", table(codecs, parts, seeds, a.task))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
