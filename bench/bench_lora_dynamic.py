"""Benchmark: the baselines' fast path on the dynamic network against the SimPy engine, same fleets, one run.

The fleet is :func:`sfsim.fast.replay.baseline_fleet` (five device speeds, three link speeds, 4 servers)
on a seeded dynamic network: every uplink a Gilbert-Elliott channel (good 2x, bad 1/5 of its nominal
rate), every downlink faded (log-normal, 4 dB, 2 s blocks), a third of the devices on an on/off
availability process (``--churn pause`` or ``drop``), and with ``--handover`` a quarter of them handing
over to the next server at 30 s. ``--epochs N`` splits each device's micro-batches into N epochs (FedLoRA's
rounds are formed per epoch).

Prints micro-batches per second (the fleet's nominal count over wall time, CPU time beside it) of the
fast path and of the SimPy engine, and whether the makespans and every figure are equal.

Run: ``.venv/bin/python bench/bench_lora_dynamic.py --schedule splitlora|fedlora [--devices N] [--mb N] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfsim.engine.pool import Engine  # noqa: E402
from sfsim.fast import replay, uncovered  # noqa: E402
from sfsim.fast.replay import baseline_fleet  # noqa: E402
from sfsim.network.availability import OnOff  # noqa: E402
from sfsim.network.legs import Leg, Motion  # noqa: E402
from sfsim.network.linkrate import (  # noqa: E402
    Constant,
    Fading,
    FadingRate,
    GilbertElliott,
    GilbertElliottRate,
    Product,
)
from sfsim.schedules import get  # noqa: E402
from sfsim.schedules.network import FedNetwork  # noqa: E402


def network(job, churn: str, handover: bool, seed: int = 0) -> FedNetwork:
    """The benchmark's dynamic network for ``job`` (see the module docstring), seeded."""
    motions = {}
    for i, d in enumerate(job.devices):
        up_bw, down_bw = d.up_bytes * 8.0 / d.up_s, d.down_bytes * 8.0 / d.down_s  # the stage times' nominal rates
        ge = GilbertElliott(good=2 * up_bw, bad=up_bw / 5, mean_good=8.0, mean_bad=2.0)
        up = GilbertElliottRate(ge, random.Random(f"{seed}:{i}:up"))
        down = Product(Constant(down_bw), FadingRate(Fading(sigma_db=4.0, coherence=2.0), random.Random(f"{seed}:{i}:dn")))
        legs = [Leg(0.0, d.server, up_bw, d.up_s, d.up_l, up, down_bw, d.down_l, down)]
        if handover and i % 4 == 1:
            legs.append(Leg(30.0, (d.server + 1) % len(job.servers), up_bw, d.up_s, d.up_l, up, down_bw, d.down_l, down))
        avail = OnOff(60.0, 10.0, random.Random(f"{seed}:{i}:avail")) if i % 3 == 0 else None
        motions[i] = Motion(legs, avail, churn)
        motions[i].done = 0
    return FedNetwork(motions, dict(motions))


def fleet(devices: int, mb: int, epochs: int) -> tuple:
    """:func:`baseline_fleet` with each device's micro-batches in ``epochs`` epochs."""
    job, cfg = baseline_fleet(devices, mb)
    job.devices = [replace(d, per_epoch=-(-mb // epochs)) for d in job.devices]
    return job, cfg


def figures(rec, makespan: float) -> dict:
    """Every figure a run leaves (an Engine after its run, or the fast path's Replayed)."""
    return {"makespan": makespan, "server_busy": rec.server_busy, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "down": rec.down_bytes,
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedule", choices=["splitlora", "fedlora"], required=True)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=100, help="micro-batches per device")
    ap.add_argument("--churn", choices=["pause", "drop"], default="pause")
    ap.add_argument("--epochs", type=int, default=1, help="epochs each device's micro-batches are split into")
    ap.add_argument("--handover", action="store_true", help="a quarter of the devices hand over to the next server at 30 s")
    args = ap.parse_args()
    job0, cfg = fleet(args.devices, args.mb, args.epochs)
    cfg = replace(cfg, local_steps=10)
    small, _ = fleet(8, 4, args.epochs)
    small.network = network(small, args.churn, args.handover)
    replay(small, cfg, schedule=args.schedule)  # load the compiled kernels (not timed)
    runs = {}
    for engine in ("fast", "simpy"):
        job, _ = fleet(args.devices, args.mb, args.epochs)
        job.network = network(job, args.churn, args.handover)
        if engine == "fast":
            why = uncovered(None, args.schedule, cfg, job)
            assert why is None, why
        w0, c0 = time.perf_counter(), time.process_time()
        if engine == "fast":
            rec, makespan = replay(job, cfg, schedule=args.schedule)
        else:
            rec = Engine()
            get(args.schedule).run(rec, job, cfg)
            makespan = rec.run()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        runs[engine] = figures(rec, makespan)
        n = len(job0.devices) * args.mb
        print(f"{args.schedule} ({args.churn}{', handover' if args.handover else ''}), {args.devices:,} devices x "
              f"{args.mb} ({args.epochs} epochs): {engine} {n / wall:,.0f} mb/s ({wall:.2f} s wall, {cpu:.2f} s CPU), makespan {makespan:.6f} s")
    same = runs["fast"] == runs["simpy"]
    print(f"makespans equal: {runs['fast']['makespan'] == runs['simpy']['makespan']}; every figure equal: {same}")


if __name__ == "__main__":
    main()
