"""SplitFrozen with devices that move (handover), pause, drop or have a varying uplink, over several epochs on
several servers: the runtime's server ends each epoch with its backhaul rounds (``ServerSync.finish``) and starts
the devices it holds then on the next one (``server_epoch``); a server waits for a visitor only while a leg on it
may still bring the visitor (``trainer.methods.splitfrozen``). The simulator's pools open one epoch at a time with
the runtime's count of each epoch (:class:`sfsim.engine.epochs.EpochBooks`); before, its epochs ran back to back and
the rounds came once at the run's end. Real 2- and 3-server, 2-epoch runs make the same rounds, send the same
backhaul bytes and run the same order of steps, sends and receives on every server as the simulator predicts."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest
import yaml

from sfsim.engine.pool import Engine
from sfsim.errors import SfsimError
from sfsim.network.backhaul import PoolRounds, SyncSpec
from sfsim.outputs.trace import read_chrome_trace
from sfsim.schedules import splitfrozen as sf
from tests.test_fast_handover import random_job
from tests.test_sync_order import server_ops

FIXTURES = Path(__file__).parent / "fixtures"


def moving_run(seed: int, closing: bool, policy: str | None = None) -> tuple[Engine | None, object]:
    """A random fleet of 2-4 servers whose devices hand over, pause, drop or have varying uplinks
    (``tests.test_fast_handover.random_job``), every device over the same 2-3 epochs, under fifo or round-robin,
    with ``training.sync`` (every 1, 2 or 3, either mode) or, ``closing``, only each epoch's closing round.
    ``policy``: that server policy instead of the drawn one (the same fleet otherwise).
    Returns the engine after the run (None: a sync round waited for ever, see the test) and the job."""
    rng = random.Random(10_000 + seed)
    job, cfg, sequential = random_job(seed)
    epochs = rng.randint(2, 3)
    job.devices = [dataclasses.replace(d, n=d.per_epoch * epochs, sent=d.per_epoch * epochs) for d in job.devices]
    job.network.views = [[dataclasses.replace(d, n=d.per_epoch * epochs, sent=d.per_epoch * epochs) for d in row] for row in job.network.views]
    cfg = dataclasses.replace(cfg, policy=policy or rng.choice(("fifo", "round-robin")), pool_memory=None)
    links = tuple((s.name, rng.uniform(10, 100), rng.uniform(0, 0.1)) for s in job.servers)
    every, mode = (None, "sync") if closing else (rng.choice([1, 2, 3]), rng.choice(["sync", "async"]))
    job.sync = SyncSpec(links, every, mode, 10.0, 12.0, epochs)
    engine = Engine(trace=True)
    if not closing:
        PoolRounds(engine, job.sync, job.servers)
    sf.run(engine, job, cfg, sequential=sequential)
    try:
        engine.makespan = engine.run()
    except SfsimError as err:
        assert "waited for ever" in str(err)
        return None, job
    return engine, job


def _epochs(engine: Engine, job) -> tuple[dict, dict, dict]:
    """Per epoch: the first device forward, the last server op; per (device, micro-batch): the servers' F count."""
    per = {d.name: d.per_epoch for d in job.devices}
    starts, ends, trained = {}, {}, {}
    for e in engine.events:
        if e.op in ("F", "B", "W", "BW") and e.device in per and e.mb >= 0:
            ep = e.mb // per[e.device]
            if e.lane == e.device:
                starts[ep] = min(starts.get(ep, e.start), e.start)
            elif not e.lane.startswith("link:"):
                ends[ep] = max(ends.get(ep, e.start + e.dur), e.start + e.dur)
                if e.op == "F":
                    trained[e.device, e.mb] = trained.get((e.device, e.mb), 0) + 1
    return starts, ends, trained


