"""Per-device credits, paced server orders and the mixing pool: exact logs, closed forms, every micro-batch once."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.engine.pacing import server_order
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes, paced_order
from sfsim.errors import SfsimError
from sfsim.outputs.trace import TraceEvent as E
from sfsim.schedules import Job, ReplayConfig, splitfrozen


def run(devices, server=None, sequential=False, **cfg):
    """SplitFrozen on hand-given stage times (fused backward, no steps); (makespan, sorted events, engine)."""
    engine = Engine(trace=True)
    job = Job(list(devices), [server or ServerTimes("srv")])
    splitfrozen.run(engine, job, ReplayConfig(**{"buffer": 100, "accumulate": 1000, "decompose": False, **cfg}),
                    sequential=sequential)
    makespan = engine.run()
    return makespan, ordered(engine.events), engine


def ordered(events):
    return sorted(events, key=lambda e: (e.start, e.lane, e.op, e.device))


def stream(events, lane="srv"):
    """The server's micro-batches in the order it started them."""
    return [(e.device, e.mb) for e in sorted(events, key=lambda e: e.start) if e.lane == lane and e.op == "F"]


# -- per-device credits ---------------------------------------------------------------------------------
def _two_equal():
    return [DeviceTimes(x, n=2, f=1, up_s=1, srv_f=2, srv_b=1) for x in "ab"]


def test_device_credits_buffer_one_two_devices_exact_log():
    """Each device has its own credit: b's second send waits only for b's first to start (at 5)."""
    makespan, events, engine = run(_two_equal(), buffer=1, credits="device")
    expected = [
        E("a", "F", 0, 1, 0, "a"), E("link:a", "send", 1, 1, 0, "a"), E("a", "F", 1, 1, 1, "a"),
        E("link:a", "send", 2, 1, 1, "a"),  # a0 starts at 2 and gives a its credit back at once
        E("b", "F", 0, 1, 0, "b"), E("link:b", "send", 1, 1, 0, "b"), E("b", "F", 1, 1, 1, "b"),
        E("b", "wait", 2, 3, 1, "b"), E("link:b", "send", 5, 1, 1, "b"),  # b0 starts at 5
        E("srv", "F", 2, 2, 0, "a"), E("srv", "BW", 4, 1, 0, "a"), E("srv", "F", 5, 2, 0, "b"),
        E("srv", "BW", 7, 1, 0, "b"), E("srv", "F", 8, 2, 1, "a"), E("srv", "BW", 10, 1, 1, "a"),
        E("srv", "F", 11, 2, 1, "b"), E("srv", "BW", 13, 1, 1, "b"),
    ]
    assert events == ordered(expected)
    assert makespan == 14
    assert engine.server_wait == {"srv": 0.0}  # fifo never holds an arrived micro-batch back


def test_server_credits_buffer_one_two_devices_share_one():
    """The same fleet with one server-wide credit: b's first send waits for a's, and so on in turn."""
    makespan, events, _ = run(_two_equal(), buffer=1)
    sends = [(e.device, e.mb, e.start) for e in events if e.op == "send"]
    assert sends == [("a", 0, 1), ("b", 0, 2), ("a", 1, 5), ("b", 1, 8)]
    assert makespan == 14


@pytest.mark.parametrize("buffer", [1, 3])
def test_device_credits_sequential_never_bind(buffer):
    """Sequential devices send one micro-batch at a time: own credits give the infinite-buffer timeline."""
    devs = [DeviceTimes("a", n=3, f=1, up_s=0.5, srv_f=1, srv_b=0.5),
            DeviceTimes("b", n=2, f=0.25, up_s=1, up_l=0.5, srv_f=2, srv_b=0.25)]
    _, reference, _ = run(devs, sequential=True, buffer=100)
    _, events, _ = run(devs, sequential=True, buffer=buffer, credits="device")
    assert events == reference


def test_unknown_credits_is_an_error():
    with pytest.raises(SfsimError, match="unknown credits 'devices'"):
        run(_two_equal(), credits="devices")


