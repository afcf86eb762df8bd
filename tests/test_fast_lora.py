"""The fast path of the LoRA baselines (CenLoRA, FedLoRA, SplitLoRA) against the SimPy engine: random fleets, every figure equal."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.fast import replay, uncovered
from sfsim.schedules import Job, ReplayConfig, get


def stage(rng: random.Random, ties: bool, scale: float) -> float:
    """A stage time: from a small grid (so that events tie) or a continuous draw."""
    return rng.choice((0.0, 0.5, 1.0, 2.0)) * scale if ties else rng.uniform(0.05, 2.0) * scale


def random_job(rng: random.Random, ties: bool = False, most: int = 8) -> Job:
    """A random job for any schedule: 1-``most`` devices, 1-3 servers of 1-3 workers, unequal times and samples.

    Devices differ in every stage time, link, sample count (partial last micro-batches, epochs) and
    warm-up; some have no micro-batch; with ``ties`` times come from a small grid so that events tie.
    """
    n_srv = rng.randint(1, 3)
    servers = [ServerTimes(f"s{k}", rng.choice((1, 1, 2, 3)), stage(rng, ties, 0.3) if rng.random() < 0.7 else 0.0,
                           stage(rng, ties, 0.2)) for k in range(n_srv)]
    devices = []
    same = rng.random() < 0.2  # identical devices: every arrival and round ties, broken in SimPy's order
    for i in range(rng.randint(1, most)):
        per_epoch, epochs = rng.randint(1, 6), rng.randint(1, 3)
        up = rng.uniform(1e3, 1e6)
        d = DeviceTimes(
            f"d{i}", server=rng.randrange(n_srv), n=per_epoch * epochs if rng.random() < 0.9 else 0,
            per_epoch=per_epoch, f=stage(rng, ties, 1.0), b=stage(rng, ties, 1.0), w=stage(rng, ties, 1.0),
            step=stage(rng, ties, 0.2), up_s=stage(rng, ties, 1.0), up_l=stage(rng, ties, 0.3),
            down_s=stage(rng, ties, 0.5), down_l=stage(rng, ties, 0.3), sync_up_s=stage(rng, ties, 1.0),
            sync_down_s=stage(rng, ties, 1.0), srv_f=stage(rng, ties, 0.3), srv_b=stage(rng, ties, 0.3),
            srv_w=stage(rng, ties, 0.3), up_bytes=up, down_bytes=up / 2, sync_bytes=rng.uniform(1e3, 1e7),
            last=rng.choice((1.0, 1.0, 0.5, 0.3)), warmup=rng.choice((0.0, 0.0, 0.7)))
        devices.append(replace(devices[0], name=d.name, server=d.server) if same and devices else d)
    return Job(devices, servers)


def random_cfg(rng: random.Random, **kw) -> ReplayConfig:
    """Random run knobs (accumulation, decomposed B/W, FedAvg period, local steps)."""
    return ReplayConfig(accumulate=rng.randint(1, 4), decompose=rng.random() < 0.7, local_steps=rng.randint(1, 6),
                        fedavg_every=rng.randint(1, 4), **kw)


def figures(rec, makespan: float) -> dict:
    """Every figure a run leaves (an Engine after its run, or the fast path's Replayed)."""
    return {"makespan": makespan, "server_busy": rec.server_busy, "device_busy": rec.device_busy,
            "up": rec.up_bytes, "down": rec.down_bytes, "wait": rec.server_wait, "end": rec.server_end,
            "mixing": {k: (m.value, m.total) for k, m in rec.mixing.items()}, "pool": rec.pool_peak_bytes}


def simpy_figures(job: Job, cfg: ReplayConfig, schedule: str) -> dict:
    """The SimPy engine's figures of a job."""
    engine = Engine()
    get(schedule).run(engine, job, cfg)
    return figures(engine, engine.run())


def fast_figures(job: Job, cfg: ReplayConfig, schedule: str) -> dict:
    """The fast path's figures of a job."""
    rec, makespan = replay(job, cfg, schedule=schedule)
    return figures(rec, makespan)


def check_seeds(schedule: str, seeds, **kw) -> int:
    """Fast against SimPy on one random job per seed (ties on even seeds), every figure ``==``; returns the count."""
    for seed in seeds:
        rng = random.Random(seed)
        job = random_job(rng, ties=seed % 2 == 0)
        cfg = random_cfg(rng, **kw)
        want, got = simpy_figures(job, cfg, schedule), fast_figures(job, cfg, schedule)
        assert want == got, f"{schedule} seed {seed} cfg={cfg}:\n{want}\n{got}"
    return len(seeds)


@pytest.mark.parametrize("schedule", ["cenlora", "fedlora"])
def test_random_fleets_equal(schedule):
    assert check_seeds(schedule, range(400)) == 400


SPLITLORA = [(order, policy) for order in ("interleaved", "sequential")
             for policy in ("fifo", "pool", "proportional", "paced-proportional", "round-robin", "paced-round-robin")]


@pytest.mark.parametrize(("order", "policy"), SPLITLORA)
def test_splitlora_random_fleets_equal(order, policy):
    """Both client orders, arrival order (fifo, pool) and the fixed orders: 12 x 100 fleets."""
    assert check_seeds("splitlora", range(100), client_order=order, policy=policy) == 100


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["cenlora", "fedlora"])
def test_many_random_fleets_equal(schedule):
    assert check_seeds(schedule, range(400, 5400)) == 5000


