"""Engine and SplitFrozen timing: exact event logs, closed forms, credits, deferred W, policies."""

from __future__ import annotations

import heapq
import random

import pytest

from sfsim.engine.credits import Credits
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes, StreamMixing, make_policy
from sfsim.errors import SfsimError
from sfsim.outputs.trace import TraceEvent as E
from sfsim.schedules import Job, ReplayConfig, splitfrozen


def run(devices, server=None, sequential=False, **cfg):
    """Run SplitFrozen on hand-given stage times; returns (makespan, events sorted by start, lane)."""
    engine = Engine(trace=True)
    job = Job(list(devices), [server or ServerTimes("srv")])
    splitfrozen.run(engine, job, ReplayConfig(**{"buffer": 100, "accumulate": 1000, "decompose": False, **cfg}),
                    sequential=sequential)
    makespan = engine.run()
    return makespan, sorted(engine.events, key=lambda e: (e.start, e.lane, e.op)), engine


def ordered(events):
    return sorted(events, key=lambda e: (e.start, e.lane, e.op))


def test_exact_log_pipelined_with_deferred_w_and_steps():
    d = DeviceTimes("d", n=3, f=1, up_s=2, up_l=0.5, srv_f=1, srv_b=1, srv_w=1)
    makespan, events, _ = run([d], ServerTimes("srv", step=0.5), decompose=True, accumulate=2)
    expected = [
        E("d", "F", 0, 1, 0, "d"), E("link:d", "send", 1, 2, 0, "d"),
        E("d", "F", 1, 1, 1, "d"), E("d", "wait", 2, 1, 1, "d"), E("link:d", "send", 3, 2, 1, "d"),
        E("d", "F", 3, 1, 2, "d"), E("d", "wait", 4, 1, 2, "d"), E("link:d", "send", 5, 2, 2, "d"),
        E("srv", "F", 3.5, 1, 0, "d"), E("srv", "B", 4.5, 1, 0, "d"),
        E("srv", "F", 5.5, 1, 1, "d"), E("srv", "B", 6.5, 1, 1, "d"),
        E("srv", "W", 7.5, 1, 0, "d"), E("srv", "W", 8.5, 1, 1, "d"), E("srv", "step", 9.5, 0.5),
        E("srv", "F", 10, 1, 2, "d"), E("srv", "B", 11, 1, 2, "d"),
        E("srv", "W", 12, 1, 2, "d"), E("srv", "step", 13, 0.5),
    ]
    assert events == ordered(expected)
    assert makespan == 13.5


@pytest.mark.parametrize("f,s,lat,srv", [(1, 2, 0.5, 3), (3, 2, 0.5, 0.5), (1, 4, 0.25, 0.5), (2, 2, 0, 2),
                                         (0.125, 0.375, 1.5, 0.25)])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_closed_forms_one_device(f, s, lat, srv, n):
    d = DeviceTimes("d", n=n, f=f, up_s=s, up_l=lat, srv_f=srv / 2, srv_b=srv / 4, srv_w=srv / 4)
    pipelined, _, _ = run([d])
    assert pipelined == pytest.approx((f + s + lat + srv) + (n - 1) * max(f, s, srv), rel=1e-12)
    for decompose in (False, True):
        sequential, _, _ = run([d], sequential=True, decompose=decompose)
        assert sequential == pytest.approx(n * (f + s + lat + srv), rel=1e-12)


def test_backpressure_buffer_one_exact_waits():
    d = DeviceTimes("d", n=3, f=1, up_s=1, up_l=0.5, srv_f=2.5, srv_b=1)
    makespan, events, _ = run([d], buffer=1)
    expected = [
        E("d", "F", 0, 1, 0, "d"), E("link:d", "send", 1, 1, 0, "d"),
        E("d", "F", 1, 1, 1, "d"), E("d", "wait", 2, 0.5, 1, "d"), E("link:d", "send", 2.5, 1, 1, "d"),
        E("srv", "F", 2.5, 2.5, 0, "d"), E("d", "F", 2.5, 1, 2, "d"), E("d", "wait", 3.5, 2.5, 2, "d"),
        E("srv", "BW", 5, 1, 0, "d"), E("link:d", "send", 6, 1, 2, "d"), E("srv", "F", 6, 2.5, 1, "d"),
        E("srv", "BW", 8.5, 1, 1, "d"), E("srv", "F", 9.5, 2.5, 2, "d"), E("srv", "BW", 12, 1, 2, "d"),
    ]
    assert events == ordered(expected)
    assert makespan == 13
    # with a big buffer the device never waits for a credit: only for its link
    _, events, _ = run([d], buffer=3)
    assert [e.start for e in events if e.lane == "link:d"] == [1, 2, 3]