@pytest.mark.parametrize("closing", [True, False])
def test_random_moving_fleets_end_each_epoch_with_its_rounds(closing):
    """150 random fleets each: every run ends (before issue 19 a few with training.sync stopped with "waited for ever":
    tests/test_splitfrozen_move_wait.py), every micro-batch a device sent is trained once, and each epoch is a barrier: no device forwards epoch e + 1 before
    every server ended its work on epoch e and the first server received that epoch's last round. Without training.sync exactly one
    closing round an epoch."""
    outcomes = []
    for seed in range(150):
        engine, job = moving_run(seed, closing)
        outcomes.append(engine is not None)
        if engine is None:
            continue
        starts, ends, trained = _epochs(engine, job)
        moving = job.network.moving
        sent = {d.name: (moving[i].sent if i in moving else d.sent) for i, d in enumerate(job.devices)}
        assert trained == {(n, j): 1 for n, k in sent.items() for j in range(k)}, seed
        names = [s.name for s in job.servers]
        back = {n: sorted(e.start + e.dur for e in engine.events if e.lane == f"backhaul:{n}" and e.op == "sync-recv")
                for n in names}
        if closing:
            assert engine.sync.rounds == job.sync.epochs and all(len(b) == job.sync.epochs for b in back.values())
        for ep in range(1, job.sync.epochs):
            if ep in starts:
                assert ends.get(ep - 1, 0.0) <= starts[ep], seed
                # the first server the epoch's last average reaches may start its devices then
                assert any(ends.get(ep - 1, 0.0) <= t <= starts[ep] for b in back.values() for t in b), seed
                if closing:
                    assert min(b[ep - 1] for b in back.values()) <= starts[ep], seed
    assert all(outcomes), [seed for seed, ok in enumerate(outcomes) if not ok]


def test_a_device_that_moved_away_for_good_is_not_waited_for():
    """mover: a -> b at 0.5 s (before its first send), 4 s forward, 1 micro-batch an epoch; stay: on a, 1 s forward,
    1 an epoch; 1 s uplinks, server F+B 1 s, step 0.5 s; no training.sync, a closing round of 2 s each way; 2 epochs.
    Epoch 1: stay is trained on a at 2 (step to 3.5), mover sends to b at 4 (b joins the round at 6.5), and a, which
    held it, learns of the move then and joins at 4 (the runtime's ``moved`` comes with that send); the average
    is back at 10.5 and epoch 2 starts there on both servers, mover on b, which holds it now. a does not wait for
    mover any more (its only leg on a is over): it joins the round at 14, when stay's micro-batch is done, and not at
    14.5, when mover's epoch is sent (on b)."""
    from sfsim.engine.pool import DeviceTimes, ServerTimes
    from sfsim.network.legs import Leg, Motion
    from sfsim.schedules import Job, ReplayConfig

    mover = DeviceTimes("mover", 0, n=2, per_epoch=1, f=4.0, up_s=1.0, srv_f=0.5, srv_b=0.5, up_bytes=1.0)
    stay = DeviceTimes("stay", 0, n=2, per_epoch=1, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5)
    job = Job([mover, stay], [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    legs = [Leg(0.0, 0, 8.0, 1.0, 0.0), Leg(0.5, 1, 8.0, 1.0, 0.0)]
    job.network = sf.Network({0: Motion(legs)}, [[dataclasses.replace(mover, up_s=0.0), stay]] * 2)
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), None, "sync", 1.0, 2.0, 2)
    engine = Engine(trace=True)
    sf.run(engine, job, ReplayConfig(buffer=2, accumulate=1))
    engine.makespan = engine.run()
    starts = sorted((e.start, e.lane, e.mb) for e in engine.events if e.op == "F")
    assert starts == [(0.0, "mover", 0), (0.0, "stay", 0), (2.0, "a", 0), (5.0, "b", 0), (10.5, "mover", 1),
                      (10.5, "stay", 1), (12.5, "a", 1), (15.5, "b", 1)]
    sends = {n: sorted(e.start for e in engine.events if e.lane == f"backhaul:{n}" and e.op == "sync-send")
             for n in "ab"}
    assert sends == {"a": [4.0, 14.0], "b": [6.5, 17.0]}
    assert engine.sync.rounds == 2 and engine.makespan == 21.0