# -- paced orders -----------------------------------------------------------------------------------------
def _slow_and_fast():
    """a: one micro-batch, slow forward (arrives at 5); b: two, fast (arrive at 2 and 3). Server 2 s each."""
    return [DeviceTimes("a", n=1, f=4, up_s=1, srv_f=1, srv_b=1),
            DeviceTimes("b", n=2, f=1, up_s=1, srv_f=1, srv_b=1)]


def test_paced_round_robin_makes_the_fast_device_wait_exact_log():
    # server_order({a: 1, b: 2}, "round-robin") == [a, b, b]: b's two micro-batches wait for a's
    makespan, events, engine = run(_slow_and_fast(), buffer=2, credits="device", policy="paced-round-robin")
    server = [e for e in events if e.lane == "srv"]
    assert server == ordered([
        E("srv", "wait", 2, 1, 0, "a"), E("srv", "wait", 3, 2, 0, "a"),  # b0 held 2..5 (b1 too from 3)
        E("srv", "F", 5, 1, 0, "a"), E("srv", "BW", 6, 1, 0, "a"), E("srv", "F", 7, 1, 0, "b"),
        E("srv", "BW", 8, 1, 0, "b"), E("srv", "F", 9, 1, 1, "b"), E("srv", "BW", 10, 1, 1, "b"),
    ])
    assert makespan == 11 and engine.server_wait == {"srv": 3.0}
    # fifo takes b's micro-batches as they come: no wait, done at 8
    makespan, events, engine = run(_slow_and_fast(), buffer=2, credits="device")
    assert stream(events) == [("b", 0), ("b", 1), ("a", 0)] and makespan == 8 and engine.server_wait["srv"] == 0


def test_paced_proportional_waits_between_a_fast_devices_micro_batches():
    # server_order({a: 1, b: 2}, "proportional") == [b, a, b]: b0 runs 2..4, then b1 (there since 3) waits for a
    makespan, events, engine = run(_slow_and_fast(), buffer=2, credits="device", policy="paced-proportional")
    assert stream(events) == [("b", 0), ("a", 0), ("b", 1)]
    assert [e for e in events if e.op == "wait" and e.lane == "srv"] == [E("srv", "wait", 4, 1, 0, "a")]
    assert makespan == 9 and engine.server_wait == {"srv": 1.0}


def test_paced_needs_device_credits():
    with pytest.raises(SfsimError, match="set training.credits: device"):
        run(_slow_and_fast(), policy="paced-proportional")


def test_paced_order_is_one_server_order_per_epoch():
    names, totals, per_epoch = ["a", "b", "c"], [4, 6, 0], [2, 3, 5]  # c: another server's device
    epoch = [names.index(d) for d in server_order({"a": 2, "b": 3}, "proportional")]
    assert list(paced_order(names, totals, per_epoch, "proportional")) == epoch + epoch
    assert list(paced_order(["a", "b"], [3, 2], [0, 0], "round-robin")) == [0, 1, 0, 1, 0]  # 0: one epoch


@pytest.mark.parametrize("policy", ["paced-proportional", "paced-round-robin"])
def test_paced_stream_follows_the_order_across_epochs_and_replays(policy):
    """Two epochs, the second replayed from the activation cache: the stream is exactly the paced order."""
    devs = [DeviceTimes("a", n=4, sent=2, per_epoch=2, f=0.7, up_s=0.3, srv_f=0.2, srv_b=0.1),
            DeviceTimes("b", n=6, sent=3, per_epoch=3, f=0.2, up_s=0.1, up_l=0.05, srv_f=0.1, srv_b=0.1),
            DeviceTimes("c", n=2, sent=1, per_epoch=1, f=1.3, up_s=0.2, srv_f=0.3, srv_b=0.2)]
    _, events, _ = run(devs, buffer=1, credits="device", policy=policy, decompose=True, accumulate=2)
    order = list(paced_order(["a", "b", "c"], [4, 6, 2], [2, 3, 1], policy.removeprefix("paced-")))
    got = stream(events)
    assert [d for d, _ in got] == ["abc"[i] for i in order]
    assert sorted(got) == sorted((d.name, n) for d in devs for n in range(d.n))


