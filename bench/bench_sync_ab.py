"""Benchmark: the one-epoch ``training.sync`` fast path of two or more commits, timed alternately in one process.

Each commit's ``sfsim`` is copied out of git under its own package name (``sfsim_<commit>``, every ``sfsim``
name in its sources renamed), so both load side by side; the fleet is bench_sync.py's (1,000 devices x 100
micro-batches, 4 unequal servers with their backhaul links, buffer 64, accumulate 4, decomposed B/W). Each copy
compiles its kernels on first use (minutes per copy, cached in the copy). Prints the CPU milliseconds of one
replay per commit (min / median over ``--reps``, the order rotating) and checks the figures are equal. A commit
may be any tree-ish ``git archive`` takes (``$(git stash create)``: the working tree's changes, uncommitted).

Run: ``.venv/bin/python bench/bench_sync_ab.py OLD NEW [MORE ...] [--every 10] [--mode sync] [--reps 15]
[--dir /tmp/ab]``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED = (1.0, 1.3, 0.8, 1.6)  # bench_sync.py's servers
LINKS = ((1e9, 0.002), (2e9, 0.003), (1e9, 0.005), (0.5e9, 0.004))


def copy_out(commit: str, where: Path) -> str:
    """``sfsim`` at ``commit`` as package ``sfsim_<commit>`` under ``where`` (kept when it is there already)."""
    name = "sfsim_" + re.sub(r"\W", "_", commit)
    dest = where / name
    if not dest.exists():
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "sfsim"], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(where / "_x", filter="data")
        (where / "_x" / "sfsim").rename(dest)
        for src in dest.rglob("*.py"):
            src.write_text(re.sub(r"\bsfsim\b", name, src.read_text()))
    return name


def load(pkgs: list[str]) -> None:
    """Import every copy's kernels module; numba's cache save wrapped in a file lock once, not once a copy.

    Each copy's ``sfsim.fast.jit`` wraps numba's cache save in an exclusive lock on the index file
    (``_locked_saves``); a second copy's wrap around the first would wait, in the same process, for the lock the
    first has just taken (``flock`` on a second descriptor): the first compile of a kernel would hang for ever.
    """
    from numba.core.caching import IndexDataCacheFile

    first = None
    for p in pkgs:
        before = IndexDataCacheFile.save
        importlib.import_module(p + ".fast.jit")
        if IndexDataCacheFile.save is not before:  # this copy wrapped it
            first = first or IndexDataCacheFile.save
            IndexDataCacheFile.save = first


def fleet(pkg: str, every: int, mode: str, devices: int, mb: int):
    """bench_sync.py's fleet with ``pkg``'s own classes."""
    pool = importlib.import_module(pkg + ".engine.pool")
    sch = importlib.import_module(pkg + ".schedules")
    backhaul = importlib.import_module(pkg + ".network.backhaul")
    devs = [pool.DeviceTimes(f"d{i}", server=i % 4, n=mb, f=(0.05, 0.08, 0.13, 0.21, 0.34)[i % 5],
                             up_s=(0.02, 0.05, 0.11)[i % 3], up_l=0.005 * (i % 7), srv_f=0.0008 * SPEED[i % 4],
                             srv_b=0.0006 * SPEED[i % 4], srv_w=0.0006 * SPEED[i % 4]) for i in range(devices)]
    job = sch.Job(devs, [pool.ServerTimes(f"s{k}", count=1, step=0.0001) for k in range(4)])
    links = tuple((s.name, bw, lat) for s, (bw, lat) in zip(job.servers, LINKS, strict=True))
    job.sync = backhaul.SyncSpec(links, every, mode, 2e6, 2e6, 1)
    return job, sch.ReplayConfig(buffer=64, accumulate=4, decompose=True)


def replay_cpu(pkg: str, every: int, mode: str, devices: int = 1000, mb: int = 100) -> tuple[float, tuple]:
    """CPU seconds of one fast-path replay of ``pkg``, and its makespan and server busy seconds."""
    job, cfg = fleet(pkg, every, mode, devices, mb)
    replay = importlib.import_module(pkg + ".fast.replay").replay
    c0 = time.process_time()
    rec, makespan = replay(job, cfg, False)
    return time.process_time() - c0, (makespan, dict(rec.server_busy))


def main() -> None:
    """Copy out both commits, load their kernels, then time them alternately."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("commits", nargs="+")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--mode", default="sync")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/sfsim_ab"))
    args = ap.parse_args()
    if len(args.commits) < 2:
        raise SystemExit("bench_sync_ab: give two commits or more")
    args.dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(args.dir))
    pkgs = [copy_out(c, args.dir) for c in args.commits]
    load(pkgs)
    for p in pkgs:  # compile or load the kernels (not timed)
        replay_cpu(p, args.every, args.mode, 8, 4)
    times: dict[str, list[float]] = {p: [] for p in pkgs}
    want = None
    for r in range(args.reps):
        turn = pkgs[r % len(pkgs):] + pkgs[:r % len(pkgs)]  # each commit first, then later, in turn
        for p in turn if r % 2 == 0 else turn[::-1]:
            cpu, got = replay_cpu(p, args.every, args.mode)
            times[p].append(cpu)
            want = want or got
            assert got == want, f"{p}: other figures"
    print(f"every {args.every} {args.mode}, 1,000 x 100, 4 servers: CPU ms of one replay (min / median of {args.reps})")
    for c, p in zip(args.commits, pkgs, strict=True):
        v = sorted(times[p])
        print(f"  {c}: {1000 * v[0]:.1f} / {1000 * v[len(v) // 2]:.1f}")


if __name__ == "__main__":
    main()