def test_a_device_coming_back_in_the_next_epoch_is_waited_for_there():
    """As above, with a third leg: mover goes back to a at 12 s, in epoch 2, while it forwards (10.5-14.5) on b, which
    held it at the epoch's start and started it. a keeps a place for it from the epoch's start (a leg on a after the
    last one a knows it took): stay's micro-batch is done at 14, but a waits for mover's (sent to a at 14.5, trained
    15.5-16.5, step to 17) before it joins the round; b ends at 14.5, when mover's send starts and it learns of the
    move (not at 10.5, when the simulator knows which leg that send will take). In epoch 1 a waited for mover's
    epoch to be sent likewise (4, not 3.5): a later leg brings it back."""
    from sfsim.engine.pool import DeviceTimes, ServerTimes
    from sfsim.network.legs import Leg, Motion
    from sfsim.schedules import Job, ReplayConfig

    mover = DeviceTimes("mover", 0, n=2, per_epoch=1, f=4.0, up_s=1.0, srv_f=0.5, srv_b=0.5, up_bytes=1.0)
    stay = DeviceTimes("stay", 0, n=2, per_epoch=1, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5)
    job = Job([mover, stay], [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    legs = [Leg(0.0, 0, 8.0, 1.0, 0.0), Leg(0.5, 1, 8.0, 1.0, 0.0), Leg(12.0, 0, 8.0, 1.0, 0.0)]
    motion = Motion(legs)
    job.network = sf.Network({0: motion}, [[dataclasses.replace(mover, up_s=0.0), stay]] * 2)
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), None, "sync", 1.0, 2.0, 2)
    engine = Engine(trace=True)
    sf.run(engine, job, ReplayConfig(buffer=2, accumulate=1))
    engine.makespan = engine.run()
    trained = sorted((e.start, e.lane, e.device, e.mb) for e in engine.events if e.op == "F" and e.lane in "ab")
    assert trained == [(2.0, "a", "stay", 0), (5.0, "b", "mover", 0), (12.5, "a", "stay", 1),
                       (15.5, "a", "mover", 1)]
    sends = {n: sorted(e.start for e in engine.events if e.lane == f"backhaul:{n}" and e.op == "sync-send")
             for n in "ab"}
    assert sends == {"a": [4.0, 17.0], "b": [6.5, 14.5]}
    assert motion.switched_at == [0, 1] and engine.sync.rounds == 2 and engine.makespan == 21.0


# -- real runs ------------------------------------------------------------------------------------------------
def _real(tiny_gpt2: str, tmp_path: Path, data: dict, samples: int) -> tuple[dict, object]:
    """A real 2-epoch SplitFrozen run of scenario ``data`` (fifo, every process emulated) and the simulator's
    prediction of it (its trace in ``tmp_path/run``)."""
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=path, train_samples=samples, epochs=2, emulate="all",
                 server_order="fifo"))
    vc = ValidateConfig(devices=str(path), model=tiny_gpt2, method="splitfrozen", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=samples, server_order="fifo", epochs=2)
    return m, predict(vc, m)


def _same(m: dict, sim, tmp_path: Path, rounds: int, order: bool = True) -> None:
    servers = sorted(m["servers"])
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(servers, rounds)
    assert sim.sync_rounds == rounds and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    assert m["samples_not_trained"] == sim.samples_not_trained
    if order:
        measured = read_chrome_trace(tmp_path / "run" / "trace.json")
        for server in servers:
            assert server_ops(measured, server) == server_ops(sim.events, server), server


def _fixture(name: str) -> dict:
    data = yaml.safe_load((FIXTURES / name).read_text())
    for d in data["devices"]:
        if "availability" in d:
            d["availability"]["file"] = str(FIXTURES / d["availability"]["file"])
    return data


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.usefixtures("one_torch_thread")
def test_a_handover_over_two_epochs_equals_a_real_run(tiny_gpt2, tmp_path, sync):
    """runtime_handover.yaml, 2 epochs: mover hands over from mec-a to mec-b at 0.8 s (after 2 of its 4 micro-batches)
    and is started on mec-b in epoch 2; mec-a no longer waits for it there (its leg on mec-a is over), so it
    drains while mec-b trains. Sync every 2: 6 rounds a server in both halves, the same order of steps and rounds;
    without training.sync one closing round an epoch (before, the simulator ran the epochs back to back)."""
    data = _fixture("runtime_handover.yaml")
    if not sync:
        del data["training"]["sync"]
    m, sim = _real(tiny_gpt2, tmp_path, data, 32)
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == [("mec-a", "mec-b", 2)]
    _same(m, sim, tmp_path, 6 if sync else 2)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_pause_over_two_epochs_equals_a_real_run(tiny_gpt2, tmp_path):
    """runtime_two_servers_churn.yaml (sync every 2), 2 epochs: phone-0 on mec-a pauses 0.5-1.5 s in epoch 1, and
    each server's epoch ends with its rounds in both halves: the same rounds, bytes and order on each server."""
    m, sim = _real(tiny_gpt2, tmp_path, _fixture("runtime_two_servers_churn.yaml"), 32)
    _same(m, sim, tmp_path, m["servers"]["mec-a"]["sync_rounds"])
    assert sim.sync_rounds >= 4


