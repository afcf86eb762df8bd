"""Benchmark: SplitFrozen with handovers, the fast path (sfsim.fast.handover) against the SimPy engine.

The bench_engine.py fleet (five device speeds, three link speeds, 4 single-worker servers, buffer 64,
accumulate 4, decomposed B/W) where every device moves: each hands over once to the next server, and
every third device comes back to its first server later (A -> B -> A), each leg with its own uplink
(the same bandwidth, its latency changed); handover times are spread over the static run's length so
that most of them fall mid-run. Every tenth device also pauses (exponential on/off, seeded).
Prints micro-batches per second of both engines (wall, and CPU in brackets: the machine is shared),
the ratio by CPU, and whether the makespans and every figure SimResult reports are equal.

Run: ``.venv/bin/python bench/bench_handover.py [--devices N] [--mb M] [--sequential]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import fleet  # noqa: E402

from sfsim.engine.pool import Engine  # noqa: E402
from sfsim.fast import replay  # noqa: E402
from sfsim.network.availability import OnOff  # noqa: E402
from sfsim.network.legs import Leg, Motion  # noqa: E402
from sfsim.schedules import ReplayConfig, splitfrozen  # noqa: E402

CFG = ReplayConfig(buffer=64, accumulate=4, decompose=True)  # bench_engine.py's knobs
SERVERS = 4


def handover_fleet(devices: int, mb: int, length: float):
    """bench_engine.py's fleet with every device handing over (see the module docstring); ``length``: the static makespan."""
    job = fleet(devices, mb, servers=SERVERS)
    rng, bw, moving = random.Random(19), 20e6, {}
    for i, d in enumerate(job.devices):
        d = job.devices[i] = dataclasses.replace(d, up_bytes=d.up_s * bw / 8.0)
        first, at = d.server, rng.uniform(0.1, 0.6) * length
        legs = [Leg(0.0, first, bw, d.up_s, d.up_l), Leg(at, (first + 1) % SERVERS, bw, d.up_s, d.up_l + 0.01)]
        if i % 3 == 0:
            legs.append(Leg(at + rng.uniform(0.05, 0.3) * length, first, bw, d.up_s, d.up_l))
        avail = OnOff(30.0, 3.0, random.Random(f"bench:{i}")) if i % 10 == 0 else None
        moving[i] = Motion(legs, avail, "pause")
    views = [[dataclasses.replace(d, up_s=0.0, up_l=min(leg.up_l for leg in moving[i].legs))
              for i, d in enumerate(job.devices)] for _ in job.servers]
    job.network = splitfrozen.Network(moving, views)
    return job


def figures(busy, wait, end, mixing, device_busy, up, moving) -> tuple:
    """What SimResult reports of a run, comparable across the engines."""
    return (dict(busy), dict(wait), dict(end), {k: (m.value, m.total) for k, m in mixing.items()}, dict(device_busy),
            dict(up), {i: (m.sent, m.send_s, tuple(m.switched_at)) for i, m in moving.items()})


def timed(fn, *args):
    """(result, wall s, CPU s of this process) of ``fn(*args)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def run_fast(job, sequential: bool):
    """The fast path's makespan and figures."""
    rec, makespan = replay(job, CFG, sequential)
    return makespan, figures(rec.server_busy, rec.server_wait, rec.server_end, rec.mixing, rec.device_busy,
                             rec.up_bytes, job.network.moving)


def run_engine(job, sequential: bool):
    """The SimPy engine's makespan and figures."""
    engine = Engine()
    splitfrozen.run(engine, job, CFG, sequential=sequential)
    makespan = engine.run()
    return makespan, figures(engine.server_busy, engine.server_wait, engine.server_end, engine.mixing,
                             engine.device_busy, engine.up_bytes, job.network.moving)


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--sequential", action="store_true", help="the splitfrozen-sequential ablation")
    args = ap.parse_args()
    static = fleet(args.devices, args.mb, servers=SERVERS)
    length = replay(static, CFG, args.sequential)[1]
    run_fast(handover_fleet(10, 2, 1.0), args.sequential)  # load the compiled kernel once (not timed)
    n = args.devices * args.mb
    (fast_ms, fast_fig), t_fast, c_fast = timed(run_fast, handover_fleet(args.devices, args.mb, length), args.sequential)
    (eng_ms, eng_fig), t_eng, c_eng = timed(run_engine, handover_fleet(args.devices, args.mb, length), args.sequential)
    switched = [x for sent, _, at in fast_fig[6].values() for x in at]
    mid = sum(0 < x < args.mb for x in switched)  # handovers with micro-batches sent on both sides
    print(f"{'splitfrozen-sequential' if args.sequential else 'splitfrozen'}, {args.devices:,} devices x {args.mb} "
          f"micro-batches, {len(switched):,} handovers ({mid:,} mid-run) over {SERVERS} servers: fast {n / t_fast:,.0f} mb/s "
          f"({n / c_fast:,.0f} CPU), SimPy engine {n / t_eng:,.0f} mb/s ({n / c_eng:,.0f} CPU); fast/engine "
          f"{c_eng / c_fast:,.1f}x by CPU; makespans equal: {fast_ms == eng_ms} ({fast_ms:.3f} s simulated); "
          f"every figure equal: {fast_fig == eng_fig}", flush=True)


if __name__ == "__main__":
    main()