def test_deferred_w_fills_idle_time():
    d = DeviceTimes("d", n=2, f=2, up_s=0.5, srv_f=0.5, srv_b=0.5, srv_w=0.5)
    makespan, events, _ = run([d], ServerTimes("srv", step=0.25), decompose=True, accumulate=2)
    server = [(e.op, e.start, e.mb) for e in events if e.lane == "srv"]
    # W of micro-batch 0 runs in the gap before micro-batch 1 arrives at 4.5
    assert server == [("F", 2.5, 0), ("B", 3, 0), ("W", 3.5, 0), ("F", 4.5, 1), ("B", 5, 1), ("W", 5.5, 1),
                      ("step", 6, -1)]
    assert makespan == 6.25


def test_deferred_w_yields_to_waiting_micro_batches():
    d = DeviceTimes("d", n=3, f=0.25, up_s=0.25, srv_f=1, srv_b=1, srv_w=1)
    _, events, _ = run([d], decompose=True, accumulate=3)
    server = [(e.op, e.mb) for e in events if e.lane == "srv"]
    assert server == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2), ("W", 0), ("W", 1), ("W", 2)]


def _two_devices():
    a = DeviceTimes("a", n=4, f=0.25, up_s=0.25, srv_f=2)   # arrivals 0.5, 0.75, 1.0, 1.25
    b = DeviceTimes("b", n=2, f=0.3125, up_s=0.25, srv_f=2)  # arrivals 0.5625, 0.875
    return [a, b]


@pytest.mark.parametrize("policy,order", [
    ("fifo", ["a0", "b0", "a1", "b1", "a2", "a3"]),
    ("round-robin", ["a0", "b0", "a1", "b1", "a2", "a3"]),
    ("proportional", ["a0", "b0", "a1", "a2", "b1", "a3"]),
])
def test_policy_order_two_devices(policy, order):
    makespan, events, engine = run(_two_devices(), policy=policy)
    assert [f"{e.device}{e.mb}" for e in events if e.lane == "srv"] == order
    assert makespan == 12.5


def test_round_robin_differs_from_fifo():
    a = DeviceTimes("a", n=3, f=0.25, up_s=0.25, srv_f=2)   # arrivals 0.5, 0.75, 1.0
    b = DeviceTimes("b", n=3, f=1.5, up_s=0.25, srv_f=2)    # arrivals 1.75, 3.25, 4.75
    _, fifo, _ = run([a, b], policy="fifo")
    _, rr, _ = run([a, b], policy="round-robin")
    assert [f"{e.device}{e.mb}" for e in fifo if e.lane == "srv"] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert [f"{e.device}{e.mb}" for e in rr if e.lane == "srv"] == ["a0", "a1", "b0", "a2", "b1", "b2"]
    _, prop, _ = run([a, b], policy="proportional")
    assert [f"{e.device}{e.mb}" for e in prop if e.lane == "srv"] == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_activation_cache_replays_later_epochs_at_the_server():
    d = DeviceTimes("d", n=4, sent=2, f=1, up_s=1, srv_f=1)
    makespan, events, engine = run([d])
    assert [(e.lane, e.op, e.start, e.mb) for e in events if e.lane != "d"] == [
        ("link:d", "send", 1, 0), ("link:d", "send", 2, 1), ("srv", "F", 2, 0), ("srv", "F", 3, 1),
        ("srv", "F", 4, 2), ("srv", "F", 5, 3)]
    assert makespan == 6
    assert engine.device_busy["d"] == 2 and engine.up_bytes["d"] == 0


def test_multi_worker_lanes_and_final_steps():
    devs = [DeviceTimes("a", n=1, f=1, srv_f=1, srv_w=1), DeviceTimes("b", n=1, f=1, srv_f=1, srv_w=1)]
    makespan, events, engine = run(devs, ServerTimes("srv", count=2, step=0.5), decompose=True, accumulate=4)
    assert ordered(e for e in events if e.lane.startswith("srv")) == ordered([
        E("srv/0", "F", 1, 1, 0, "a"), E("srv/1", "F", 1, 1, 0, "b"),
        E("srv/0", "W", 2, 1, 0, "a"), E("srv/1", "W", 2, 1, 0, "b"),
        E("srv/0", "step", 3, 0.5), E("srv/1", "step", 3, 0.5)])
    assert makespan == 3.5
    assert engine.server_busy["srv"] == 5


def test_multi_worker_rule_longest_free_worker_takes_the_arrival():
    # a0, a1 arrive at 1 and 2; b0 arrives at 3.5, the instant srv/1 finishes a1. srv/0 has been free
    # since 2.5, so it takes b0 (whatever SimPy's event order); each worker steps its own window.
    devs = [DeviceTimes("a", n=2, f=1, srv_f=1.5), DeviceTimes("b", n=1, f=3.5, srv_f=1.5)]
    makespan, events, _ = run(devs, ServerTimes("srv", count=2, step=0.5), accumulate=2)
    assert [(e.lane, e.op, e.start, e.device) for e in events if e.lane.startswith("srv")] == [
        ("srv/0", "F", 1, "a"), ("srv/1", "F", 2, "a"), ("srv/0", "F", 3.5, "b"),
        ("srv/1", "step", 3.5, ""), ("srv/0", "step", 5, "")]
    assert makespan == 5.5


