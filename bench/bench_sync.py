"""Benchmark: SplitFrozen with ``training.sync`` on 4 servers, the fast path (sfsim.fast.synced) against the SimPy engine.

The bench_engine.py fleet (five device speeds, three link speeds, buffer 64, accumulate 4, decomposed B/W) over 4
single-worker servers of unequal speed (their F/B/W seconds x 1.0, 1.3, 0.8, 1.6), each with its own backhaul link
(1, 2, 1 and 0.5 Gbps, 2-5 ms) and a 2 MB adapter a round, with ``sync: {every, mode}`` for each pair given.
Prints micro-batches per second of both engines (wall, and CPU in brackets: the machine is shared), the ratio by
CPU, the rounds, and whether the makespans and every figure SimResult reports (rounds and backhaul bytes too) are
equal (``every 1`` in ``sync`` mode: the gradients averaged before each step). A pair the fast path does not cover
prints its SimPy rate and why. ``--epochs E``: each device's micro-batches are ``E`` equal epochs, and each server
opens one at a time after its epoch-end rounds (the pair ``none`` : no ``training.sync``, each epoch's closing round;
the pair ``nobackhaul``: no backhaul at all, so with ``--epoch-end`` each server opens its epochs for the wait alone).
``--cache``: each device sends its first epoch only and its server replays the later ones from its activation cache;
``--epoch-end S``: each server waits ``S`` seconds at each epoch's end (``training.eval_samples``' evaluation, adapter
and checkpoint) before its next epoch.

Run: ``.venv/bin/python bench/bench_sync.py [--devices N] [--mb M] [--sequential] [--epochs E] [--cache]
[--epoch-end S] [--sync 1:async,10:sync,none,...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import fleet  # noqa: E402

from sfsim.engine.pool import Engine  # noqa: E402
from sfsim.fast import replay, uncovered  # noqa: E402
from sfsim.network.backhaul import PoolRounds, SyncSpec  # noqa: E402
from sfsim.schedules import ReplayConfig, splitfrozen  # noqa: E402

CFG = ReplayConfig(buffer=64, accumulate=4, decompose=True)  # bench_engine.py's knobs
SPEED = (1.0, 1.3, 0.8, 1.6)  # each server's seconds per unit of work
LINKS = ((1e9, 0.002), (2e9, 0.003), (1e9, 0.005), (0.5e9, 0.004))  # backhaul bit/s, latency s
ADAPTER = 2e6  # bytes a round (the servers' LoRA blocks and head)


def synced_fleet(devices: int, mb: int, every: int | None, mode: str, epochs: int = 1, cache: bool = False,
                 backhaul: bool = True):
    """bench_engine.py's fleet on 4 unequal servers with backhaul rounds (see the module docstring); ``mb``
    micro-batches a device in ``epochs`` equal epochs (``every`` None: each epoch's closing round alone; ``cache``:
    each device sends its first epoch only)."""
    job = fleet(devices, mb, servers=len(SPEED))
    for i, d in enumerate(job.devices):
        x = SPEED[d.server]
        per = mb // epochs if epochs > 1 else d.per_epoch
        job.devices[i] = dataclasses.replace(d, srv_f=d.srv_f * x, srv_b=d.srv_b * x, srv_w=d.srv_w * x,
                                             per_epoch=per, sent=per if cache else d.sent)
    links = tuple((s.name, bw, lat) for s, (bw, lat) in zip(job.servers, LINKS, strict=True))
    job.sync = SyncSpec(links, every, mode, ADAPTER, ADAPTER, epochs) if backhaul else None
    return job


def figures(rec, makespan: float, rounds: int, backhaul: dict) -> tuple:
    """What SimResult reports of a run, comparable across the engines."""
    return (makespan, dict(rec.server_busy), dict(rec.server_wait), dict(rec.server_end),
            {k: (m.value, m.total) for k, m in rec.mixing.items()}, dict(rec.device_busy), dict(rec.up_bytes),
            rounds, dict(backhaul))


def run_fast(job, sequential: bool, wait: dict | None = None) -> tuple:
    """The fast path's figures (``wait``: each server's epoch-end seconds)."""
    rec, makespan = replay(job, CFG, sequential, epoch_end=wait)
    return figures(rec, makespan, *((rec.sync.rounds, rec.sync.bytes) if rec.sync is not None else (0, {})))


def run_engine(job, sequential: bool, wait: dict | None = None) -> tuple:
    """The SimPy engine's figures."""
    engine = Engine()
    engine.epoch_end = dict(wait or {})
    if job.sync is not None and job.sync.every is not None:  # else splitfrozen.run makes each epoch's closing round
        PoolRounds(engine, job.sync, job.servers)
    splitfrozen.run(engine, job, CFG, sequential=sequential)
    makespan = engine.run()
    return figures(engine, makespan, *((engine.sync.rounds, engine.sync.bytes) if engine.sync is not None else (0, {})))


