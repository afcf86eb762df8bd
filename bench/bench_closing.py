"""Benchmark: the baselines' closing backhaul rounds (no training.sync) on the fast path against the SimPy engine.

:func:`sfsim.fast.replay.baseline_fleet` (five device speeds, three link speeds, 4 servers), its micro-batches
split into ``--epochs`` epochs, every server on a backhaul link (1, 2, 5, 10 Gbps, 2 ms) that closes each epoch
with one round (:mod:`sfsim.fast.closing`; FedLoRA's in :mod:`sfsim.fast.fedlora`; SplitLoRA's with handovers in
:mod:`sfsim.fast.splitclose`). Prints micro-batches per second of both engines (CPU seconds: the
machine is shared), the ratio, and whether every figure (makespan, busy, bytes, mixing, rounds, backhaul bytes)
is equal.

``--epoch-end S``: each server waits S seconds between epochs (``training.eval_samples``, :mod:`sfsim.cost.epochend`;
SplitLoRA's fast path replays it without handovers between servers).

Run: ``.venv/bin/python bench/bench_closing.py [--devices N] [--mb M] [--epochs E] [--network static|dynamic|handover]
[--schedules splitlora,...] [--epoch-end S]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from sfsim.engine.pool import Engine  # noqa: E402
from sfsim.fast import replay  # noqa: E402
from sfsim.fast.replay import baseline_fleet  # noqa: E402
from sfsim.network.backhaul import SyncSpec  # noqa: E402
from sfsim.schedules import get  # noqa: E402


def closing_fleet(devices: int, mb: int, epochs: int):
    """``baseline_fleet`` in ``epochs`` epochs, its servers closing each with a round of 20 MB (+ 5 MB SplitLoRA's)."""
    job, cfg = baseline_fleet(devices, mb)
    job.devices = [dataclasses.replace(d, per_epoch=-(-mb // epochs)) for d in job.devices]
    links = tuple((s.name, bw * 1e9, 0.002) for s, bw in zip(job.servers, (1, 2, 5, 10), strict=True))
    job.sync = SyncSpec(links, None, "sync", 20e6, 25e6, epochs)
    return job, cfg


def figures(rec, makespan: float) -> dict:
    return {"makespan": makespan, "server_busy": rec.server_busy, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "down": rec.down_bytes, "rounds": rec.sync.rounds, "backhaul": dict(rec.sync.bytes),
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items() if m.value is not None},
            "waited": sorted(rec.epoch_end_waited)}


def race(make, schedule: str, devices: int, mb: int, wait: float = 0.0) -> tuple[dict, dict, float, float]:
    """Both engines on ``make(devices, mb)`` (a fresh job each: the runs leave figures on it), the kernels loaded
    first on ``make(8, 4)``: (fast figures, SimPy figures, fast CPU seconds, SimPy CPU seconds). ``wait``: every
    server's epoch-end wait."""
    small, cfg = make(8, 4)
    waits = {s.name: wait for s in small.servers} if wait else {}
    replay(small, cfg, schedule=schedule, epoch_end=waits)  # load the compiled kernels (not timed)
    job, cfg = make(devices, mb)
    t0 = time.process_time()
    fast = figures(*replay(job, cfg, schedule=schedule, epoch_end=waits))
    t_fast = time.process_time() - t0
    job, cfg = make(devices, mb)
    t0 = time.process_time()
    engine = Engine()
    engine.epoch_end = dict(waits)
    get(schedule).run(engine, job, cfg)
    ref = figures(engine, engine.run())
    return fast, ref, t_fast, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--network", choices=["static", "dynamic", "handover"], default="static",
                    help="SplitLoRA and FedLoRA on bench_lora_dynamic.py's network (handover: devices move too)")
    ap.add_argument("--schedules", default=None, help="comma-separated (default: every one the network takes)")
    ap.add_argument("--epoch-end", type=float, default=0.0, help="each server's wait between epochs (seconds)")
    a = ap.parse_args()
    schedules = ("splitlora", "cenlora", "fedlora") if a.network == "static" else ("splitlora", "fedlora")
    if a.schedules:
        schedules = tuple(s for s in a.schedules.split(",") if s in schedules)
    for schedule in schedules:
        fast, ref, t_fast, t_simpy = race(lambda d, m: fleet(d, m, a.epochs, a.network), schedule, a.devices, a.mb,
                                          a.epoch_end)
        n = a.devices * a.mb
        print(f"{schedule}, {a.devices:,} devices x {a.mb} micro-batches in {a.epochs} epochs, 4 servers closing "
              f"each ({a.network} network): fast path {n / t_fast:,.0f} mb/s, SimPy engine {n / t_simpy:,.0f} mb/s "
              f"(CPU; fast is {t_simpy / t_fast:,.1f}x); every figure equal: {fast == ref}"
              + (f"; epoch-end wait {a.epoch_end} s, waited on {len(ref['waited'])} servers" if a.epoch_end else ""))


def fleet(devices: int, mb: int, epochs: int, net: str):
    """:func:`closing_fleet` on ``net``: static, or bench_lora_dynamic.py's network (pause churn; with handovers)."""
    job, cfg = closing_fleet(devices, mb, epochs)
    if net != "static":
        from bench_lora_dynamic import network  # noqa: PLC0415 - a sibling script

        job.network = network(job, "pause", net == "handover")
    return job, cfg


if __name__ == "__main__":
    main()
