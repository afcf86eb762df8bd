"""The dynamic network from scenario files: validation, nominal bandwidths, results against the trace."""

from __future__ import annotations

import copy
import math
import random

import pytest

import sfsim
from sfsim.errors import ConfigError, SfsimError
from sfsim.network.availability import OnOff
from sfsim.network.linkrate import FadingRate, GilbertElliott, GilbertElliottRate, read_trace
from sfsim.scenario.config import load_scenario, scenario_from_dict

LINK = {"bandwidth": "100 Mbps", "latency": "5 ms"}
BASE = {
    "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "buffer": 4, "split": 2},
    "servers": [{"name": "a", "flops": "10 TFLOPS", "memory": "24 GiB"},
                {"name": "b", "flops": "20 TFLOPS", "memory": "24 GiB"}],
    "devices": [{"name": "car", "flops": "200 GFLOPS", "memory": "4 GiB", "samples": 120, "server": "a",
                 "uplink": dict(LINK), "downlink": dict(LINK)},
                {"name": "pi", "count": 2, "flops": "50 GFLOPS", "memory": "4 GiB", "samples": 60, "server": "a",
                 "uplink": dict(LINK), "downlink": dict(LINK)}],
}


def scenario(tmp_path=None, **changes):
    """BASE with ``changes`` as {(device index, key): value} spelled ``d0_key=value``."""
    data = copy.deepcopy(BASE)
    for name, value in changes.items():
        i, key = name.split("_", 1)
        data["devices"][int(i[1:])][key] = value
    source = str(tmp_path / "s.yaml") if tmp_path else "s.yaml"
    return scenario_from_dict(data, source=source)


def sends(res, device: str) -> list[float]:
    """Start times of the device's micro-batch sends (one trace event per send without availability)."""
    return [e.start for e in res.events if e.lane == f"link:{device}" and e.op == "send"]


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("changes", "message"), [
    ({"d0_handover": [{"at": "10 s", "to": "c"}]},
     "s.yaml: devices[0].handover[0].to: no server named 'c'; servers are: a, b"),
    ({"d0_handover": [{"at": "10 s", "to": "b"}, {"at": "5 s", "to": "a"}]},
     "s.yaml: devices[0].handover[1].at: 5 s is not after the previous handover at 10 s; list handovers in "
     "time order"),
    ({"d0_handover": [{"at": 0, "to": "b"}]}, "s.yaml: devices[0].handover[0].at: Input should be greater than 0 "
     "(got 0)"),
    ({"d0_uplink": {"latency": "5 ms"}},
     "s.yaml: devices[0].uplink: give bandwidth (e.g. '50 Mbps'), a trace file or gilbert_elliott"),
    ({"d0_uplink": {"trace": "x.csv", "gilbert_elliott": {"good": 2, "bad": 1, "mean_good": 1, "mean_bad": 1}}},
     "s.yaml: devices[0].uplink: give the rate as a trace or as gilbert_elliott, not both"),
    ({"d0_uplink": {"gilbert_elliott": {"good": 2, "bad": 1, "mean_good": 1, "step": 1}}},
     "s.yaml: devices[0].uplink.gilbert_elliott: give either mean_good and mean_bad (e.g. 10 s, 2 s) or step, "
     "p_good_bad and p_bad_good (e.g. 100 ms, 0.01, 0.1)"),
    ({"d0_uplink": {"trace": "missing.csv"}},
     "s.yaml: devices[0].uplink.trace: no such file 'missing.csv' (paths are relative to the scenario file)"),
    ({"d0_availability": {"mean_on": "1 min"}},
     "s.yaml: devices[0].availability: give either file (online windows) or both mean_on and mean_off "
     "(e.g. 10 min, 2 min)"),
    ({"d0_availability": {"mean_on": "1 min", "mean_off": "1 min", "churn": "leave"}},
     "s.yaml: devices[0].availability.churn: String should match pattern '^(pause|drop)$' (got 'leave')"),
])
def test_bad_dynamics_are_one_line(changes, message):
    with pytest.raises(ConfigError) as exc:
        scenario(**changes)
    assert str(exc.value) == message


