"""FedLoRA's round phase is the runtime's, plain FedAvg (issue 21, fed21): each round starts with the server's
``round`` message, the global adapter going down (the initial adapters for the run's first round), then local
training, the upload and the FedAvg; nothing goes down after the run's last FedAvg.

The simulator used to start the first round at 0 with the initial adapters already on the devices and to download
each round's average after its FedAvg, the last one's too: the same bytes and, with equal links, the same makespan,
but a device with a long downlink trained one downlink later in the real run than predicted
(``tests/test_late_start.py``). These are the simulator's exact figures of the new phase, SimPy and the fast path."""

from __future__ import annotations

import pytest

import sfsim
from sfsim.engine.core import Engine
from sfsim.engine.pool import DeviceTimes, ServerTimes
from sfsim.scenario.config import scenario_from_dict
from sfsim.schedules import Job, ReplayConfig, get
from tests.test_fast_lora import fast_figures, simpy_figures
from tests.test_late_start import FAR_S, late_fleet


def _near_far() -> Job:
    """One server (FedAvg 0.5 s a participant) and two devices, 1 s a micro-batch, 2 micro-batches, the adapter
    1 s each way: ``near`` with no latency, ``far`` with 1 s of downlink latency."""
    devices = [DeviceTimes(name, 0, n=2, f=1.0, sync_up_s=1.0, sync_down_s=1.0, sync_bytes=100.0, down_l=lat)
               for name, lat in (("near", 0.0), ("far", 1.0))]
    return Job(devices, [ServerTimes("s", 1, 0.0, 0.5)])


def _events(job: Job, cfg: ReplayConfig) -> list:
    engine = Engine(trace=True)
    get("fedlora").run(engine, job, cfg)
    engine.run()
    return engine.events


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_a_far_device_trains_after_its_first_download(engine):
    """near: the initial adapters by 1, trains 1..3, uploads 3..4; far: has them by 1 + 1 s of latency = 2, trains
    2..4, uploads 4..5; the FedAvg of two (1 s) ends 6, the run's end: no download after it. The old phase gave
    the same makespan (training 0..2, uploads by 3, FedAvg to 4, far's last download by 6) with the far device
    training at 0. Bytes unchanged: one download and one upload each."""
    cfg = ReplayConfig(accumulate=1, local_steps=2)
    got = (simpy_figures if engine == "simpy" else fast_figures)(_near_far(), cfg, "fedlora")
    assert got["makespan"] == 6.0
    assert got["server_busy"] == {"s": 1.0}
    assert got["up"] == got["down"] == {"near": 100.0, "far": 100.0}
    assert got["device_busy"] == {"near": 2.0, "far": 2.0}


def test_the_traced_phase():
    """The trace of :func:`test_a_far_device_trains_after_its_first_download`: each device's download at 0, its first
    forward at download + latency, its upload after its local work; one download each, none after the FedAvg."""
    ev = _events(_near_far(), ReplayConfig(accumulate=1, local_steps=2))
    starts = {(e.lane, e.op): [] for e in ev}
    for e in ev:
        starts[(e.lane, e.op)].append(e.start)
    assert starts[("downlink:near", "send")] == starts[("downlink:far", "send")] == [0.0]
    assert starts[("near", "F")] == [1.0, 2.0] and starts[("far", "F")] == [2.0, 3.0]
    assert starts[("link:near", "send")] == [3.0] and starts[("link:far", "send")] == [4.0]
    assert [(e.start, e.dur) for e in ev if e.op == "aggregate"] == [(5.0, 1.0)]


def test_a_far_device_of_a_scenario_starts_one_downlink_latency_late():
    """``tests/test_late_start.py``'s fleet (near 5 ms, far 1 s each way): both download the initial adapters from 0
    (the same bytes, the same time), far's first forward is 0.995 s after near's, its first upload too (the same
    work); every device downloads and uploads the adapter once (one round), on SimPy and the fast path alike."""
    sc = scenario_from_dict(late_fleet("fedlora"), source="late.yaml")
    res = sfsim.simulate(sc, "fedlora", trace=True, engine="simpy")
    down = {e.device: (e.start, e.dur) for e in res.events if e.lane.startswith("downlink:")}
    assert down["near"][0] == down["far"][0] == 0.0 and down["near"][1] == down["far"][1]
    first_f = {d: min(e.start for e in res.events if e.lane == d and e.op == "F") for d in ("near", "far")}
    assert first_f == {"near": 0.0 + (down["near"][1] + 0.005), "far": 0.0 + (down["far"][1] + FAR_S)}
    up = {e.device: e.start for e in res.events if e.lane.startswith("link:")}
    assert up["far"] - up["near"] == pytest.approx(FAR_S - 0.005, abs=1e-9)
    adapter = res.uplink_bytes_by_device["near"]
    assert res.downlink_bytes_by_device == res.uplink_bytes_by_device == {"near": adapter, "far": adapter}
    fast = sfsim.simulate(sc, "fedlora", engine="auto")
    assert (fast.engine, fast.engine_note) == ("fast", None)
    assert fast.to_dict() == sfsim.simulate(sc, "fedlora", engine="simpy").to_dict()


@pytest.mark.parametrize("sync", [False, True])
def test_two_servers_far_devices_agree_on_both_engines(sync):
    """Two servers, one near and one far device each, 2 rounds an epoch over 2 epochs, with ``training.sync`` (every
    round) or without (each epoch's closing round): downloads are one a round (4), the fast path's figures are
    SimPy's, and the run ends at the last FedAvg's backhaul round, not at a download."""
    data = late_fleet("fedlora")
    data["servers"] = [{**data["servers"][0], "name": n, "backhaul": {"bandwidth": "1 Gbps", "latency": "2 ms"}}
                       for n in ("a", "b")]
    data["devices"] = [{**d, "name": f"{d['name']}-{s}", "server": s} for s in ("a", "b") for d in data["devices"]]
    data["training"] = {**data["training"], "epochs": 2, "local_steps": 1}
    if sync:
        data["training"]["sync"] = {"every": 1}
    sc = scenario_from_dict(data, source="late2.yaml")
    res = sfsim.simulate(sc, "fedlora", trace=True, engine="simpy")
    adapter = res.uplink_bytes_by_device["near-a"] / 4
    assert res.downlink_bytes_by_device == res.uplink_bytes_by_device == dict.fromkeys(
        ["near-a", "far-a", "near-b", "far-b"], 4 * adapter)
    last_down = max(e.start + e.dur for e in res.events if e.lane.startswith("downlink:"))
    last_agg = max(e.start + e.dur for e in res.events if e.op == "aggregate")
    assert last_down < last_agg <= res.makespan_s
    fast = sfsim.simulate(sc, "fedlora", engine="auto")
    assert (fast.engine, fast.engine_note) == ("fast", None)
    assert fast.to_dict() == sfsim.simulate(sc, "fedlora", engine="simpy").to_dict()

