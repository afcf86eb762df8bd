"""Compile the fast path's kernels ahead of a user's first run: ``python -m sfsim.fast.warm``.

numba compiles each kernel the first time it is called and caches the machine code on disk
(a folder of ``sfsim/fast/__pycache__`` named after its sources' digest, :mod:`sfsim.fast.jit`; or ``NUMBA_CACHE_DIR``), so only the first ``simulate`` or ``plan`` after an
install pays for it: a few minutes of one core for all of them. ``make setup`` runs this
module, so that the README's first command plans in seconds. It replays a small scenario written here
(two servers, a varying uplink, a pausing and a dropping device, then a device handing over, then servers
with backhaul links for the baselines' closing rounds) through every schedule's fast path (SplitFrozen's
and SplitLoRA's joint handover loops included) and every SplitFrozen policy, and plans it; the figures
are thrown away.

By default it compiles only what the README's commands reach (:data:`FIRST`: planning and simulating the
bundled fleets on constant links, every schedule): a new user waits for those alone. The kernels of the dynamic
network, handovers, backhaul rounds and ``training.sync`` compile on their first use instead (cached as well);
``--all`` compiles every kernel now (:data:`STEPS`).

The steps are split into two parts of about equal compile time, compiled by two
processes at once (``--jobs 1``: one after the other). Two processes may save kernels to the same
cache index; numba's save is a read-modify-write of that index, so every process holds a lock on the
index while it saves (:func:`sfsim.fast.jit._locked_saves`) and no entry can point at another kernel's machine code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

#: A small fleet that reaches every compiled branch: constant links and a repeating uplink trace
#: (expressed inline), a pausing and a dropping device, two servers. Devices stay on their servers
#: (:func:`_handover` adds one that moves).
_LINK = {"bandwidth": "40 Mbps", "latency": "5 ms"}
_SCENARIO = {
    "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "buffer": 4, "accumulate": 2},
    "servers": [{"name": "s0", "flops": "20 TFLOPS", "memory": "24 GiB"},
                {"name": "s1", "flops": "9 TFLOPS", "memory": "24 GiB"}],
    "devices": [
        {"name": "steady", "count": 3, "flops": "60 GFLOPS", "memory": "4 GiB", "samples": 24,
         "uplink": dict(_LINK), "downlink": dict(_LINK)},
        {"name": "paused", "count": 1, "flops": "30 GFLOPS", "memory": "4 GiB", "samples": 24,
         "uplink": dict(_LINK), "downlink": dict(_LINK),
         "availability": {"mean_on": "2 s", "mean_off": "1 s", "churn": "pause"}},
        {"name": "dropped", "count": 1, "flops": "30 GFLOPS", "memory": "4 GiB", "samples": 24,
         "uplink": dict(_LINK), "downlink": dict(_LINK),
         "availability": {"mean_on": "3 s", "mean_off": "1 s", "churn": "drop"}},
    ],
}


def _static() -> dict:
    """The scenario without availability: the constant-rate kernels."""
    data = {**_SCENARIO, "devices": [{k: v for k, v in d.items() if k != "availability"} for d in _SCENARIO["devices"]]}
    return data


def _handover() -> dict:
    """The scenario with one steady device handing over to the other server and back: the one loop of all servers."""
    devices = [dict(d) for d in _SCENARIO["devices"]]
    devices.append({"name": "mover", "count": 1, "flops": "60 GFLOPS", "memory": "4 GiB", "samples": 24,
                    "server": "s0", "uplink": dict(_LINK), "downlink": dict(_LINK),
                    "handover": [{"at": "0.2 s", "to": "s1"}, {"at": "0.5 s", "to": "s0"}]})
    return {**_SCENARIO, "devices": devices}


def _closing(data: dict) -> dict:
    """``data`` in two epochs, its servers on backhaul links: each epoch's closing round (:mod:`sfsim.fast.closing`)."""
    servers = [{**s, "backhaul": {"bandwidth": "1 Gbps", "latency": "2 ms"}} for s in data["servers"]]
    return {**data, "servers": servers, "training": {**data["training"], "epochs": 2}}


def _synced(data: dict) -> dict:
    """``data`` with ``training.sync`` (the baselines' rounds in lockstep: :mod:`sfsim.fast.lockstep`)."""
    return {**data, "training": {**data["training"], "sync": {"every": 2, "mode": "sync"}}}


_SCENARIOS = {"constant links": _static, "availability": lambda: _SCENARIO, "handover": _handover,
              "backhaul": lambda: _closing(_static()), "backhaul, availability": lambda: _closing(_SCENARIO),
              "backhaul sync": lambda: _synced(_closing(_static())),
              "backhaul sync, availability": lambda: _synced(_closing(_SCENARIO))}
