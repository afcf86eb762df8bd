"""The planner on a dynamic network: effective rates by hand, no false lower bound, estimate near the simulation."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import sfsim
from sfsim.cost.model import CostModel
from sfsim.network.legs import Legs
from sfsim.network.linkrate import Constant, Steps
from sfsim.planner.dynamics import describe, effective_stages
from sfsim.planner.model import build_table, fleet_types
from sfsim.scenario.config import scenario_from_dict

LINK = {"bandwidth": "100 Mbps", "latency": "5 ms"}
BASE = {
    "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "buffer": 4, "split": 2},
    "servers": [{"name": "a", "flops": "10 TFLOPS", "memory": "24 GiB"}],
    "devices": [{"name": "car", "flops": "200 GFLOPS", "memory": "4 GiB", "samples": 120,
                 "uplink": dict(LINK), "downlink": dict(LINK)}],
}


def scenario(tmp_path, **device):
    data = copy.deepcopy(BASE)
    data["devices"][0].update(device)
    return scenario_from_dict(data, source=str(tmp_path / "s.yaml"))


def write_trace(tmp_path, rows: str) -> str:
    (tmp_path / "t.csv").write_text("time_s,bandwidth\n" + rows)
    return "t.csv"


def table(sc):
    cm = CostModel(sc)
    return cm, build_table(cm, sc, lora_start=11, min_device_layers=1, schedule="splitfrozen")


def test_legs_switch_rate_at_each_handover():
    legs = Legs([0.0, 10.0], [Constant(5.0), Steps([0.0, 12.0], [1.0, 2.0])])
    assert legs.segment(3.0) == (5.0, 10.0)       # first leg, until the handover
    assert legs.segment(10.0) == (1.0, 12.0)      # second leg, its own step until 12 s
    assert legs.segment(12.5) == (2.0, float("inf"))


def test_trace_uplink_is_planned_at_the_rate_of_its_own_run(tmp_path):
    # 1 Mbps for the first 10 s, then 9 Mbps (the last rate holds: the trace repeats every 20 s)
    trace = write_trace(tmp_path, "0,1 Mbps\n10,9 Mbps\n19,9 Mbps\n")
    sc = scenario(tmp_path, uplink={"trace": trace, "latency": "5 ms"})
    cm, t = table(sc)
    n = 30  # 120 samples / micro-batch 4
    for ki, k in enumerate(t.cuts):
        bits = cm.uplink_bytes(int(k)) * 8.0
        total = n * bits
        # by hand: 10 s at 1 Mbps carry 1e7 bits; the rest at 9 Mbps until 20 s, then 1 Mbps again, ...
        left, end = total, 0.0
        for start, stop, rate in [(0, 10, 1e6), (10, 20, 9e6), (20, 30, 1e6), (30, 40, 9e6), (40, 50, 1e6),
                                  (50, 60, 9e6)]:
            if left <= rate * (stop - start):
                end = start + left / rate
                break
            left -= rate * (stop - start)
        assert end > 0
        assert t.s[0, ki] == pytest.approx(end / n, rel=1e-12)
    # the nominal time-average (filled in at load) would have planned it faster
    assert t.s[0, 0] > t.bits[0] / sc.devices[0].uplink.bandwidth


def test_pause_stretches_compute_by_the_offline_time(tmp_path):
    (tmp_path / "w.yaml").write_text("car: [[0, 2], [5, 1000]]\n")  # offline from 2 s to 5 s
    sc = scenario(tmp_path, availability={"file": "w.yaml", "churn": "pause"})
    cm, t = table(sc)
    static = build_table(cm, scenario(tmp_path), lora_start=11, min_device_layers=1, schedule="splitfrozen")
    n = 30
    for ki in range(len(t.cuts)):
        work = n * static.f[0, ki]
        end = work if work <= 2 else work + 3.0  # the 3 s outage, once the work runs past 2 s
        assert t.f[0, ki] == pytest.approx(end / n, rel=1e-12)
        up = n * static.s[0, ki]
        end = up if up <= 2 else up + 3.0
        assert t.s[0, ki] == pytest.approx(end / n, rel=1e-12)


def test_static_scenario_tables_are_untouched(tmp_path):
    sc = scenario(tmp_path)
    cm, t = table(sc)
    assert t.dynamic == "" and effective_stages(sc, fleet_types(sc), t.f, t.bits / 8.0) is None
    assert np.array_equal(t.s[0], t.bits / 100e6)


def test_drop_churn_is_planned_as_staying_and_said(tmp_path):
    sc = scenario(tmp_path, availability={"mean_on": "10 s", "mean_off": "5 s", "churn": "drop"})
    _, t = table(sc)
    _, static = table(scenario(tmp_path))
    assert np.array_equal(t.f, static.f) and np.array_equal(t.s, static.s)
    assert describe(sc) == "availability: car (drop)"


def test_plan_prints_no_lower_bound_and_estimates_near_the_simulation(tmp_path):
    trace = write_trace(tmp_path, "0,1 Mbps\n10,9 Mbps\n19,9 Mbps\n")
    sc = scenario(tmp_path, uplink={"trace": trace, "latency": "5 ms"})
    res = sfsim.plan(sc)
    assert res.lower_bound_s is None and res.gap is None
    assert res.dynamic == "varying uplink: car"
    text = res.table()
    assert "proves no lower bound" in text and "lower bound:" not in text
    assert "effective" in res.bottleneck
    # one link-bound device: the effective rate predicts the simulated time closely
    assert res.estimate_s == pytest.approx(res.makespan_s, rel=0.05)
    assert res.to_plan().lower_bound_s is None


def test_mobile_profile_estimate_matches_its_simulation():
    res = sfsim.plan(sfsim.load_scenario("profiles/mobile.yaml"))
    assert res.lower_bound_s is None
    assert res.estimate_s == pytest.approx(res.makespan_s, rel=0.05)  # was 1.6 min against 3.46 min
