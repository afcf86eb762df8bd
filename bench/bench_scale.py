"""Benchmark: the fast path (sfsim.fast) against the SimPy engine and a naive SimPy model, at fleet scale.

Prints, in one run (CPU seconds beside every wall time: the machine is shared, and on a busy machine
wall time is several times the CPU time a run needed; the load average first and last). Whole processes
run as an installed sfsim does, with Python's byte-code caches (written by an untimed first process),
whatever ``PYTHONDONTWRITEBYTECODE`` says:

1. micro-batches per second of the fast path, the SimPy engine and the naive SimPy model of
   ``bench_engine.py`` on the same fleets (the SimPy ones on the smaller fleets only), and whether
   the fast path's makespan equals the engine's;
2. ``python -m sfsim simulate`` of 100,000 devices x 100 micro-batches of SplitFrozen (20 device
   types, 4 servers) as a whole process: wall and CPU seconds, peak memory (ru_maxrss of the child);
3. ``python -m sfsim plan`` as a whole process at 1,000 devices x 4 servers (20,000 and 200,000
   micro-batches) and 10,000 devices x 16 servers, with the plan's simulated time and gap; then on
   fresh fleets the planner was not tuned on (:data:`FRESH`: other counts, speeds and buffers, one
   type, 3, 7 and 16 servers; ``--plans``: only this item);
4. ``python -m sfsim sweep`` of a 1,000-device fleet (20,000 micro-batches a point) as a whole
   process over ``--sweep-points`` points (default 1,000; 10,000 is the target size, and a smaller
   run says that its 10,000-point figure is extrapolated);
5. micro-batches/s of the fast path and the SimPy engine on the dynamic network: the bench_engine.py
   fleet with every uplink a repeating rate trace and every device paused by an on/off process
   (:func:`dynamic_fleet`), and whether the makespans are equal (``--dynamic``: only this);
6. the ``pool`` policy's peak memory on the fast path (tracemalloc) at 8 devices x 200 and x 40,000
   micro-batches and at 800 devices x 200: it grows with devices, not with the run (``--pool``: only this);
7. peak traced memory (tracemalloc) and the process's peak resident memory of fast replays of 10,000
   devices x 100 and x 1,000 micro-batches (``--quick``: 1,000 x 10 and x 100) with pause churn
   (:func:`dynamic_fleet`: the kernels draw the on/off processes in a window, :mod:`sfsim.fast.rates`), with
   handovers (``bench_handover.py``'s fleet) and on Gilbert-Elliott and faded uplinks (:func:`channel_fleet`: drawn
   in a window too), and a digest of every figure (to compare two checkouts); then each peak's ratio at x10
   micro-batches, which stays near 1 (``--memory``: only this item; ``--channels``: only its channel fleet).

Run: ``.venv/bin/python bench/bench_scale.py [--quick] [--sweep-points N] [--dynamic] [--plans]`` (``--quick``:
smaller sizes, for a smoke test).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import fleet, run_naive  # noqa: E402

from sfsim.engine.pool import Engine  # noqa: E402
from sfsim.fast import replay  # noqa: E402
from sfsim.fast.replay import rates_lines  # noqa: E402
from sfsim.network.availability import OnOff  # noqa: E402
from sfsim.network.legs import Leg, Motion  # noqa: E402
from sfsim.network.linkrate import Steps  # noqa: E402
from sfsim.schedules import ReplayConfig, splitfrozen  # noqa: E402

CFG = ReplayConfig(buffer=64, accumulate=4, decompose=True)  # bench_engine.py's knobs


def scenario(devices: int, mb: int, servers: int, types: int = 20, counts: int = 1) -> dict:
    """A fleet of ``devices`` over ``types`` device kinds (unequal FLOP/s, links, memory), ``mb``
    micro-batches each (``micro_batch`` 4), ``servers`` edge servers of ``counts`` accelerators."""
    kinds = []
    for t in range(types):
        n = devices // types + (1 if t < devices % types else 0)
        kinds.append({"name": f"kind{t}", "count": n, "flops": f"{20 + 37 * t} GFLOPS",
                      "memory": f"{2 + t % 7} GiB", "samples": 4 * mb,
                      "uplink": {"bandwidth": f"{10 + 23 * (t % 9)} Mbps", "latency": f"{1 + 3 * (t % 5)} ms"},
                      "downlink": {"bandwidth": "200 Mbps", "latency": "5 ms"}})
    srv = [{"name": f"edge{k}", "flops": f"{12 + 6 * (k % 4)} TFLOPS", "memory": "80 GiB", "count": counts}
           for k in range(servers)]
    return {"model": {"name": "smollm2-135m", "seq_len": 128, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "accumulate": 8, "buffer": 64, "split": 2},
            "servers": srv, "devices": [k for k in kinds if k["count"]]}


def fresh_fleet(devices: int, servers: int, types: int, mb: int, seed: int) -> dict:
    """A seeded heterogeneous fleet unlike :func:`scenario`'s: random FLOP/s (8-600 GFLOPS), links (5-300 Mbit/s,
    1-30 ms), memory, server speeds (5-60 TFLOPS) and workers (1 or 2), and ``training.buffer`` (16-128)."""
    import random

    rng = random.Random(seed)
    kinds = []
    for t in range(types):
        n = devices // types + (1 if t < devices % types else 0)
        kinds.append({"name": f"k{t}", "count": n, "flops": f"{rng.uniform(8, 600):.0f} GFLOPS",
                      "memory": f"{rng.choice([1.5, 2, 3, 4, 8])} GiB", "samples": 4 * mb,
                      "uplink": {"bandwidth": f"{rng.uniform(5, 300):.0f} Mbps",
                                 "latency": f"{rng.uniform(1, 30):.0f} ms"},
                      "downlink": {"bandwidth": "100 Mbps", "latency": "5 ms"}})
    srv = [{"name": f"s{k}", "flops": f"{rng.uniform(5, 60):.0f} TFLOPS", "memory": "80 GiB",
            "count": rng.choice([1, 1, 2])} for k in range(servers)]
    return {"model": {"name": "smollm2-135m", "seq_len": 128, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "accumulate": 8, "buffer": rng.choice([16, 32, 64, 128]), "split": 2},
            "servers": srv, "devices": kinds}


FRESH = [(1000, 4, 1, 20, 11), (1000, 3, 5, 20, 12), (2000, 7, 8, 30, 13), (500, 3, 3, 100, 14),
         (5000, 7, 10, 20, 15), (3000, 16, 6, 20, 16), (800, 7, 1, 50, 17), (10000, 16, 9, 20, 18)]
"""Fresh fleets for the planner: (devices, servers, types, micro-batches a device, seed) of :func:`fresh_fleet`."""


def plans(path: Path, plan_big: int, fresh: bool = True) -> None:
    """Item 3: ``python -m sfsim plan`` as a whole process on the benchmark fleets, then on :data:`FRESH`."""
    print("3. python -m sfsim plan, whole process")
    fleets = [(f"{d:,} devices x {s} servers, {d * mb:,} micro-batches", scenario(d, mb, s, types=12))
              for d, s, mb in [(1000, 4, 20), (1000, 4, 200), (plan_big, 16, 20)]]
    if fresh:
        fleets += [(f"fresh: {d:,} devices x {s} servers, {t} type{'s' * (t > 1)}, {d * mb:,} micro-batches (seed {seed})",
                    fresh_fleet(d, s, t, mb, seed)) for d, s, t, mb, seed in FRESH]
    for label, data in fleets:
        path.write_text(yaml.safe_dump(data))
        wall, cpu, _, out = whole_process(["plan", "--devices", str(path)])
        got = next((ln.strip() for ln in out if ln.startswith("total time")), "")
        gap = next((ln.strip() for ln in out if ln.startswith("lower bound")), "")
        print(f"   {label}: {wall:.2f} s wall, {cpu:.2f} s CPU; {got}; {gap}", flush=True)


def whole_process(args: list[str]) -> tuple[float, float, float, list[str]]:
    """(wall s, CPU s, peak resident GiB, output lines) of ``python -m sfsim ARGS`` in a fresh process.

    CPU seconds are the child's user + system time (all its threads and worker processes).
    """
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "sfsim", *args], cwd=ROOT, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # ru_maxrss: KiB, the largest child so far
    if out.returncode:
        raise SystemExit(f"sfsim {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1:]}")
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return wall, cpu, max(r1.ru_maxrss, r0.ru_maxrss) / 2**20, out.stdout.strip().splitlines()


def _env() -> dict:
    """The child's environment: this checkout first, and byte-code caching on (as an installed sfsim has it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def settle() -> None:
    """One untimed ``python -m sfsim --help`` (writes the byte-code caches a user's install has), and the load."""
    subprocess.run([sys.executable, "-m", "sfsim", "--help"], cwd=ROOT, capture_output=True, env=_env(), check=True)
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)