@pytest.mark.usefixtures("one_torch_thread")
def test_a_drop_on_three_servers_over_two_epochs_equals_a_real_run(tiny_gpt2, tmp_path):
    """A fresh fleet: 3 servers, one device each (one type), backhaul links and no training.sync; dev-c drops out
    for good at 1 s, during its second send of epoch 1 (its first ends at ~0.65 s), and sends nothing in epoch 2. Both halves: one
    closing round an epoch on every server (2), the same bytes, dev-c's untrained samples, the same order."""
    (tmp_path / "w.yaml").write_text("dev-c: [[0, 1.0]]\n")
    dev = {"flops": "20 MFLOPS", "memory": "4 GiB", "samples": 8,
           "uplink": {"bandwidth": "0.5 Mbps", "latency": "5 ms"}, "downlink": {"bandwidth": "2 Mbps", "latency": "5 ms"}}
    data = {"description": "3 servers, one device each, one drops",
            "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "epochs": 1, "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                         "accumulate": 1, "buffer": 2, "server_policy": "fifo"},
            "servers": [{"name": f"mec-{x}", "flops": "10 TFLOPS", "memory": "16 GiB",
                         "backhaul": {"bandwidth": "100 Mbps", "latency": "5 ms"}} for x in "abc"],
            "devices": [{"name": f"dev-{x}", "server": f"mec-{x}", **dev} for x in "abc"]}
    data["devices"][2]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "drop"}
    m, sim = _real(tiny_gpt2, tmp_path, data, 24)
    assert m["samples_not_trained"] == {"dev-c": 4 + 8}
    _same(m, sim, tmp_path, 2)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_device_never_online_over_two_epochs_with_sync_equals_a_real_run(tiny_gpt2, tmp_path):
    """runtime_two_servers_drop.yaml (sync every 2), 2 epochs: b-1 on mec-b is never online (drop) and trains nothing
    in either epoch; each epoch ends with its rounds in both halves: the same rounds, bytes and order."""
    m, sim = _real(tiny_gpt2, tmp_path, _fixture("runtime_two_servers_drop.yaml"), 32)
    assert m["samples_not_trained"] == {"b-1": 16}
    _same(m, sim, tmp_path, m["servers"]["mec-a"]["sync_rounds"])
    assert sim.sync_rounds >= 4


# -- the activation cache over several epochs ------------------------------------------------------------------
def _cached(sync: bool) -> Engine:
    """Servers a and b (step 0.5 s; backhaul 8 bit/s, 1 byte a round: 1 s each way); device A on a (2 micro-batches
    an epoch), B on b (1): 1 s forward and uplink, server F+B 1 s; activations cached: each sends epoch 1 only."""
    from sfsim.engine.pool import DeviceTimes, ServerTimes
    from sfsim.schedules import Job, ReplayConfig

    devices = [DeviceTimes("A", 0, n=4, per_epoch=2, sent=2, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5),
               DeviceTimes("B", 1, n=2, per_epoch=1, sent=1, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5)]
    job = Job(devices, [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), 2 if sync else None, "sync", 1.0, 1.0, 2)
    engine = Engine(trace=True)
    if sync:
        PoolRounds(engine, job.sync, job.servers)
    sf.run(engine, job, ReplayConfig(buffer=2, accumulate=1))
    engine.makespan = engine.run()
    return engine


def test_a_cached_epoch_starts_after_the_last_epochs_round():
    """No training.sync: epoch 1 as sent (a trains A's at 2 and 3.5, steps to 5; b trains B's at 2, steps to 3.5),
    the closing round 5-7; epoch 2 from the caches at 7 (no device forward, no send): a 7 and 8.5, b 7; the second
    closing round 10-12. Before, the cached epoch followed at once (a's replay at 5) and both rounds came after."""
    engine = _cached(False)
    f = sorted((e.start, e.lane, e.mb) for e in engine.events if e.op == "F")
    assert f == [(0.0, "A", 0), (0.0, "B", 0), (1.0, "A", 1), (2.0, "a", 0), (2.0, "b", 0), (3.5, "a", 1),
                 (7.0, "a", 2), (7.0, "b", 1), (8.5, "a", 3)]
    assert not [e for e in engine.events if e.op == "send" and e.start >= 7.0]
    assert engine.sync.rounds == 2 and engine.makespan == 12.0 and engine.sync.bytes == {"a": 4.0, "b": 4.0}


def test_a_cached_epoch_with_training_sync_ends_with_its_rounds():
    """every 2: epoch 1: a's 2nd step (5) opens a round that b answers from its drain (3.5); epoch 2 from the caches
    after it, with its own rounds: the first cached micro-batch starts when epoch 1's last average is back."""
    engine = _cached(True)
    back = sorted(e.start + e.dur for e in engine.events if e.lane == "backhaul:a" and e.op == "sync-recv")
    first = min(e.start for e in engine.events if e.op == "F" and e.mb == 2)
    assert first in back and first < max(back)
    assert not [e for e in engine.events if e.op == "send" and e.start >= first]