# -- mixing pool ------------------------------------------------------------------------------------------
def _pool_draws(arrivals, capacity, seed):
    """What MixingPool draws from simultaneous arrivals when each draw lets the next one in."""
    rng, pool, rest, out = random.Random(seed), list(arrivals[:capacity]), list(arrivals[capacity:]), []
    while pool:
        out.append(pool.pop(rng.randrange(len(pool))))
        if rest:
            pool.append(rest.pop(0))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_pool_capacity_two_draws_in_the_seeded_order(seed):
    """Three devices arrive together at 2; a pool of 2 (250 B / 100 B) draws as random.Random(seed) says."""
    devs = [DeviceTimes(x, n=1, f=1, up_s=1, srv_f=1, srv_b=1, act_bytes=100) for x in "abc"]
    makespan, events, engine = run(devs, buffer=1, credits="device", policy="pool", pool_memory=250, seed=seed)
    assert stream(events) == [(d, 0) for d in _pool_draws(["a", "b", "c"], 2, seed)]
    assert [e.start for e in events if e.lane == "srv" and e.op == "F"] == [2, 4, 6]
    assert makespan == 8 and engine.server_wait == {"srv": 0.0}
    assert engine.pool_peak_bytes == {"srv": 200}  # never more than its capacity


@pytest.mark.parametrize("seed", [0, 3])
def test_pool_waits_for_the_slow_device_until_full(seed):
    """Default capacity = the credits (1 + 1): a0 (at 2) waits in the pool for b0 (at 6), then a random draw."""
    devs = [DeviceTimes("a", n=1, f=1, up_s=1, srv_f=1, srv_b=1, act_bytes=10),
            DeviceTimes("b", n=1, f=5, up_s=1, srv_f=1, srv_b=1, act_bytes=10)]
    makespan, events, engine = run(devs, buffer=1, credits="device", policy="pool", seed=seed)
    assert stream(events) == [(d, 0) for d in _pool_draws(["a", "b"], 2, seed)]
    assert [e for e in events if e.op == "wait" and e.lane == "srv"] == [E("srv", "wait", 2, 4, -1, "")]
    assert makespan == 10 and engine.server_wait == {"srv": 4.0} and engine.pool_peak_bytes == {"srv": 20}


def test_pool_draws_a_lone_micro_batch_when_nothing_more_can_arrive():
    """One device, buffer 2 each: the pool (capacity 2) fills; its last micro-batch is drawn alone."""
    d = DeviceTimes("a", n=3, f=1, up_s=1, srv_f=1, srv_b=1, act_bytes=1)
    makespan, events, engine = run([d], buffer=2, credits="device", policy="pool")
    # a0 (at 2) waits for a1 (at 3); a2 is sent when a's credit comes back at 3, arrives at 4
    assert [e.start for e in events if e.lane == "srv" and e.op == "F"] == [3, 5, 7]
    assert engine.server_wait == {"srv": 1.0} and makespan == 9


