"""SplitLoRA on the dynamic network (varying links, pause), and ``--schedule all`` on the mobile profile.

Engine-level tests hand-make one client's stage times and replay SplitLoRA's server loop with the
dynamic network's compute and links (:mod:`sfsim.schedules.splitlora.server`).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.availability import Windows
from sfsim.network.legs import Leg, Motion
from sfsim.network.linkrate import Steps
from sfsim.schedules import Job, ReplayConfig, splitlora
from sfsim.schedules.network import FedNetwork
from tests.test_dynamic_baselines import ops, scenario


# -- SplitLoRA -------------------------------------------------------------------------------------
def split(dev: DeviceTimes, m: Motion, **cfg):
    """Replay SplitLoRA (one client on server ``s``) on the dynamic network; returns (engine, makespan)."""
    engine = Engine(trace=True)
    job = Job([dev], [ServerTimes("s")], network=FedNetwork({0: m}, {0: m}))
    m.done = 0
    splitlora.run(engine, job, ReplayConfig(**cfg))
    return engine, engine.run()


def test_a_splitlora_upload_across_a_rate_change_takes_exactly_the_integral():
    # F 0..1, then 8 bits on 2 bit/s until 2 and 1 bit/s after: 2 bits by 2, 6 more by 8. Server F 8..9;
    # the gradient (8 bits, nominal 4 bit/s) on 4 bit/s until 10, then 1 bit/s: 4 by 10, 4 more by 14.
    dev = DeviceTimes("d", n=1, f=1, up_s=4.0, down_s=2.0, srv_f=1)
    m = Motion([Leg(0.0, 0, 2.0, 4.0, 0.0, Steps([0.0, 2.0], [2.0, 1.0]), 4.0, 0.0, Steps([0.0, 10.0], [4.0, 1.0]))])
    engine, makespan = split(dev, m)
    assert ops(engine, "link:d", "send") == [(1.0, 7.0, 0)]
    assert ops(engine, "s", "F") == [(8.0, 1.0, 0)]
    assert ops(engine, "downlink:d", "send") == [(9.0, 5.0, 0)]
    assert makespan == 14.0 and m.send_s == 7.0 and m.recv_s == 5.0


def test_a_splitlora_client_pauses_exactly_the_offline_time():
    # F (2 s) from 0 is cut by the outage [1, 4): it ends at 5, the upload (1 s) at 6, the server's F at 7
    dev = DeviceTimes("d", n=1, f=2, up_s=1.0, srv_f=1)
    m = Motion([Leg(0.0, 0, 8.0, 1.0, 0.0, None, 8.0, 0.0)], Windows([(0.0, 1.0), (4.0, 100.0)]), "pause")
    engine, makespan = split(dev, m)
    assert ops(engine, "d", "F") == [(0.0, 1.0, 0), (4.0, 1.0, 0)]
    assert ops(engine, "s", "F") == [(6.0, 1.0, 0)] and makespan == 7.0


@pytest.mark.parametrize("order", ["interleaved", "sequential"])
def test_a_constant_trace_reproduces_both_client_orders_exactly(tmp_path, order):
    (tmp_path / "flat.csv").write_text("time_s,bandwidth\n0,100 Mbps\n")
    flat = {"trace": "flat.csv", "latency": "5 ms"}
    static = sfsim.simulate(scenario(tmp_path), "splitlora", client_order=order)
    res = sfsim.simulate(scenario(tmp_path, d0_uplink=flat, d0_downlink=flat, d1_downlink=flat), "splitlora",
                         client_order=order)
    assert res.dynamic_network == "simulated"
    assert {**res.to_dict(), "dynamic_network": None} == static.to_dict()


def test_splitlora_with_pausing_clients_trains_every_sample_later(tmp_path):
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.05], [10, 1000]]\n")
    static = sfsim.simulate(scenario(tmp_path), "splitlora")
    res = sfsim.simulate(scenario(tmp_path, d1_availability={"file": "w.yaml"}), "splitlora", trace=True)
    assert res.samples_not_trained == {"pi-0": 0, "pi-1": 0} and res.micro_batches == static.micro_batches
    assert res.device_flops == static.device_flops and res.makespan_s > 10.0 > static.makespan_s
    # nothing of pi-0's (its compute, its links, the server's work on it) runs while it is offline
    assert not [e for e in res.events if e.device == "pi-0" and e.op != "offline"
                and e.start < 10 and e.start + e.dur > 0.05 + 1e-12]


def test_a_dropped_splitlora_client_loses_exactly_what_it_had_not_sent():
    # f = 1, 1 s uploads, server F 1 s, nothing else: micro-batch n is sent over [3n+1, 3n+2] and served
    # over [3n+2, 3n+3]. Online [0, 5.5): micro-batch 1 is sent by 5, but its gradient (at 6) finds the
    # client gone; micro-batch 2 is never computed and its turn is skipped; FedAvg has no upload.
    dev = DeviceTimes("d", n=3, f=1, up_s=1.0, srv_f=1)
    m = Motion([Leg(0.0, 0, 8.0, 1.0, 0.0, None, 8.0, 0.0)], Windows([(0.0, 5.5)]), "drop")
    engine, makespan = split(dev, m)
    assert ops(engine, "link:d", "send") == [(1.0, 1.0, 0), (4.0, 1.0, 1)]
    assert ops(engine, "s", "F") == [(2.0, 1.0, 0), (5.0, 1.0, 1)]
    assert makespan == 6.0 and m.sent == 2 and m.done == 1 and m.gone == 5.5
    engine, makespan = split(dev, Motion([Leg(0.0, 0, 8.0, 1.0, 0.0, None, 8.0, 0.0)]))
    assert makespan == 9.0  # the same client online throughout


def test_splitlora_drop_on_a_scenario_reports_the_samples_it_lost(tmp_path):
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.5]]\n")
    static = sfsim.simulate(scenario(tmp_path), "splitlora")
    res = sfsim.simulate(scenario(tmp_path, d1_availability={"file": "w.yaml", "churn": "drop"}), "splitlora",
                         trace=True)
    sent = {d: len([e for e in res.events if e.lane == f"link:{d}" and e.op == "send" and e.mb >= 0])
            for d in ("pi-0", "pi-1")}
    assert 0 < sent["pi-0"] < 15 and res.samples_not_trained == {d: 4 * (15 - n) for d, n in sent.items()}
    assert res.micro_batches == static.micro_batches - sum(15 - n for n in sent.values())
    served = [e for e in res.events if e.lane == "b" and e.op == "F"]
    assert len(served) == sum(sent.values())
    per_mb = static.server_flops["b"] / 30
    assert res.server_flops["b"] == pytest.approx(len(served) * per_mb, rel=1e-12)


# -- the whole fleet -------------------------------------------------------------------------------
def test_schedule_all_on_the_mobile_profile_runs_every_schedule(tmp_path):
    out = tmp_path / "all.json"
    result = CliRunner().invoke(main, ["simulate", "--devices", "profiles/mobile.yaml", "--schedule", "all",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: skipped" not in result.output
    data = json.loads(out.read_text())
    for name in ("splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora"):
        assert data[name]["dynamic_network"] == "simulated" and len(data[name]["handovers"]) == 2
        assert set(data[name]["samples_not_trained"]) == {"phone-0", "phone-1", "phone-2", "rpi5-0", "rpi5-1"}
    assert data["cenlora"]["dynamic_network"].startswith("not applicable")