def cached_fleet(description: str, devices: list[dict], sync: bool) -> dict:
    """Two servers (mec-a, mec-b) on a backhaul, training.cache_activations over 2 epochs, sync every 2 (or none: a
    closing round an epoch); each of ``devices`` (name, server, count...) a 20 MFLOPS device with 8 samples (2
    micro-batches an epoch) on a 0.5 Mbps uplink."""
    dev = {"flops": "20 MFLOPS", "memory": "4 GiB", "samples": 8,
           "uplink": {"bandwidth": "0.5 Mbps", "latency": "5 ms"}, "downlink": {"bandwidth": "2 Mbps", "latency": "5 ms"}}
    data = {"description": description,
            "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "epochs": 2, "cache_activations": True, "accumulate": 1, "buffer": 2,
                         "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}, "server_policy": "fifo",
                         "sync": {"every": 2, "mode": "sync"}},
            "servers": [{"name": f"mec-{x}", "flops": "10 TFLOPS", "memory": "16 GiB",
                         "backhaul": {"bandwidth": "100 Mbps", "latency": "5 ms"}} for x in "ab"],
            "devices": [{**d, **dev} for d in devices]}
    if not sync:
        del data["training"]["sync"]
    return data


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.usefixtures("one_torch_thread")
def test_a_cached_second_epoch_on_two_servers_equals_a_real_run(tiny_gpt2, tmp_path, sync):
    """A fresh fleet: mec-a with 2 devices of one type (count: 2), mec-b with one, training.cache_activations, sync
    every 2 (or none: a closing round an epoch): epoch 2 trains from each server's cache (no device compute, no
    uplink) after epoch 1's rounds, and ends with its own. The same rounds, bytes and order of steps and rounds on
    each server in both halves (with sync: the runtime's cached epoch used to make one more round, its last step
    not saying it was the last)."""
    data = cached_fleet("2 servers, cached activations", [{"name": "pa", "count": 2, "server": "mec-a"},
                                                          {"name": "pb", "server": "mec-b"}], sync)
    m, sim = _real(tiny_gpt2, tmp_path, data, 24)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    second = min(e.start for e in measured if e.op == "epoch_end")
    assert not [e for e in measured if e.op in ("send", "F") and e.lane.startswith("link:p") and e.start > second]
    _same(m, sim, tmp_path, m["servers"]["mec-a"]["sync_rounds"] if sync else 2)
    assert sim.sync_rounds >= (3 if sync else 2)


@pytest.mark.parametrize("sets", [["training.sync=null"], ["training.cache_activations=true", "training.sync=null"],
                                  ["training.cache_activations=true"], []])
def test_simulate_no_longer_closes_splitfrozen_rounds_at_the_runs_end(sets):
    """``sfsim simulate`` over 2 epochs with a handover (runtime_handover.yaml) or the cache (runtime_two_servers.yaml):
    no note that SplitFrozen's rounds come at the run's end; without training.sync one closing round an epoch; the handover
    on the SimPy engine with the fast path's reason, the cache on the fast path with SimPy's figures (frozen19)."""
    from click.testing import CliRunner

    from sfsim.cli import main as cli
    from sfsim.scenario.overrides import load_scenario_with, parse_sets
    from sfsim.simulate import simulate

    fixture = FIXTURES / ("runtime_two_servers.yaml" if any("cache" in s for s in sets) else "runtime_handover.yaml")
    args = [a for s in [*sets, "training.epochs=2"] for a in ("--set", s)]
    res = CliRunner().invoke(cli, ["simulate", "--devices", str(fixture), "--schedule", "all", "--split", "1", *args])
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if "closes the backhaul rounds" in ln]
    assert notes == []  # every schedule closes each epoch as sfsim run does (SplitLoRA's handovers too: peers21)
    sc = load_scenario_with(fixture, parse_sets([*sets, "training.epochs=2"]))
    cached = any("cache" in s for s in sets)
    for name in ("splitfrozen", "splitfrozen-sequential"):
        r = simulate(sc, name, splits=1)
        assert r.engine == ("fast" if cached else "simpy") and r.sync_rounds >= 2
        if cached:  # the cache over several epochs on the fast path (frozen19): every figure SimPy's
            assert r.to_dict() == simulate(sc, name, splits=1, engine="simpy").to_dict()
        if "training.sync=null" in sets:
            assert r.sync_rounds == 2
            assert cached or r.engine_note == ("the closing backhaul round at each epoch's end over several epochs with "
                                               "moving devices is replayed by the SimPy engine only")
