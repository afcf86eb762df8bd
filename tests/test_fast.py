"""The fast path (sfsim.fast) against the SimPy engine: random fleets, every figure equal."""

from __future__ import annotations

import math
import random

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.errors import SfsimError
from sfsim.fast import replay, uncovered
from sfsim.network.backhaul import SyncSpec
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf

POLICIES = ("fifo", "round-robin", "proportional", "paced-proportional", "paced-round-robin", "pool")


def _times(rng: random.Random, ties: bool, scale: float) -> float:
    """A stage time: from a small grid (so that events tie) or a continuous draw."""
    return rng.choice((0.0, 0.5, 1.0, 2.0)) * scale if ties else rng.uniform(0.05, 2.0) * scale


def random_job(rng: random.Random, ties: bool = False) -> Job:
    """A random SplitFrozen job: 1-8 devices, 1-3 servers of 1-3 workers, partial batches, caches."""
    n_srv = rng.randint(1, 3)
    servers = [ServerTimes(f"s{k}", rng.choice((1, 1, 2, 3)), _times(rng, ties, 0.3) if rng.random() < 0.7 else 0.0)
               for k in range(n_srv)]
    devices = []
    same = rng.random() < 0.3  # identical devices: the ties the engine breaks in event order
    base = None
    for i in range(rng.randint(1, 8)):
        per_epoch = rng.randint(1, 5)
        epochs = rng.randint(1, 3)
        kw = dict(server=rng.randrange(n_srv), n=per_epoch * epochs, per_epoch=per_epoch,
                  f=_times(rng, ties, 1.0), up_s=_times(rng, ties, 1.0), up_l=_times(rng, ties, 0.3),
                  srv_f=_times(rng, ties, 0.3) or 0.1, srv_b=_times(rng, ties, 0.3), srv_w=_times(rng, ties, 0.3),
                  last=rng.choice((1.0, 1.0, 0.5, 0.3)),
                  warmup=rng.choice((0.0, 0.0, 0.7)), act_bytes=rng.choice((1e5, 3e5, 1e6)))
        if rng.random() < 0.25:
            kw["sent"] = per_epoch  # activation cache: later epochs replayed at the server
        if same and base is not None:
            kw = dict(base, server=kw["server"])
        base = base or kw
        devices.append(DeviceTimes(f"d{i}", **kw))
    return Job(devices, servers)


def random_cfg(rng: random.Random) -> tuple[ReplayConfig, bool]:
    """Random run knobs (paced policies take device credits, as the engine requires)."""
    policy = rng.choice(POLICIES)
    credits = "device" if policy.startswith("paced") else rng.choice(("server", "device"))
    cfg = ReplayConfig(buffer=rng.randint(1, 5), accumulate=rng.randint(1, 4), decompose=rng.random() < 0.7,
                    policy=policy, credits=credits, seed=rng.randrange(1000),
                    pool_memory=rng.choice((None, None, 1.5e6, 4e6)))
    return cfg, rng.random() < 0.3


def simpy_figures(job: Job, cfg: ReplayConfig, sequential: bool) -> dict:
    """The SimPy engine's figures of a job."""
    engine = Engine()
    sf.run(engine, job, cfg, sequential=sequential)
    makespan = engine.run()
    return {"makespan": makespan, "busy": engine.server_busy, "wait": engine.server_wait,
            "end": engine.server_end, "mixing": {k: m.value for k, m in engine.mixing.items()},
            "device_busy": engine.device_busy, "up": engine.up_bytes, "peak": engine.pool_peak_bytes}


def fast_figures(job: Job, cfg: ReplayConfig, sequential: bool) -> dict:
    """The fast path's figures of a job."""
    rec, makespan = replay(job, cfg, sequential)
    return {"makespan": makespan, "busy": rec.server_busy, "wait": rec.server_wait, "end": rec.server_end,
            "mixing": {k: m.value for k, m in rec.mixing.items()}, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "peak": rec.pool_peak_bytes}