def test_every_micro_batch_once_and_no_lane_overlap_many_devices():
    devs = [DeviceTimes(f"d{i}", n=5 + i, f=0.3 + 0.1 * i, up_s=0.2 * (i % 3 + 1), up_l=0.05 * i,
                        srv_f=0.2, srv_b=0.1, srv_w=0.15) for i in range(6)]
    for policy in ("fifo", "round-robin", "proportional"):
        _, events, _ = run(devs, ServerTimes("srv", count=2, step=0.1), decompose=True, accumulate=3,
                           buffer=2, policy=policy)
        for op in ("F", "B", "W"):
            got = sorted((e.device, e.mb) for e in events if e.lane.startswith("srv") and e.op == op)
            assert got == sorted((d.name, n) for d in devs for n in range(d.n))
        by_lane = {}
        for e in events:
            by_lane.setdefault(e.lane, []).append(e)
        for lane, evs in by_lane.items():
            evs.sort(key=lambda e: e.start)
            for x, y in zip(evs, evs[1:], strict=False):
                assert y.start >= x.end - 1e-12, (lane, x, y)


def test_stream_mixing_windows():
    mix = StreamMixing([2, 2], windows=2)
    for i in (0, 1, 0, 1):
        mix.add(i)
    assert mix.value == 0
    mix = StreamMixing([2, 2], windows=2)
    for i in (0, 0, 1, 1):
        mix.add(i)
    assert mix.value == 0.5  # each half is one device: TV 0.5 from the 50/50 overall share


def test_bad_inputs():
    with pytest.raises(SfsimError, match="round-robin"):
        make_policy("lifo", [1])
    with pytest.raises(SfsimError, match="stage time f"):
        DeviceTimes("d", f=-1)
    with pytest.raises(SfsimError, match="buffer"):
        run([DeviceTimes("d")], buffer=0)


def test_no_trace_keeps_no_events():
    engine = Engine(trace=False)
    splitfrozen.run(engine, Job([DeviceTimes("d", n=50, f=1, srv_f=1)], [ServerTimes("s")]), ReplayConfig())
    assert engine.run() == 51 and engine.events is None


@pytest.mark.parametrize("count,buffer,decompose", [(1, 2, True), (2, 3, True), (1, 50, False), (3, 1, True)])
def test_fast_path_without_trace_matches_traced_run(count, buffer, decompose):
    devs = [DeviceTimes(f"d{i}", n=4 + i, f=0.07 * (i + 1), up_s=0.05 + 0.03 * i, up_l=0.01 * (i % 2),
                        srv_f=0.03, srv_b=0.02, srv_w=0.025) for i in range(5)]
    out = []
    for trace in (True, False):
        engine = Engine(trace=trace)
        splitfrozen.run(engine, Job(devs, [ServerTimes("s", count=count, step=0.01)]),
                        ReplayConfig(buffer=buffer, accumulate=3, decompose=decompose))
        out.append((engine.run(), engine.server_busy["s"], engine.mixing["s"].value))
    assert out[0] == out[1]


@pytest.mark.parametrize("policy,credits,sequential", [
    ("fifo", "server", False), ("round-robin", "server", True), ("paced-round-robin", "device", False),
    ("paced-proportional", "device", True), ("pool", "server", False), ("pool", "device", True)])
@pytest.mark.parametrize("decompose", [True, False])
def test_server_end_is_the_end_of_its_last_traced_op(policy, credits, sequential, decompose):
    devs = [DeviceTimes(f"d{i}", server=i % 2, n=5 + i, sent=5 + i - (i == 3), f=0.05 * (i + 1),
                        up_s=0.04 + 0.03 * i, up_l=0.02 * (i % 3), srv_f=0.03, srv_b=0.02, srv_w=0.025,
                        act_bytes=1.0) for i in range(6)]
    servers = [ServerTimes("a", count=2, step=0.01), ServerTimes("b", step=0.02)]
    ends = []
    for trace in (True, False):
        engine = Engine(trace=trace)
        splitfrozen.run(engine, Job(devs, servers), ReplayConfig(buffer=2, accumulate=3, decompose=decompose,
                                                               policy=policy, credits=credits),
                        sequential=sequential)
        engine.run()
        ends.append(engine.server_end)
        if trace:
            last = {s.name: max(e.start + e.dur for e in engine.events if e.lane.split("/")[0] == s.name)
                    for s in servers}
            assert engine.server_end == last
            if policy.startswith("paced"):  # the case that needs the workers' wait ops
                assert any(e.op == "wait" for e in engine.events)
    assert ends[0] == ends[1]


