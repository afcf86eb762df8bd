"""SplitFrozen without ``training.sync`` on several servers with a backhaul link, over several epochs: the runtime's
server ends each epoch with one closing round (``ServerSync.finish`` with ``every`` None, blocking) and starts its
devices on the next epoch only when the average is back. The simulator's pools open one epoch at a time and close
each with that round (:func:`sfsim.schedules.splitfrozen.closes_per_epoch`; before, the epochs ran back to back and
the rounds came after the run). The fast path leaves this case to the SimPy engine, with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.backhaul import SyncSpec
from sfsim.outputs.trace import read_chrome_trace
from sfsim.schedules import Job, ReplayConfig, get
from tests.test_splitfrozen_epochs import epoch_spans, random_run, two_epoch_runs
from tests.test_sync_order import server_ops

FIXTURES = Path(__file__).parent / "fixtures"


def _two(sequential: bool = False) -> Engine:
    """Servers a and b (step 0.5 s; backhaul 8 bit/s, 1 byte a round: 1 s each way, no latency); device A on a
    (3 micro-batches an epoch), B on b (1 an epoch): 1 s forward, 1 s uplink, server F+B 1 s, W 0; 2 epochs;
    no training.sync (``every`` None): no PoolRounds given, :func:`run` makes it."""
    devices = [DeviceTimes("A", 0, n=6, per_epoch=3, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5),
               DeviceTimes("B", 1, n=2, per_epoch=1, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5)]
    job = Job(devices, [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), None, "sync", 1.0, 1.0, 2)
    engine = Engine(trace=True)
    get("splitfrozen").run(engine, job, ReplayConfig(buffer=4, accumulate=2), sequential=sequential)
    engine.makespan = engine.run()
    return engine


def _at(engine: Engine, lane: str, op: str) -> list[float]:
    return sorted(e.start for e in engine.events if e.lane == lane and e.op == op)


def test_each_epoch_closes_with_its_round_before_the_next_starts():
    """Epoch 1: b steps at 3 (B's one micro-batch) and joins the closing round at 3.5; a steps at 4 and 5.5 (its
    partial window) and joins at 6; the average is ready at 7, back at 8. Only then do A and B forward epoch 2
    (at 8), which repeats 8 s later: rounds 2, 1 byte each way a round, makespan 16."""
    engine = _two()
    assert _at(engine, "A", "F") == [0.0, 1.0, 2.0, 8.0, 9.0, 10.0] and _at(engine, "B", "F") == [0.0, 8.0]
    assert _at(engine, "backhaul:a", "sync-send") == [6.0, 14.0] and _at(engine, "backhaul:b", "sync-send") == [3.5, 11.5]
    assert _at(engine, "backhaul:a", "sync-recv") == _at(engine, "backhaul:b", "sync-recv") == [7.0, 15.0]
    assert _at(engine, "a", "step") == [4.0, 5.5, 12.0, 13.5] and _at(engine, "b", "step") == [3.0, 11.0]
    assert engine.sync.rounds == 2 and engine.makespan == 16.0 and engine.sync.bytes == {"a": 4.0, "b": 4.0}


def test_sequential_too():
    """The sequential ablation waits for the round as well: epoch 2's first forward after the first round's return."""
    engine = _two(sequential=True)
    back = _at(engine, "backhaul:a", "sync-recv")
    assert engine.sync.rounds == 2 and engine.sync.bytes == {"a": 4.0, "b": 4.0}
    assert min(t for t in _at(engine, "A", "F") + _at(engine, "B", "F") if t > back[0]) == back[0] + 1.0


def test_simulate_closes_each_epoch_on_the_fast_path_as_on_simpy():
    """``sfsim simulate`` on two servers with backhaul links, no training.sync, 2 epochs: SplitFrozen (both forms)
    makes 2 closing rounds, each at its epoch's end, on the fast path (no note that it ran on the SimPy engine, none
    that the rounds come at the run's end), with the SimPy engine's figures; one epoch too."""
    from sfsim.cli import main as cli
    from sfsim.scenario.overrides import load_scenario_with, parse_sets
    from sfsim.simulate import simulate

    args = ["simulate", "--devices", str(FIXTURES / "runtime_two_servers.yaml"), "--schedule", "all", "--split", "2",
            "--set", "training.sync=null", "--set", "training.epochs=2"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "closes the backhaul rounds" not in res.output
    assert "splitfrozen" not in "".join(line for line in res.output.splitlines() if "ran on the SimPy" in line)
    for epochs in (2, 1):
        sc = load_scenario_with(FIXTURES / "runtime_two_servers.yaml",
                                parse_sets(["training.sync=null", f"training.epochs={epochs}"]))
        for name in ("splitfrozen", "splitfrozen-sequential"):
            fast, ref = simulate(sc, name, splits=2), simulate(sc, name, splits=2, engine="simpy")
            assert (fast.engine, fast.sync_rounds) == ("fast", epochs)
            assert fast.to_dict() == ref.to_dict()


@pytest.mark.usefixtures("one_torch_thread")
def test_two_epochs_closing_rounds_equal_a_real_runs(tiny_gpt2, tmp_path):
    """runtime_two_servers.yaml without b-1 and without training.sync, backhaul links, 2 epochs: the real run and the
    simulator make one closing round an epoch (2), send the same backhaul bytes, and on each server the same order of
    steps and rounds (epoch 1's steps, its round, epoch 2's steps, its round: before, both rounds came last)."""
    def no_sync(d):
        d["training"].pop("sync", None)
    m, sim = two_epoch_runs(tiny_gpt2, tmp_path, no_sync)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 2)
    assert sim.sync_rounds == 2 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    for server in ("mec-a", "mec-b"):
        ops = server_ops(measured, server)
        assert ops == server_ops(sim.events, server)
        assert ops.index("sync-recv") < len(ops) - 2 and ops[-2:] == ["sync-send", "sync-recv"]


@pytest.mark.parametrize("seed", range(100))
def test_random_fleets_close_each_epoch_once_before_the_next(seed):
    """Random fleets: every run ends, one closing round an epoch (``closing`` bytes each way on every backhaul), and
    each epoch is a barrier: the servers' last op of epoch e, then every server's round e, then epoch e + 1's
    first device forward; the run ends with the last round's return."""
    engine, job = random_run(seed, closing=True)
    epochs, names = job.sync.epochs, [s.name for s in job.servers]
    assert engine.sync.rounds == epochs and engine.sync.bytes == dict.fromkeys(names, 2 * 12.0 * epochs)
    starts, ends = epoch_spans(engine, job)
    sends = {n: _at(engine, f"backhaul:{n}", "sync-send") for n in names}
    back = {n: [e.start + e.dur for e in engine.events if e.lane == f"backhaul:{n}" and e.op == "sync-recv"]
            for n in names}
    assert all(len(sends[n]) == len(back[n]) == epochs for n in names)
    for ep in range(epochs):
        if ep in ends:
            assert all(ends[ep] <= max(sends[n][ep] for n in names) for n in names)
        if ep + 1 in starts:
            assert max(min(b[ep] for b in back.values()), ends.get(ep, 0.0)) <= starts[ep + 1]
    assert engine.makespan >= max(max(b) for b in back.values())