def rates(sizes: list[tuple[int, int]], simpy_upto: int) -> None:
    """Micro-batches per second of the three on the same fleets (wall; CPU in brackets); fast == engine checked."""
    replay(fleet(10, 2), CFG)  # load the compiled kernel once (not timed)
    for devices, mb in sizes:
        job = fleet(devices, mb, servers=4)
        (_, fast_ms), t_fast, c_fast = timed(replay, job, CFG)
        n = devices * mb
        line = f"  {devices:>7,} devices x {mb} mb: fast {n / t_fast:>11,.0f} mb/s ({n / c_fast:,.0f} CPU)"
        if devices <= simpy_upto:
            eng_ms, t_eng, c_eng = timed(run_engine, job)
            t_naive, _, n_naive = run_naive(devices, mb)
            line += (f", SimPy engine {n / t_eng:>9,.0f} mb/s ({n / c_eng:,.0f} CPU), naive SimPy "
                     f"{n_naive / t_naive:>8,.0f} mb/s; fast/engine {c_eng / c_fast:,.0f}x by CPU; "
                     f"makespans equal: {fast_ms == eng_ms}")
        print(line, flush=True)


def dynamic_fleet(devices: int, mb: int, servers: int = 4):
    """bench_engine.py's fleet on the dynamic network: every uplink a repeating trace, every device on and off.

    Device ``i``'s uplink (nominal 20 Mbit/s, its micro-batch taking its ``up_s`` at that rate) follows a
    10 s trace: 100% of it, 25% from 4 s, 200% from 7 s, shifted by ``i`` per device kind; it is online for
    exponential periods of mean 30 s and offline for 3 s (``churn: pause``), seeded per device.
    """
    import dataclasses
    import random

    job = fleet(devices, mb, servers=servers)
    bw, moving = 20e6, {}
    for i, d in enumerate(job.devices):
        d = job.devices[i] = dataclasses.replace(d, up_bytes=d.up_s * bw / 8.0)
        shift = 0.5 * (i % 5)
        rate = Steps([0.0, 4.0 + shift, 7.0 + shift], [bw, bw / 4, 2 * bw], period=10.0 + shift)
        moving[i] = Motion([Leg(0.0, d.server, bw, d.up_s, d.up_l, rate)],
                           OnOff(30.0, 3.0, random.Random(f"bench:{i}")), "pause")
    views = [[dataclasses.replace(d, up_s=0.0) for d in job.devices] for _ in job.servers]
    job.network = splitfrozen.Network(moving, views)
    return job


