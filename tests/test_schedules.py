"""Baseline schedules by hand, and simulate() on tiny scenarios: work counts, resolution, errors."""

from __future__ import annotations

import pytest

import sfsim
from sfsim.cost.model import CostModel
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.errors import SfsimError
from sfsim.scenario.planfile import Plan
from sfsim.schedules import Job, ReplayConfig, cenlora, fedlora, splitfrozen, splitlora


def replay(module, devices, server, **cfg):
    engine = Engine(trace=True)
    module.run(engine, Job(list(devices), [server]), ReplayConfig(**cfg))
    makespan = engine.run()
    return makespan, sorted(engine.events, key=lambda e: (e.start, e.lane, e.op)), engine


def _clients():
    common = dict(b=1, w=0.5, step=0.5, up_s=1, up_l=0.5, down_s=0.5, down_l=0.5, sync_up_s=1, sync_down_s=1,
                  srv_f=1, srv_b=1, srv_w=1)
    return [DeviceTimes("x", n=2, f=1, **common), DeviceTimes("y", n=1, f=2, **common)]


def test_splitlora_by_hand():
    """Interleaved clients, arrival order (policy fifo), FedAvg every 2 server steps, as the trainer runs them.

    x (2 micro-batches, f=1) and y (1, f=2) get ``fwd`` at 0 (latency 0.5): F at 0.5, arrivals 3 and 4.
    x: server F 3, B 4 (gradient down 5..5.5, at x 6: B 6, W 7, step 7.5), W 5, step 6; y: F 6.5 .. step
    9.5 (y's B 9.5 .. step 11). Two steps: FedAvg. ``sync`` reaches both at 10.5; x uploads 10.5..11.5
    (at 12), y when free 11.5..12.5 (at 13); aggregate 13 (2 x 0.25); the average goes down 13.5..14.5.
    x's next ``fwd`` (sent at 13.5) queues behind it: arrives 15, F 15, up 16..17, server F 17.5 .. step
    20.5 (x's B 20.5 .. step 22). The epoch ends: FedAvg again (x uploads 22.5, y 21.5; aggregate 24),
    downloads 24.5..25.5 arrive at 26.
    """
    makespan, events, engine = replay(splitlora, _clients(), ServerTimes("srv", step=0.5, aggregate=0.25),
                                      fedavg_every=2, decompose=True)
    server = [(e.op, e.start, e.device) for e in events if e.lane == "srv"]
    assert server == [("F", 3, "x"), ("B", 4, "x"), ("W", 5, "x"), ("step", 6, ""),
                      ("F", 6.5, "y"), ("B", 7.5, "y"), ("W", 8.5, "y"), ("step", 9.5, ""),
                      ("aggregate", 13, ""),
                      ("F", 17.5, "x"), ("B", 18.5, "x"), ("W", 19.5, "x"), ("step", 20.5, ""),
                      ("aggregate", 24, "")]
    assert [(e.start, e.dur) for e in events if e.lane == "downlink:x"] == [(5, 0.5), (13.5, 1), (19.5, 0.5),
                                                                             (24.5, 1)]
    assert [(e.start, e.dur) for e in events if e.lane == "link:y"] == [(2.5, 1), (11.5, 1), (21.5, 1)]
    assert [(e.op, e.start) for e in events if e.lane == "x"] == [
        ("F", 0.5), ("B", 6), ("W", 7), ("step", 7.5), ("F", 15), ("B", 20.5), ("W", 21.5), ("step", 22)]
    assert [(e.op, e.start) for e in events if e.lane == "y"] == [("F", 0.5), ("B", 9.5), ("W", 10.5), ("step", 11)]
    assert makespan == 26
    assert engine.server_busy["srv"] == 3 * 3 + 3 * 0.5 + 2 * 0.5
    assert engine.device_busy == {"x": 2 * (1 + 1 + 0.5) + 2 * 0.5, "y": (2 + 1 + 0.5) + 0.5}  # F B W, steps


