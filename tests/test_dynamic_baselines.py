"""The dynamic network for every schedule: closed forms by hand, and constant rates equal to static runs.

Engine-level tests hand-make stage times (a server ``s`` or ``a``/``b``, links of 8 bit/s so that one
byte takes one second) and replay FedLoRA, SplitLoRA and sequential SplitFrozen on the dynamic
network; scenario-level tests check what ``simulate`` reports.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

import sfsim
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.availability import Windows
from sfsim.network.legs import Leg, Motion
from sfsim.network.linkrate import Steps
from sfsim.outputs.report import summary
from sfsim.scenario.config import scenario_from_dict
from sfsim.schedules import Job, ReplayConfig, fedlora, splitfrozen
from sfsim.schedules.network import FedNetwork
from sfsim.schedules.splitfrozen import Network

LINK = {"bandwidth": "100 Mbps", "latency": "5 ms"}
BASE = {
    "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "buffer": 4, "split": 2, "local_steps": 3, "fedavg_every": 2},
    "servers": [{"name": "a", "flops": "10 TFLOPS", "memory": "24 GiB"},
                {"name": "b", "flops": "20 TFLOPS", "memory": "24 GiB"}],
    "devices": [{"name": "car", "flops": "200 GFLOPS", "memory": "8 GiB", "samples": 122, "server": "a",
                 "uplink": dict(LINK), "downlink": dict(LINK)},
                {"name": "pi", "count": 2, "flops": "50 GFLOPS", "memory": "8 GiB", "samples": 60, "server": "b",
                 "uplink": dict(LINK), "downlink": dict(LINK)}],
}
SCHEDULES = ["splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora", "cenlora"]


def scenario(tmp_path, **changes):
    """BASE (written beside ``tmp_path``) with ``d<i>_<key>=value`` changes to device type ``i``."""
    data = copy.deepcopy(BASE)
    for name, value in changes.items():
        i, key = name.split("_", 1)
        data["devices"][int(i[1:])][key] = value
    return scenario_from_dict(data, source=str(tmp_path / "s.yaml"))


def ops(engine, lane: str, op: str) -> list[tuple[float, float, int]]:
    """``(start, dur, mb)`` of ``op`` on ``lane``, in time order."""
    return sorted((e.start, e.dur, e.mb) for e in engine.events if e.lane == lane and e.op == op)


def leg(server: int = 0, at: float = 0.0, rate=None, down=None) -> Leg:
    """A leg with 8 bit/s links both ways (one byte a second) and no latency."""
    return Leg(at, server, 8.0, 0.0, 0.0, rate, 8.0, 0.0, down)


# -- a constant rate is the static run, bit for bit, for every schedule ------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_constant_trace_reproduces_the_static_run_exactly(tmp_path, schedule):
    (tmp_path / "flat.csv").write_text("time_s,bandwidth\n0,100 Mbps\n")
    flat = {"trace": "flat.csv", "latency": "5 ms"}
    static = sfsim.simulate(scenario(tmp_path), schedule, trace=True)
    res = sfsim.simulate(scenario(tmp_path, d0_uplink=flat, d0_downlink=flat, d1_uplink=flat, d1_downlink=flat),
                         schedule, trace=True)
    mine, theirs = res.to_dict(), static.to_dict()
    said = mine.pop("dynamic_network")
    assert said.startswith("not applicable") if schedule == "cenlora" else said == "simulated"
    assert theirs.pop("dynamic_network") is None
    assert mine == theirs  # makespan, FLOPs, busy seconds, bytes, stream mixing: every bit
    key = lambda e: (e.start, e.lane, e.op, e.mb)  # noqa: E731
    real = lambda events: sorted((e for e in events if e.dur > 1e-12), key=key)  # noqa: E731
    assert real(res.events) == real(static.events)  # (static sequential records rounding-size waits, 1e-17 s)


def test_cenlora_says_the_dynamic_network_does_not_apply(tmp_path):
    res = sfsim.simulate(scenario(tmp_path, d1_availability={"mean_on": "1 s", "mean_off": "1 s", "churn": "drop"}),
                         "cenlora")
    assert res.dynamic_network.startswith("not applicable: cenlora has its data at the server")
    assert res.samples_not_trained == {"pi-0": 0, "pi-1": 0} and res.handovers == []
    assert "dynamic network: not applicable" in summary(res)


# -- FedLoRA ---------------------------------------------------------------------------------------
def fed(devices, motions, servers=None, **cfg):
    """Replay FedLoRA on the dynamic network (default: one server ``s``); returns (engine, makespan)."""
    engine = Engine(trace=True)
    job = Job(list(devices), servers or [ServerTimes("s")], network=FedNetwork(dict(motions), dict(motions)))
    fedlora.run(engine, job, ReplayConfig(**cfg))
    return engine, engine.run()


def test_fedlora_pauses_exactly_the_offline_time():
    # 2 micro-batches of F, B, W (1 s each), one round, a 1-byte adapter: 1 s down (the initial adapters), 6 s of
    # compute, 1 s up. Online [0, 2) and [5, ...): compute stops at 2 and resumes at 5, so everything ends 3 s later.
    dev = DeviceTimes("d", n=2, f=1, b=1, w=1, sync_bytes=1.0)
    engine, makespan = fed([dev], {0: Motion([leg()])}, local_steps=2)
    assert makespan == 8.0
    m = Motion([leg()], Windows([(0.0, 2.0), (5.0, 100.0)]), "pause")
    engine, makespan = fed([dev], {0: m}, local_steps=2)
    assert makespan == 11.0
    assert ops(engine, "d", "F") == [(1.0, 1.0, 0), (7.0, 1.0, 1)]
    assert ops(engine, "d", "B") == [(5.0, 1.0, 0), (8.0, 1.0, 1)]
    assert ops(engine, "d", "W") == [(6.0, 1.0, 0), (9.0, 1.0, 1)]
    assert ops(engine, "link:d", "send") == [(10.0, 1.0, -1)] and ops(engine, "downlink:d", "send") == [(0.0, 1.0, -1)]
    assert m.sent == 2 and m.send_s == 1.0 and m.recv_s == 1.0


def test_a_dropped_fedlora_client_releases_the_barrier_when_it_leaves():
    # one micro-batch a round (local_steps 1), aggregate 0.5 s a device; both download the initial adapters 0..1.
    # Round 0: a uploads 2..3, b (f = 3) 4..5; aggregate 5..6 (two), downloads 6..7. Round 1: a uploads 8..9; b's
    # forward (7..10) is cut by its outage at 8.5: it leaves then, the round closes with a's upload at 9, aggregate
    # 9..9.5, the run's end (nothing goes down after it).
    a, b = DeviceTimes("a", n=2, f=1, sync_bytes=1.0), DeviceTimes("b", n=2, f=3, sync_bytes=1.0)
    mb = Motion([leg()], Windows([(0.0, 8.5)]), "drop")
    engine, makespan = fed([a, b], {0: Motion([leg()]), 1: mb}, [ServerTimes("s", aggregate=0.5)], local_steps=1)
    assert ops(engine, "s", "aggregate") == [(5.0, 1.0, -1), (9.0, 0.5, -1)]
    assert ops(engine, "downlink:a", "send") == [(0.0, 1.0, -1), (6.0, 1.0, -1)]
    assert makespan == 9.5 and mb.sent == 1 and mb.done == 1 and mb.gone == 8.5


def test_a_drop_nobody_waits_for_does_not_extend_the_run():
    a, b = DeviceTimes("a", n=1, f=1, sync_bytes=1.0), DeviceTimes("b", n=1, f=30, sync_bytes=1.0)
    mb = Motion([leg(1)], Windows([(0.0, 20.0)]), "drop")  # alone on server b: nobody waits for it
    engine, makespan = fed([a, b], {0: Motion([leg()]), 1: mb}, [ServerTimes("s"), ServerTimes("t")],
                           local_steps=1)
    assert makespan == 3.0 and mb.sent == 0


def test_a_fedlora_handover_moves_the_rounds_uploaded_after_it():
    # m (f = 1, one micro-batch a round, 3 rounds) starts on a with x (f = 1) and moves to b at 2.5, where y
    # (f = 1) trains. Round 0: download 0..1, compute ..2, upload 2..3 (m's starts before 2.5: a's), aggregates
    # 3..3.5 (two each). Round 1: download ..4.5, m's upload starts at 5.5 >= 2.5: b's. a averages x alone at 6.5
    # (0.25 s), b m and y (1 s); x runs ahead (download 6.75..7.75, upload 8.75..9.75: a at 9.75); m and y reach b
    # at 10.5.
    x, y = DeviceTimes("x", n=3, f=1, sync_bytes=1.0), DeviceTimes("y", n=3, f=1, server=1, sync_bytes=1.0)
    dm = DeviceTimes("m", n=3, f=1, sync_bytes=1.0)
    mm = Motion([leg(0), leg(1, at=2.5)])
    engine, _ = fed([x, y, dm], {0: Motion([leg(0)]), 1: Motion([leg(1)]), 2: mm},
                    [ServerTimes("a", aggregate=0.25), ServerTimes("b", aggregate=0.5)], local_steps=1)
    assert ops(engine, "a", "aggregate") == [(3.0, 0.5, -1), (6.5, 0.25, -1), (9.75, 0.25, -1)]
    assert ops(engine, "b", "aggregate") == [(3.0, 0.5, -1), (6.5, 1.0, -1), (10.5, 1.0, -1)]
    assert mm.switched_at == [1] and mm.sent == 3


def test_fedlora_downloads_integrate_a_varying_downlink():
    # the initial adapters (8 bits) go down from 0 on 2 bit/s until 3, then 1 bit/s: 6 bits by 3, 2 more by 5;
    # compute 5..6, upload 6..7 (8 bit/s)
    dev = DeviceTimes("d", n=1, f=1, sync_bytes=1.0)
    engine, makespan = fed([dev], {0: Motion([leg(down=Steps([0.0, 3.0], [2.0, 1.0]))])}, local_steps=1)
    assert ops(engine, "downlink:d", "send") == [(0.0, 5.0, -1)] and makespan == 7.0


def test_fedlora_on_a_scenario_reports_handovers_lost_samples_and_radio_seconds(tmp_path):
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.2]]\n")
    (tmp_path / "t.csv").write_text("time_s,bandwidth\n0,100 Mbps\n1,25 Mbps\n")
    power = {"compute": "5 W", "transmit": "2 W", "receive": "1 W"}
    res = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": "2 s", "to": "b"}],
                                  d0_downlink={"trace": "t.csv", "latency": "5 ms"}, d0_power=power,
                                  d1_availability={"file": "w.yaml", "churn": "drop"}), "fedlora", trace=True)
    (h,) = res.handovers
    assert h["sent_before"] + h["sent_after"] == 31 and h["to"] == "b"
    assert res.samples_not_trained == {"pi-0": 60, "pi-1": 60}  # gone before their first upload
    recv = sum(e.dur for e in res.events if e.lane == "downlink:car" and e.op == "send")
    assert res.downlink_recv_s["car"] == pytest.approx(recv, rel=1e-12)
    radio = res.energy["devices"]["car"]["radio"]
    assert radio == pytest.approx(2.0 * res.uplink_send_s["car"] + 1.0 * recv, rel=1e-9)
    assert res.micro_batches == 31


# -- sequential SplitFrozen ------------------------------------------------------------------------
def test_a_sequential_handover_at_t_moves_exactly_the_micro_batches_sent_after_t():
    # f = 1, instant sends, server 1 s: F [2n, 2n+1], sent at 2n+1, released at 2n+2. Handover at 3.5:
    # micro-batches 0 and 1 (sent at 1 and 3) train on a, 2 and 3 (sent at 5 and 7) on b.
    dev = DeviceTimes("d", n=4, f=1.0)
    m = Motion([Leg(0.0, 0, 1.0, 0.0, 0.0), Leg(3.5, 1, 1.0, 0.0, 0.0)])
    views = [[dataclasses.replace(dev, srv_f=1.0)] for _ in range(2)]
    engine = Engine(trace=True)
    splitfrozen.run(engine, Job([dev], [ServerTimes("a"), ServerTimes("b")], network=Network({0: m}, views)),
                    ReplayConfig(buffer=4, decompose=False), sequential=True)
    assert engine.run() == 8.0
    assert ops(engine, "a", "F") == [(1.0, 1.0, 0), (3.0, 1.0, 1)]
    assert ops(engine, "b", "F") == [(5.0, 1.0, 2), (7.0, 1.0, 3)]
    assert [s for s, _, _ in ops(engine, "d", "F")] == [0.0, 2.0, 4.0, 6.0] and m.switched_at == [2]


def test_sequential_splitfrozen_on_a_scenario_with_churn(tmp_path):
    (tmp_path / "w.yaml").write_text("pi: [[0, 0.3]]\n")
    res = sfsim.simulate(scenario(tmp_path, d1_availability={"file": "w.yaml", "churn": "drop"},
                                  d0_handover=[{"at": "0.5 s", "to": "b"}]), "splitfrozen-sequential")
    assert 0 < res.samples_not_trained["pi-0"] < 60 and res.handovers[0]["sent_after"] > 0