def channel_fleet(devices: int, mb: int, servers: int = 4):
    """bench_engine.py's fleet with every uplink a random channel: device ``i``'s (nominal 20 Mbit/s) is a
    Gilbert-Elliott channel (40 Mbit/s good, 4 bad, exponential sojourns of mean 5 s and 1 s) for even ``i``, faded
    (log-normal, 4 dB, 0.5 s coherence) for odd ``i``, each seeded per device; always online."""
    import dataclasses
    import random

    from sfsim.network.linkrate import (
        Constant,
        Fading,
        FadingRate,
        GilbertElliott,
        GilbertElliottRate,
        Product,
    )

    job = fleet(devices, mb, servers=servers)
    bw, moving = 20e6, {}
    ge = GilbertElliott(good=2 * bw, bad=bw / 5, mean_good=5.0, mean_bad=1.0)
    fade = Fading(sigma_db=4.0, coherence=0.5)
    for i, d in enumerate(job.devices):
        d = job.devices[i] = dataclasses.replace(d, up_bytes=d.up_s * bw / 8.0)
        rng = random.Random(f"channel:{i}")
        rate = GilbertElliottRate(ge, rng) if i % 2 == 0 else Product(Constant(bw), FadingRate(fade, rng))
        moving[i] = Motion([Leg(0.0, d.server, bw, d.up_s, d.up_l, rate)], None, "pause")
    views = [[dataclasses.replace(d, up_s=0.0) for d in job.devices] for _ in job.servers]
    job.network = splitfrozen.Network(moving, views)
    return job