def test_splitlora_fused_sends_gradient_before_step():
    """Fused backward: the trainer sends the gradient right after ``BW``, before its optimizer step."""
    makespan, events, _ = replay(splitlora, _clients()[:1], ServerTimes("srv", step=0.5), fedavg_every=5,
                                 decompose=False)
    assert [e.start for e in events if e.lane == "downlink:x"][0] == (0.5 + 1 + 1 + 0.5) + 1 + 2
    assert [(e.op, e.start) for e in events if e.lane == "srv"][:3] == [("F", 3), ("BW", 4), ("step", 6)]


def test_fedlora_by_hand_two_rounds():
    """Both download the initial adapters from 0 (1 s + 0.5 s latency: 1.5); x trains 1.5..4.5 and uploads by 6, y
    1.5..5.5 and by 7; FedAvg of two 7..7.5; x downloads by 9, trains to 12, uploads by 13.5; FedAvg 13.5..13.75, the
    end: nothing goes down after it."""
    makespan, events, _ = replay(fedlora, _clients(), ServerTimes("srv", aggregate=0.25), local_steps=1,
                                 accumulate=1)
    assert [(e.op, e.start, e.dur) for e in events if e.lane == "srv"] == [("aggregate", 7, 0.5),
                                                                            ("aggregate", 13.5, 0.25)]
    assert [(e.lane, e.start) for e in events if e.lane.startswith("downlink")] == [
        ("downlink:x", 0), ("downlink:y", 0), ("downlink:x", 7.5)]
    assert makespan == 13.75


def test_fedlora_steps_every_accumulate_and_partial():
    d = DeviceTimes("x", n=5, f=1, b=1, w=1, step=0.5)
    _, events, engine = replay(fedlora, [d], ServerTimes("srv"), local_steps=5, accumulate=2)
    assert [e.start for e in events if e.op == "step"] == [6, 12.5, 16]
    assert engine.device_busy["x"] == 15 + 1.5


@pytest.mark.parametrize("count,expected", [(1, 10), (2, 6.5)])
def test_cenlora_by_hand(count, expected):
    devs = [DeviceTimes("x", n=2, sent=0, srv_f=1, srv_b=1, srv_w=1),
            DeviceTimes("y", n=1, sent=0, srv_f=1, srv_b=1, srv_w=1)]
    makespan, events, engine = replay(cenlora, devs, ServerTimes("srv", count=count, step=0.5), accumulate=2)
    assert makespan == expected
    assert sum(1 for e in events if e.op == "F") == 3
    assert engine.mixing["srv"].total == 3


def test_splitfrozen_two_devices_by_hand():
    a = DeviceTimes("a", n=4, f=0.25, up_s=0.25, srv_f=2)
    b = DeviceTimes("b", n=2, f=0.3125, up_s=0.25, srv_f=2)
    makespan, _, _ = replay(splitfrozen, [a, b], ServerTimes("srv"), buffer=8)
    assert makespan == 0.5 + 6 * 2


# ------------------------------------------------------------------ simulate() on tiny scenarios
def tiny(**training):
    dev = {"memory": "4 GiB", "uplink": {"bandwidth": "100 Mbps", "latency": "10 ms"},
           "downlink": {"bandwidth": "200 Mbps", "latency": "10 ms"}}
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
        "training": {"micro_batch": 4, "epochs": 2, "accumulate": 2, "buffer": 2, "local_steps": 3,
                     "fedavg_every": 2, **training},
        "servers": [{"name": "gpu", "flops": "5 TFLOPS", "memory": "24 GiB"}],
        "devices": [{"name": "pi", "count": 2, "flops": "40 GFLOPS", "samples": 14, **dev},
                    {"name": "phone", "flops": "300 GFLOPS", "samples": 9, **dev}],
    })


