"""SplitLoRA with ``training.sync`` and a client that hands over to another server and back (issue 19).

A client served by s0 just before s0's step waits on the backhaul round can be handed to s1 at its handover's
instant, train there, and come back to s0 with a micro-batch on its way (A -> B -> A) before s0's round ends. s0's
loop then took the client it had just served for one it still drove: it counted that micro-batch down from the rest
of the epoch ``join`` had just counted anew and sent it a second ``fwd`` while the first was out (the runtime's
server sends none to a client with a ``fwd`` outstanding): a client twice in the server's list with one arrival, and
SimPy stopped on ``TypeError: '>' not supported between 'NoneType' and 'float'`` (the semantic fuzzer's seeds 395,
415, 1273, 1569, 1704, 1780). Each fleet here must run to its end and train every micro-batch exactly once.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

import sfsim
from sfsim.scenario.config import scenario_from_dict


def bouncing(seed: int) -> dict:
    """A fleet of ``seed``: two servers with backhaul links and ``training.sync`` (every 1 or 3), stayers on each,
    and movers that go from s0 to s1 and come back a moment later."""
    rng = random.Random(seed)
    servers = [{"name": f"s{k}", "flops": f"{rng.choice(flops)} TFLOPS", "memory": "24 GiB",
                "backhaul": {"bandwidth": f"{rng.choice([100, 1000])} Mbps", "latency": f"{rng.choice([1, 3, 10])} ms"}}
               for k, flops in enumerate(([1, 2, 5], [5, 10, 20]))]
    training = {"micro_batch": rng.choice([1, 2]), "epochs": rng.choice([1, 2]), "accumulate": rng.choice([1, 1, 2]),
                "server_policy": rng.choice(["fifo", "pool"]), "lora": {"rank": 4, "alpha": 8}, "seed": seed,
                "sync": {"every": rng.choice([1, 3]), "mode": rng.choice(["sync", "async"])}}
    out = rng.choice([1.0, 1.5, 2.0])
    devices = [{"name": "mover", "count": rng.choice([1, 2]), "samples": rng.choice([24, 40]), "server": "s0",
                "handover": [{"at": f"{out} s", "to": "s1"}, {"at": f"{out + rng.choice([0.1, 0.2, 0.3]):.1f} s",
                                                               "to": "s0"}]},
               {"name": "stay0", "count": rng.choice([2, 3, 5]), "samples": rng.choice([8, 16]), "server": "s0"},
               {"name": "stay1", "count": rng.choice([1, 3]), "samples": rng.choice([8, 16]), "server": "s1"}]
    for d in devices:
        d.update(flops=f"{rng.choice([30, 80])} GFLOPS", memory="4 GiB",
                 uplink={"bandwidth": f"{rng.choice([10, 50, 300])} Mbps", "latency": f"{rng.choice([1, 5])} ms"},
                 downlink={"bandwidth": f"{rng.choice([5, 20, 100])} Mbps", "latency": f"{rng.choice([5, 10])} ms"})
    return {"description": f"bouncing seed {seed}", "training": training, "servers": servers, "devices": devices,
            "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2}}


#: fleets of :func:`bouncing` on which SimPy stopped with the TypeError before the fix (10 of seeds 0-149; none of 0-299
#: fails with it)
BOUNCED = (34, 53, 65, 71, 91, 106, 107, 117, 125, 128)
#: the fuzzer's fleets (tests/test_fuzz_fleets.py's ``fleet(seed)`` of seeds 395, 415, 1273, 1569, 1704, 1780), as found
FUZZED = json.loads((Path(__file__).parent / "fixtures" / "splitlora_bounce_sync.json").read_text())


def _trained_once(data: dict) -> None:
    """SimPy runs the fleet to its end; every device's micro-batches are trained exactly once, on the servers."""
    sim = sfsim.simulate(scenario_from_dict(data, source="bounce.yaml"), "splitlora", engine="simpy", trace=True)
    assert not any(sim.samples_not_trained.values())  # (a churn: pause device is listed with 0)
    servers = {s["name"] for s in data["servers"]}
    f = Counter((e.device, e.mb) for e in sim.events if e.op == "F" and e.lane.split("/")[0] in servers)
    epochs, mb = data["training"]["epochs"], data["training"]["micro_batch"]
    want = Counter()
    for d in data["devices"]:
        names = [d["name"]] if d.get("count", 1) == 1 else [f"{d['name']}-{j}" for j in range(d["count"])]
        for name in names:
            want.update((name, j) for j in range(epochs * math.ceil(d["samples"] / mb)))
    assert f == want
    assert {h["device"] for h in sim.handovers} >= {n for n, _ in want if n.startswith("mover")}


@pytest.mark.parametrize("seed", BOUNCED)
def test_a_client_handed_over_and_back_during_a_step_round_is_driven_once(seed):
    _trained_once(bouncing(seed))


@pytest.mark.parametrize("seed", sorted(FUZZED, key=int))
def test_the_fuzzers_fleets_with_a_bouncing_mover_are_driven_once(seed):
    _trained_once(FUZZED[seed])
