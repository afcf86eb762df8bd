"""Backhaul rounds between SplitFrozen servers (the runtime's, as the baselines'): traffic and delay in closed form,
every server in every round (one done early answers with zeros), the closing round without training.sync, and the
fast path's closing rounds equal the SimPy engine's."""

from __future__ import annotations

import random

import pytest

import sfsim
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError

LINK = {"uplink": {"bandwidth": "10 Gbps", "latency": "1 ms"}, "downlink": {"bandwidth": "10 Gbps", "latency": "1 ms"}}
BACKHAUL = {"bandwidth": "1 Gbps", "latency": "5 ms"}


def scenario(sync=None, samples=(48, 48), count=1, backhaul=BACKHAUL, epochs=1, flops=("1 TFLOPS", "1 TFLOPS")):
    """Two servers with one fast device each: the servers are the bottleneck, never short of work."""
    training = {"micro_batch": 4, "accumulate": 4, "buffer": 16, "decompose_backward": False, "lora_start": 10,
                "epochs": epochs}
    if sync:
        training["sync"] = sync
    link = {"backhaul": backhaul} if backhaul else {}
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
        "training": training,
        "servers": [{"name": s, "flops": f, "memory": "24 GiB", "count": count, **link}
                    for s, f in zip("ab", flops, strict=True)],
        "devices": [{"name": f"d{s}", "flops": "100 TFLOPS", "memory": "4 GiB", "samples": n, "server": s, **LINK}
                    for s, n in zip("ab", samples, strict=True)]})


def adapter_bytes(sc):
    return CostModel(sc).adapter_bytes(range(10, 12), head=True)


def round_trip(sc):
    """Seconds one average costs a server: send, latency, receive, latency."""
    return 2 * (adapter_bytes(sc) * 8 / 1e9 + 5e-3)


def bare():
    """The run without any backhaul round (no link declared, no sync)."""
    res = sfsim.simulate(scenario(backhaul=None), "splitfrozen", splits=2)
    assert res.sync_rounds == 0 and res.backhaul_bytes_by_server == {}
    return res.makespan_s


def test_sync_traffic_is_adapter_bytes_x_rounds_x_servers_and_each_round_delays_by_a_round_trip():
    sc = scenario({"every": 1, "mode": "sync"})
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    A, steps = adapter_bytes(sc), 12 // 4  # 12 micro-batches per device, a step every 4
    # gradients averaged at every step; the last round is both servers' last step: no drain, no closing round
    assert res.sync_rounds == steps
    assert res.backhaul_bytes_by_server == {"a": 2 * A * steps, "b": 2 * A * steps}  # up and down
    # the server waits for every average: the run is longer by one round trip per round
    assert res.makespan_s == pytest.approx(bare() + steps * round_trip(sc), rel=1e-12)
    ops = sorted((e.lane, e.op) for e in res.events if e.lane.startswith("backhaul:"))
    assert ops == sorted([(f"backhaul:{s}", op) for s in "ab" for op in ("sync-send", "sync-recv")] * steps)
    assert res.to_dict()["sync_rounds"] == steps


def test_joint_rounds_average_the_gradients_before_each_step():
    """Sync every step: as the runtime (ServerSync.before_step), a server joins the round when its step's backward
    has ended and steps when the average is back, so with servers of different speeds the faster one waits before
    its step, not after it (it used to step first: its steps then ended a step's time early)."""
    sc = scenario({"every": 1, "mode": "sync"}, flops=("1 TFLOPS", "0.5 TFLOPS"))
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    A = adapter_bytes(sc)
    busy = A * 8 / 1e9
    ev = sorted(res.events, key=lambda e: (e.start, e.op))
    lanes = {s: [e for e in ev if e.lane in (s, f"backhaul:{s}") and e.op in ("BW", "sync-send", "sync-recv", "step")]
             for s in "ab"}
    for s in "ab":
        ops = [e.op for e in lanes[s] if e.op != "BW"]
        assert ops == ["sync-send", "sync-recv", "step"] * 3
    for k in range(3):
        sends = {s: [e for e in lanes[s] if e.op == "sync-send"][k] for s in "ab"}
        ready = max(e.start + busy + 5e-3 for e in sends.values())  # every upload has arrived
        for s in "ab":
            bws = [e for e in lanes[s] if e.op == "BW" and e.start < sends[s].start]
            recv = [e for e in lanes[s] if e.op == "sync-recv"][k]
            step = [e for e in lanes[s] if e.op == "step"][k]
            assert sends[s].start == pytest.approx(bws[-1].start + bws[-1].dur, rel=1e-12)  # at the backward's end
            assert recv.start == pytest.approx(ready, rel=1e-12)
            assert step.start == pytest.approx(recv.start + busy + 5e-3, rel=1e-12)
    slow_steps = [e for e in ev if e.lane == "b" and e.op == "step"]
    assert res.makespan_s == pytest.approx(slow_steps[-1].start + slow_steps[-1].dur, rel=1e-12)


