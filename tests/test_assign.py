"""Assignment without a plan: pinned devices stay, the others go least-loaded (longest work first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.cost.model import CostModel
from sfsim.scenario.assign import least_loaded
from sfsim.scenario.overrides import load_scenario_with

SIXG = str(Path(__file__).resolve().parents[1] / "profiles" / "sixg.yaml")
LINK = {"uplink": {"bandwidth": "1 Gbps", "latency": "1 ms"}, "downlink": {"bandwidth": "1 Gbps", "latency": "1 ms"}}


def fleet(servers, devices):
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
        "training": {"micro_batch": 4, "epochs": 1},
        "servers": [{"name": n, "flops": "5 TFLOPS", "memory": "24 GiB", "count": c} for n, c in servers],
        "devices": [{"name": n, "flops": "1 TFLOPS", "memory": "4 GiB", "samples": 4 * mb, **LINK, **extra}
                    for n, mb, extra in devices]})


def assign(sc, cut=1):
    return least_loaded(sc, CostModel(sc), "splitfrozen", {d.name: cut for d in sc.devices}, 11)


def test_equal_devices_alternate_over_equal_servers():
    sc = fleet([("a", 1), ("b", 1)], [(f"d{i}", 3, {}) for i in range(4)])
    assert assign(sc) == {"d0": "a", "d1": "b", "d2": "a", "d3": "b"}


def test_accelerators_count():
    # work w each: b (3 accelerators) finishes w/3, 2w/3, then a and b tie at w (a is listed first), then 4w/3 < 2w
    sc = fleet([("a", 1), ("b", 3)], [(f"d{i}", 3, {}) for i in range(4)])
    assert assign(sc) == {"d0": "b", "d1": "b", "d2": "a", "d3": "b"}


def test_longest_work_first_then_least_load():
    # micro-batches 3, 5, 3, 4 -> placed 5 (a), 4 (b), 3 (b: 7 < 8), 3 (a: 8 < 10)
    sc = fleet([("a", 1), ("b", 1)], [("p", 3, {}), ("q", 5, {}), ("r", 3, {}), ("s", 4, {})])
    assert assign(sc) == {"p": "b", "q": "a", "r": "a", "s": "b"}


def test_pinned_devices_stay_and_count_as_load():
    sc = fleet([("a", 1), ("b", 1)], [("p", 6, {"server": "a"}), ("q", 3, {}), ("r", 3, {}), ("s", 3, {})])
    assert assign(sc) == {"p": "a", "q": "b", "r": "b", "s": "a"}


def test_simulate_says_where_the_assignment_came_from():
    sc = fleet([("a", 1), ("b", 1)], [(f"d{i}", 2, {}) for i in range(4)])
    res = sfsim.simulate(sc, "splitfrozen")
    assert res.assignment_source == "least-loaded" and res.to_dict()["assignment_source"] == "least-loaded"
    assert res.assignment == {"d0": "a", "d1": "b", "d2": "a", "d3": "b"}
    pinned = fleet([("a", 1), ("b", 1)], [(f"d{i}", 2, {"server": "ab"[i % 2]}) for i in range(4)])
    same = sfsim.simulate(pinned, "splitfrozen")
    assert same.assignment_source == "scenario" and same.makespan_s == res.makespan_s
    one = fleet([("a", 1)], [(f"d{i}", 2, {}) for i in range(4)])
    assert sfsim.simulate(one, "splitfrozen").assignment_source == "scenario"
    plan = sfsim.Plan(splits={f"d{i}": 1 for i in range(4)}, lora_start=1, assignment=dict.fromkeys(res.assignment, "b"))
    by_plan = sfsim.simulate(sc, "splitfrozen", plan=plan)
    assert by_plan.assignment_source == "plan" and set(by_plan.assignment.values()) == {"b"}


@pytest.mark.parametrize("schedule", ["splitfrozen", "splitlora", "fedlora", "cenlora"])
def test_every_schedule_spreads_equal_devices(schedule):
    sc = fleet([("a", 1), ("b", 1)], [(f"d{i}", 2, {}) for i in range(4)])
    res = sfsim.simulate(sc, schedule)
    assert sorted(res.assignment.values()) == ["a", "a", "b", "b"]


def test_sixg_unpinned_uses_every_server():
    loose = load_scenario_with(SIXG, [("devices[*].server", None)])
    first = load_scenario_with(SIXG, [("devices[*].server", "mec-a")])
    spread, piled = sfsim.simulate(loose, "splitfrozen"), sfsim.simulate(first, "splitfrozen")
    assert set(spread.assignment.values()) == {"mec-a", "mec-b", "mec-c", "regional"}
    assert set(piled.assignment.values()) == {"mec-a"} and piled.assignment_source == "scenario"
    assert spread.makespan_s < 0.2 * piled.makespan_s


def test_cli_notes_the_least_loaded_default():
    r = CliRunner().invoke(main, ["simulate", "--devices", SIXG, "--set", "devices[*].server=null"])
    assert r.exit_code == 0, r.output
    assert ("note: 48 devices without a server pin went to the least-loaded of 4 servers (no --plan); "
            "'sfsim plan' assigns servers with the cuts") in r.output
    r = CliRunner().invoke(main, ["simulate", "--devices", SIXG, "--set", "devices[*].server=mec-a"])
    assert "least-loaded" not in r.output


def _rule(sc, cm, cuts):
    """The module docstring's rule, one device at a time in plain Python (what least_loaded must equal)."""
    from sfsim.scenario.assign import _seconds

    servers, load, out, free = sc.servers, [0.0] * len(sc.servers), {}, []
    index = {s.name: j for j, s in enumerate(servers)}
    for pos, d in enumerate(sc.devices):
        n = sc.micro_batches(d) * sc.training.epochs
        work = [n * _seconds(cm, "splitfrozen", cuts[d.name], 11, s) for s in servers]
        if d.server_pinned:
            out[d.name] = d.server
            load[index[d.server]] += work[index[d.server]]
        else:
            free.append((-min(w / s.count for w, s in zip(work, servers, strict=True)), pos, d.name, work))
    for _, _, name, work in sorted(free):
        j = min(range(len(servers)), key=lambda j: (float(f"{(load[j] + work[j]) / servers[j].count:.12g}"), j))
        out[name] = servers[j].name
        load[j] += work[j]
    return out