def dynamic_rates(sizes: list[tuple[int, int]]) -> None:
    """Fast path vs SimPy engine on :func:`dynamic_fleet` (wall; CPU in brackets); makespans equal checked."""
    replay(dynamic_fleet(10, 2), CFG)  # load the compiled kernel once (not timed)
    for devices, mb in sizes:
        n = devices * mb
        (_, fast_ms), t_fast, c_fast = timed(replay, dynamic_fleet(devices, mb), CFG)
        eng_ms, t_eng, c_eng = timed(run_engine, dynamic_fleet(devices, mb))
        print(f"  {devices:>7,} devices x {mb} mb, varying uplinks and pauses: fast {n / t_fast:>11,.0f} mb/s "
              f"({n / c_fast:,.0f} CPU), SimPy engine {n / t_eng:>9,.0f} mb/s ({n / c_eng:,.0f} CPU); "
              f"fast/engine {c_eng / c_fast:,.0f}x by CPU; makespans equal: {fast_ms == eng_ms} "
              f"({fast_ms:.3f} s simulated)", flush=True)


def pool_memory() -> None:
    """Item 6: peak traced memory of fast ``pool`` replays, short and long runs and a wide fleet."""
    import tracemalloc

    from sfsim.engine.pool import DeviceTimes, ServerTimes
    from sfsim.schedules import Job

    cfg = ReplayConfig(buffer=4, accumulate=2, decompose=True, policy="pool", seed=7)

    def job(devices, mb):
        devs = [DeviceTimes(f"d{i}", 0, mb, f=0.01 * (1 + i % 3), up_s=0.02, up_l=0.001, srv_f=0.004, srv_b=0.006,
                            srv_w=0.002, act_bytes=1e5) for i in range(devices)]
        return Job(devs, [ServerTimes("s", 2, 0.001)])

    replay(job(2, 3), cfg)  # load the compiled kernel (not measured)
    print("6. pool policy, fast path: peak traced memory of one replay (tracemalloc)")
    for devices, mb in [(8, 200), (8, 40_000), (800, 200)]:
        j = job(devices, mb)
        tracemalloc.start()
        _, makespan = replay(j, cfg)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"   {devices:,} devices x {mb:,} micro-batches: {peak / 1024:,.1f} KiB ({makespan:,.1f} s simulated)")