def _reference(devs, buffer, srv):
    """An obvious SimPy model of the same rules (devices wake at ready and queue FIFO for credits)."""
    import simpy

    env = simpy.Environment()
    state = {"credits": buffer}
    waiters, inbox, order = [], simpy.Store(env), []

    def device(d):
        f_start = link_free = 0.0
        for n in range(d.n):
            yield env.timeout(max(f_start + d.f, link_free) - env.now)
            if state["credits"]:
                state["credits"] -= 1
            else:
                ev = env.event()
                waiters.append(ev)
                yield ev
            link_free = env.now + d.up_s
            env.timeout(d.up_s + d.up_l).callbacks.append(lambda _e, d=d, n=n: inbox.put((d.name, n)))
            f_start = env.now

    def server():
        for _ in range(sum(d.n for d in devs)):
            name, n = yield inbox.get()
            order.append((name, n, env.now))
            if waiters:
                waiters.pop(0).succeed()
            else:
                state["credits"] += 1
            yield env.timeout(srv)

    for d in devs:
        env.process(device(d))
    env.process(server())
    env.run()
    return env.now, order


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("buffer", [1, 2, 5])
def test_credits_match_an_obvious_reference_model(seed, buffer):
    import random

    rnd = random.Random(seed)
    srv = rnd.uniform(0.05, 0.4)
    devs = [DeviceTimes(f"d{i}", n=rnd.randint(1, 9), f=rnd.uniform(0.05, 1.5), up_s=rnd.uniform(0.01, 0.6),
                        up_l=rnd.uniform(0, 0.3), srv_f=srv) for i in range(rnd.randint(2, 7))]
    makespan, events, _ = run(devs, buffer=buffer)
    ref_makespan, ref_order = _reference(devs, buffer, srv)
    assert makespan == pytest.approx(ref_makespan, rel=1e-12)
    got = [(e.device, e.mb, e.start) for e in events if e.lane == "srv"]
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in ref_order]
    assert [c for *_, c in got] == pytest.approx([c for *_, c in ref_order], rel=1e-12)


@pytest.mark.parametrize("policy,order,mixing", [
    ("fifo", "fsffsffsfffsfsfsfsfsfsfsff" + "f" * 24, 0.2),
    ("round-robin", "fs" * 10 + "f" * 30, 0.24),
    ("proportional", "f" + "sffff" * 9 + "sfff", 0.0),
])
def test_server_stream_order_and_mixing(policy, order, mixing):
    """Server-bound, 40 vs 10 micro-batches: round-robin runs the small device dry, proportional paces it."""
    devs = [DeviceTimes("fast", n=40, f=0.25, up_s=0.25, srv_f=1), DeviceTimes("slow", n=10, f=0.5, up_s=0.25, srv_f=1)]
    makespan, events, engine = run(devs, buffer=8, policy=policy)
    assert "".join(e.device[0] for e in events if e.lane == "srv") == order
    assert engine.mixing["srv"].value == pytest.approx(mixing, abs=1e-12)
    assert makespan == 50.5


@pytest.mark.parametrize("seed", range(20))
def test_credit_lanes_serve_waiters_in_ready_then_queueing_order(seed):
    """Waiters in lanes (FIFOs beside the heap), out of lane order and cancelled: the order of one plain heap."""
    rng, engine = random.Random(seed), Engine()
    acct = Credits(engine, 0)
    lanes = [acct.lane(c) for c in (0.5, 1.0, 2.0)]
    plain, now, served, want = [], 0.0, [], []
    for _ in range(300):
        action = rng.random()
        if action < 0.55:  # queue, mostly now + a lane's delay (its order), sometimes earlier than the lane's last
            c = rng.choice([0.5, 1.0, 2.0])
            ready = now + c - (rng.choice([0.0, 0.0, 0.0, 1.5]))
            ev = engine.env.event()
            lane = lanes[[0.5, 1.0, 2.0].index(c)] if rng.random() < 0.8 else None
            acct.wait(max(ready, now), ev, lane)
            heapq.heappush(plain, (max(ready, now), acct.seq, ev))
        elif action < 0.9 and plain:
            served.append(acct.pop()[2])
            want.append(heapq.heappop(plain)[2])
        elif action < 0.95 and plain:
            ev = rng.choice([w[2] for w in plain])
            acct.cancel(ev)
            plain = [w for w in plain if w[2] is not ev]
            heapq.heapify(plain)
        else:
            now += rng.choice([0.0, 0.25, 1.0])
    while plain:
        served.append(acct.pop()[2])
        want.append(heapq.heappop(plain)[2])
    assert served == want and not acct.waiting and len(served) > 50