SCHEDULES = ["splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora", "cenlora"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_micro_batch_processed_once(schedule):
    sc = tiny()
    res = sfsim.simulate(sc, schedule, trace=True)
    expected = sorted((d.name, n) for d in sc.devices for n in range(2 * sc.micro_batches(d)))
    lane = (lambda e: e.lane in ("pi-0", "pi-1", "phone")) if schedule == "fedlora" else (lambda e: e.lane == "gpu")
    assert sorted((e.device, e.mb) for e in res.events if lane(e) and e.op == "F") == expected
    assert res.micro_batches == len(expected) == 2 * (4 + 4 + 3)
    by_lane = {}
    for e in res.events:
        by_lane.setdefault(e.lane, []).append(e)
    for evs in by_lane.values():
        evs.sort(key=lambda e: e.start)
        assert all(y.start >= x.end - 1e-9 for x, y in zip(evs, evs[1:], strict=False))
    # the run ends with the last op (FedLoRA's: its last FedAvg), or SplitLoRA's with its last download's propagation delay
    tail = 0.010 if schedule == "splitlora" else 0.0
    assert res.makespan_s == pytest.approx(max(e.end for e in res.events) + tail, rel=1e-12)


def test_simulate_matches_closed_form_one_device():
    sc = tiny(decompose_backward=False, accumulate=1000, epochs=1)
    cm = CostModel(sc)
    dev, srv = sc.devices[2], sc.servers[0]
    res = sfsim.simulate(sc, "splitfrozen", splits={"pi-0": 2, "pi-1": 2, "phone": 4}, lora_start=6)
    assert res.splits == {"pi-0": 2, "pi-1": 2, "phone": 4} and res.lora_start == 6
    phone = {**_as_dict(sc)["devices"][1], "samples": 12}  # 3 full micro-batches of 4
    one = sfsim.scenario_from_dict({**_as_dict(sc), "devices": [phone]})
    res1 = sfsim.simulate(one, "splitfrozen", splits=4, lora_start=6)
    f = cm.seconds(cm.device_prefix(4), dev)[0]
    s = cm.uplink_bytes(4) * 8 / dev.uplink.bandwidth
    srv_t = sum(cm.seconds(cm.server_suffix(4, 6), srv))
    step = cm.optimizer_seconds(cm.trainable_params(range(6, 12), head=True), srv)
    n = 3
    closed = (f + s + dev.uplink.latency + srv_t) + (n - 1) * max(f, s, srv_t) + step
    assert res1.makespan_s == pytest.approx(closed, rel=1e-12)
    assert res1.device_flops["phone"] == pytest.approx(n * cm.device_prefix(4).f)
    assert res1.uplink_bytes == n * cm.uplink_bytes(4)
    assert res1.downlink_bytes == 0


def test_partial_last_micro_batch_engine_timeline():
    # 2 micro-batches per epoch, the last a quarter full: its F, send and server work take a quarter
    d = DeviceTimes("d", n=2, per_epoch=2, last=0.25, f=1.0, up_s=2.0, up_l=0.5, srv_f=1.0, srv_b=1.0, srv_w=1.0)
    engine = Engine(trace=True)
    splitfrozen.run(engine, Job([d], [ServerTimes("s")]), ReplayConfig(buffer=8, accumulate=100, decompose=False))
    assert engine.run() == 7.25
    assert [(e.lane, e.op, e.start, e.dur) for e in engine.events if e.mb == 1] == [
        ("d", "F", 1.0, 0.25), ("d", "wait", 1.25, 1.75), ("link:d", "send", 3.0, 0.5),
        ("s", "F", 6.5, 0.25), ("s", "BW", 6.75, 0.5)]
    assert engine.device_busy["d"] == 1.25 and engine.up_bytes["d"] == 0.0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_one_sample_costs_one_sample(schedule):
    # samples: 1 with micro_batch 8 costs 1/8 of a full micro-batch's FLOPs and bytes, in every schedule
    base = _as_dict(None)
    full, one = (sfsim.scenario_from_dict({**base, "training": {**base["training"], "micro_batch": 8},
                                           "devices": [{**base["devices"][1], "samples": n}]})
                 for n in (8, 1))
    a, b = (sfsim.simulate(sc, schedule, splits=2) for sc in (full, one))
    assert a.micro_batches == b.micro_batches == 1
    assert b.device_flops_total == pytest.approx(a.device_flops_total / 8, rel=1e-12)
    assert sum(b.server_flops.values()) == pytest.approx(sum(a.server_flops.values()) / 8, rel=1e-12)
    act = CostModel(full).uplink_bytes(2) if schedule not in ("fedlora", "cenlora") else 0.0
    assert a.uplink_bytes - b.uplink_bytes == pytest.approx(act * 7 / 8)  # adapters (FedAvg) do not shrink
    assert b.makespan_s < a.makespan_s


def _as_dict(sc):
    dev = {"memory": "4 GiB", "uplink": {"bandwidth": "100 Mbps", "latency": "10 ms"},
           "downlink": {"bandwidth": "200 Mbps", "latency": "10 ms"}}
    return {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "epochs": 1, "decompose_backward": False, "accumulate": 1000},
            "servers": [{"name": "gpu", "flops": "5 TFLOPS", "memory": "24 GiB"}],
            "devices": [{"name": "pi", "count": 2, "flops": "40 GFLOPS", "samples": 14, **dev},
                        {"name": "phone", "flops": "300 GFLOPS", "samples": 9, **dev}]}