@pytest.mark.parametrize("credits", ["server", "device"])
@pytest.mark.parametrize("policy", ["fifo", "paced-proportional", "paced-round-robin", "pool"])
@pytest.mark.parametrize("sequential", [False, True])
def test_every_micro_batch_once_random_fleets(credits, policy, sequential):
    if credits == "server" and policy.startswith("paced"):
        pytest.skip("paced orders need device credits")
    rng = random.Random(f"{credits}{policy}{sequential}")
    for count in (1, 2):
        devs = []
        for k in range(5):
            n = rng.randint(1, 6)
            devs.append(DeviceTimes(f"d{k}", n=n, sent=n if rng.random() < 0.7 else 1, f=rng.uniform(0.1, 2),
                                    up_s=rng.uniform(0, 1), up_l=rng.choice([0, 0.25]), srv_f=rng.uniform(0.1, 1),
                                    srv_b=rng.uniform(0, 0.5), srv_w=rng.uniform(0, 0.5), act_bytes=64))
        if sequential:  # the ablation sends every micro-batch itself
            devs = [DeviceTimes(d.name, n=d.n, f=d.f, up_s=d.up_s, srv_f=d.srv_f, srv_b=d.srv_b, act_bytes=64)
                    for d in devs]
        _, events, engine = run(devs, ServerTimes("srv", count=count, step=0.1), sequential=sequential,
                                buffer=rng.randint(1, 3), credits=credits, policy=policy, decompose=True,
                                accumulate=2, pool_memory=rng.choice([None, 100, 1000]), seed=count)
        lanes = {"srv"} if count == 1 else {"srv/0", "srv/1"}
        got = [(e.device, e.mb) for e in events if e.lane in lanes and e.op == "F"]
        assert sorted(got) == sorted((d.name, n) for d in devs for n in range(d.n))
        for lane in lanes:
            busy = sorted((e.start, e.end) for e in events if e.lane == lane)
            assert all(a[1] <= b[0] + 1e-9 for a, b in zip(busy, busy[1:], strict=False))
        waits = sum(e.dur for e in events if e.op == "wait" and e.lane in lanes)
        assert waits == pytest.approx(engine.server_wait["srv"])


# -- scenario, simulate and CLI ---------------------------------------------------------------------------
TINY = """
model: {name: gpt2, seq_len: 32, task: classification, num_labels: 2}
training: {micro_batch: 4, epochs: 2, buffer: 2, split: 2}
servers: [{name: gpu, flops: 5 TFLOPS, memory: 24 GiB}]
devices:
  - {name: pi, count: 2, flops: 40 GFLOPS, memory: 4 GiB, samples: 14,
     uplink: {bandwidth: 100 Mbps, latency: 10 ms}, downlink: {bandwidth: 200 Mbps, latency: 10 ms}}
  - {name: phone, flops: 300 GFLOPS, memory: 4 GiB, samples: 9,
     uplink: {bandwidth: 100 Mbps, latency: 10 ms}, downlink: {bandwidth: 200 Mbps, latency: 10 ms}}
"""


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("policy", ["paced-proportional", "paced-round-robin", "pool"])
@pytest.mark.parametrize("schedule", ["splitfrozen", "splitfrozen-sequential"])
def test_scenario_policies_run_every_micro_batch_once(tiny_file, policy, schedule):
    sc = sfsim.load_scenario(tiny_file)
    sc.training.server_policy, sc.training.credits = policy, "device"
    res = sfsim.simulate(sc, schedule, trace=True)
    expected = sorted((d.name, n) for d in sc.devices for n in range(2 * sc.micro_batches(d)))
    assert sorted((e.device, e.mb) for e in res.events if e.lane == "gpu" and e.op == "F") == expected
    assert res.policy == policy and set(res.server_wait_s) == {"gpu"}
    assert res.server_wait_s["gpu"] == pytest.approx(sum(e.dur for e in res.events
                                                         if e.lane == "gpu" and e.op == "wait"))
    if policy == "pool":  # default capacity: 2 credits (1 when sequential) x 3 devices of activations
        act = 4 * 32 * 768 * 4  # micro-batch x seq_len x width x fp32
        assert 0 < res.pool_peak_bytes["gpu"] <= (3 if schedule.endswith("sequential") else 6) * act
    else:
        assert res.pool_peak_bytes == {}


def test_default_credits_are_the_servers_and_fifo_ignores_the_pool_settings(tiny_file):
    sc = sfsim.load_scenario(tiny_file)
    assert sc.training.credits == "server" and sc.training.pool_memory is None
    base = sfsim.simulate(sc, "splitfrozen")
    sc.training.pool_memory, sc.training.seed = 1.0, 5
    assert sfsim.simulate(sc, "splitfrozen").makespan_s == base.makespan_s


def test_pool_memory_bounds_the_pool(tiny_file):
    sc = sfsim.load_scenario(tiny_file)
    sc.training.server_policy, sc.training.credits = "pool", "device"
    act = 4 * 32 * 768 * 4
    sc.training.pool_memory = 2.5 * act  # two micro-batches
    res = sfsim.simulate(sc, "splitfrozen")
    assert res.pool_peak_bytes["gpu"] == 2 * act


