"""The fast path's ``pool`` policy: Python's random draws, and memory that grows with devices, not micro-batches."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np

from sfsim.engine.pool import DeviceTimes, ServerTimes
from sfsim.fast import pool, replay
from sfsim.fast.splitfrozen import layout, pool_args
from sfsim.schedules import Job, ReplayConfig

CFG = ReplayConfig(buffer=4, accumulate=2, decompose=True, policy="pool", seed=7)


def job(devices: int, micro_batches: int) -> Job:
    """``devices`` unequal devices on one server of two workers, ``micro_batches`` each."""
    devs = [DeviceTimes(f"d{i}", 0, micro_batches, f=0.01 * (1 + i % 3), up_s=0.02, up_l=0.001, srv_f=0.004,
                        srv_b=0.006, srv_w=0.002, act_bytes=1e5) for i in range(devices)]
    return Job(devs, [ServerTimes("s", 2, 0.001)])


def test_words_are_pythons_in_order():
    for seed in (0, 7, 2**40 + 3):
        W, rng = pool.state(seed), random.Random(seed)
        assert [int(pool._word(W)) for _ in range(2000)] == [rng.getrandbits(32) for _ in range(2000)]  # 3 twists
        W, rng = pool.state(seed), random.Random(seed)
        sizes = [1, 2, 3, 5, 63, 64, 65, 1000, 2**31 - 1] * 40
        assert [int(pool._randbelow(W, n)) for n in sizes] == [rng.randrange(n) for n in sizes]


def test_generator_state_does_not_grow_with_the_run():
    for mb in (10, 100_000):
        D, N = layout(job(5, mb).devices)
        words, act, _ = pool_args(job(5, mb).devices, N, CFG, False)
        assert words.shape == (625,) and act.shape == (5,)


def _peak(devices: int, mb: int) -> tuple[int, float]:
    """Peak bytes traced while replaying the pool job (after a warm-up that loads the kernel), and its makespan."""
    replay(job(2, 3), CFG)
    j = job(devices, mb)
    tracemalloc.start()
    try:
        _, makespan = replay(j, CFG)
        return tracemalloc.get_traced_memory()[1], makespan
    finally:
        tracemalloc.stop()


def test_peak_memory_grows_with_devices_not_micro_batches():
    short, m_short = _peak(8, 200)
    long, m_long = _peak(8, 40_000)  # 320,000 micro-batches: 5 MiB as pre-drawn words
    assert m_long > 100 * m_short
    assert long - short < 64 * 1024, (short, long)
    wide, _ = _peak(800, 200)
    assert wide > short + 20_000  # the measure sees what grows with devices


def test_long_pool_run_equals_the_engine():
    from sfsim.engine.pool import Engine
    from sfsim.schedules import splitfrozen as sf

    j = job(3, 2_000)  # about 12,000 draws: many twists of the generator
    rec, makespan = replay(j, CFG)
    eng = Engine()
    sf.run(eng, job(3, 2_000), CFG)
    assert eng.run() == makespan
    assert dict(eng.server_wait) == rec.server_wait
    assert {k: m.value for k, m in eng.mixing.items()} == {k: m.value for k, m in rec.mixing.items()}
    assert np.isfinite(makespan)
