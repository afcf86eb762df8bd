"""Benchmark ``sfsim.plan``: 1,000 devices of 10 types, SmolLM2-135M (30 blocks), 4 servers.

Prints the planning time (target: under 2 s on the shared 2-core dev machine) and how much of it
the simulator replays take, the simulated makespan, the lower bound and gap, and two comparisons
made in the same run:

- time: the threshold search (binary search, O(log n) integer programs) against scanning every
  threshold (one integer program each), the obvious exact alternative;
- quality: the plan's simulated makespan against the best single global cut and SplitLoRA's cut 3.

Run: ``.venv/bin/python bench/bench_planner.py [--devices 1000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import sfsim  # noqa: E402
from sfsim.cost.model import CostModel  # noqa: E402
from sfsim.planner import expand  # noqa: E402
from sfsim.planner.model import build_table  # noqa: E402
from sfsim.planner.search import assign, best_cuts, candidates, fixed_cut, thresholds  # noqa: E402

# 10 device kinds: sustained FLOP/s, memory, uplink, samples (micro_batch 4 -> 10-20 micro-batches).
TYPES = [
    ("mcu-gateway", "20 GFLOPS", "1 GiB", "10 Mbps", "30 ms", 40),
    ("rpi4", "15 GFLOPS", "4 GiB", "40 Mbps", "8 ms", 48),
    ("rpi5", "40 GFLOPS", "8 GiB", "80 Mbps", "5 ms", 56),
    ("jetson-nano", "120 GFLOPS", "4 GiB", "15 Mbps", "40 ms", 48),
    ("orin-nano", "600 GFLOPS", "8 GiB", "300 Mbps", "3 ms", 80),
    ("phone-mid", "150 GFLOPS", "3 GiB", "40 Mbps", "25 ms", 40),
    ("phone-high", "300 GFLOPS", "4 GiB", "60 Mbps", "20 ms", 48),
    ("tablet", "250 GFLOPS", "6 GiB", "100 Mbps", "10 ms", 56),
    ("laptop", "200 GFLOPS", "16 GiB", "900 Mbps", "1 ms", 80),
    ("workstation", "2 TFLOPS", "32 GiB", "1 Gbps", "1 ms", 80),
]
PINNED = {"orin-nano": "edge-b", "laptop": "edge-c"}  # e.g. on-site devices wired to one site

SERVERS = [
    {"name": "edge-a", "flops": "12 TFLOPS", "memory": "24 GiB"},
    {"name": "edge-b", "flops": "12 TFLOPS", "memory": "24 GiB"},
    {"name": "edge-c", "flops": "30 TFLOPS", "memory": "48 GiB"},
    {"name": "regional", "flops": "60 TFLOPS", "memory": "80 GiB", "count": 4},
]


def fleet(n_devices: int) -> sfsim.Scenario:
    """The benchmark scenario: ``n_devices`` spread evenly over the 10 kinds; two kinds pinned."""
    per = n_devices // len(TYPES)
    devices = []
    for name, flops, mem, bw, lat, samples in TYPES:
        d = {"name": name, "count": per, "flops": flops, "memory": mem, "samples": samples,
             "uplink": {"bandwidth": bw, "latency": lat}, "downlink": {"bandwidth": bw, "latency": lat}}
        if name in PINNED:
            d["server"] = PINNED[name]
        devices.append(d)
    return sfsim.scenario_from_dict({
        "model": {"name": "smollm2-135m", "seq_len": 128, "task": "classification", "num_labels": 2},
        "training": {"micro_batch": 4, "accumulate": 8, "buffer": 128},
        "servers": SERVERS, "devices": devices})


def scan_all_thresholds(table) -> float:
    """The exact alternative: one integer program per distinct threshold; returns its best value."""
    best = np.inf
    for T in thresholds(table):
        r = assign(table, best_cuts(table, T))
        if r is not None:
            best = min(best, max(T, r[0]))
    return best


def _uniform_cuts(sc, res) -> list[int]:
    """Cuts every device can hold (the planner's table decides memory and server rules)."""
    table = build_table(CostModel(sc), sc, res.lora_start, 1, "splitfrozen")
    return [int(k) for ki, k in enumerate(table.cuts) if table.allowed[:, ki, :].any(axis=1).all()]


def _assignment_for(sc, res, k) -> dict[str, str]:
    """The planner's assignment rule (integer program) for a single global cut ``k``."""
    table = build_table(CostModel(sc), sc, res.lora_start, 1, "splitfrozen")
    groups = fixed_cut(table, k)
    return expand(table, groups)[1]


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip replaying every single global cut")
    args = ap.parse_args()
    sc = fleet(args.devices)
    times, strict, replays = [], [], []
    for _ in range(args.repeat):  # the default (time ties searched) and the fastest plan alone, interleaved
        t0 = time.perf_counter()
        res = sfsim.plan(sc)
        times.append(time.perf_counter() - t0)
        replays.append(res.replay_s)
        t0 = time.perf_counter()
        sfsim.plan(sc, tie_tolerance=0)
        strict.append(time.perf_counter() - t0)
    print(f"fleet: {len(sc.devices)} devices of {len(sc.device_types)} types, {sc.arch.name} "
          f"({sc.arch.n_layers} blocks), {len(sc.servers)} servers, "
          f"{sum(sc.micro_batches(d) for d in sc.devices)} micro-batches")
    print(f"sfsim.plan: {min(times):.3f} s best of {args.repeat} (all: {', '.join(f'{t:.3f}' for t in times)}); "
          f"{res.simulated} plans simulated; without the time-tie search (--tie-tolerance 0) "
          f"{min(strict):.3f} s")
    best = times.index(min(times))
    print(f"  of which simulator replays {replays[best]:.3f} s, the rest (stage table, integer programs, "
          f"fluid model and its local searches) {times[best] - replays[best]:.3f} s")
    print(f"makespan (simulated) {res.makespan_s:.3f} s, analytic {res.estimate_s:.3f} s, "
          f"lower bound {res.lower_bound_s:.3f} s, gap {res.gap:.2%}")
    print(f"bounded by: {res.bottleneck}")
    print(f"time ties {'searched' if res.ties_searched else 'not searched (no replays left in the budget)'}: "
          f"device compute {res.device_flop / 1e12:.1f} TFLOP (fastest plan found: "
          f"{res.fastest.device_flop / 1e12:.1f} TFLOP, {res.fastest.makespan_s:.3f} s)")
    for c in res.comparisons:
        if c.makespan_s is not None:
            print(f"vs {c.label}: {c.makespan_s:.3f} s (plan/reference = {res.makespan_s / c.makespan_s:.3f})")

    if not args.quick:  # check the comparison: replay every single global cut the fleet allows
        best_single = min((sfsim.simulate(sc, plan=sfsim.Plan(
            splits=dict.fromkeys(res.splits, k), lora_start=res.lora_start,
            assignment=_assignment_for(sc, res, k))).makespan_s, k) for k in _uniform_cuts(sc, res))
        print(f"check: every single cut replayed, best k={best_single[1]}: {best_single[0]:.3f} s "
              f"(plan/that = {res.makespan_s / best_single[0]:.3f})")

    cm = CostModel(sc)
    table = build_table(cm, sc, sc.arch.n_layers - 1, 1, "splitfrozen")
    t0 = time.perf_counter()
    candidates(table)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    scan = scan_all_thresholds(table)
    t_scan = time.perf_counter() - t0
    print(f"search core: threshold binary search {t_search * 1e3:.1f} ms vs scanning all "
          f"{len(thresholds(table))} thresholds {t_scan * 1e3:.1f} ms (ratio {t_scan / t_search:.1f}x); "
          f"scan optimum {scan:.3f} s")


if __name__ == "__main__":
    main()
