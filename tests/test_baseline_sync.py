"""Backhaul sync of SplitLoRA, FedLoRA and CenLoRA in the simulator (sfsim.network.backhaul.Rounds), as the runtime
(trainer.transport.backhaul.ServerSync) runs it: which steps start a round, every server in every round, the drain and
closing rounds, barrier and async modes, bytes per round equal to what the runtime's servers send."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sfsim
from sfsim.cost.model import CostModel
from sfsim.outputs.trace import TraceEvent

FIXTURES = Path(__file__).parent / "fixtures"
LINK = {"uplink": {"bandwidth": "10 Gbps", "latency": "1 ms"}, "downlink": {"bandwidth": "10 Gbps", "latency": "1 ms"}}
BACKHAUL = {"bandwidth": "1 Gbps", "latency": "5 ms"}


def scenario(sync=None, samples=(48, 48), servers=("a", "b"), backhaul=BACKHAUL, **training):
    """Servers with one fast device each (``samples`` per device, device i on server i): 12 micro-batches of 4,
    a step every 4 (SplitLoRA, CenLoRA: 3 steps), FedLoRA rounds of 10 (2 rounds); SplitLoRA's cut is 3."""
    tr = {"micro_batch": 4, "accumulate": 4, "decompose_backward": False, "splitlora_cut": 3, **training}
    if sync:
        tr["sync"] = sync
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
        "training": tr,
        "servers": [{"name": s, "flops": "1 TFLOPS", "memory": "24 GiB", "backhaul": backhaul} for s in servers],
        "devices": [{"name": f"d{s}", "flops": "100 TFLOPS", "memory": "4 GiB", "samples": n, "server": s, **LINK}
                    for s, n in zip(servers, samples, strict=False)]})


def sizes(sc):
    """(SplitLoRA's round: server LoRA of blocks 3..11 + head; its closing round: + the clients' blocks 0..2;
    FedLoRA's and CenLoRA's round: every block + head), fp32 bytes."""
    cm = CostModel(sc)
    server = cm.adapter_bytes(range(3, 12), head=True)
    return server, server + cm.adapter_bytes(range(3), head=False), cm.adapter_bytes(range(12), head=True)


def backhaul_events(res) -> list[TraceEvent]:
    return [e for e in res.events if e.lane.startswith("backhaul:")]


# -- rounds and bytes, in closed form --------------------------------------------------------------------------
# (method, sync) -> rounds; the bytes per server follow: each round's payload up and down.
#  SplitLoRA: 3 steps. Joint (every 1): a gradient round before each step, a drain round (no server trains), and
#    the closing round (its client averages differ); every 2: a round after step 2, drain, closing.
#  FedLoRA: 2 FedAvg rounds. Joint: a round after each; the second is both servers' last, so no drain or closing.
#    every 2: one round, the last of both servers: nothing after it.
#  CenLoRA: 3 steps; joint: 3 rounds (the third the last of both); every 2: a round after step 2, drain, closing.
CASES = [("splitlora", {"every": 1}, 5, lambda p, c, f: 4 * p + c),
         ("splitlora", {"every": 2}, 3, lambda p, c, f: 2 * p + c),
         ("splitlora", {"every": 2, "mode": "async"}, 3, lambda p, c, f: 2 * p + c),
         ("fedlora", {"every": 1}, 2, lambda p, c, f: 2 * f),
         ("fedlora", {"every": 2}, 1, lambda p, c, f: f),
         ("cenlora", {"every": 1}, 3, lambda p, c, f: 3 * f),
         ("cenlora", {"every": 2, "mode": "async"}, 3, lambda p, c, f: 3 * f)]


