"""The engine's hot path (Engine.until, inline device callbacks, the worker's stream) against its general path.

Without a trace a SplitFrozen worker streams micro-batches and moves the clock itself; with a trace
it takes the general path (a SimPy step per timer, every grant through SimPy's queue). Both must give
the same figures to the last bit, on fleets with ties (identical devices) and zero durations.
"""

from __future__ import annotations

import random

import pytest
import simpy

from sfsim.engine.core import DeviceEvent, Engine
from sfsim.engine.pool import DeviceTimes, ServerPool, ServerTimes
from sfsim.schedules import Job, ReplayConfig, splitfrozen


def _fleet(rng: random.Random) -> tuple[Job, ReplayConfig]:
    servers = [ServerTimes(f"s{k}", count=rng.choice([1, 1, 2]), step=rng.choice([0.0, 0.1, 0.25]))
               for k in range(rng.choice([1, 2]))]
    kinds = [dict(f=rng.choice([0.0, 0.5, 1.0, 2.0]), up_s=rng.choice([0.0, 0.25, 1.0]), up_l=rng.choice([0.0, 0.5]),
                  srv_f=rng.choice([0.25, 0.5]), srv_b=rng.choice([0.0, 0.25]), srv_w=rng.choice([0.0, 0.5]))
             for _ in range(3)]  # few kinds: identical devices tie at every step
    devices = []
    for i in range(rng.randint(1, 9)):
        n = rng.randint(1, 7)
        sent = rng.choice([n, n, max(1, n // 2)])  # fewer: the server replays the rest from its cache
        devices.append(DeviceTimes(f"d{i}", server=rng.randrange(len(servers)), n=n, sent=sent, per_epoch=n,
                                   last=rng.choice([1.0, 1.0, 0.5]), warmup=rng.choice([0.0, 0.3]),
                                   **rng.choice(kinds)))
    policy = rng.choice(["fifo", "fifo", "round-robin", "proportional", "pool", "paced-proportional"])
    credits = "device" if policy.startswith("paced") else rng.choice(["server", "device"])
    cfg = ReplayConfig(buffer=rng.randint(1, 5), accumulate=rng.randint(1, 4), decompose=rng.random() < 0.8,
                    policy=policy, credits=credits, seed=rng.randrange(100))
    return Job(devices, servers), cfg


def _figures(job: Job, cfg: ReplayConfig, trace: bool) -> tuple:
    engine = Engine(trace=trace)
    splitfrozen.run(engine, job, cfg)
    makespan = engine.run()
    mixing = {k: (m.value, m.tv) for k, m in engine.mixing.items()}
    return (makespan, engine.device_busy, engine.server_busy, engine.server_end, engine.server_wait,
            engine.up_bytes, mixing, engine.pool_peak_bytes)


@pytest.mark.parametrize("seed", range(300))
def test_stream_equals_general_path(seed):
    job, cfg = _fleet(random.Random(seed))
    assert _figures(job, cfg, trace=False) == _figures(job, cfg, trace=True)


def test_until_moves_the_clock_when_the_timer_is_next():
    engine = Engine()
    env = engine.env
    assert engine.until(2.5) is None and env.now == 2.5
    ran = []
    ev = engine.device_at(3.0)
    ev.callbacks.append(lambda e: ran.append(env.now))
    assert engine.until(4.0) is None and ran == [3.0] and env.now == 4.0  # a device callback ahead runs inline
    engine.at(5.0)  # another process's timer: the caller must yield to SimPy
    timer = engine.until(6.0)
    assert isinstance(timer, simpy.Event) and not isinstance(timer, DeviceEvent) and env.now == 4.0
    engine.run()
    assert env.now == 6.0


def test_until_keeps_an_equal_time_timer_behind_earlier_ones():
    engine = Engine()
    order = []
    engine.device_at(1.0).callbacks.append(lambda e: order.append("first"))
    eid = next(engine.env._eid)  # the caller's timer, reserved after the device's
    engine.device_at(1.0).callbacks.append(lambda e: order.append("after the caller"))
    assert engine.until(1.0, eid) is None and order == ["first"]


def test_pool_moves_are_public_operations():
    engine = Engine()
    devices = [DeviceTimes("a", n=3, srv_f=1.0), DeviceTimes("b", server=1, n=2, srv_f=1.0)]
    pool = ServerPool(engine, ServerTimes("s0"), devices, 0, buffer=2, accumulate=1, decompose=False,
                      policy="fifo", credits="device")
    assert pool.totals == [3, 0] and pool.unclaimed == 3 and pool.account[1] is None
    pool.expect(1, 2)  # b may hand over here: a place held, its own credits opened
    assert pool.unclaimed == 4 and pool.account[1].credits == 2
    pool.hand_over(1, 2)  # it comes with two micro-batches: the place goes
    assert pool.totals == [3, 2] and pool.unclaimed == 5
    pool.withdraw(0, 1)  # a's last one will not come
    assert pool.totals == [2, 2] and pool.unclaimed == 4
    pool.expect(1, 2)
    pool.not_coming(1)
    assert pool.unclaimed == 4