def assert_same(a, b, path=""):
    """Equal figures, floats to relative 1e-9 (None and dict keys exactly)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def check_seeds(seeds, ties: bool) -> int:
    """Compare fast and SimPy on one random job per seed; returns how many were compared."""
    for seed in seeds:
        rng = random.Random(seed)
        job = random_job(rng, ties)
        cfg, sequential = random_cfg(rng)
        try:
            want = simpy_figures(job, cfg, sequential)
        except (SfsimError, RuntimeError, ValueError):
            continue  # a setting the engine refuses (ValueError: a pool memory bound on a server with no device)
        got = fast_figures(job, cfg, sequential)
        try:
            assert_same(want, got)
        except AssertionError as err:
            raise AssertionError(f"seed {seed} ties={ties} cfg={cfg} sequential={sequential}: {err}") from None
    return len(seeds)


@pytest.mark.parametrize("ties", [False, True])
def test_random_fleets_equal(ties):
    assert check_seeds(range(300), ties) == 300


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("sequential", [False, True])
def test_each_policy_equal(policy, sequential):
    for seed in range(60):
        rng = random.Random(1000 + seed)
        job = random_job(rng, ties=seed % 2 == 0)
        credits = "device" if policy.startswith("paced") else ("server", "device")[seed % 2]
        cfg = ReplayConfig(buffer=1 + seed % 4, accumulate=1 + seed % 3, decompose=seed % 3 != 0, policy=policy,
                        credits=credits)
        assert_same(simpy_figures(job, cfg, sequential), fast_figures(job, cfg, sequential))


@pytest.mark.slow
def test_many_random_fleets_equal():
    assert check_seeds(range(300, 5300), ties=False) == 5000
    assert check_seeds(range(300, 5300), ties=True) == 5000


def test_one_device_closed_form():
    """One device, a big buffer, fused backward, no step: (f + s + l + srv) + (n - 1) * max(f, s, srv)."""
    d = DeviceTimes("a", n=7, f=1.0, up_s=0.5, up_l=0.25, srv_f=0.5, srv_b=0.75, srv_w=0.5)
    rec, makespan = replay(Job([d], [ServerTimes("s")]), ReplayConfig(buffer=100, decompose=False), False)
    assert makespan == (1.0 + 0.5 + 0.25 + 1.75) + 6 * 1.75
    assert rec.server_busy["s"] == 7 * 1.75


def test_uncovered_cases_say_why():
    job = Job([DeviceTimes("a", n=2, f=1.0)], [ServerTimes("s", count=2)])
    cfg = ReplayConfig()

    class Sc:  # the scenario fields uncovered() reads
        class training:
            class sync:
                mode = "sync"
        servers = [object(), object()]
    for mode in ("sync", "async"):  # the runtime's rounds (sfsim.network.backhaul): tests/test_fast_sync_frozen.py
        Sc.training.sync.mode = mode
        job.sync = SyncSpec((("s", 1e9, 0.0), ("t", 1e9, 0.0)), 2, mode, 1.0, 1.0, 1)
        assert uncovered(Sc, "splitfrozen", cfg, job) == ("training.sync on a server with several workers is replayed "
                                                          "by the SimPy engine only")
    job.sync = None
    Sc.training.sync = None
    assert uncovered(Sc, "splitfrozen", cfg, job) is None
    assert "trace" in uncovered(Sc, "splitfrozen", cfg, job, trace=True)
    assert uncovered(Sc, "splitfrozen", ReplayConfig(policy="pool"), Job([], [ServerTimes("s")])) is None
    assert uncovered(Sc, "splitlora", cfg, job) is None  # tests/test_fast_lora.py: the baselines
    assert uncovered(Sc, "sfl", cfg, job) == ("the fast path covers splitfrozen, splitfrozen-sequential, splitlora, "
                                              "fedlora, cenlora only")
    assert math.isfinite(replay(Job([], [ServerTimes("s")]), cfg)[1])


FIGURES = ("makespan_s", "device_busy_s", "server_busy_s", "server_utilization", "uplink_bytes_by_device",
           "downlink_bytes_by_device", "stream_mixing", "stream_mixing_by_server", "server_wait_s", "server_end_s",
           "device_flops", "server_flops", "samples_not_trained", "sync_rounds", "energy")


@pytest.mark.parametrize("schedule", ["splitfrozen", "splitfrozen-sequential"])
@pytest.mark.parametrize("policy", ["fifo", "proportional"])
def test_simulate_engines_agree(schedule, policy):
    import sfsim

    sc = sfsim.load_scenario("profiles/edge.yaml")
    fast = sfsim.simulate(sc, schedule, splits=2, policy=policy, engine="fast")
    ref = sfsim.simulate(sc, schedule, splits=2, policy=policy, engine="simpy")
    assert (fast.engine, fast.engine_note, ref.engine) == ("fast", None, "simpy")
    for key in FIGURES:
        assert_same(getattr(ref, key), getattr(fast, key), key)


def test_simulate_engine_choice_is_said():
    import sfsim

    sc = sfsim.load_scenario("profiles/edge.yaml")
    auto = sfsim.simulate(sc, policy="pool")  # the pool's random draws are Python's: the same result
    assert auto.engine == "fast" and auto.to_dict() == sfsim.simulate(sc, policy="pool", engine="simpy").to_dict()
    auto = sfsim.simulate(sc, trace=True)
    assert (auto.engine, auto.engine_note) == ("simpy", "a trace (and the Gantt chart) comes from the SimPy engine")
    with pytest.raises(SfsimError, match="^engine fast: a trace"):
        sfsim.simulate(sc, trace=True, engine="fast")
    with pytest.raises(SfsimError, match="unknown engine 'quick'"):
        sfsim.simulate(sc, engine="quick")
    assert sfsim.simulate(sc, trace=True).engine == "simpy"  # traces come from the SimPy engine
    assert sfsim.simulate(sc).engine == "fast"


def test_cli_engine_flag():
    from click.testing import CliRunner

    from sfsim.cli import main

    out = CliRunner().invoke(main, ["simulate", "--devices", "profiles/mobile.yaml", "--engine", "fast"])
    assert out.exit_code == 0 and "SimPy engine" not in out.output  # SplitFrozen's handovers on the fast path
    out = CliRunner().invoke(main, ["simulate", "--devices", "profiles/edge.yaml", "--schedule", "all", "--policy",
                                    "pool"])
    assert out.exit_code == 0 and "SimPy engine" not in out.output  # every schedule on the fast path
    out = CliRunner().invoke(main, ["simulate", "--devices", "profiles/mobile.yaml", "--schedule", "all"])
    assert out.exit_code == 0
    assert "splitfrozen" not in "".join(ln for ln in out.output.splitlines() if ln.startswith("note:"))


_PEAK = """
import resource, sys
from sfsim.engine.pool import DeviceTimes, ServerTimes
from sfsim.fast import replay
from sfsim.schedules import Job, ReplayConfig
mb = int(sys.argv[1])
devices = [DeviceTimes(f"d{i}", n=mb, f=0.05 + 0.01 * (i % 5), up_s=0.02, up_l=0.005, srv_f=1e-4, srv_b=1e-4,
                       srv_w=1e-4) for i in range(100)]
