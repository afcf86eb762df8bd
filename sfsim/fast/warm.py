"""Compile the fast path's kernels ahead of a user's first run: ``python -m sfsim.fast.warm``.

numba compiles each kernel the first time it is called and caches the machine code on disk
(a folder of ``sfsim/fast/__pycache__`` named after its sources' digest, :mod:`sfsim.fast.jit`; or ``NUMBA_CACHE_DIR``), so only the first ``simulate`` or ``plan`` after an
install pays for it: about a minute of one core for the SplitFrozen kernel. ``make setup`` runs this
module, so that the README's first command plans in seconds. It replays a small scenario written here
(two servers, a varying uplink, a pausing and a dropping device, then a device handing over) through every
schedule's fast path (SplitFrozen's and SplitLoRA's joint handover loops included) and every SplitFrozen
policy, and plans it; the figures are thrown away.
"""

from __future__ import annotations

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


def warm() -> list[str]:
    """Replay and plan the small scenarios on the fast path; returns one line per step with its seconds."""
    import sfsim
    from sfsim.planner import plan
    from sfsim.scenario.config import scenario_from_dict

    lines = []
    for label, data in (("constant links", _static()), ("availability", _SCENARIO), ("handover", _handover()),
                        ("closing rounds", _closing(_static())), ("closing rounds, availability", _closing(_SCENARIO)),
                        ("closing rounds, handover", _closing(_handover()))):
        scenario = scenario_from_dict(data, source="sfsim.fast.warm")
        for schedule in ("splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora", "cenlora"):
            t0 = time.perf_counter()
            sfsim.simulate(scenario, schedule, splits=2, engine="auto")
            lines.append(f"{schedule} ({label}): {time.perf_counter() - t0:.1f} s")
    scenario = scenario_from_dict(_static(), source="sfsim.fast.warm")
    t0 = time.perf_counter()
    sfsim.simulate(scenario, "splitfrozen", splits=2, policy="pool", engine="auto")
    plan(scenario)
    lines.append(f"pool policy and a plan: {time.perf_counter() - t0:.1f} s")
    return lines


def main() -> None:
    """Print what was compiled and how long it took."""
    t0 = time.perf_counter()
    print("sfsim: compiling the fast path's kernels once (numba caches them)...", flush=True)
    for line in warm():
        print(f"  {line}", flush=True)
    print(f"sfsim: compiled in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