def timed(fn, *args):
    """(result, wall s, CPU s of this process) of ``fn(*args)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


class _Scenario:
    """What uncovered() reads of a scenario beyond the job."""

    class training:  # noqa: N801
        sync, eval_samples, epochs = True, None, 1

    servers = SPEED


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--sequential", action="store_true", help="the splitfrozen-sequential ablation")
    ap.add_argument("--epochs", type=int, default=1, help="equal epochs of --mb micro-batches (it must divide them)")
    ap.add_argument("--cache", action="store_true", help="activation cache: devices send their first epoch only")
    ap.add_argument("--epoch-end", type=float, default=0.0, help="seconds each server waits at each epoch's end")
    ap.add_argument("--sync", default="1:async,10:sync,10:async,1:sync", help="every:mode pairs, none or nobackhaul")
    args = ap.parse_args()
    if args.epochs < 1 or args.mb % args.epochs:
        ap.error(f"--epochs {args.epochs} must be >= 1 and divide --mb {args.mb}")
    E, C = args.epochs, args.cache
    wait = {f"s{k}": args.epoch_end for k in range(len(SPEED))} if args.epoch_end > 0 else None
    _Scenario.training.eval_samples, _Scenario.training.epochs = (8 if wait else None), E
    run_fast(synced_fleet(8, 2 * E, 2, "async", E, C), args.sequential, wait)  # load the compiled kernels (not timed)
    n = args.devices * args.mb
    name = "splitfrozen-sequential" if args.sequential else "splitfrozen"
    for pair in args.sync.split(","):
        bh = pair != "nobackhaul"
        every, mode = (None, "sync") if pair in ("none", "nobackhaul") else (int(pair.split(":")[0]), pair.split(":")[1])
        what = ("no backhaul" if not bh else "no sync (a closing round each epoch)" if every is None
                else f"sync every {every} {mode}")
        head = (f"{name}, {args.devices:,} devices x {args.mb} micro-batches, {E} epoch(s){', cached' if C else ''}"
                f"{f', {args.epoch_end:g} s epoch-end wait' if wait else ''}, 4 servers, {what}")
        eng, t_eng, c_eng = timed(run_engine, synced_fleet(args.devices, args.mb, every, mode, E, C, bh),
                                  args.sequential, wait)
        why = uncovered(_Scenario(), name, CFG, synced_fleet(2, E, every, mode, E, C, bh))
        if why is not None:
            print(f"{head}: SimPy engine {n / t_eng:,.0f} mb/s ({n / c_eng:,.0f} CPU), {eng[7]:,} rounds; no fast path "
                  f"({why})", flush=True)
            continue
        fast, t_fast, c_fast = timed(run_fast, synced_fleet(args.devices, args.mb, every, mode, E, C, bh),
                                     args.sequential, wait)
        print(f"{head}: fast {n / t_fast:,.0f} mb/s ({n / c_fast:,.0f} CPU), SimPy engine {n / t_eng:,.0f} mb/s "
              f"({n / c_eng:,.0f} CPU); fast/engine {c_eng / c_fast:,.1f}x by CPU; {fast[7]:,} rounds; makespans "
              f"equal: {fast[0] == eng[0]} ({fast[0]:.3f} s simulated); every figure equal: {fast == eng}", flush=True)


if __name__ == "__main__":
    main()
