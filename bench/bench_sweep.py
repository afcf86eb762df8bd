"""Benchmark ``sfsim sweep``: a 200-point grid on a 1,000-device fleet, one process against all cores.

The fleet is ``bench/bench_planner.py``'s (10 device kinds, SmolLM2-135M, 4 servers, two kinds
pinned) with a buffer of 16 credits (128 would not fit the 24 GiB edge servers' memory at cut 2); the grid is every device's uplink bandwidth (20 values, 10 Mbps..1 Gbps, log) x the
first edge server's FLOP/s (10 values, 4..40 TFLOPS), SplitFrozen at cut 2, unpinned devices
least-loaded. Prints points per second with 1 process, with all cores (local processes) and on a
local Dask and a local Ray cluster of as many workers (each where installed: the ``dask`` and
``ray`` extras), each run's ratio to one process, and checks that every run wrote the same rows.

Run: ``.venv/bin/python bench/bench_sweep.py [--devices 1000] [--jobs N] [--clusters dask,ray]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_planner import PINNED, SERVERS, TYPES  # noqa: E402

from sfsim.sweeps.sweep import Settings, parse_vary, read_rows, run_sweep  # noqa: E402


def fleet_yaml(n_devices: int) -> dict:
    """The benchmark scenario as YAML data: ``n_devices`` spread evenly over the 10 kinds."""
    per = n_devices // len(TYPES)
    devices = []
    for name, flops, mem, bw, lat, samples in TYPES:
        d = {"name": name, "count": per, "flops": flops, "memory": mem, "samples": samples,
             "uplink": {"bandwidth": bw, "latency": lat}, "downlink": {"bandwidth": bw, "latency": lat}}
        if name in PINNED:
            d["server"] = PINNED[name]
        devices.append(d)
    return {"model": {"name": "smollm2-135m", "seq_len": 128, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "accumulate": 8, "buffer": 16},
            "servers": SERVERS, "devices": devices}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for the parallel run")
    ap.add_argument("--clusters", default="dask,ray", help="local clusters to run on too (comma list; '' for none)")
    args = ap.parse_args()
    runs_on = [("1 process", "process", 1), (f"{args.jobs} processes", "process", args.jobs)]
    for name in filter(None, args.clusters.split(",")):
        if importlib.util.find_spec({"dask": "distributed", "ray": "ray"}[name]) is None:
            print(f"({name} is not installed: pip install 'sfsim[{name}]' to time it)")
        else:
            runs_on.append((f"local {name} x{args.jobs}", name, args.jobs))
    varies = [parse_vary("devices[*].uplink.bandwidth=10Mbps..1Gbps:log:20"),
              parse_vary("servers[edge-a].flops=4TFLOPS..40TFLOPS:lin:10")]
    settings = Settings(schedules=("splitfrozen",), split=2)
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "fleet.yaml"
        scenario.write_text(yaml.safe_dump(fleet_yaml(args.devices)))
        runs = []
        for i, (label, executor, jobs) in enumerate(runs_on):
            out = Path(tmp) / f"run{i}.csv"
            before = os.getloadavg()[0]  # a shared machine: other users' load skews each run differently
            res = run_sweep(scenario, varies, out, settings, jobs=jobs, progress=False, executor=executor)
            assert res.errors == 0, res.first_error
            runs.append((label, res, sorted(read_rows(out), key=lambda r: int(r["point"])), before))
    one, rows1 = runs[0][1], runs[0][2]
    same = all(rows == rows1 for _, _, rows, _ in runs)
    ms = [float(r["makespan_s"]) for r in rows1]
    print(f"sweep: {one.points} points, {args.devices} devices, SplitFrozen cut 2 (cpu_count {os.cpu_count()})")
    for label, res, _, before in runs:
        print(f"  {label + ':':22s} {res.seconds:6.1f} s  {res.points / res.seconds:6.2f} points/s  "
              f"(x{one.seconds / res.seconds:.2f}; 1-min load before it {before:.2f})")
    print(f"  same rows in every run: {same}; makespan {min(ms):.1f}..{max(ms):.1f} s over the grid")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
