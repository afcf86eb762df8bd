"""SplitFrozen with ``training.sync`` over several epochs, as the runtime runs it (``Method.train_epoch``): each
server trains an epoch, steps on its partial window, answers the others' rounds until none trains and closes when
due (``ServerSync.finish``); only then does it start its devices on the next epoch. The simulator's pools open one
epoch at a time (:meth:`sfsim.engine.worker.WorkerLoop.by_epochs`): a real 2-server, 2-epoch run and the simulator
make the same rounds, in the same order with the steps, and send the same backhaul bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.backhaul import PoolRounds, SyncSpec
from sfsim.outputs.trace import read_chrome_trace
from sfsim.schedules import Job, ReplayConfig, get
from tests.test_sync_order import ORDERED, server_ops

FIXTURES = Path(__file__).parent / "fixtures"


def _two_job(every: int | None, mode: str) -> Job:
    """Servers a and b (step 0.5 s; backhaul 8 bit/s, 1 byte a round: 1 s each way, no latency); device A on a
    (3 micro-batches an epoch), B on b (1 an epoch): 1 s forward, 1 s uplink, server F+B 1 s, W 0; 2 epochs."""
    devices = [DeviceTimes("A", 0, n=6, per_epoch=3, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5),
               DeviceTimes("B", 1, n=2, per_epoch=1, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5)]
    job = Job(devices, [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), every, mode, 1.0, 1.0, 2)
    return job


def _two(every: int, mode: str, sequential: bool = False) -> Engine:
    """:func:`_two_job` on the SimPy engine, traced."""
    job = _two_job(every, mode)
    engine = Engine(trace=True)
    PoolRounds(engine, job.sync, job.servers)
    get("splitfrozen").run(engine, job, ReplayConfig(buffer=4, accumulate=2), sequential=sequential)
    engine.makespan = engine.run()
    return engine


def _timeline(engine: Engine, lanes: tuple[str, ...]) -> list[tuple[str, str, float]]:
    """(lane, op, start) of the steps, rounds and device forwards on ``lanes``, in time order."""
    return [(e.lane.removeprefix("backhaul:"), e.op, e.start) for e in sorted(engine.events, key=lambda e: (e.start, e.lane))
            if e.lane in lanes and e.op in (("F",) if e.lane in ("A", "B") else ORDERED)]


def test_each_epoch_ends_with_its_rounds_before_the_next_starts():
    """every 2, sync. Epoch 1: b trains B's one micro-batch 2-3 and steps (its 1st step, its last of the epoch: no
    round due), then answers with a drained round of zeros from 3.5 (it adopts nothing); a steps at 4 and at 5.5
    (its 2nd: due, its last) and joins that round at 6; nobody trains any more and b did not adopt, so a closing
    round follows at 8, back at 10. Only then do A and B forward epoch 2's micro-batches (at 10: they used to run
    on at 3 and 1). Epoch 2: b's 2nd step (13) is due and its last, a's 4th (15.5) too: one round 16-18 that
    both adopt, no closing round. 3 rounds of 1 byte each way."""
    engine = _two(2, "sync")
    backhaul = ("backhaul:a", "backhaul:b")
    assert _timeline(engine, ("A", "B")) == [("A", "F", 0.0), ("B", "F", 0.0), ("A", "F", 1.0), ("A", "F", 2.0),
                                             ("A", "F", 10.0), ("B", "F", 10.0), ("A", "F", 11.0), ("A", "F", 12.0)]
    assert _timeline(engine, ("a", "b")) == [("b", "step", 3.0), ("a", "step", 4.0), ("a", "step", 5.5),
                                             ("b", "step", 13.0), ("a", "step", 14.0), ("a", "step", 15.5)]
    sends = [(lane, t) for lane, op, t in _timeline(engine, backhaul) if op == "sync-send"]
    assert sends == [("b", 3.5), ("a", 6.0), ("a", 8.0), ("b", 8.0), ("b", 13.5), ("a", 16.0)]
    assert engine.sync.rounds == 3 and engine.makespan == 18.0 and engine.sync.bytes == {"a": 6.0, "b": 6.0}


@pytest.mark.parametrize("sequential", [False, True])
def test_joint_rounds_per_epoch(sequential):
    """every 1, sync (gradients averaged before each step): a's 2 steps an epoch (after 2 micro-batches, then its
    partial last) each follow a round; b steps once on its own and once more with a's mean on its drained round;
    everyone adopts, so no closing round: 2 rounds an epoch, and epoch 2 starts when the step on the last ends."""
    engine = _two(1, "sync", sequential)
    assert engine.sync.rounds == 4 and engine.sync.bytes == {"a": 8.0, "b": 8.0}
    ops = [op for _, op, _ in _timeline(engine, ("a", "backhaul:a"))]
    assert ops == ["sync-send", "sync-recv", "step"] * 4
    last_recv = [t for lane, op, t in _timeline(engine, ("backhaul:a",)) if op == "sync-recv"][1]
    assert [t for _, _, t in _timeline(engine, ("B",))][1] == last_recv + 1.0 + 0.5  # received, then the step


@pytest.mark.parametrize(("every", "mode"), [(1, "async"), (2, "async"), (3, "sync")])
def test_round_counts_per_epoch(every, mode):
    """Each epoch ends with its drain and closing rounds; the steps count on across epochs. every 3: epoch 1 a
    drain round of both (none adopts) and a closing one; epoch 2 a's 3rd step starts a round that b answers from its
    drain, then a drain round and a closing one: 5."""
    engine = _two(every, mode)
    assert engine.sync.rounds == {(1, "async"): 6, (2, "async"): 3, (3, "sync"): 5}[(every, mode)]


@pytest.mark.parametrize(("every", "mode", "sequential"), [(2, "sync", False), (2, "sync", True), (1, "sync", False),
                                                        (1, "async", True), (3, "sync", False), (None, "sync", False)])
def test_the_fast_path_opens_the_epochs_alike(every, mode, sequential):
    """The fast path (sfsim.fast.synced) replays these two epochs as the SimPy engine: the same makespan (every 2,
    sync: 18 s, above), rounds, backhaul bytes and per-server figures."""
    from sfsim.fast import replay

    rec, makespan = replay(_two_job(every, mode), ReplayConfig(buffer=4, accumulate=2), sequential)
    engine = Engine()
    job = _two_job(every, mode)
    if every is not None:
        PoolRounds(engine, job.sync, job.servers)
    get("splitfrozen").run(engine, job, ReplayConfig(buffer=4, accumulate=2), sequential=sequential)
    assert makespan == engine.run()
    assert (rec.sync.rounds, rec.sync.bytes) == (engine.sync.rounds, engine.sync.bytes)
    assert (rec.server_busy, rec.server_end, rec.device_busy) == (engine.server_busy, engine.server_end,
                                                                   engine.device_busy)
    if (every, mode, sequential) == (2, "sync", False):
        assert makespan == 18.0 and rec.sync.rounds == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.usefixtures("one_torch_thread")
def test_two_epochs_rounds_equal_a_real_runs(tiny_gpt2, tmp_path, mode):
    """runtime_two_servers.yaml without b-1, sync every 2, 2 epochs (mec-a trains 4 micro-batches an epoch, mec-b
    2): each epoch ends with mec-b's drained round and a closing round, as in the real run; the round count, the
    backhaul bytes and (sync mode; an async round's end races the steps) the order of rounds and steps on each
    server are the runtime's. Before, the simulator ran the epochs back to back: 5 rounds against the runtime's 6."""
    def sync(d):
        d["training"]["sync"] = {"every": 2, "mode": mode}
    m, sim = two_epoch_runs(tiny_gpt2, tmp_path, sync)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 6)
    assert sim.sync_rounds == 6 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    if mode == "sync":
        measured = read_chrome_trace(tmp_path / "run" / "trace.json")
        for server in ("mec-a", "mec-b"):
            assert server_ops(measured, server) == server_ops(sim.events, server)


def two_epoch_runs(tiny_gpt2, tmp_path, sync) -> tuple[dict, object]:
    """runtime_two_servers.yaml without b-1, backhaul links on both servers, its ``training`` edited by ``sync``:
    a real 2-epoch SplitFrozen run's metrics (trace in ``tmp_path/run``) and the simulator's prediction of it."""
    from tests.test_multiserver import TWO, _cfg, _with
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def edit(d):
        d["devices"] = [x for x in d["devices"] if x["name"] != "b-1"]
        sync(d)
        for s in d["servers"]:
            s["backhaul"] = {"bandwidth": "20 Mbps", "latency": "10 ms"}
    devices = _with(tmp_path, TWO, edit)
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=devices, train_samples=24, epochs=2, emulate="links"))
    vc = ValidateConfig(devices=str(devices), model=tiny_gpt2, method="splitfrozen", out=str(tmp_path / "v"),
                        max_len=48, data_dir=str(FIXTURES / "data"), train_samples=24, server_order="round-robin",
                        epochs=2)
    return m, predict(vc, m)


def random_run(seed: int, closing: bool = False) -> tuple[Engine, Job]:
    """2-4 servers (1 or 2 workers), 1-7 devices of unequal times (some without samples, some with a partial last
    micro-batch), 2-3 epochs, any policy and credits, pipelined or sequential, sync every 1, 2, 3 or 5 in either mode.
    ``closing``: no training.sync (each epoch's closing round only; the schedule makes its rounds), 0-7 devices."""
    import random

    rng = random.Random(seed)
    ns, epochs = rng.randint(2, 4), rng.randint(2, 3)
    servers = [ServerTimes(f"s{k}", rng.choice([1, 1, 2]), rng.uniform(0, 0.3)) for k in range(ns)]
    devices = []
    for i in range(rng.randint(0 if closing else 1, 7)):
        pe = rng.randint(0, 4)
        devices.append(DeviceTimes(f"d{i}", rng.randrange(ns), n=pe * epochs, per_epoch=pe, last=rng.choice([1.0, 0.5]) if pe else 1.0,
                                   f=rng.uniform(0.1, 1), up_s=rng.uniform(0.1, 1), up_l=rng.uniform(0, 0.2),
                                   srv_f=rng.uniform(0.05, 0.5), srv_b=rng.uniform(0.05, 0.5), srv_w=rng.uniform(0, 0.5),
                                   act_bytes=100.0))
    job = Job(devices, servers)
    links = tuple((s.name, rng.uniform(10, 100), rng.uniform(0, 0.1)) for s in servers)
    every, mode = (None, "sync") if closing else (rng.choice([1, 2, 3, 5]), rng.choice(["sync", "async"]))
    job.sync = SyncSpec(links, every, mode, 10.0, 12.0, epochs)
    policy = rng.choice(["fifo", "round-robin", "proportional", "pool", "paced-round-robin", "paced-proportional"])
    credits = "device" if policy.startswith("paced") else rng.choice(["server", "device"])
    cfg = ReplayConfig(buffer=rng.randint(1, 3), accumulate=rng.randint(1, 3), policy=policy, credits=credits,
                       decompose=rng.random() < 0.7)
    engine = Engine(trace=True)
    if not closing:
        PoolRounds(engine, job.sync, job.servers)
    get("splitfrozen").run(engine, job, cfg, sequential=rng.random() < 0.3)
    engine.makespan = engine.run()
    return engine, job


def epoch_spans(engine, job) -> tuple[dict, dict]:
    """Per epoch: the first device forward of it, and the end of the last server op on it."""
    per = {d.name: d.per_epoch for d in job.devices}
    starts, ends = {}, {}
    for e in engine.events:
        if e.op in ("F", "B", "W", "BW") and e.device in per and e.mb >= 0:
            ep = e.mb // per[e.device]
            if e.lane == e.device:
                starts[ep] = min(starts.get(ep, e.start), e.start)
            elif not e.lane.startswith("link:"):
                ends[ep] = max(ends.get(ep, e.start + e.dur), e.start + e.dur)
    return starts, ends


@pytest.mark.parametrize("seed", range(60))
def test_no_device_starts_an_epoch_before_every_server_ended_the_last(seed):
    """Random fleets: every run ends (a pool left waiting raises), and each epoch is a barrier: no device forwards a
    micro-batch of epoch e + 1 before every server has ended its work on epoch e's (its last F, B, W), and between
    the two each server's epoch-end rounds run (at least one send per epoch on every backhaul)."""
    engine, job = random_run(seed)
    starts, ends = epoch_spans(engine, job)
    for ep in range(1, job.sync.epochs):
        if ep in starts:
            assert ends[ep - 1] <= starts[ep]
            for srv in job.servers:
                assert any(ends[ep - 1] <= e.start <= starts[ep] for e in engine.events
                           if e.lane == f"backhaul:{srv.name}" and e.op == "sync-recv")