def test_every_n_steps_and_async():
    """Every 2: a round after step 2; step 3 is the last and starts none, so a round of zeros finds that no server
    trains and a closing round follows (the runtime's finish). Async every step: three rounds, the last both
    servers' last step; the run ends when its average has arrived."""
    sc = scenario({"every": 2, "mode": "sync"})
    res = sfsim.simulate(sc, "splitfrozen", splits=2)
    assert res.sync_rounds == 3 and res.backhaul_bytes_by_server["a"] == 6 * adapter_bytes(sc)
    assert res.makespan_s == pytest.approx(bare() + 3 * round_trip(sc), rel=1e-12)
    sc = scenario({"every": 1, "mode": "async"})
    res = sfsim.simulate(sc, "splitfrozen", splits=2)
    assert res.sync_rounds == 3 and res.backhaul_bytes_by_server["b"] == 6 * adapter_bytes(sc)
    assert res.makespan_s == pytest.approx(bare() + round_trip(sc), rel=1e-12)


def test_a_server_done_early_answers_every_round_with_zeros():
    """b has 4 micro-batches (1 step), a has 12 (3 steps): b answers a's rounds 2 and 3 with zeros and steps with
    it (gradients averaged before each step), so its bytes count in every round, as in the runtime (it used to drop
    out of the rounds: 2 A)."""
    sc = scenario({"every": 1, "mode": "sync"}, samples=(48, 16))
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    A = adapter_bytes(sc)
    assert res.sync_rounds == 3
    assert res.backhaul_bytes_by_server == {"a": 6 * A, "b": 6 * A}
    assert len([e for e in res.events if e.lane == "b" and e.op == "step"]) == 3


def test_without_sync_each_epoch_ends_with_a_closing_round():
    """No training.sync, a backhaul link: one closing round per epoch after the servers' ends (sfsim run's), a
    round trip on the run; no link: nothing (the figures without a link are unchanged)."""
    sc = scenario()
    A = adapter_bytes(sc)
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    assert res.sync_rounds == 1 and res.backhaul_bytes_by_server == {"a": 2 * A, "b": 2 * A}
    assert res.makespan_s == pytest.approx(bare() + round_trip(sc), rel=1e-12)
    ends = {e.lane: e.start for e in res.events if e.op == "sync-send"}
    assert ends == {"backhaul:a": res.server_end_s["a"], "backhaul:b": res.server_end_s["b"]}
    two = sfsim.simulate(scenario(epochs=2), "splitfrozen", splits=2)
    assert two.sync_rounds == 2 and two.backhaul_bytes_by_server["a"] == 4 * A


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_closing_rounds_equal_simpy(seed):
    """Random fleets without training.sync: over one epoch the fast path adds the closing round after its replay
    exactly as the SimPy engine does (makespan, rounds, bytes, utilisation); over two, each epoch ends with its round
    before the next starts (tests/test_splitfrozen_closing.py), which the fast path replays with its servers (SimPy's
    alone with several workers a server)."""
    rng = random.Random(seed)
    slow = {"bandwidth": f"{rng.choice([1, 10, 100])} Mbps", "latency": f"{rng.choice([1, 20])} ms"}
    sc = scenario(samples=(4 * rng.randint(1, 12), 4 * rng.randint(0, 12) + rng.randint(0, 3)),
                  count=rng.choice([1, 2]), backhaul=slow, epochs=rng.choice([1, 2]))
    schedule = rng.choice(["splitfrozen", "splitfrozen-sequential"])
    policy = rng.choice(["fifo", "proportional"])
    fast = sfsim.simulate(sc, schedule, splits=2, policy=policy, engine="auto")
    ref = sfsim.simulate(sc, schedule, splits=2, policy=policy, engine="simpy")
    count = sc.servers[0].count
    assert fast.engine == ("fast" if sc.training.epochs == 1 or count == 1 else "simpy") and ref.engine == "simpy"
    assert fast.makespan_s == ref.makespan_s and fast.sync_rounds == ref.sync_rounds == sc.training.epochs
    assert fast.backhaul_bytes_by_server == ref.backhaul_bytes_by_server
    assert fast.server_utilization == ref.server_utilization and fast.server_end_s == ref.server_end_s


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