_BACKHAUL = ("backhaul", "backhaul, availability")  # with handovers between servers: SimPy (peers21, fedclose21)
STEPS = (
    [(label, "splitfrozen") for label in ("constant links", "availability")]
    + [("constant links", "pool"), ("constant links", "plan")]
    + [(label, schedule) for label in ("constant links", "availability", "handover", *_BACKHAUL)
       for schedule in ("splitlora", "cenlora")]
    + [("backhaul sync", "splitlora"), ("backhaul sync", "cenlora"), ("backhaul sync, availability", "splitlora")],
    [("handover", "splitfrozen")] + [(label, "fedlora") for label in ("constant links", "availability", "handover",
                                                                       *_BACKHAUL, "backhaul sync")],
)
"""The warm-up's steps, (scenario, schedule; ``pool``: SplitFrozen's pool policy, ``plan``: the planner), in two
parts of about equal cold compile time (measured on a quiet machine, one process: SplitFrozen's per-server
kernel 69 s, SplitLoRA's and CenLoRA's loops 62 s; the one loop of all SplitFrozen servers 82 s, FedLoRA's
18 s). The planner replays on the per-server kernel, compiled first in the same part; only small helpers that
both parts call are compiled twice. ``splitfrozen-sequential`` runs the same kernels as ``splitfrozen``."""

FIRST = (
    [("constant links", "splitfrozen"), ("constant links", "plan")],
    [("constant links", schedule) for schedule in ("splitlora", "cenlora", "fedlora")],
)
"""The default warm-up: what ``sfsim plan`` and ``sfsim simulate --schedule all`` reach on the bundled fleets
(``profiles/edge.yaml``, ``profiles/sixg.yaml``: constant links, one epoch, no backhaul), in two parts of about
equal cold compile time (SplitFrozen's per-server kernel, which the planner replays on, against the baselines'
loops)."""


def warm(part: int | None = None, steps: tuple = STEPS) -> list[str]:
    """Replay and plan the small scenarios on the fast path (one part of ``steps``, or all); one line per step
    with its wall and CPU seconds."""
    import sfsim
    from sfsim.planner import plan
    from sfsim.scenario.config import scenario_from_dict

    lines = []
    for label, schedule in [step for k, share in enumerate(steps) if part in (None, k) for step in share]:
        scenario = scenario_from_dict(_SCENARIOS[label](), source="sfsim.fast.warm")
        t0, c0 = time.perf_counter(), time.process_time()
        if schedule == "plan":
            plan(scenario)
            _static_kernel()
        elif schedule == "pool":
            sfsim.simulate(scenario, "splitfrozen", splits=2, policy="pool", engine="auto")
        else:
            sfsim.simulate(scenario, schedule, splits=2, engine="auto")
        lines.append(f"{schedule} ({label}): {time.perf_counter() - t0:.1f} s, {time.process_time() - c0:.1f} s CPU")
    return lines


def _static_kernel() -> None:
    """The all-static SplitFrozen replay the planner's enumeration calls (:func:`sfsim.fast.kernel.replay_server`)."""
    import numpy as np

    from sfsim.fast.kernel import _LAST, replay_server

    D, N = np.full((9, 1), 0.01), np.ones((3, 1), np.int64)  # one device, one micro-batch, whole (D's last row: 1)
    D[_LAST] = 1.0
    replay_server(D, N, 1, 0.0, 1, 1, 0, 0, 0.0, (np.zeros(0, np.int64),) * 4)


def main() -> None:
    """Print what was compiled and how long it took."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, choices=(1, 2), default=2, help="processes compiling at once")
    ap.add_argument("--all", action="store_true",
                    help="every kernel (dynamic network, handovers, backhaul rounds, training.sync) now, not on first use")
    ap.add_argument("--part", type=int, choices=range(len(STEPS)), help=argparse.SUPPRESS)  # one process's share
    args = ap.parse_args()
    steps = STEPS if args.all else FIRST
    t0 = time.perf_counter()
    if args.part is not None:
        for line in warm(args.part, steps):
            print(f"  {line}", flush=True)
        return
    print("sfsim: compiling the fast path's kernels once (numba caches them)...", flush=True)
    if args.jobs == 1 or os.name != "posix":
        for line in warm(steps=steps):
            print(f"  {line}", flush=True)
    else:
        extra = ["--all"] if args.all else []
        jobs = [subprocess.Popen([sys.executable, "-m", "sfsim.fast.warm", "--part", str(k), *extra])
                for k in range(len(steps))]
        if any(job.wait() for job in jobs):
            raise SystemExit("sfsim: compiling the fast path's kernels failed (see above)")
    used = os.times()
    cpu = used.user + used.system + used.children_user + used.children_system
    print(f"sfsim: compiled in {time.perf_counter() - t0:.0f} s ({cpu:.0f} s CPU)", flush=True)


if __name__ == "__main__":
    main()