@pytest.mark.parametrize("method, sync, rounds, sent", CASES)
def test_rounds_and_bytes_follow_the_runtimes_cadence(method, sync, rounds, sent):
    sc = scenario(sync)
    res = sfsim.simulate(sc, method, trace=True)
    each = sent(*sizes(sc))
    assert res.sync_rounds == rounds
    assert res.backhaul_bytes_by_server == {"a": 2 * each, "b": 2 * each}  # up and down
    sends = [e for e in backhaul_events(res) if e.op == "sync-send"]
    assert len(sends) == 2 * rounds and {e.lane for e in sends} == {"backhaul:a", "backhaul:b"}
    assert sum(e.dur for e in sends) == pytest.approx(2 * each * 8 / 1e9, rel=1e-12)
    assert res.engine == "simpy"  # a trace
    fast = sfsim.simulate(sc, method)  # on the fast path, the same figures (tests/test_fast_split_sync.py)
    assert (fast.engine, fast.engine_note) == ("fast", None)
    assert (fast.makespan_s, fast.sync_rounds, fast.backhaul_bytes_by_server) == (
        res.makespan_s, res.sync_rounds, res.backhaul_bytes_by_server)


def test_without_sync_each_epoch_ends_with_the_closing_round():
    """No training.sync: sfsim run still makes the servers one model at each epoch's end, one closing round over
    their backhaul links (SplitLoRA's with its clients' average), a round trip on the run; without a link nothing
    changes (the fast path, no round)."""
    p, c, f = sizes(scenario())
    for method, closing in (("splitlora", c), ("fedlora", f), ("cenlora", f)):
        res = sfsim.simulate(scenario(), method, trace=True)
        assert (res.sync_rounds, res.backhaul_bytes_by_server) == (1, {"a": 2 * closing, "b": 2 * closing})
        two = sfsim.simulate(scenario(epochs=2), method)
        assert two.sync_rounds == 2  # one per epoch, as sfsim run (FedLoRA's both after its run: it used to close once)
        assert two.backhaul_bytes_by_server == {"a": 4 * closing, "b": 4 * closing}
        assert two.engine_note is None  # on the fast path: tests/test_fast_sync.py, tests/test_fast_fedclose.py
        plain = sfsim.simulate(scenario(backhaul=None), method)
        assert (plain.sync_rounds, plain.backhaul_bytes_by_server, plain.engine) == (0, {}, "fast")
        trip = 2 * (closing * 8 / 1e9 + 5e-3)  # both servers send when they end the epoch, as fast as each other
        start = max(e.start for e in backhaul_events(res) if e.op == "sync-send")
        assert res.makespan_s == pytest.approx(max(plain.makespan_s, start + trip), rel=1e-9)
        if method == "cenlora":  # no device traffic: the round is the run's last thing
            assert res.makespan_s == pytest.approx(plain.makespan_s + trip, rel=1e-9)


def test_a_joint_round_is_a_barrier_before_each_step():
    """SplitLoRA, sync every step: each server steps when the average has come back (send, latency, receive,
    latency); the closing round is the last thing of the run."""
    sc = scenario({"every": 1})
    p, c, _ = sizes(sc)
    res = sfsim.simulate(sc, "splitlora", trace=True)
    ev = res.events
    for s in ("a", "b"):
        recvs = [e for e in ev if e.lane == f"backhaul:{s}" and e.op == "sync-recv"]
        sends = [e for e in ev if e.lane == f"backhaul:{s}" and e.op == "sync-send"]
        steps = [e for e in ev if e.lane == s and e.op == "step"]
        assert len(steps) == 3 and len(recvs) == 5
        for send, recv, step in zip(sends, recvs, steps, strict=False):  # the servers are alike: no one waits
            assert send.dur == pytest.approx(p * 8 / 1e9, rel=1e-12)
            assert recv.start == pytest.approx(send.start + send.dur + 5e-3, rel=1e-12)
            assert step.start == pytest.approx(recv.start + recv.dur + 5e-3, rel=1e-12)
        assert recvs[-1].dur == pytest.approx(c * 8 / 1e9, rel=1e-12)
        assert res.makespan_s == pytest.approx(recvs[-1].start + recvs[-1].dur + 5e-3, rel=1e-12)