@pytest.mark.slow
@pytest.mark.parametrize(("order", "policy"), SPLITLORA)
def test_splitlora_many_random_fleets_equal(order, policy):
    assert check_seeds("splitlora", range(100, 1100), client_order=order, policy=policy) == 1000


def test_cenlora_closed_form():
    """One worker, fused backward, accumulate 2: every micro-batch F + BW, a step per window and a last partial one."""
    d = DeviceTimes("a", n=5, srv_f=1.0, srv_b=0.5, srv_w=0.25)
    rec, makespan = replay(Job([d], [ServerTimes("s", step=0.125)]), ReplayConfig(accumulate=2, decompose=False),
                           schedule="cenlora")
    assert makespan == 5 * 1.75 + 3 * 0.125
    assert rec.server_busy == {"s": makespan} and rec.device_busy == {"a": 0.0}


def test_fedlora_closed_form():
    """Two devices, one round each of 2 micro-batches: the round closes at the later upload's arrival."""
    fast = DeviceTimes("a", n=2, f=1.0, b=1.0, w=1.0, step=0.5, sync_up_s=1.0, up_l=0.5, sync_down_s=2.0, down_l=0.25,
                       sync_bytes=100.0)
    slow = DeviceTimes("b", n=2, f=2.0, b=2.0, w=2.0, step=0.5, sync_up_s=1.0, up_l=0.5, sync_down_s=2.0, down_l=0.25,
                       sync_bytes=100.0)
    job = Job([fast, slow], [ServerTimes("s", aggregate=0.75)])
    rec, makespan = replay(job, ReplayConfig(local_steps=2, accumulate=1), schedule="fedlora")
    close = 2 * 6.0 + 2 * 0.5 + 1.5  # the slow device's two micro-batches, two steps, its upload
    assert makespan == close + 2 * 0.75 + 2.25
    assert rec.server_busy == {"s": 1.5} and rec.up_bytes == rec.down_bytes == {"a": 100.0, "b": 100.0}
    assert rec.device_busy == {"a": 7.0, "b": 13.0}


def test_splitlora_sequential_closed_form():
    """One client, two micro-batches, fused backward, a step after each: the timeline worked out by hand."""
    d = DeviceTimes("a", n=2, f=1.0, b=1.0, w=1.0, step=0.5, up_s=1.0, up_l=0.5, down_s=1.0, down_l=0.25,
                    sync_up_s=2.0, sync_down_s=2.0, srv_f=1.0, srv_b=0.5, srv_w=0.5, up_bytes=10.0, down_bytes=5.0,
                    sync_bytes=100.0)
    cfg = ReplayConfig(accumulate=1, decompose=False, client_order="sequential")
    rec, makespan = replay(Job([d], [ServerTimes("s", step=0.25)]), cfg, schedule="splitlora")
    # fwd command 0.25, F to 1.25, up to 2.75; server F+BW to 4.75, step to 5.0; gradient down at 6.0,
    # B, W, step to 8.5; command at 6.0, F to 9.5, up to 11.0; server to 13.0, step 13.25; gradient at 14.25,
    # client to 16.75; sync command, adapter upload 16.75 + 2.0 + 0.5
    assert makespan == 19.25
    assert (rec.server_busy, rec.device_busy) == ({"s": 4.5}, {"a": 7.0})
    assert (rec.up_bytes, rec.down_bytes, rec.mixing["s"].total) == ({"a": 120.0}, {"a": 10.0}, 2)


FIGURES = ("makespan_s", "device_busy_s", "server_busy_s", "server_utilization", "uplink_bytes_by_device",
           "downlink_bytes_by_device", "stream_mixing", "stream_mixing_by_server", "server_wait_s", "server_end_s",
           "device_flops", "server_flops", "samples_not_trained", "sync_rounds", "energy")


