"""Benchmark: simulated micro-batches per second of the SplitFrozen engine, against a naive SimPy model.

Run: ``.venv/bin/python bench/bench_engine.py [--devices 10000] [--mb 100]``. Prints a calibration
(plain SimPy timeouts per second right now: the machine is shared), the engine's rate (no trace) and
its ratio to that calibration (micro-batches per plain timeout: the figure to compare across runs),
the naive model's rate on a smaller fleet with the engine's on the same fleet, and the peak Python
memory (tracemalloc) of fresh processes at several sizes: without a trace it must grow with
devices, not with micro-batches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import simpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes  # noqa: E402
from sfsim.schedules import Job, ReplayConfig, splitfrozen  # noqa: E402


def fleet(devices: int, mb: int, servers: int = 1) -> Job:
    """A heterogeneous fleet: five device speeds, three link speeds; the server (2 ms per micro-batch) is the bottleneck."""
    devs = []
    for i in range(devices):
        f = (0.05, 0.08, 0.13, 0.21, 0.34)[i % 5]        # device forward s per micro-batch
        s = (0.02, 0.05, 0.11)[i % 3]                     # uplink serialisation s
        devs.append(DeviceTimes(f"d{i}", server=i % servers, n=mb, f=f, up_s=s, up_l=0.005 * (i % 7),
                                srv_f=0.0008, srv_b=0.0006, srv_w=0.0006))
    return Job(devs, [ServerTimes(f"s{k}", count=1, step=0.0001) for k in range(servers)])


def run_engine(devices: int, mb: int, trace: bool = False) -> tuple[float, float, int]:
    """(wall seconds, makespan, micro-batches) of the SplitFrozen engine."""
    job = fleet(devices, mb)
    t0 = time.perf_counter()
    engine = Engine(trace=trace)
    splitfrozen.run(engine, job, ReplayConfig(buffer=64, accumulate=4, decompose=True))
    makespan = engine.run()
    return time.perf_counter() - t0, makespan, devices * mb


def run_naive(devices: int, mb: int) -> tuple[float, float, int]:
    """The same pipeline as a naive SimPy model: one process per stage, Stores between stages."""
    job = fleet(devices, mb)
    env = simpy.Environment()
    credits = simpy.Container(env, capacity=64, init=64)
    inbox = simpy.Store(env)
    done = [0]

    def forward(d, out):
        for n in range(d.n):
            yield env.timeout(d.f)
            yield out.put(n)  # capacity 1: the device holds at most one finished activation

    def link(d, inp):
        wire = simpy.Store(env)
        env.process(propagate(d, wire))
        while True:
            n = yield inp.get()
            yield credits.get(1)
            yield env.timeout(d.up_s)
            yield wire.put((env.now, n))

    def propagate(d, wire):
        while True:
            sent, n = yield wire.get()
            yield env.timeout(max(0.0, sent + d.up_l - env.now))
            yield inbox.put((d, n))

    def server():
        while done[0] < devices * mb:
            d, n = yield inbox.get()
            yield credits.put(1)
            yield env.timeout(d.srv_f + d.srv_b + d.srv_w)
            done[0] += 1

    t0 = time.perf_counter()
    for d in job.devices:
        out = simpy.Store(env, capacity=1)
        env.process(forward(d, out))
        env.process(link(d, out))
    srv = env.process(server())
    env.run(until=srv)
    return time.perf_counter() - t0, env.now, devices * mb


def simpy_timeouts_per_s(n: int = 1_000_000) -> float:
    """Plain SimPy timeouts per second right now: calibrates the figures on a shared machine."""
    env = simpy.Environment()

    def ticker():
        for _ in range(n):
            yield env.timeout(1.0)

    env.process(ticker())
    t0 = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - t0)


def peak_traced_mib(devices: int, mb: int, trace: bool = False) -> float:
    """Peak Python allocations (MiB, tracemalloc) of one engine run in a fresh process, imports excluded."""
    code = (f"import sys, tracemalloc; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "import bench_engine as b; tracemalloc.start(); "
            f"b.run_engine({devices}, {mb}, trace={trace}); "
            "print(tracemalloc.get_traced_memory()[1] / 2**20)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--naive-devices", type=int, default=1_000, help="fleet for the naive model (it is slow)")
    ap.add_argument("--repeat", type=int, default=1, help="engine runs; the fastest counts (a shared machine)")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()

    calib = simpy_timeouts_per_s()
    print(f"calibration: SimPy runs {calib:,.0f} plain timeouts/s on this machine right now")
    wall, makespan, n = min(run_engine(args.devices, args.mb) for _ in range(args.repeat))
    calib = max(calib, simpy_timeouts_per_s())  # again after: the best of both, as the engine's best of repeats
    rate = n / wall
    print(f"engine: {args.devices} devices x {args.mb} micro-batches = {n:,} micro-batches in {wall:.2f} s "
          f"-> {rate:,.0f} micro-batches/s (simulated makespan {makespan:.1f} s)")
    print(f"engine vs plain SimPy timeouts in this run: {rate / calib:.3f} micro-batches per timeout "
          f"({calib:,.0f} timeouts/s)")
    nwall, nmakespan, nn = run_naive(args.naive_devices, args.mb)
    ewall, emakespan, _ = run_engine(args.naive_devices, args.mb)
    print(f"naive SimPy model: {args.naive_devices} devices x {args.mb} = {nn:,} micro-batches in {nwall:.2f} s "
          f"-> {nn / nwall:,.0f} micro-batches/s; engine on the same fleet: {nn / ewall:,.0f}/s "
          f"(ratio {nwall / ewall:.1f}x; makespans {nmakespan:.2f} s naive vs {emakespan:.2f} s engine)")
    result = {"simpy_timeouts_per_s": calib, "engine_mb_per_s": rate, "engine_mb_per_timeout": rate / calib, "naive_mb_per_s": nn / nwall, "ratio": nwall / ewall}
    if not args.no_memory:
        mem = {f"{d} devices x {m} mb{' (trace)' if t else ''}": peak_traced_mib(d, m, t)
               for d, m, t in ((100, 100, False), (100, 2_000, False), (10_000, 100, False), (100, 2_000, True))}
        for k, v in mem.items():
            print(f"peak traced memory {k}: {v:.1f} MiB")
        result["peak_traced_mib"] = mem
    print(json.dumps(result))


if __name__ == "__main__":
    main()