def test_async_rounds_hold_nobody():
    """every 2, async: the servers' compute is the run without sync; only the epoch's last rounds come after."""
    plain = sfsim.simulate(scenario(backhaul=None), "splitlora", trace=True)
    asy = sfsim.simulate(scenario({"every": 2, "mode": "async"}), "splitlora", trace=True)
    barrier = sfsim.simulate(scenario({"every": 2}), "splitlora", trace=True)
    server = lambda res: sorted((e for e in res.events if e.lane in ("a", "b")),  # noqa: E731
                                key=lambda e: (e.lane, e.start, e.op))
    assert server(asy) == server(plain)
    assert plain.makespan_s < asy.makespan_s < barrier.makespan_s


def test_every_server_takes_part_in_every_round():
    """A server with half the data drains (rounds of zeros) while the other trains, and one without devices
    answers every round too: all three send and receive the same bytes."""
    sc = scenario({"every": 1}, samples=(48, 24), servers=("a", "b", "c"))
    p, c, f = sizes(sc)
    res = sfsim.simulate(sc, "splitlora", trace=True)
    assert res.sync_rounds == 3 + 2  # a's 3 steps, then drain and closing
    assert res.backhaul_bytes_by_server == dict.fromkeys("abc", 2 * (4 * p + c))
    # b's two steps pair with a's first two rounds, then b steps with the others on its drained round
    steps_b = [e for e in res.events if e.lane == "b" and e.op == "step"]
    steps_c = [e for e in res.events if e.lane == "c" and e.op == "step"]
    assert len(steps_b) == 3 and len(steps_c) == 3
    cen = sfsim.simulate(sc, "cenlora")
    assert cen.sync_rounds == 3 and cen.backhaul_bytes_by_server == dict.fromkeys("abc", 2 * 3 * f)


def test_each_epoch_ends_with_the_closing_rounds():
    sc = scenario({"every": 2}, epochs=2)
    p, c, _ = sizes(sc)
    res = sfsim.simulate(sc, "splitlora")
    # steps count on over the epochs: rounds after steps 2, 4 and 6; each epoch then drains and closes
    assert res.sync_rounds == 3 + 2 + 2
    assert res.backhaul_bytes_by_server["a"] == 2 * (5 * p + 2 * c)


def test_cenlora_closes_every_epoch():
    """2 epochs of 3 steps (counted on: 6); every 2: rounds after steps 2, 4 and 6, the last of both servers'
    epoch 2 (no closing round then); epoch 1 ends with a drain round and a closing round."""
    sc = scenario({"every": 2}, epochs=2)
    f = sizes(sc)[2]
    res = sfsim.simulate(sc, "cenlora", trace=True)
    assert res.sync_rounds == 3 + 2 and res.backhaul_bytes_by_server["b"] == 2 * 5 * f
    assert len([e for e in res.events if e.lane == "a" and e.op == "step"]) == 6


def test_a_slow_backhaul_is_on_the_critical_path_in_sync_mode_only():
    """FedLoRA, every 2: one round, after both servers' last FedAvg; in sync mode the devices download the average
    after it (a round trip later), in async mode at once while the round goes on."""
    slow = {"bandwidth": "10 Mbps", "latency": "20 ms"}
    sc, asy = scenario({"every": 2}, backhaul=slow), scenario({"every": 2, "mode": "async"}, backhaul=slow)
    f = sizes(sc)[2]
    trip = 2 * (f * 8 / 10e6 + 20e-3)
    plain = sfsim.simulate(scenario(backhaul=None), "fedlora").makespan_s
    assert sfsim.simulate(sc, "fedlora").makespan_s == pytest.approx(plain + trip, rel=1e-9)
    assert sfsim.simulate(asy, "fedlora").makespan_s == pytest.approx(max(plain, _last_fedavg(asy) + trip), rel=1e-9)


def _last_fedavg(sc) -> float:
    res = sfsim.simulate(sc, "fedlora", trace=True)
    return max(e.start + e.dur for e in res.events if e.op == "aggregate")