@pytest.mark.parametrize(("profile", "schedule", "kw"), [
    ("edge", "cenlora", {}), ("edge", "fedlora", {}), ("edge", "splitlora", {"client_order": "interleaved"}),
    ("edge", "splitlora", {"client_order": "sequential"}), ("sixg", "fedlora", {}),
    ("sixg", "splitlora", {"client_order": "interleaved"}), ("measured", "splitlora", {"policy": "proportional"}),
    ("mobile", "cenlora", {})])  # mobile: handovers, which do not apply to cenlora
def test_simulate_engines_agree(profile, schedule, kw):
    import sfsim

    sc = sfsim.load_scenario(f"profiles/{profile}.yaml")
    fast = sfsim.simulate(sc, schedule, engine="fast", **kw)
    ref = sfsim.simulate(sc, schedule, engine="simpy", **kw)
    assert (fast.engine, fast.engine_note, ref.engine) == ("fast", None, "simpy")
    for key in FIGURES:
        assert getattr(ref, key) == getattr(fast, key), key


def test_uncovered_lora_cases():
    job = Job([DeviceTimes("a", n=2, f=1.0)], [ServerTimes("s")])

    class Sc:  # the scenario fields uncovered() reads
        class training:
            sync = "sync"
        servers = [object(), object()]
    pool = ReplayConfig(policy="pool")
    assert uncovered(Sc, "fedlora", pool, job) is None  # no server policy, no backhaul sync
    assert uncovered(Sc, "cenlora", pool, job) is None
    assert uncovered(Sc, "splitlora", pool, job) is None  # pool: arrival order, as fifo
    job.network = object()  # a network the fast path does not know
    assert uncovered(Sc, "fedlora", pool, job) is not None
    assert uncovered(Sc, "splitlora", pool, job) is not None
    assert uncovered(Sc, "cenlora", pool, job) is None  # cenlora has no device links


