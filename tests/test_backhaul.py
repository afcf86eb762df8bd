"""Backhaul sync between SplitFrozen servers: traffic and delay in closed form, rounds with a server done early."""

from __future__ import annotations

import pytest

import sfsim
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError

LINK = {"uplink": {"bandwidth": "10 Gbps", "latency": "1 ms"}, "downlink": {"bandwidth": "10 Gbps", "latency": "1 ms"}}
BACKHAUL = {"bandwidth": "1 Gbps", "latency": "5 ms"}


def scenario(sync=None, samples=(48, 48), count=1):
    """Two servers with one fast device each: the servers are the bottleneck, never short of work."""
    training = {"micro_batch": 4, "accumulate": 4, "buffer": 16, "decompose_backward": False, "lora_start": 10}
    if sync:
        training["sync"] = sync
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
        "training": training,
        "servers": [{"name": s, "flops": "1 TFLOPS", "memory": "24 GiB", "count": count, "backhaul": BACKHAUL}
                    for s in ("a", "b")],
        "devices": [{"name": f"d{s}", "flops": "100 TFLOPS", "memory": "4 GiB", "samples": n, "server": s, **LINK}
                    for s, n in zip("ab", samples, strict=True)]})


def adapter_bytes(sc):
    return CostModel(sc).adapter_bytes(range(10, 12), head=True)


def round_trip(sc):
    """Seconds one average costs a server: send, latency, receive, latency."""
    return 2 * (adapter_bytes(sc) * 8 / 1e9 + 5e-3)


def test_sync_traffic_is_adapter_bytes_x_rounds_x_servers_and_each_round_delays_by_a_round_trip():
    plain = sfsim.simulate(scenario(), "splitfrozen", splits=2)
    sc = scenario({"every": 1, "mode": "sync"})
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    A, steps = adapter_bytes(sc), 12 // 4  # 12 micro-batches per device, a step every 4
    assert res.sync_rounds == steps
    assert res.backhaul_bytes_by_server == {"a": 2 * A * steps, "b": 2 * A * steps}  # up and down
    assert sum(res.backhaul_bytes_by_server.values()) == 2 * A * steps * 2
    # the server waits for every average: the run is longer by one round trip per round
    assert res.makespan_s == pytest.approx(plain.makespan_s + steps * round_trip(sc), rel=1e-12)
    ops = sorted((e.lane, e.op) for e in res.events if e.lane.startswith("backhaul:"))
    assert ops == sorted([(f"backhaul:{s}", op) for s in "ab" for op in ("sync-send", "sync-recv")] * steps)
    assert res.to_dict()["sync_rounds"] == steps


def test_every_n_steps_and_async():
    sc = scenario({"every": 2, "mode": "sync"})
    res = sfsim.simulate(sc, "splitfrozen", splits=2)
    plain = sfsim.simulate(scenario(), "splitfrozen", splits=2)
    assert res.sync_rounds == 1 and res.backhaul_bytes_by_server["a"] == 2 * adapter_bytes(sc)
    assert res.makespan_s == pytest.approx(plain.makespan_s + round_trip(sc), rel=1e-12)
    # async: training never waits; the run ends when the last average has arrived after the last step
    sc = scenario({"every": 1, "mode": "async"})
    res = sfsim.simulate(sc, "splitfrozen", splits=2)
    assert res.sync_rounds == 3 and res.backhaul_bytes_by_server["b"] == 6 * adapter_bytes(sc)
    assert res.makespan_s == pytest.approx(plain.makespan_s + round_trip(sc), rel=1e-12)


def test_a_server_done_early_no_longer_holds_rounds_back():
    # b has 4 micro-batches (1 step), a has 12 (3 steps): round 1 has both, rounds 2 and 3 only a
    sc = scenario({"every": 1, "mode": "sync"}, samples=(48, 16))
    res = sfsim.simulate(sc, "splitfrozen", splits=2)
    A = adapter_bytes(sc)
    assert res.sync_rounds == 3
    assert res.backhaul_bytes_by_server == {"a": 6 * A, "b": 2 * A}


def test_no_sync_for_one_server():
    sc = scenario({"every": 1})
    assert sc.training.sync.mode == "sync"  # the default mode
    res = sfsim.simulate(sc, "splitlora")  # the baselines' rounds: tests/test_baseline_sync.py
    assert res.sync_rounds > 0
    one = sfsim.scenario_from_dict({**_raw(sc), "servers": [_raw(sc)["servers"][0]],
                                    "devices": [_raw(sc)["devices"][0]]})
    assert sfsim.simulate(one, "splitfrozen").sync_rounds == 0


def _raw(sc):
    return {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "accumulate": 4, "sync": {"every": 1}},
            "servers": [{"name": s, "flops": "1 TFLOPS", "memory": "24 GiB"} for s in "ab"],
            "devices": [{"name": "da", "flops": "1 TFLOPS", "memory": "4 GiB", "samples": 8, "server": "a", **LINK}]}


@pytest.mark.parametrize("change,message", [
    (lambda d: d["servers"][1].pop("backhaul"),
     "servers[1].backhaul: training.sync averages the servers over their backhaul links; add e.g. backhaul: "
     "{bandwidth: 10 Gbps, latency: 2 ms}"),
    (lambda d: d["training"]["sync"].update(every=0), "training.sync.every: Input should be greater than 0"),
    (lambda d: d["training"]["sync"].update(mode="lazy"), "training.sync.mode: Input should be 'sync' or 'async'"),
])
def test_bad_sync_one_line(change, message):
    data = {
        "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
        "training": {"micro_batch": 4, "sync": {"every": 1}},
        "servers": [{"name": s, "flops": "1 TFLOPS", "memory": "24 GiB", "backhaul": BACKHAUL} for s in "ab"],
        "devices": [{"name": "d", "flops": "1 TFLOPS", "memory": "4 GiB", "samples": 8, **LINK}]}
    change(data)
    with pytest.raises(ConfigError) as err:
        sfsim.scenario_from_dict(data, source="s.yaml")
    assert str(err.value).startswith(f"s.yaml: {message}")