@pytest.mark.parametrize(("text", "problem"), [
    ("t,bw\n0,1 Mbps\n", "t.csv: the first line must be the header 'time_s,bandwidth'"),
    ("time_s,bandwidth\n0,1 Mbps\n0,2 Mbps\n", "t.csv row 3: time 0.0 is not after 0.0"),
    ("time_s,bandwidth\n1,1 Mbps\n", "t.csv: the first row must be at time 0"),
    ("time_s,bandwidth\n0,fast\n", "t.csv row 2: 'fast' is not a bandwidth; write e.g. '50 Mbps' or a number "
     "in bit/s"),
    ("time_s,bandwidth\n0,0 Mbps\n1,0\n", "t.csv: every bandwidth is 0; a transfer would never end"),
])
def test_a_bad_trace_is_one_line_naming_the_row(tmp_path, text, problem):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(ConfigError) as exc:
        scenario(tmp_path, d0_uplink={"trace": "t.csv"})
    assert str(exc.value) == f"{tmp_path / 's.yaml'}: devices[0].uplink.trace: {problem}"


def test_a_windows_file_needs_an_entry_for_each_device(tmp_path):
    (tmp_path / "w.yaml").write_text("car: [[0, 10]]\npi-0: [[0, 10]]\n")
    scenario(tmp_path, d0_availability={"file": "w.yaml"})  # car takes its own entry
    with pytest.raises(ConfigError, match=r"devices\[1\]\.availability\.file: w\.yaml has no entry for 'pi-1' "
                       r"\(nor for its type 'pi'\)"):
        scenario(tmp_path, d1_availability={"file": "w.yaml"})
    (tmp_path / "w.yaml").write_text("car: [[0, 10], [5, 20]]\n")
    with pytest.raises(ConfigError, match=r"w\.yaml: car: intervals must satisfy 0 <= start < end <= next start"):
        scenario(tmp_path, d0_availability={"file": "w.yaml"})


def test_without_bandwidth_the_planner_sees_the_time_average(tmp_path):
    (tmp_path / "t.csv").write_text("# a comment\ntime_s,bandwidth\n0,10 Mbps\n1,30 Mbps\n3,20 Mbps\n")
    sc = scenario(tmp_path, d0_uplink={"trace": "t.csv"},
                  d1_uplink={"gilbert_elliott": {"good": "40 Mbps", "bad": "10 Mbps", "mean_good": "3 s",
                                                 "mean_bad": "1 s"}})
    # the period is 5 s (last row + last step): 10 Mbps x 1 s + 30 x 2 + 20 x 2 over 5 s
    assert sc.devices[0].uplink.bandwidth == 22e6
    assert sc.devices[1].uplink.bandwidth == 0.75 * 40e6 + 0.25 * 10e6
    steps = read_trace(tmp_path / "t.csv")
    assert steps.period == 5.0 and steps.segment(6.5) == (30e6, 8.0)  # repeats every 5 s


# -- stochastic models -----------------------------------------------------------------------------
def test_gilbert_elliott_is_seeded_and_its_long_run_mean_is_the_stationary_one():
    spec = GilbertElliott(good=40.0, bad=10.0, mean_good=3.0, mean_bad=1.0)
    a, b = GilbertElliottRate(spec, random.Random("s")), GilbertElliottRate(spec, random.Random("s"))
    assert [a.segment(t) for t in range(50)] == [b.segment(t) for t in range(50)]
    t, area = 0.0, 0.0
    while t < 100_000:
        r, end = a.segment(t)
        area, t = area + r * (end - t), end
    assert abs(area / t - spec.mean_rate) / spec.mean_rate < 0.01  # deterministic: the seed is fixed