# -- codec time for SplitLoRA --------------------------------------------------------------------------------
def test_splitlora_pays_the_codec_both_ways(tmp_path):
    """int8 activations up, int8 gradients down: the client encodes and decodes, the server decodes and encodes,
    once per micro-batch each (the runtime's codec_encode/codec_decode phases)."""
    from tests.test_codecs import _profiled

    timed, untimed = _profiled(tmp_path, "int8", timed=True), _profiled(tmp_path, "int8", timed=False)
    cm = CostModel(timed)
    dev, srv = timed.devices[0], timed.servers[0]
    a = sfsim.simulate(timed, "splitlora", splits={"d": 2}, trace=True)
    b = sfsim.simulate(untimed, "splitlora", splits={"d": 2}, trace=True)
    n = a.micro_batches
    assert n == 1
    per_device = cm.codec_seconds(dev, "encode") + cm.codec_seconds(dev, "decode")
    per_server = cm.codec_seconds(srv, "encode") + cm.codec_seconds(srv, "decode")
    assert per_device == pytest.approx(3e-6 * 4 * 96, rel=1e-9) and per_server == pytest.approx(per_device, rel=1e-9)
    assert a.device_busy_s["d"] - b.device_busy_s["d"] == pytest.approx(n * per_device, rel=1e-9)
    assert a.server_busy_s["s"] - b.server_busy_s["s"] == pytest.approx(n * per_server, rel=1e-9)
    assert a.makespan_s - b.makespan_s == pytest.approx(n * (per_device + per_server), rel=1e-9)
    fast = sfsim.simulate(timed, "splitlora", splits={"d": 2})
    assert fast.engine == "fast" and fast.makespan_s == pytest.approx(a.makespan_s, rel=1e-12)


def test_validate_predicts_splitlora_codec_both_ways(tmp_path):
    from tests.test_codecs import _profiled
    from trainer.validate.stagerows import codec_predicted

    sc = _profiled(tmp_path, "int8", timed=True)
    events = [TraceEvent("d", "F", 0.0, 0.1, 0, "d"), TraceEvent("d", "F", 1.0, 0.2, 1, "d")]
    assert codec_predicted(sc, events, {"d": "s"}, "splitlora") == pytest.approx(2 * 2 * 3e-6 * 4 * 96, rel=1e-9)
    assert codec_predicted(sc, events, {"d": "s"}, "fedlora") == 0.0  # adapters travel in fp32, no codec


# -- the runtime sends what the simulator counts ---------------------------------------------------------------
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method, sync, drop", [("splitlora", {"every": 2, "mode": "async"}, False),
                                                ("fedlora", None, False), ("cenlora", {"every": 2, "mode": "sync"}, False),
                                                ("fedlora", None, True)])
def test_the_runtime_sends_the_simulators_bytes_and_rounds(tiny_gpt2, tmp_path, method, sync, drop):
    """2 servers x 2 devices on loopback (tiny GPT-2, real adapter tensors): each server's backhaul bytes and sync
    rounds in metrics.json equal the simulator's on the same run (``sfsim validate``'s scenario). ``drop``: mec-b's
    only device, b-1, is never online (runtime_two_servers_drop.yaml without b-0, sync every 1): its round ends
    empty, paired with mec-a's first of two rounds, and a drain round pairs with mec-a's second."""
    from tests.test_multiserver import TWO, _cfg, _with
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    devices = _without_b0(tmp_path, {"every": 1, "mode": "sync"}) if drop else TWO
    if sync:
        devices = _with(tmp_path, devices, lambda d: d["training"].update(sync=sync))
    kw = dict(train_samples=16, server_order="round-robin") if not drop else dict(server_order="proportional")
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=devices, method=method, emulate="links" if drop else "none", **kw))
    vc = ValidateConfig(devices=str(devices), model=tiny_gpt2, method=method, out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=kw.get("train_samples"),
                        server_order=kw["server_order"])
    sim = predict(vc, m)
    rounds = {k: v["sync_rounds"] for k, v in m["servers"].items()}
    assert rounds == dict.fromkeys(["mec-a", "mec-b"], sim.sync_rounds)
    assert m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    assert m["samples_not_trained"] == sim.samples_not_trained
    # splitlora: a round after step 2, drain, closing; fedlora: its one round is both servers' last (every 1), or
    # (every 2) no round until the drain and the closing one; cenlora: a round after step 2, the last of both
    assert sim.sync_rounds == {"splitlora": 3, "fedlora": 2 if drop else 1, "cenlora": 1}[method]