@pytest.mark.parametrize("seed", range(12))
def test_least_loaded_equals_the_rule_on_random_fleets(seed):
    import random

    rng = random.Random(seed)
    equal = seed % 2 == 0  # equal servers and devices: ties everywhere
    servers = [(f"s{j}", 1 if equal else rng.choice([1, 2, 3])) for j in range(rng.randint(2, 5))]
    devices = [(f"d{i}", 3 if equal else rng.randint(1, 9),
                {"server": rng.choice(servers)[0]} if rng.random() < 0.2 else {}) for i in range(rng.randint(5, 60))]
    sc = fleet(servers, devices)
    cm = CostModel(sc)
    cuts = {d.name: 1 if equal else rng.randint(1, 4) for d in sc.devices}
    got = least_loaded(sc, cm, "splitfrozen", cuts, 11)
    assert got == _rule(sc, cm, cuts)
    assert list(got) == [d.name for d in sc.devices]


def test_a_near_tie_is_left_to_the_rounded_comparison():
    import numpy as np

    from sfsim.scenario.assign import _place, _rounded

    load, count = np.array([0.1 + 0.2, 0.3]), np.ones(2)  # 0.30000000000000004 and 0.3: equal to 12 digits
    choice = np.full(2, -1)
    assert _place(np.zeros((2, 2)), load, count, choice, 0) == 0  # undecided: the caller rounds
    assert _rounded(load[0]) == _rounded(load[1])  # so the first server wins, not the exact minimum
    exact = np.array([0.25, 0.5])
    assert _place(np.zeros((2, 2)), exact, count, choice, 0) == 2 and list(choice) == [0, 0]
