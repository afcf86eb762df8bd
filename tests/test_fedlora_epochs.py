"""FedLoRA's rounds over several epochs, formed per epoch as the runtime forms them (trainer.methods.fedlora): a round
never runs into the next epoch, the epoch's last round holds what is left (a partial accumulation window ends with its
own step), and a device with fewer rounds in an epoch waits for its server's epoch to end. SimPy and the fast path
follow; a real 1-server and 2-server run over 2 epochs send the simulator's adapters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sfsim
from sfsim.engine.pool import DeviceTimes, ServerTimes
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules.fedlora import count, first_of, plans, round_plan, slot_of, width
from tests.test_fast_lora import fast_figures, simpy_figures

FIXTURES = Path(__file__).parent / "fixtures"


def test_rounds_end_at_each_epochs_end():
    """5 micro-batches an epoch, 2 a round, 2 epochs: 3 rounds an epoch (2, 2, 1), 6 in all (across epochs: 5)."""
    plan = round_plan(10, 5, 2, 3)
    assert plan == [(0, 0, 2), (1, 2, 4), (2, 4, 5), (3, 5, 7), (4, 7, 9), (5, 9, 10)]
    assert count(10, 5, 2) == 6 and count(9, 3, 2) == 6 and count(0, 5, 2) == 0
    assert round_plan(4, 2, 2, 3) == [(0, 0, 2), (3, 2, 4)]  # one round an epoch on 3 slots: it skips two
    assert round_plan(5, 0, 2, 3) == [(0, 0, 2), (1, 2, 4), (2, 4, 5)]  # per_epoch 0: one epoch
    assert [first_of(plan, u, 10) for u in (0, 3, 6)] == [0, 5, 10]
    assert [slot_of(plan, u) for u in (0, 5, 6)] == [0, 5, 6] and slot_of([], 0) == 0


def _pair(a: dict, b: dict) -> Job:
    """One server (FedAvg 0.5 s a participant) and devices A and B: 1 s a micro-batch, 1 s each way."""
    devices = [DeviceTimes(name, 0, f=1.0, sync_up_s=1.0, sync_down_s=1.0, sync_bytes=100.0, **kw)
               for name, kw in (("A", a), ("B", b))]
    return Job(devices, [ServerTimes("s", 1, 0.0, 0.5)])


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_a_device_with_fewer_rounds_waits_for_its_servers_epoch(engine):
    """A: 5 micro-batches an epoch (3 rounds), B: 2 (1 round), local_steps 2, 2 epochs: slots of 3 an epoch.
    Both download the initial adapters by 1; slot 0 both (uploads at 4, FedAvg of 2 ends 5, downloads 6); slots 1, 2
    A alone (ends 9.5, then 13; the second round of 1 micro-batch); B waits for slot 2's end (13) and downloads by
    14, as A; slot 3 both (ends 18); slots 4, 5 A alone (ends 22.5, 26: no download after it). B uploads twice, A
    six times; each downloads as often (the first round's included)."""
    job = _pair({"n": 10, "per_epoch": 5}, {"n": 4, "per_epoch": 2})
    cfg = ReplayConfig(accumulate=1, local_steps=2)
    assert width(job.devices, 2) == 3 and [len(p) for p in plans(job.devices, 2)] == [6, 2]
    got = (simpy_figures if engine == "simpy" else fast_figures)(job, cfg, "fedlora")
    assert got["makespan"] == 26.0
    assert got["server_busy"] == {"s": 4.0}
    assert got["up"] == got["down"] == {"A": 600.0, "B": 200.0}
    assert got["device_busy"] == {"A": 10.0, "B": 4.0}


def test_a_partial_window_ends_the_epochs_last_round():
    """accumulate 2, rounds of 3, 5 micro-batches an epoch: rounds (3, 2) an epoch; steps after micro-batches
    2, 3 (partial) and 5 of each epoch: 3 an epoch, 6 in all (across epochs it would be rounds (3, 3, 3, 1): 7)."""
    job = _pair({"n": 10, "per_epoch": 5, "step": 1.0}, {"n": 0})
    cfg = ReplayConfig(accumulate=2, local_steps=3)
    want, got = simpy_figures(job, cfg, "fedlora"), fast_figures(job, cfg, "fedlora")
    assert want == got
    assert got["device_busy"]["A"] == 10.0 + 6.0 and got["up"]["A"] == 400.0


# -- the runtime sends what the simulator counts ---------------------------------------------------------------
def _steps(samples: int, micro_batch: int = 4, epochs: int = 2) -> int:
    """Optimizer steps (accumulate 1): one a micro-batch."""
    return -(-samples // micro_batch) * epochs


@pytest.mark.usefixtures("one_torch_thread")
def test_one_server_over_two_epochs_sends_the_simulators_rounds(tiny_gpt2, tmp_path):
    """runtime_tiny.yaml, 40 samples (big 20: 5 micro-batches an epoch, 3 rounds; small 10: 3, 2 rounds), 2 epochs:
    every device's downloads are the simulator's bytes (6 and 4 rounds), its uploads the same plus its loss
    record (3 floats an optimizer step)."""
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = FIXTURES / "runtime_tiny.yaml"
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=dev, method="fedlora", train_samples=40, epochs=2))
    vc = ValidateConfig(devices=str(dev), model=tiny_gpt2, method="fedlora", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=40, server_order="round-robin", epochs=2)
    sim = predict(vc, m)
    assert m["samples_by_device"] == {"big": 20, "small-0": 10, "small-1": 10}
    assert m["downlink_bytes_by_device"] == sim.downlink_bytes_by_device
    adapter = sim.downlink_bytes_by_device["big"] / 6
    assert sim.uplink_bytes_by_device == {"big": 6 * adapter, "small-0": 4 * adapter, "small-1": 4 * adapter}
    assert m["uplink_bytes_by_device"] == {n: b + 12 * _steps(m["samples_by_device"][n])
                                           for n, b in sim.uplink_bytes_by_device.items()}