_PEAK = """
import resource, sys
from dataclasses import replace
from sfsim.fast import replay
from sfsim.fast.replay import baseline_fleet
job, cfg = baseline_fleet(100, int(sys.argv[1]))  # one epoch: a fixed order is drawn lazily, not stored
for schedule, knobs in [("cenlora", {}), ("fedlora", {}), ("splitlora", {}), ("splitlora", {"policy": "proportional"}),
                        ("splitlora", {"client_order": "sequential"})]:
    replay(job, replace(cfg, **knobs), schedule=schedule)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_grows_with_devices_not_micro_batches():
    """Peak resident memory of whole processes: 100 devices x 10 and x 5,000 micro-batches, every baseline."""
    from tests.test_fast import peak_kib

    small, big = peak_kib(_PEAK, 10), peak_kib(_PEAK, 5_000)
    assert big < small + 8 * 1024  # 8 MiB: 500,000 micro-batches of 16 bytes would take 8 MB


def random_scenario(rng: random.Random) -> dict:
    """A random heterogeneous scenario: 1-4 device kinds (unequal FLOP/s, links, samples), 1-3 servers, knobs."""
    kinds = [{"name": f"k{t}", "count": rng.randint(1, 3), "flops": f"{rng.randint(5, 400)} GFLOPS",
              "memory": "8 GiB", "samples": rng.randint(1, 120),
              "uplink": {"bandwidth": f"{rng.randint(5, 500)} Mbps", "latency": f"{rng.randint(0, 30)} ms"},
              "downlink": {"bandwidth": f"{rng.randint(20, 900)} Mbps", "latency": f"{rng.randint(0, 30)} ms"}}
             for t in range(rng.randint(1, 4))]
    servers = [{"name": f"e{k}", "flops": f"{rng.randint(2, 40)} TFLOPS", "memory": "80 GiB",
                "count": rng.randint(1, 3)} for k in range(rng.randint(1, 3))]
    training = {"micro_batch": rng.choice((2, 4, 8)), "epochs": rng.randint(1, 2), "accumulate": rng.randint(1, 4),
                "decompose_backward": rng.random() < 0.7, "local_steps": rng.randint(1, 5),
                "fedavg_every": rng.randint(1, 6), "client_order": rng.choice(("interleaved", "sequential")),
                "server_policy": rng.choice(("fifo", "pool", "proportional", "paced-round-robin")),
                "splitlora_cut": rng.randint(1, 3)}
    return {"model": {"name": "smollm2-135m", "seq_len": 64, "task": "classification", "num_labels": 2},
            "training": training, "servers": servers, "devices": kinds}


@pytest.mark.parametrize("schedule", ["cenlora", "fedlora", "splitlora"])
def test_random_scenarios_through_simulate(schedule):
    """simulate() on random scenarios (real cost model, least-loaded assignment): every SimResult figure equal."""
    import sfsim

    for seed in range(40):
        sc = sfsim.scenario_from_dict(random_scenario(random.Random(seed)))
        fast, ref = sfsim.simulate(sc, schedule, engine="fast"), sfsim.simulate(sc, schedule, engine="simpy")
        for key in FIGURES:
            assert getattr(ref, key) == getattr(fast, key), f"seed {seed}: {key}"


def varying_network(rng: random.Random, job: Job):
    """A FedLoRA network whose links vary (piecewise-constant traces, some repeating) and nothing else."""
    from sfsim.network.legs import Leg, Motion
    from sfsim.network.linkrate import Steps
    from sfsim.schedules.network import FedNetwork

    def trace():
        if rng.random() < 0.3:
            return None  # a constant link among varying ones
        times = [0.0] + sorted(rng.sample(range(1, 60), rng.randint(1, 6)))
        rates = [rng.choice((2e6, 8e6, 3e7)) * rng.uniform(0.5, 1.5) for _ in times]
        return Steps([float(t) for t in times], rates, rng.choice((None, 64.0, 90.0)))  # see the report: Steps
        # with a period that is not a whole number can loop for ever at a period boundary

    motions = {i: Motion([Leg(0.0, d.server, rng.choice((1e6, 1e7)), d.up_s, d.up_l, trace(), rng.choice((1e6, 5e7)),
                              d.down_l, trace())]) for i, d in enumerate(job.devices)}
    return FedNetwork(motions, {i: m for i, m in motions.items() if m.legs[0].rate or m.legs[0].down})


def _motions(job: Job) -> dict:
    return {i: (m.done, m.steps, m.sent, m.send_s, m.recv_s, m.syncs_sent, m.downloads, m.uploads, m.switched_at)
            for i, m in job.network.motions.items()}


@pytest.mark.parametrize("seeds", [range(300), pytest.param(range(300, 3300), marks=pytest.mark.slow)])
def test_fedlora_varying_links_equal(seeds):
    """FedLoRA on time-varying links: every figure and what the motions hold (the result's network report) equal."""
    for seed in seeds:
        jobs = []
        for _ in range(2):  # the same job twice: each run fills its own motions
            rng = random.Random(seed)
            job = random_job(rng, ties=seed % 2 == 0)
            job.network = varying_network(rng, job)
            jobs.append((job, random_cfg(rng)))
        (a, cfg), (b, _) = jobs
        assert uncovered(None, "fedlora", cfg, b) is None
        want, got = simpy_figures(a, cfg, "fedlora"), fast_figures(b, cfg, "fedlora")
        assert (want, _motions(a)) == (got, _motions(b)), f"seed {seed}"


def test_fedlora_varying_links_through_simulate():
    """simulate() on Gilbert-Elliott and fading links (no handover): the fast path runs, every figure equal."""
    import sfsim

    for seed in range(6):
        data = random_scenario(random.Random(seed))
        for k, kind in enumerate(data["devices"]):
            if k % 2 == 0:
                kind["uplink"] = {"gilbert_elliott": {"good": "80 Mbps", "bad": "4 Mbps", "mean_good": "5 s",
                                                      "mean_bad": "1 s"}, "latency": "10 ms"}
            else:
                kind["downlink"] = {**kind["downlink"], "fading": {"sigma_db": 4.0, "coherence": "2 s"}}
        sc = sfsim.scenario_from_dict(data)
        fast, ref = sfsim.simulate(sc, "fedlora", engine="fast"), sfsim.simulate(sc, "fedlora", engine="simpy")
        assert fast.dynamic_network == "simulated"
        for key in (*FIGURES, "uplink_send_s", "downlink_recv_s", "handovers"):
            assert getattr(ref, key) == getattr(fast, key), f"seed {seed}: {key}"


def test_cli_notes_each_reason(tmp_path):
    """--schedule all where schedules fall back for different reasons: one true note line per reason."""
    import yaml
    from click.testing import CliRunner

    from sfsim.cli import main

    data = random_scenario(random.Random(3))
    data["devices"][0]["downlink"] = {"gilbert_elliott": {"good": "80 Mbps", "bad": "4 Mbps", "mean_good": "5 s",
                                                          "mean_bad": "1 s"}, "latency": "10 ms"}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--schedule", "all", "--policy", "pool"])
    assert out.exit_code == 0, out.output
    notes = [line for line in out.output.splitlines() if "ran on the SimPy engine" in line]
    # SplitFrozen sends nothing down (its varying downlink does not apply) and replays pool, and the baselines
    # take varying links on the fast path; this fleet has several servers, several epochs and no training.sync, so
    # SplitFrozen's servers close each epoch together (a zero-time round, as the runtime's ServerSync.finish: gate21),
    # which the fast path does not replay on a server with several workers: that one reason, in one line
    assert notes == ["note: splitfrozen, splitfrozen-sequential ran on the SimPy engine, not the fast path: the closing "
                     "backhaul round at each epoch's end on a server with several workers is replayed by the SimPy "
                     "engine only"]