def test_schedules_compare_as_the_method_predicts():
    sc = tiny()
    res = {s: sfsim.simulate(sc, s, splits=3) for s in SCHEDULES}
    assert res["cenlora"].device_flops_total == 0 and res["cenlora"].uplink_bytes == 0
    assert res["splitfrozen"].downlink_bytes == 0
    assert res["splitfrozen"].device_flops_total < res["splitlora"].device_flops_total < res["fedlora"].device_flops_total
    assert res["splitfrozen"].makespan_s < res["splitfrozen-sequential"].makespan_s
    assert res["splitlora"].downlink_bytes > 0


def test_activation_cache_halves_uplink_with_two_epochs():
    base = sfsim.simulate(tiny(), "splitfrozen")
    cached = sfsim.simulate(tiny(cache_activations=True), "splitfrozen")
    assert cached.uplink_bytes * 2 == base.uplink_bytes
    assert cached.micro_batches == base.micro_batches
    assert sum(cached.server_flops.values()) == sum(base.server_flops.values())


def test_resolution_defaults_and_plan():
    sc = tiny()
    assert set(sfsim.simulate(sc).splits.values()) == {1}
    assert set(sfsim.simulate(tiny(split=2)).splits.values()) == {2}
    assert set(sfsim.simulate(sc, "splitlora").splits.values()) == {3}
    res = sfsim.simulate(sc, splits={"phone": 3})
    assert res.splits == {"pi-0": 1, "pi-1": 1, "phone": 3} and res.lora_start == 3
    plan = Plan(splits={"pi-0": 1, "pi-1": 2, "phone": 4}, lora_start=5, assignment={"phone": "gpu"})
    res = sfsim.simulate(sc, plan=plan)
    assert res.splits["phone"] == 4 and res.lora_start == 5
    assert sfsim.simulate(sc, "centralized").schedule == "cenlora"


def test_bad_policy_in_scenario_names_the_key():
    with pytest.raises(SfsimError, match="training.server_policy: unknown server policy 'lifo'"):
        sfsim.simulate(tiny(server_policy="lifo"))


@pytest.mark.parametrize("kwargs,match", [
    ({"splits": 12}, "outside 0..11"),
    ({"splits": {"nope": 1}}, "no device named 'nope'"),
    ({"splits": 3, "lora_start": 2}, "lora_start 2 must be in 3..11"),
    ({"schedule": "splitfrozenx"}, "unknown schedule"),
    ({"policy": "lifo"}, "unknown server policy"),
    ({"splits": "3"}, "must be an int or a dict"),
])
def test_bad_input_one_line(kwargs, match):
    with pytest.raises(SfsimError, match=match) as err:
        sfsim.simulate(tiny(), **kwargs)
    assert "\n" not in str(err.value)


def test_sequential_with_cached_activations_replays_later_epochs():
    sc = tiny(cache_activations=True, epochs=2, buffer=1)
    res = sfsim.simulate(sc, "splitfrozen-sequential", trace=True)
    assert res.micro_batches == 2 * (4 + 4 + 3)
    assert sorted((e.device, e.mb) for e in res.events if e.lane == "gpu" and e.op == "F") == sorted(
        (d.name, n) for d in sc.devices for n in range(2 * sc.micro_batches(d)))