@pytest.mark.usefixtures("one_torch_thread")
def test_two_servers_over_two_epochs_send_the_simulators_rounds(tiny_gpt2, tmp_path):
    """runtime_two_servers.yaml without training.sync, 40 samples (10 a device: 3 micro-batches an epoch, 2
    rounds), 2 epochs: 4 rounds a device (across epochs: 3), each epoch closed by one backhaul round, in both halves
    between the epochs: each server sends its part after its own devices' second uploads, and the average is back
    before their third (shaped links; against the first send of either server, a device of the other server
    uploading 2 ms later failed under load)."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_multiserver import TWO, _cfg, _with
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = _with(tmp_path, TWO, lambda d: d["training"].update(sync=None))
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=dev, method="fedlora", train_samples=40, epochs=2,
                 emulate="links"))
    vc = ValidateConfig(devices=str(dev), model=tiny_gpt2, method="fedlora", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=40, server_order="round-robin", epochs=2)
    sim = predict(vc, m)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    for events in (measured, sim.events):  # the runtime's trace, the simulator's of the same run
        for n in m["samples_by_device"]:  # each server's closing round against its own devices' uploads (a server
            closing = [e for e in events if e.lane == f"backhaul:mec-{n[0]}"]  # sends once its own epoch ends)
            sent = min(e.start for e in closing if e.op == "sync-send")
            back = min(e.start + e.dur for e in closing if e.op == "sync-recv")
            u = sorted(e.start for e in events if e.lane == f"link:{n}")
            assert len(u) == 4 and u[1] < sent and u[2] > back, (n, u, sent, back)
    assert set(m["samples_by_device"].values()) == {10}
    assert m["downlink_bytes_by_device"] == sim.downlink_bytes_by_device
    adapter = sim.downlink_bytes_by_device["a-0"] / 4
    assert sim.uplink_bytes_by_device == dict.fromkeys(["a-0", "b-0", "a-1", "b-1"], 4 * adapter)
    assert m["uplink_bytes_by_device"] == {n: b + 12 * _steps(10) for n, b in sim.uplink_bytes_by_device.items()}
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 2)
    assert sim.sync_rounds == 2 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server


# -- no training.sync: each epoch's closing round, at its end --------------------------------------------------
def test_each_epoch_closes_before_the_next_starts():
    """tests/test_baseline_sync.py's 2 servers, one device each (12 micro-batches an epoch, rounds of 10 and 2),
    2 epochs, no training.sync: each server's epoch ends with its second FedAvg; both send the closing round then,
    the average is back a round trip later, and only then the device downloads for epoch 2's first round (the
    runtime's next ``round`` message follows ``finish_sync``); the first download, of the initial adapters, starts at
    0 and none follows the last FedAvg. The second epoch's closing round ends the run."""
    from tests.test_baseline_sync import backhaul_events, scenario, sizes

    sc = scenario(epochs=2)
    res = sfsim.simulate(sc, "fedlora", trace=True)
    closing = sizes(sc)[2]
    busy, lat = closing * 8 / 1e9, 5e-3
    assert res.sync_rounds == 2 and res.backhaul_bytes_by_server == {"a": 4 * closing, "b": 4 * closing}
    aggregates = [e.start + e.dur for e in res.events if e.lane == "a" and e.op == "aggregate"]
    sends = [e.start for e in backhaul_events(res) if e.lane == "backhaul:a" and e.op == "sync-send"]
    recvs = [e.start for e in backhaul_events(res) if e.lane == "backhaul:a" and e.op == "sync-recv"]
    downloads = [e.start for e in res.events if e.lane == "downlink:da"]
    assert len(aggregates) == len(downloads) == 4  # 2 rounds an epoch
    assert sends == [aggregates[1], aggregates[3]]
    assert recvs == [pytest.approx(s + busy + lat, rel=1e-12) for s in sends]
    assert downloads[0] == 0.0  # the initial adapters, at the run's start (the runtime's first ``round``)
    assert downloads[1] == aggregates[0] and downloads[3] == aggregates[2]  # within an epoch: at once
    assert downloads[2] == pytest.approx(recvs[0] + busy + lat, rel=1e-12)  # epoch 2's first round waits for it
    assert max(downloads) < aggregates[3]  # nothing goes down after the run's last FedAvg
    assert res.makespan_s == pytest.approx(recvs[1] + busy + lat, rel=1e-12)


