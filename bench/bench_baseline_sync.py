"""Benchmark: SplitLoRA, FedLoRA and CenLoRA with ``training.sync`` on the fast path against the SimPy engine.

:func:`sfsim.fast.replay.baseline_fleet` (five device speeds, three link speeds, 4 servers) in ``--epochs`` epochs,
every server on a backhaul link (1, 2, 5, 10 Gbps, 2 ms), ``training.sync`` every 1 and every 10 (``--mode``
sync or async; every 1 in sync mode averages the gradients before each step): the servers' loops and their rounds
in lockstep (:mod:`sfsim.fast.splitsync`, :mod:`sfsim.fast.fedsync`, :mod:`sfsim.fast.censync`). Prints micro-batches per second of both
engines (CPU seconds: the machine is shared), the ratio, and whether every figure (makespan, busy, bytes, mixing,
rounds, backhaul bytes) is equal.

``--network dynamic``: bench_lora_dynamic.py's varying links and pause churn (FedLoRA: :func:`sfsim.fast.fedsync._moving_run`).
``--epoch-end S``: each server waits S seconds after each epoch but the last (``training.eval_samples``,
:mod:`sfsim.cost.epochend`; give ``--epochs`` 2 or more); the line says on how many servers it was waited.

Run: ``.venv/bin/python bench/bench_baseline_sync.py [--devices N] [--mb M] [--epochs E] [--mode sync|async]
[--network static|dynamic] [--epoch-end S]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_closing import fleet, race  # noqa: E402


def synced_fleet(devices: int, mb: int, epochs: int, every: int, mode: str, network: str = "static"):
    """:func:`bench_closing.fleet` (``network`` static, or dynamic: bench_lora_dynamic.py's varying links and pause
    churn) with ``training.sync`` every ``every`` in ``mode``."""
    job, cfg = fleet(devices, mb, epochs, network)
    job.sync = dataclasses.replace(job.sync, every=every, mode=mode)
    return job, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--mode", choices=["sync", "async"], default="sync")
    ap.add_argument("--schedules", default="splitlora,fedlora,cenlora")
    ap.add_argument("--network", choices=["static", "dynamic"], default="static")
    ap.add_argument("--epoch-end", type=float, default=0.0, help="each server's wait between epochs (seconds)")
    a = ap.parse_args()
    for schedule in a.schedules.split(","):
        for every in (1, 10):
            fast, ref, t_fast, t_simpy = race(lambda d, m, e=every: synced_fleet(d, m, a.epochs, e, a.mode, a.network),
                                              schedule, a.devices, a.mb, a.epoch_end)
            n = a.devices * a.mb
            print(f"{schedule}, {a.devices:,} devices x {a.mb} micro-batches, {a.epochs} epoch(s), 4 servers, sync every "
                  f"{every} ({a.mode}, {ref['rounds']:,} rounds, {a.network} network): fast path {n / t_fast:,.0f} mb/s, SimPy engine "
                  f"{n / t_simpy:,.0f} mb/s (CPU; fast is {t_simpy / t_fast:,.1f}x); every figure equal: {fast == ref}"
                  + (f"; epoch-end wait {a.epoch_end} s, waited on {len(ref['waited'])} servers" if a.epoch_end else ""),
                  flush=True)


if __name__ == "__main__":
    main()