def test_discrete_gilbert_elliott_sojourns_are_whole_steps():
    spec = GilbertElliott(good=4.0, bad=1.0, step=0.5, p_good_bad=0.1, p_bad_good=0.5)
    rate = GilbertElliottRate(spec, random.Random(1))
    rate.segment(1000.0)
    assert all((t / 0.5).is_integer() for t in rate.times)
    assert rate.rates[::2] != rate.rates[1::2][: len(rate.rates[::2])]  # states alternate
    assert spec.p_good == 0.5 / 0.6


def test_fading_changes_at_every_coherence_time_with_median_one():
    from sfsim.network.linkrate import Fading

    rate = FadingRate(Fading(sigma_db=4, coherence=0.5), random.Random(3))
    assert rate.segment(0.7)[1] == 1.0 and rate.segment(1.0)[1] == 1.5
    rate.segment(5000.0)
    above = sum(f > 1 for f in rate.rates) / len(rate.rates)
    assert abs(above - 0.5) < 0.02 and all(f > 0 for f in rate.rates)


def test_on_off_periods_alternate_from_online_with_the_given_means():
    proc = OnOff(10.0, 2.0, random.Random(0))
    proc.segment(200_000.0)
    on = [e - s for s, e, r in zip([0.0, *proc.times], proc.times, proc.rates, strict=False) if r == 1.0]
    off = [e - s for s, e, r in zip([0.0, *proc.times], proc.times, proc.rates, strict=False) if r == 0.0]
    assert proc.rates[0] == 1.0 and proc.rates[1] == 0.0
    assert abs(sum(on) / len(on) - 10.0) < 0.5 and abs(sum(off) / len(off) - 2.0) < 0.1


# -- simulated runs --------------------------------------------------------------------------------
def test_a_handover_moves_the_micro_batches_sent_after_it_and_their_server_flops():
    static = sfsim.simulate(scenario(), trace=True)
    at = 0.4 * static.makespan_s
    res = sfsim.simulate(scenario(d0_handover=[{"at": at, "to": "b", "uplink": {"bandwidth": "50 Mbps"}}]),
                         trace=True)
    starts = sends(res, "car")
    (h,) = res.handovers
    assert h == {"device": "car", "at_s": at, "from": "a", "to": "b",
                 "sent_before": sum(t < at for t in starts), "sent_after": sum(t >= at for t in starts)}
    assert 0 < h["sent_after"] < 30 and h["sent_before"] + h["sent_after"] == 30
    served_b = [e for e in res.events if e.lane == "b" and e.op == "F"]
    assert len(served_b) == h["sent_after"]
    assert [e.start for e in res.events if e.op == "handover"] == [at]
    per_mb = static.server_flops["a"] / (30 + 15 + 15)
    assert res.server_flops["b"] == pytest.approx(h["sent_after"] * per_mb, rel=1e-12)
    assert sum(res.server_flops.values()) == pytest.approx(sum(static.server_flops.values()), rel=1e-12)
    assert res.micro_batches == static.micro_batches


def test_drop_reports_exactly_the_samples_of_the_micro_batches_never_sent(tmp_path):
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.5], [2, 1000]]\n")
    base = sfsim.simulate(scenario(tmp_path))
    res = sfsim.simulate(scenario(tmp_path, d1_availability={"file": "w.yaml", "churn": "drop"}), trace=True)
    sent = {d: len(sends(res, d)) for d in ("pi-0", "pi-1")}
    assert res.samples_not_trained == {d: 4 * (15 - n) for d, n in sent.items()}
    assert 0 < sent["pi-0"] < 15
    assert res.micro_batches == base.micro_batches - sum(15 - n for n in sent.values())
    assert res.to_dict()["samples_not_trained"] == res.samples_not_trained