def moving_memory(devices: int, mb: int, channels_only: bool = False) -> None:
    """Item 7: peak traced and resident memory of fast replays with pause churn, with handovers and on random
    channels, at ``mb`` micro-batches a device and at a tenth of that (memory should grow with devices, not
    micro-batches); ``channels_only``: the channels alone."""
    import hashlib
    import tracemalloc

    from bench_handover import handover_fleet, run_fast

    replay(dynamic_fleet(10, 2), CFG)  # load the compiled kernels (not measured)
    run_fast(handover_fleet(10, 2, 1.0), False)
    peaks = {}
    labels = ["channels"] if channels_only else ["pause churn", "handovers", "channels"]
    for n in (mb // 10, mb):
        print(f"7. fast path with moving devices, {devices:,} devices x {n:,} micro-batches: peak memory")
        length = replay(fleet(devices, n, servers=4), CFG)[1]
        fleets = {"pause churn": (dynamic_fleet, (devices, n)), "handovers": (handover_fleet, (devices, n, length)),
                  "channels": (channel_fleet, (devices, n))}
        for label in labels:
            make, args = fleets[label]
            job = make(*args)
            tracemalloc.start()
            out, wall, cpu = timed(run_fast, job, False)  # (makespan, every figure SimResult reports)
            peak = peaks[label, n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            digest = hashlib.sha1(repr(out).encode()).hexdigest()[:12]
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
            print(f"   {label}: traced peak {peak / 2**20:,.1f} MiB, process peak resident {rss:,.0f} MiB so far; "
                  f"{wall:.1f} s wall, {cpu:.1f} s CPU; figures' digest {digest}", flush=True)
    for label in labels:
        print(f"   {label}: traced peak x{peaks[label, mb] / peaks[label, mb // 10]:.2f} for x10 micro-batches "
              f"({peaks[label, mb] / devices / 1024:,.1f} KiB a device at {mb:,})")


def run_engine(job) -> float:
    """The SimPy engine's makespan of ``job``."""
    engine = Engine()
    splitfrozen.run(engine, job, CFG)
    return engine.run()


def timed(fn, *args):
    """(result, wall s, CPU s of this process) of ``fn(*args)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--sweep-points", type=int, default=1000)
    ap.add_argument("--schedule", choices=["splitlora", "fedlora", "cenlora"],
                    help="only the micro-batches/s of this baseline, fast vs SimPy (sfsim.fast.replay.rates)")
    ap.add_argument("--dynamic", action="store_true", help="only the dynamic network's micro-batches/s (item 5)")
    ap.add_argument("--plans", action="store_true", help="only the planner's times and gaps (item 3)")
    ap.add_argument("--pool", action="store_true", help="only the pool policy's memory (item 6)")
    ap.add_argument("--memory", action="store_true", help="only the dynamic network's memory (item 7)")
    ap.add_argument("--channels", action="store_true", help="only item 7's random channels (Gilbert-Elliott, fading)")
    args = ap.parse_args()
    if args.memory or args.channels:
        moving_memory(*((1000, 100) if args.quick else (10_000, 1000)), channels_only=args.channels)
        return
    if args.pool:
        pool_memory()
        return
    if args.plans:
        settle()
        with tempfile.TemporaryDirectory() as tmp:
            plans(Path(tmp) / "fleet.yaml", 1000 if args.quick else 10_000, fresh=not args.quick)
        return
    if args.dynamic:
        print("5. micro-batches/s on the dynamic network (bench_engine.py fleet, 4 servers, buffer 64, accumulate 4)")
        dynamic_rates([(1000, 100)] if args.quick else [(1000, 100), (10_000, 100)])
        return
    if args.schedule:
        print("\n".join(rates_lines(args.schedule)))
        return
    big, plan_big = (2000, 1000) if args.quick else (100_000, 10_000)
    settle()
    print("1. micro-batches/s on the bench_engine.py fleets (4 single-worker servers, buffer 64, accumulate 4)")
    rates([(1000, 100), (10_000, 100), (big, 100)], simpy_upto=10_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.yaml"
        path.write_text(yaml.safe_dump(scenario(big, 100, 4)))
        wall, cpu, peak, out = whole_process(["simulate", "--devices", str(path)])
        print(f"2. python -m sfsim simulate, {big:,} devices x 100 micro-batches, SplitFrozen, 4 servers: "
              f"{wall:.2f} s wall, {cpu:.2f} s CPU ({big * 100 / wall:,.0f} mb/s by wall, "
              f"{big * 100 / cpu:,.0f} by CPU), peak memory {peak:.2f} GiB\n   ({out[0] if out else ''})")
        plans(path, plan_big, fresh=not args.quick)
        sweep(path, args.sweep_points, 10 if args.quick else 1000)
    print("5. micro-batches/s on the dynamic network (bench_engine.py fleet, 4 servers, buffer 64, accumulate 4)")
    dynamic_rates([(1000, 100)] if args.quick else [(1000, 100), (10_000, 100)])
    pool_memory()
    moving_memory(*((1000, 100) if args.quick else (10_000, 1000)))
    print("load average at the end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def sweep(path: Path, points: int, devices: int) -> None:
    """``python -m sfsim sweep`` over ``points`` points of a ``devices``-device fleet, whole process."""
    path.write_text(yaml.safe_dump(scenario(devices, 20, 4)))
    csv = path.with_suffix(".csv")
    wall, cpu, _, out = whole_process(["sweep", "--devices", str(path), "--vary",
                                       f"servers[0].flops=10TFLOPS..1PFLOPS:log:{points}", "-o", str(csv),
                                       "--overwrite"])
    rows = sum(1 for _ in csv.open()) - 1
    per = wall / points
    how = "measured" if points >= 10_000 else f"extrapolated from {points:,} points"
    print(f"4. python -m sfsim sweep, {devices:,}-device fleet, 20 micro-batches a device, {points:,} points "
          f"({rows:,} rows, all cores): {wall:.1f} s wall, {cpu:.1f} s CPU ({per * 1e3:.1f} ms wall and "
          f"{cpu / points * 1e3:.1f} ms CPU a point); 10,000 points: {per * 1e4 / 60:.1f} min wall ({how})")
    print(f"   ({out[-1] if out else ''})")


if __name__ == "__main__":
    main()