def _without_b0(tmp_path: Path, sync: dict) -> Path:
    """runtime_two_servers_drop.yaml without b-0 (mec-b's only device is b-1, never online), with ``sync``."""
    import yaml

    data = yaml.safe_load((FIXTURES / "runtime_two_servers_drop.yaml").read_text())
    data["devices"] = [d for d in data["devices"] if d["name"] != "b-0"]
    data["training"]["sync"] = sync
    for d in data["devices"]:
        if "availability" in d:
            d["availability"]["file"] = str(FIXTURES / d["availability"]["file"])
    path = tmp_path / f"without_b0_{sync['every']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("every, rounds", [(1, 1), (2, 2)])
def test_a_fedlora_round_whose_devices_all_left_ends_empty(tmp_path, every, rounds):
    """mec-b's only device (b-1) is never online: its round ends empty at once, the server's last (runtime: no
    upload, weight 0). Every 1: that round pairs with mec-a's one round, the last of both; every 2: neither
    server's first round is a sync round, so a drain round and the closing round follow."""
    sc = sfsim.load_scenario(str(_without_b0(tmp_path, {"every": every, "mode": "sync"})))
    res = sfsim.simulate(sc, "fedlora")
    f = CostModel(sc).adapter_bytes(range(12), head=True)
    assert res.samples_not_trained == {"b-1": 8}
    assert res.sync_rounds == rounds and res.backhaul_bytes_by_server == dict.fromkeys(["mec-a", "mec-b"], 2 * rounds * f)


# -- every method's closing rounds, and SplitFrozen's rounds with a server done early -----------------------
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method, sync, rounds, epochs", [("splitfrozen", None, 1, 1), ("splitlora", None, 1, 1),
                                                          ("fedlora", None, 1, 1), ("cenlora", None, 1, 1),
                                                          ("cenlora", None, 2, 2), ("fedlora", None, 2, 2),
                                                          ("splitfrozen", {"every": 2, "mode": "sync"}, 3, 1),
                                                          ("splitfrozen", {"every": 1, "mode": "sync"}, 4, 1)])
def test_the_runtime_closes_as_the_simulator(tiny_gpt2, tmp_path, method, sync, rounds, epochs):
    """2 servers on loopback, each server's backhaul bytes and rounds in metrics.json equal the simulator's.
    Without training.sync: one closing round per epoch (no round of zeros before it). With sync, mec-b has one device
    (b-1 removed: 2 steps against mec-a's 4) and answers mec-a's later rounds with zeros, its bytes counting:
    every 2, a round after step 2, then mec-b's round of zeros pairs with mec-a's last and a closing round
    follows; every 1, gradients averaged before each of mec-a's 4 steps, mec-b stepping with zeros."""
    from tests.test_multiserver import TWO, _cfg, _with
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def edit(d):
        d["training"]["sync"] = sync
        if sync is not None:
            d["devices"] = [x for x in d["devices"] if x["name"] != "b-1"]
    devices = _with(tmp_path, TWO, edit)
    samples = 16 if sync is None else 24
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=devices, method=method, train_samples=samples, epochs=epochs))
    vc = ValidateConfig(devices=str(devices), model=tiny_gpt2, method=method, out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=samples, server_order="round-robin",
                        epochs=epochs)
    sim = predict(vc, m)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], rounds)
    assert sim.sync_rounds == rounds
    assert m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server


