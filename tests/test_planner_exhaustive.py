"""The planner against every plan: seeded random heterogeneous fleets, each plan replayed on the fast path."""

from __future__ import annotations

import itertools
import random

import pytest

import sfsim
from sfsim.cost.model import CostModel
from sfsim.errors import InfeasibleError
from sfsim.planner import plan
from sfsim.planner.exhaustive import Catalogue, fastest, plan_count, type_plans
from sfsim.planner.model import build_table
from sfsim.scenario.planfile import Plan

MiB = 2**20


def random_fleet(seed: int, devices: int, servers: int, lora_start: int):
    """GPT-2 (12 blocks) on 16 tokens; unequal FLOP/s, links, memory, samples and server speeds."""
    rng = random.Random(seed)
    devs = [{"name": f"d{i}", "flops": f"{rng.uniform(0.5, 8):.2f} GFLOPS", "memory": rng.randint(190, 400) * MiB,
             "samples": rng.randint(2, 9), "uplink": {"bandwidth": f"{rng.uniform(0.5, 20):.2f} Mbps",
                                                       "latency": f"{rng.randint(1, 40)} ms"},
             "downlink": {"bandwidth": "10 Mbps"}} for i in range(devices)]
    srvs = [{"name": f"s{j}", "flops": f"{rng.uniform(1, 12):.2f} GFLOPS", "memory": "1 GiB",
             "count": rng.choice((1, 1, 2))} for j in range(servers)]
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 16, "task": "classification", "num_labels": 2},
        "training": {"micro_batch": 1, "accumulate": rng.randint(1, 3), "buffer": rng.randint(1, 4),
                     "lora_start": lora_start},
        "servers": srvs, "devices": devs})


def best_by_simulate(sc) -> float:
    """The fastest makespan over every per-device cut and server, each plan simulated (infeasible ones skipped)."""
    names, servers = [d.name for d in sc.devices], [s.name for s in sc.servers]
    ls = sc.training.lora_start
    best = float("inf")
    for choice in itertools.product(itertools.product(range(1, ls + 1), servers), repeat=len(names)):
        p = Plan(splits={n: k for n, (k, _) in zip(names, choice, strict=True)}, lora_start=ls,
                 assignment={n: s for n, (_, s) in zip(names, choice, strict=True)})
        try:
            best = min(best, sfsim.simulate(sc, plan=p, engine="fast").makespan_s)
        except InfeasibleError:
            continue
    return best


@pytest.mark.parametrize("seed,devices,servers,lora_start", [(1, 3, 2, 3), (2, 3, 3, 2), (3, 4, 2, 2),
                                                             (4, 2, 3, 4)])
def test_plan_within_one_percent_of_every_plan(seed, devices, servers, lora_start):
    sc = random_fleet(seed, devices, servers, lora_start)
    best = best_by_simulate(sc)
    res = plan(sc)
    assert res.makespan_s <= best * 1.01
    assert res.makespan_s == sfsim.simulate(sc, plan=res).makespan_s


def test_catalogue_replays_what_simulate_gives():
    sc = random_fleet(7, 4, 3, 3)
    cm = CostModel(sc)
    table = build_table(cm, sc, 3, 1, "splitfrozen")
    cat = Catalogue(sc, cm, table, "splitfrozen")
    assert cat.why is None
    rng = random.Random(0)
    plans = list(itertools.product(*(type_plans(table, t) for t in range(len(table.types)))))
    assert len(plans) == plan_count(table)
    for combo in rng.sample(plans, 40):
        groups = [g for part in combo for g in part]
        from sfsim.planner.exhaustive import expand

        splits, assignment = expand(table, groups)
        want = sfsim.simulate(sc, plan=Plan(splits=splits, lora_start=3, assignment=assignment), engine="simpy")
        assert cat.makespan(groups) == want.makespan_s


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_plan_within_one_percent_on_bigger_fleets(seed):
    """Up to 8 devices and 3 servers, every plan replayed on the fast path."""
    rng = random.Random(seed)
    devices, servers = rng.choice(((8, 2), (6, 3), (5, 3), (7, 2)))
    sc = random_fleet(100 + seed, devices, servers, 2)
    cm = CostModel(sc)
    table = build_table(cm, sc, 2, 1, "splitfrozen")
    best = fastest(sc, cm, table, "splitfrozen", limit=10**6)
    assert best is not None
    assert plan(sc).makespan_s <= best[0] * 1.01
