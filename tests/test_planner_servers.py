"""The planner's server replays (sfsim.planner.servers): equal to simulate(), and the search they drive."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sfsim import simulate
from sfsim.planner import plan
from sfsim.planner.exhaustive import expand
from sfsim.planner.flow import _prepare
from sfsim.planner.search import candidates, fixed_cut
from sfsim.planner.servers import ServerSim, balance, improve, period_cuts
from sfsim.scenario.config import scenario_from_dict
from sfsim.scenario.planfile import Plan


def fleet(devices: int, servers: int, types: int, mb: int, seed: int, policy: str = "fifo") -> dict:
    """A seeded heterogeneous fleet: unequal FLOP/s, links, memory; servers of unequal speed and workers."""
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
            "training": {"micro_batch": 4, "accumulate": 8, "buffer": rng.choice([4, 8, 16, 32]), "split": 2,
                         "server_policy": policy},
            "servers": srv, "devices": kinds}


def _setup(data: dict, schedule: str = "splitfrozen"):
    sc = scenario_from_dict(data)
    schedule, table, lb, cm = _prepare(sc, schedule, "time", 1, 1, None)
    return sc, table, ServerSim(sc, cm, table, schedule), lb


@pytest.mark.parametrize("seed,policy,schedule", [(0, "fifo", "splitfrozen"), (1, "round-robin", "splitfrozen"),
                                                  (2, "proportional", "splitfrozen"),
                                                  (3, "fifo", "splitfrozen-sequential"), (4, "fifo", "splitfrozen")])
def test_server_replays_equal_simulate(seed, policy, schedule):
    sc, table, sim, _ = _setup(fleet(37, 3, 4, 5 + seed, seed, policy), schedule)
    assert sim.why is None and not sim.closing
    plans = candidates(table)[:2] + [g for k in (1, 4, 9) if (g := fixed_cut(table, k)) is not None]
    for groups in plans:
        splits, assignment = expand(table, groups)
        res = simulate(sc, schedule=schedule, plan=Plan(splits=splits, lora_start=table.lora_start,
                                                        assignment=assignment, schedule=schedule))
        assert sim.ends(groups).max() == res.makespan_s  # the same figure, not an estimate


def test_server_replays_step_aside_where_they_cannot():
    _, _, sim, _ = _setup(fleet(10, 2, 2, 4, 5, "pool"))
    assert sim.why is not None


def test_period_cuts_take_the_largest_cut_under_each_cap():
    _, table, _, _ = _setup(fleet(20, 2, 3, 6, 6))
    low = float(np.where(table.allowed, table.p, np.inf).min(axis=(1, 2)).max())
    caps = [low / 2, low, 2 * low, 1e9]
    got = period_cuts(table, caps)
    assert 1 < len(got) <= len(caps)  # equal arrays are given once
    for cap in caps:
        kk = period_cuts(table, [cap])[0]
        for t in range(len(table.types)):
            for j in range(len(table.servers)):
                ok = np.flatnonzero(table.allowed[t, :, j])
                under = [k for k in ok if table.p[t, k, j] <= cap]
                assert kk[t, j] == (max(under) if under else ok[np.argmin(table.p[t, ok, j])])


def test_search_never_worsens_and_its_figures_are_the_simulators():
    _, table, sim, _ = _setup(fleet(300, 3, 5, 8, 7))
    start = fixed_cut(table, 3)
    m0 = float(sim.ends(start).max())
    groups, m = balance(sim, start, 200_000)
    assert m <= m0 and m == float(sim.ends(groups).max())
    assert sum(g.n for g in groups) == 300
    groups, m2 = improve(sim, start, 200_000)
    assert m2 <= m0 and m2 == float(sim.ends(groups).max())


def test_plan_on_a_credit_bound_fleet_is_near_its_bound():
    """5,000 devices, 7 servers, 10 types, every server's credits busy: the fluid model's best plan
    simulated 23.1% above the bound; the search by server replays brings it to 2.3%."""
    data = fleet(5000, 7, 10, 20, 15)
    data["training"]["buffer"] = 32
    sc = scenario_from_dict(data)
    res = plan(sc)
    assert res.gap is not None and res.gap < 0.05, res.gap
    assert simulate(sc, plan=res).makespan_s == res.makespan_s
