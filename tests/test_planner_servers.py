"""The planner's server replays (sfsim.planner.servers): equal to simulate(), and the search they drive."""

from __future__ import annotations

import sys
from pathlib import Path

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_scale import fresh_fleet  # noqa: E402


def fleet(devices: int, servers: int, types: int, mb: int, seed: int, policy: str = "fifo") -> dict:
    """:func:`bench_scale.fresh_fleet` (seeded, heterogeneous) with server policy ``policy``."""
    data = fresh_fleet(devices, servers, types, mb, seed)
    data["training"]["server_policy"] = policy
    return data


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
    assert sim.makespan_below(groups, m2 * 1.01) == m2 and sim.makespan_below(groups, m2) is None


def test_plan_on_a_credit_bound_fleet_is_near_its_bound():
    """5,000 devices, 7 servers, 10 types, every server's credits busy: the fluid model's best plan
    simulated 23.1% above the bound; the search by server replays brings it to 2.3%."""
    sc = scenario_from_dict(fresh_fleet(5000, 7, 10, 20, 15))  # buffer 32
    res = plan(sc)
    assert res.gap is not None and res.gap < 0.05, res.gap
    assert simulate(sc, plan=res).makespan_s == res.makespan_s