def test_a_server_with_only_a_visitor_closes_its_epoch_after_the_visitors_rounds():
    """Without training.sync, s1 holds no device of its own and mover hands over to it at 0.5 s: s1's first closing
    round waits for the visitor's rounds there (as the runtime's server waits for its visitors), it used to go at 0;
    the fast path gives the same result."""
    from sfsim.fast.warm import _LINK, _SCENARIO
    from sfsim.scenario.config import scenario_from_dict

    device = {"count": 1, "flops": "60 GFLOPS", "memory": "4 GiB", "samples": 24, "server": "s0",
              "uplink": dict(_LINK), "downlink": dict(_LINK)}
    backhaul = {"bandwidth": "1 Gbps", "latency": "2 ms"}
    data = {**_SCENARIO, "servers": [{**s, "backhaul": backhaul} for s in _SCENARIO["servers"]],
            "training": {**_SCENARIO["training"], "epochs": 2},
            "devices": [{"name": "home", **device}, {"name": "mover", **device, "handover": [{"at": "0.5 s", "to": "s1"}]}]}
    scenario = scenario_from_dict(data, source="s.yaml")
    res = sfsim.simulate(scenario, "fedlora", trace=True, engine="simpy")
    sends = {s: [round(e.start, 4) for e in res.events if e.lane == f"backhaul:{s}" and e.op == "sync-send"]
             for s in ("s0", "s1")}
    aggregates = [round(e.start + e.dur, 4) for e in res.events if e.lane == "s1" and e.op == "aggregate"]
    assert sends == {"s0": [4.8557, 9.7344], "s1": [4.8557, 9.7344]} and aggregates == [4.8557, 9.7344]
    auto = sfsim.simulate(scenario, "fedlora", engine="auto")
    assert (auto.engine, auto.engine_note) == ("fast", None)
    simpy = sfsim.simulate(scenario, "fedlora", engine="simpy").to_dict()
    assert auto.to_dict() == simpy