def test_cli_accepts_the_new_policies_and_reports_the_wait(tiny_file, tmp_path):
    runner = CliRunner()
    for policy in ("paced-proportional", "paced-round-robin", "pool"):
        out = runner.invoke(main, ["simulate", "--devices", str(tiny_file), "--policy", policy,
                                   "--set", "training.credits=device", "--json", str(tmp_path / "r.json")])
        assert out.exit_code == 0, out.output
        data = json.loads((tmp_path / "r.json").read_text())
        assert data["policy"] == policy and "gpu" in data["server_wait_s"] and "pool_peak_bytes" in data
        if policy == "pool":
            assert "server wait (idle while the policy held arrived micro-batches back): gpu " in out.output
            assert "mixing pool peak gpu" in out.output


@pytest.mark.parametrize("args,match", [
    (["--policy", "paced"], "unknown server policy 'paced'; choose one of: fifo, round-robin, proportional, "
                            "paced-proportional, paced-round-robin, pool"),
    (["--policy", "paced-proportional"], "training.credits: server policy 'paced-proportional' waits"),
    (["--set", "training.credits=both"], "training.credits"),
])
def test_cli_bad_policy_or_credits_one_line(tiny_file, args, match):
    out = CliRunner().invoke(main, ["simulate", "--devices", str(tiny_file), *args])
    assert out.exit_code == 2 and match in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_scenario_file_policy_and_credits(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.replace("split: 2}", "split: 2, server_policy: paced-round-robin, credits: device, "
                                 "pool_memory: 64 MiB, seed: 3}"))
    sc = sfsim.load_scenario(path)
    assert (sc.training.credits, sc.training.pool_memory, sc.training.seed) == ("device", 64 * 2**20, 3)
    assert sfsim.simulate(sc).policy == "paced-round-robin"
    path.write_text(TINY.replace("split: 2}", "split: 2, server_policy: paced-round-robin}"))
    with pytest.raises(SfsimError, match="s.yaml: training.credits: server policy 'paced-round-robin' waits"):
        sfsim.simulate(sfsim.load_scenario(path))


def test_sweep_rows_carry_the_wait_the_mixing_and_the_pool(tiny_file):
    from sfsim.sweeps.sweep import FIGURES, figures

    sc = sfsim.load_scenario(tiny_file)
    sc.training.server_policy, sc.training.credits = "pool", "device"
    res = sfsim.simulate(sc, "splitfrozen")
    row = figures(res, sc)
    assert {"stream_mixing", "server_wait_s", "pool_peak_bytes"} <= set(FIGURES) <= set(row)
    assert row["server_wait_s"] == res.server_wait_s["gpu"] and row["pool_peak_bytes"] == res.pool_peak_bytes["gpu"]
    assert row["stream_mixing"] == res.stream_mixing


def test_device_credits_count_every_devices_buffer_in_server_memory(tiny_file):
    from sfsim.cost.model import CostModel

    sc = sfsim.load_scenario(tiny_file)
    cm = CostModel(sc)
    base = cm.server_memory(2, 2, 2 + 1)  # the suffix and buffer 2 (+ one being trained)
    sc.servers[0].memory = base + 4 * cm.uplink_bytes(2) - 1
    sfsim.simulate(sc, "splitfrozen", lora_start=2)  # one pool of 2 credits
    sc.training.credits = "device"  # 3 devices x 2 credits: 4 more micro-batches wait as received
    with pytest.raises(SfsimError, match="server gpu needs .* for blocks 2..11 and 6 buffered micro-batches"):
        sfsim.simulate(sc, "splitfrozen", lora_start=2)
    sfsim.simulate(sc, "splitfrozen-sequential", lora_start=2)  # one credit each: 1 more
    sc.servers[0].memory += 1
    sfsim.simulate(sc, "splitfrozen", lora_start=2)