def test_pause_trains_every_sample_and_only_later(tmp_path):
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.5], [20, 1000]]\n")
    base = sfsim.simulate(scenario(tmp_path))
    res = sfsim.simulate(scenario(tmp_path, d1_availability={"file": "w.yaml"}), trace=True)
    assert res.samples_not_trained == {"pi-0": 0, "pi-1": 0} and res.micro_batches == base.micro_batches
    offline = [(e.start, e.dur) for e in res.events if e.lane == "pi-0" and e.op == "offline"]
    assert offline == [(0.5, 19.5)] and res.makespan_s > 20
    assert not [e for e in res.events if e.lane.endswith("pi-0") and e.op != "offline"
                and e.start < 20 and e.end > 0.5 + 1e-12]


def test_a_time_varying_link_costs_the_radio_its_real_send_seconds(tmp_path):
    (tmp_path / "t.csv").write_text("time_s,bandwidth\n0,100 Mbps\n1,25 Mbps\n")
    power = {"compute": "5 W", "transmit": "2 W"}
    res = sfsim.simulate(scenario(tmp_path, d0_uplink={"trace": "t.csv", "latency": "5 ms"}, d0_power=power),
                         trace=True)
    secs = sum(e.dur for e in res.events if e.lane == "link:car" and e.op == "send")
    assert res.uplink_send_s["car"] == pytest.approx(secs, rel=1e-12)
    assert res.energy["devices"]["car"]["radio"] == pytest.approx(2.0 * secs, rel=1e-12)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"schedule": "splitlora", "client_order": "sequential"}, "splitlora: car hands over, and the sequential client"),
    ({"policy": "proportional"}, "server policy 'proportional' cannot take devices that join or leave"),
    ({"schedule": "splitfrozen-sequential", "policy": "pool"}, "server policy 'pool' cannot take devices"),
])
def test_what_the_dynamic_network_is_not_simulated_for_is_refused(kwargs, problem):
    sc = scenario(d0_handover=[{"at": 1, "to": "b"}])
    with pytest.raises(SfsimError, match=problem):
        sfsim.simulate(sc, **kwargs)


def test_the_shipped_mobile_profile_runs_and_its_trace_is_the_stated_one():
    sc = load_scenario("profiles/mobile.yaml")
    car = next(d for d in sc.devices if d.type == "car")
    assert car.uplink.bandwidth == pytest.approx(26.2146e6, rel=1e-5)  # the header's mean, 26.2 Mbps
    res = sfsim.simulate(sc)
    assert [h["to"] for h in res.handovers] == ["cell-b", "cell-b"] and math.isfinite(res.makespan_s)
    assert set(res.samples_not_trained) == {"phone-0", "phone-1", "phone-2", "rpi5-0", "rpi5-1"}


def test_dynamic_keys_take_set_and_vary_like_any_other():
    from sfsim.scenario.overrides import load_scenario_with, parse_sets
    from sfsim.sweeps.sweep import parse_vary

    sets = parse_sets(["devices[car].handover[0].at=30 s", "devices[rpi5].uplink.trace=traces/5g-driving-raca2020.csv",
                       "devices[phone].availability.churn=pause"])
    sc = load_scenario_with("profiles/mobile.yaml", sets)
    by_type = {d.type: d for d in sc.devices}
    assert by_type["car"].handover[0].at == 30.0 and by_type["phone"].availability.churn == "pause"
    assert by_type["rpi5"].uplink.trace == "traces/5g-driving-raca2020.csv" and by_type["rpi5"].uplink.fading
    res = sfsim.simulate(sc)
    assert set(res.samples_not_trained.values()) == {0}  # pausing phones train everything in the end
    assert parse_vary("devices[phone].availability.mean_on=30s,2min").values == (30.0, 120.0)


def test_the_server_a_device_hands_over_to_must_hold_it():
    data = copy.deepcopy(BASE)
    data["servers"][1]["memory"] = "100 MiB"  # too small for GPT-2's blocks 2..11 and 4 buffered
    data["devices"][0]["handover"] = [{"at": "1 s", "to": "b"}]
    with pytest.raises(SfsimError, match=r"^server b needs .* but has 100 MiB"):
        sfsim.simulate(scenario_from_dict(data, source="s.yaml"))