replay(Job(devices, [ServerTimes("s", count=2, step=1e-5)]), ReplayConfig(buffer=8, accumulate=4))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kib(script: str, mb: int) -> int:
    """Peak resident memory (KiB) of a whole Python process running ``script`` with argument ``mb``."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", script, str(mb)], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


def test_memory_grows_with_devices_not_micro_batches():
    """Peak resident memory of whole processes: 100 devices x 10 and x 5,000 micro-batches (500,000)."""
    small, big = peak_kib(_PEAK, 10), peak_kib(_PEAK, 5_000)
    assert big < small + 8 * 1024  # 8 MiB: a trace event a micro-batch would take tens of MB


def test_servers_on_threads_give_the_same_figures(monkeypatch):
    from sfsim.fast import splitfrozen as fsf

    rng = random.Random(11)
    for _ in range(20):
        job = random_job(rng)
        cfg, sequential = random_cfg(rng)
        alone = fast_figures(job, cfg, sequential)
        monkeypatch.setattr(fsf, "THREADED_FROM", 0)
        threaded = fast_figures(job, cfg, sequential)
        monkeypatch.setattr(fsf, "THREADED_FROM", 10**12)
        assert threaded == alone


@pytest.mark.parametrize("schedule", ["splitfrozen", "splitfrozen-sequential"])
def test_simulate_with_backhaul_sync_on_the_fast_path(schedule):
    """A 3-server scenario with ``training.sync``, every 2 async and every 1 sync: the fast path replays the runtime's
    rounds (sfsim.network.backhaul) with the servers and gives the SimPy result; over 2 epochs it stays on SimPy and
    says so in one line."""
    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    link = {"bandwidth": "80 Mbps", "latency": "5 ms"}
    data = {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "buffer": 4, "split": 2, "accumulate": 2,
                         "sync": {"every": 2, "mode": "async"}},
            "servers": [{"name": f"s{k}", "flops": f"{10 + 7 * k} TFLOPS", "memory": "24 GiB",
                         "backhaul": {"bandwidth": f"{1 + k} Gbps", "latency": "3 ms"}} for k in range(3)],
            "devices": [{"name": f"d{t}", "count": 2 + t, "flops": f"{50 + 40 * t} GFLOPS", "memory": "4 GiB",
                         "samples": 40 + 24 * t, "uplink": dict(link), "downlink": dict(link)} for t in range(3)]}
    res = {e: sfsim.simulate(scenario_from_dict(data, source="s.yaml"), schedule=schedule, engine=e)
           for e in ("simpy", "auto")}
    assert res["auto"].engine == "fast" and res["auto"].sync_rounds > 0
    assert res["auto"].to_dict() == res["simpy"].to_dict()
    data["training"]["sync"] = {"every": 1, "mode": "sync"}  # gradients averaged before each step
    joint = {e: sfsim.simulate(scenario_from_dict(data, source="s.yaml"), schedule=schedule, engine=e)
             for e in ("simpy", "auto")}
    assert joint["auto"].engine == "fast" and joint["auto"].to_dict() == joint["simpy"].to_dict()
    data["training"]["epochs"] = 2  # each epoch ends with its rounds, the next opens after them: the fast path too
    two = {e: sfsim.simulate(scenario_from_dict(data, source="s.yaml"), schedule=schedule, engine=e)
           for e in ("simpy", "auto")}
    assert two["auto"].engine == "fast" and two["auto"].to_dict() == two["simpy"].to_dict()
    assert two["auto"].sync_rounds > joint["auto"].sync_rounds