@pytest.mark.slow  # ~25 s each: a validate run (profile, runtime, simulator)
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method", ["splitlora", "fedlora"])
def test_a_handover_without_sync_ends_with_the_closing_round_alone(tiny_gpt2, tmp_path, method):
    """tests/test_handover.py's run without training.sync: mec-b waits for its visitor answering no round (there is
    none before the closing one), then both servers close the epoch with one round and hold one model."""
    import json

    import torch
    import yaml
    from click.testing import CliRunner

    from sfsim.cli import main
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_handover import _adapter, _scenario
    from trainer.validate.compare import ValidateConfig, predict

    path = _scenario(tmp_path, method)
    data = yaml.safe_load(path.read_text())
    data["training"].pop("sync")
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(path), "--model", tiny_gpt2, "--method", method,
                                    "--split", "1", "--max-len", "48", "--train-samples", "32", "--data-dir",
                                    str(FIXTURES / "data"), "--out", str(out), "--server-order", "fifo"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "run" / "metrics.json").read_text())
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == {"mec-a": 1, "mec-b": 1}
    assert m["samples_not_trained"] == {"stay-b": 8}
    a, b = _adapter(out / "run"), _adapter(out / "run" / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the simulator makes the same closing round (it used to leave it out with handovers): rounds, bytes, and in both
    # timelines each server sends its part once it has nothing left to do (after its last op), the round's
    # transfers taking the same seconds (the sync row)
    vc = ValidateConfig(devices=str(path), model=tiny_gpt2, method=method, out=str(tmp_path / "v"), split=1,
                        max_len=48, data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo")
    sim = predict(vc, m)
    assert sim.sync_rounds == 1 and sim.backhaul_bytes_by_server == m["backhaul_bytes_by_server"]
    measured = read_chrome_trace(out / "run" / "trace.json")
    for events in (measured, sim.events):
        for server in ("mec-a", "mec-b"):
            (send,) = [e for e in events if e.lane == f"backhaul:{server}" and e.op == "sync-send"]
            last = max((e.start + e.dur for e in events if e.lane == server), default=0.0)
            assert send.start >= last - 1e-6
    rep = json.loads((out / "report.json").read_text())
    assert rep["stages"]["sync"]["predicted_s"] == pytest.approx(rep["stages"]["sync"]["measured_s"], rel=1e-6)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.slow  # ~25 s: a validate run (profile, runtime, simulator)
@pytest.mark.parametrize("method, legs, rounds", [("splitlora", None, 4)])
def test_a_server_waiting_for_its_visitor_answers_as_many_rounds_as_the_simulator(tiny_gpt2, tmp_path, method, legs,
                                                                                   rounds):
    """tests/test_handover.py's run with its ``sync: {every: 2, mode: sync}`` (stay-b never online): mec-b waits for
    mover while mec-a trains: rounds and bytes equal the simulator's (``ServerRounds.idle``). (A -> B -> A and
    A -> B -> A -> B, where both servers wait for mover at times, do not: see tests/test_runtime_peer_fields.py's
    quiet-round test for the rule.)"""
    import json

    import torch
    import yaml
    from click.testing import CliRunner

    from sfsim.cli import main
    from tests.test_handover import _adapter, _scenario
    from trainer.validate.compare import ValidateConfig, predict

    path = _scenario(tmp_path, method)
    if legs:
        data = yaml.safe_load(path.read_text())
        data["devices"][0]["handover"] = [{"at": f"{at} s", "to": to} for to, at in legs]
        path.write_text(yaml.safe_dump(data))
    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(path), "--model", tiny_gpt2, "--method", method,
                                    "--split", "1", "--max-len", "48", "--train-samples", "32", "--data-dir",
                                    str(FIXTURES / "data"), "--out", str(out), "--server-order", "fifo"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "run" / "metrics.json").read_text())
    vc = ValidateConfig(devices=str(path), model=tiny_gpt2, method=method, out=str(tmp_path / "v"), split=1,
                        max_len=48, data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo")
    sim = predict(vc, m)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], sim.sync_rounds)
    assert sim.sync_rounds == rounds and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    a, b = _adapter(out / "run"), _adapter(out / "run" / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
