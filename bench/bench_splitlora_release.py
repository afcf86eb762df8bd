"""Benchmark: SplitLoRA handovers without ``training.sync`` where idle clients are released at their server's next look
(issue 21's deferred release, ``InTime.look_at``): the fast path's joint loop (``sfsim.fast.splitmoves``) against the
SimPy engine, which ``auto`` ran for such fleets before the joint loop replayed the release (``RELEASE``).

The fleet is ``tests/test_splitlora_release_points.py``'s ``unsynced_fleet`` (FedAvg every 2 server steps, no backhaul)
``N`` times over: ``N`` pairs of servers, on each pair a mover (16 samples) that hands over from the first to the second
at 300 s while idle on its server's full quota (a slow stayer holds it: the deferred release), and a stayer on each.
Prints each engine's wall and CPU seconds per run (best of ``--repeat``; the fast path's first, compiling call is not
timed), micro-batches per CPU second, the ratio, what ``auto`` runs, and whether every figure is equal.

Run: ``.venv/bin/python bench/bench_splitlora_release.py [--copies N] [--epochs E] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sfsim  # noqa: E402
from sfsim.scenario.config import load_scenario  # noqa: E402


def fleet(n: int, epochs: int) -> dict:
    """The fleet (module docstring): ``n`` copies of ``unsynced_fleet`` on ``2 n`` servers."""
    up, down = {"bandwidth": "0.5 Mbps", "latency": "5 ms"}, {"bandwidth": "2 Mbps", "latency": "5 ms"}
    servers, devices = [], []
    for i in range(n):
        a, b = f"mec-a{i}", f"mec-b{i}"
        servers += [{"name": a, "flops": "10 TFLOPS", "memory": "16 GiB"},
                    {"name": b, "flops": "10 TFLOPS", "memory": "16 GiB"}]
        dev = {"memory": "4 GiB", "uplink": up, "downlink": down}
        devices += [{**dev, "name": f"mover{i}", "server": a, "flops": "20 MFLOPS", "samples": 16,
                     "handover": [{"at": "300 s", "to": b, "uplink": {"bandwidth": "1 Mbps", "latency": "5 ms"}}]},
                    {**dev, "name": f"stay-a{i}", "server": a, "flops": "5 MFLOPS", "samples": 8},
                    {**dev, "name": f"stay-b{i}", "server": b, "flops": "20 MFLOPS", "samples": 4}]
    return {"description": f"deferred release, {n} copies",
            "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "epochs": epochs, "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                         "accumulate": 1, "buffer": 2, "server_policy": "fifo", "fedavg_every": 2},
            "servers": servers, "devices": devices}


def timed(sc, engine: str, repeat: int):
    """(best wall s, best CPU s, result) of ``repeat`` runs."""
    best = (float("inf"), float("inf"), None)
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        res = sfsim.simulate(sc, "splitlora", splits=1, engine=engine)
        best = min(best[0], time.perf_counter() - w), min(best[1], time.process_time() - c), res
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=20, help="copies of the 2-server, 3-device fleet")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.yaml"
        path.write_text(yaml.safe_dump(fleet(args.copies, args.epochs)))
        sc = load_scenario(path)
        auto = sfsim.simulate(sc, "splitlora", splits=1, engine="auto")  # compiles the fast path where it runs
        sw, sc_cpu, simpy = timed(sc, "simpy", args.repeat)
        if auto.engine != "fast":  # before the joint loop replayed the release: SimPy only
            print(f"auto runs: {auto.engine} ({auto.engine_note}); simpy: {sw:.3f} s wall ({sc_cpu:.3f} s CPU), "
                  f"{simpy.micro_batches / max(sc_cpu, 1e-9):.0f} micro-batches per CPU s")
            return
        fw, fc, fast = timed(sc, "fast", args.repeat)
    same = {k: v for k, v in simpy.to_dict().items() if k not in ("engine", "engine_note")} == \
        {k: v for k, v in fast.to_dict().items() if k not in ("engine", "engine_note")}
    mb = simpy.micro_batches
    print(f"{3 * args.copies} devices on {2 * args.copies} servers, {args.epochs} epochs, {mb} micro-batches, makespan {simpy.makespan_s:.3f} s, "
          f"{len(simpy.handovers)} handovers")
    print(f"auto runs: {auto.engine}" + (f" ({auto.engine_note})" if auto.engine_note else ""))
    print(f"simpy: {sw:.3f} s wall ({sc_cpu:.3f} s CPU), {mb / max(sc_cpu, 1e-9):.0f} micro-batches per CPU s")
    print(f"fast:  {fw:.3f} s wall ({fc:.3f} s CPU), {mb / max(fc, 1e-9):.0f} micro-batches per CPU s")
    print(f"ratio (CPU): {sc_cpu / max(fc, 1e-9):.1f}x; every figure equal: {same}")


if __name__ == "__main__":
    main()
