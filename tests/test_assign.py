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
