"""Random *valid* fleets through every schedule, on the SimPy engine and on ``auto``: no run may crash (an exception
that is not :class:`~sfsim.errors.SfsimError`), stop with a "please report" line (a sync round no server could
finish, micro-batches never processed), or give different figures on the fast path than on SimPy.

Each seed draws a scenario (:func:`fleet`) from the space a user's scenarios span: 1-4 servers (some with two
accelerators), with or without backhaul links, ``training.sync`` every 1-5 steps in either mode, server or device
credits, every server policy, 1-3 epochs with or without ``eval_samples``, the activation cache, accumulation,
varying links (Gilbert-Elliott, fading), pause and drop churn, devices of ``count: 1`` and more, pinned or not, and
handovers (to another server and back). Refusals with their one line (a policy that cannot take joining devices, for
example) are allowed. ``bench/fuzz_fleets.py`` runs thousands of seeds; the default run takes a sample and the seeds
on which an earlier version crashed (the fuzzer found them)."""

from __future__ import annotations

import random

import pytest

import sfsim
from sfsim.errors import SfsimError
from sfsim.methods import METHODS
from sfsim.scenario.config import scenario_from_dict

POLICIES = ("fifo", "fifo", "round-robin", "proportional", "pool", "paced-round-robin")


def _link(rng: random.Random, varying: bool) -> dict:
    bw = rng.choice([2, 5, 10, 20, 50, 100, 300])
    link = {"bandwidth": f"{bw} Mbps", "latency": f"{rng.choice([1, 5, 10, 30])} ms"}
    if varying and rng.random() < 0.3:
        return {"gilbert_elliott": {"good": f"{bw} Mbps", "bad": f"{max(1, bw // 5)} Mbps", "mean_good": "2 s",
                                    "mean_bad": "0.5 s"}, "latency": link["latency"]}
    if varying and rng.random() < 0.3:
        link["fading"] = {"sigma_db": rng.choice([2, 4, 8]), "coherence": "0.5 s"}
    return link


def fleet(seed: int) -> dict:
    """The scenario (as a YAML dict) of ``seed``."""
    rng = random.Random(seed)
    ns = rng.choice([1, 1, 2, 2, 3, 4])
    backhaul = ns > 1 and rng.random() < 0.7
    servers = []
    for i in range(ns):
        srv = {"name": f"s{i}", "flops": f"{rng.choice([1, 2, 5, 10, 20])} TFLOPS", "memory": "24 GiB"}
        if rng.random() < 0.15:
            srv["count"] = 2
        if backhaul:
            srv["backhaul"] = {"bandwidth": f"{rng.choice([100, 500, 1000])} Mbps",
                               "latency": f"{rng.choice([1, 3, 10])} ms"}
        servers.append(srv)
    epochs = rng.choice([1, 1, 2, 2, 3])
    training = {"micro_batch": rng.choice([1, 2, 4]), "epochs": epochs, "accumulate": rng.choice([1, 1, 2, 4]),
                "buffer": rng.choice([1, 2, 4, 8]), "credits": rng.choice(["server", "device"]),
                "server_policy": rng.choice(POLICIES), "decompose_backward": rng.random() < 0.8,
                "lora": {"rank": 4, "alpha": 8}, "seed": rng.randrange(100)}
    if backhaul and rng.random() < 0.7:
        training["sync"] = {"every": rng.choice([1, 2, 3, 5]), "mode": rng.choice(["sync", "async"])}
    if epochs > 1 and rng.random() < 0.5:
        training["eval_samples"] = rng.choice([8, 20, 50])
    cache = epochs > 1 and rng.random() < 0.3
    if cache:
        training["cache_activations"] = True
    varying = rng.random() < 0.5
    devices = []
    for t in range(rng.choice([1, 2, 3, 4])):
        dev = {"name": f"t{t}", "count": rng.choice([1, 1, 2, 3, 5]), "flops": f"{rng.choice([10, 30, 80, 200])} GFLOPS",
               "memory": "4 GiB", "samples": rng.choice([4, 8, 16, 24, 40]), "uplink": _link(rng, varying),
               "downlink": _link(rng, False)}
        if rng.random() < 0.4:
            dev["server"] = f"s{rng.randrange(ns)}"
        if varying and rng.random() < 0.3:
            dev["availability"] = {"mean_on": f"{rng.choice([1, 2, 5])} s", "mean_off": f"{rng.choice([0.3, 1])} s",
                                   "churn": rng.choice(["pause", "drop"])}
        if ns > 1 and not cache and rng.random() < 0.3:
            home = dev.setdefault("server", "s0")
            others = [s["name"] for s in servers if s["name"] != home]
            moves, at = [], 0.0
            for k in range(rng.choice([1, 1, 2])):
                at += rng.choice([0.2, 0.5, 1.0, 2.0])
                moves.append({"at": f"{at} s", "to": rng.choice(others) if k == 0 else home})
            dev["handover"] = moves
        devices.append(dev)
    return {"description": f"fuzz_fleets seed {seed}", "training": training, "servers": servers, "devices": devices,
            "model": {"name": "gpt2", "seq_len": rng.choice([16, 32, 64]), "task": "classification", "num_labels": 2}}


def problems(seed: int) -> tuple[list[str], dict]:
    """What went wrong on ``seed`` (one line each; empty when nothing did), and counts of what ran where."""
    sc = scenario_from_dict(fleet(seed), source=f"fuzz-{seed}.yaml")
    out, counts = [], {"simpy": 0, "fast": 0, "refused": 0}
    for schedule in METHODS:
        try:
            want = sfsim.simulate(sc, schedule, engine="simpy")
        except SfsimError as err:
            if "please report" in str(err):
                out.append(f"seed {seed} {schedule}: SimPy stopped: {err}")
            counts["refused"] += 1
            continue
        except Exception as err:  # noqa: BLE001 - the point: any crash is a finding
            out.append(f"seed {seed} {schedule}: SimPy crashed: {type(err).__name__}: {err}")
            continue
        try:
            got = sfsim.simulate(sc, schedule, engine="auto")
        except Exception as err:  # noqa: BLE001
            out.append(f"seed {seed} {schedule}: auto failed where SimPy ran: {type(err).__name__}: {err}")
            continue
        counts[got.engine] += 1
        a, b = want.to_dict(), got.to_dict()
        if got.engine == "fast" and a != b:
            out.append(f"seed {seed} {schedule}: fast path differs from SimPy in {sorted(k for k in a if a[k] != b[k])}")
    return out, counts


#: seeds on which an earlier version crashed or deadlocked (bench/fuzz_fleets.py found them)
FOUND = (313, 395, 415, 713, 744, 836, 1057, 1099, 1227, 1229, 1273, 1335, 1445, 1569, 1704, 1780, 1920, 2043, 2394, 2402)


@pytest.mark.parametrize("seeds", [range(0, 60), FOUND, pytest.param(range(60, 2000), marks=pytest.mark.slow)])
def test_random_fleets_run_on_every_schedule(seeds):
    found = [line for seed in seeds for line in problems(seed)[0]]
    assert not found, "\n".join(found)
