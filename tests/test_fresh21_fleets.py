"""Issue 21's claims on fleets nobody tuned on (tests/fixtures/fresh21), each a real run on loopback (one process per
server and per device, ``--emulate all``, a tiny random GPT-2) checked against ``simulate`` on the same scenario:

* every device trains on the server the scenario assigns (the server lanes of trace.json);
* every server holds bit-identical adapters after the last backhaul round, and as many rounds as simulated;
* the samples left untrained per device (pause/drop churn) and the handovers are the simulator's;
* each activation message carries the simulator's bytes (:meth:`sfsim.cost.model.CostModel.uplink_bytes` for the
  micro-batch's shape, in the run's codec);
* with ``training.cache_activations`` the later epochs send nothing.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from sfsim.cost.model import CostModel
from sfsim.methods import METHODS
from sfsim.scenario.config import load_scenario
from sfsim.scenario.overrides import load_scenario_with
from sfsim.simulate import simulate
from tests.test_multiserver import _adapter

FIXTURES = Path(__file__).parent / "fixtures"
FRESH = FIXTURES / "fresh21"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _slow_but(first: str, params: list[str]) -> list:
    """``params`` with every one but ``first`` marked slow: a run takes 4-25 s on the 2 loaded cores (load 6-10), so
    the default run keeps one per claim (SplitFrozen's, the cheapest), ``-m slow`` the other methods."""
    return [p if p == first else pytest.param(p, marks=pytest.mark.slow) for p in params]


def _scenario(tmp_path: Path, name: str, model: str, edit=None) -> Path:
    """A copy of the fixture that costs the model the run loads (the tiny GPT-2 at 48 tokens), as the run's note
    asks, so that the run's emulated compute and the simulator's follow the same model; ``edit(data)`` changes it."""
    data = yaml.safe_load((FRESH / name).read_text())
    data["model"].update(name=model, seq_len=48)
    if edit is not None:
        edit(data)
    for d in data["devices"]:
        if "availability" in d:
            d["availability"]["file"] = str(FRESH / d["availability"]["file"])
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(out: Path, scenario: Path, method: str, **over) -> dict:
    from trainer.run.launch import run
    from trainer.run.runner import RunConfig

    sc = load_scenario(str(scenario))
    kw = dict(devices=str(scenario), model=sc.model.name, task="sst2", method=method, partition="iid",
              train_samples=sum(d.samples for d in sc.devices), eval_samples=8, max_len=48, lr=0.01,
              data_dir=str(FIXTURES / "data"), out=str(out), progress=False, launch="local", peer_timeout=30.0,
              server_order="fifo", count_flops=False, emulate="all")
    kw.update(over)
    shutil.rmtree(out, ignore_errors=True)
    return run(RunConfig(**kw))


def _server_forwards(out: Path, servers: list[str]) -> dict[str, Counter]:
    """device -> Counter(server -> micro-batches of the device the server trained) from trace.json: the server's
    backward passes, ``B`` or (sequential SplitFrozen) ``BW``."""
    got: dict[str, Counter] = {}
    for e in json.loads((out / "trace.json").read_text())["traceEvents"]:
        if e.get("ph") == "X" and e["name"] in ("B", "BW") and e["args"]["lane"] in servers:
            got.setdefault(e["args"]["device"], Counter())[e["args"]["lane"]] += 1
    return got


def _identical_servers(out: Path, servers: list[str]) -> None:
    """Server 0 saved the run's adapter; every other server's copy equals it bit for bit."""
    a = _adapter(out)
    for name in servers[1:]:
        b = _adapter(out / "servers" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def _message_bytes(scenario: Path, shapes: list, codec: str | None = None) -> int:
    """The simulator's bytes for these activation messages: CostModel.uplink_bytes at each (B, T), cut 1."""
    over = [("training.wire_dtype", codec)] if codec else []
    total = 0.0
    for b, t in shapes:
        sc = load_scenario_with(scenario, over + [("model.seq_len", t), ("training.micro_batch", b)])
        total += CostModel(sc).uplink_bytes(1)
    return int(total)


def _common(m: dict, out: Path, scenario: Path, method: str):
    """The claims every fleet shares: the simulator's assignment, sync rounds, untrained samples, identical servers;
    returns the simulation."""
    sc = load_scenario(str(scenario))
    sim = simulate(sc, method, policy="fifo")
    servers = [s.name for s in sc.servers]
    assert m["assignment"] == sim.assignment
    assert m["lost_devices"] == {} and m["missing_reports"] == []
    assert m["samples_not_trained"] == sim.samples_not_trained
    assert {s["sync_rounds"] for s in m["servers"].values()} == {sim.sync_rounds}
    _identical_servers(out, servers)
    return sim


# -- 3 servers, async sync every 2, a count-1 type beside a count-3 type --------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_three_servers_async_every_method(tiny_gpt2, tmp_path, method):
    out, scen = tmp_path / "run", _scenario(tmp_path, "three_async.yaml", tiny_gpt2)
    m = _run(out, scen, method)
    _common(m, out, scen, method)
    assert m["assignment"] == {"solo": "s-c", "trio-0": "s-a", "trio-1": "s-b", "trio-2": "s-a"}
    assert {k: v["devices"] for k, v in m["servers"].items()} == \
        {"s-a": ["trio-0", "trio-2"], "s-b": ["trio-1"], "s-c": ["solo"]}
    if method in ("splitfrozen", "splitfrozen-sequential", "splitlora"):
        assert _server_forwards(out, ["s-a", "s-b", "s-c"]) == \
            {"solo": {"s-c": 4}, "trio-0": {"s-a": 2}, "trio-1": {"s-b": 2}, "trio-2": {"s-a": 2}}
    if method.startswith("splitfrozen"):
        for dev, shapes in m["microbatch_shapes"].items():
            assert m["uplink_bytes_by_device"][dev] == _message_bytes(scen, shapes), dev


# -- uneven pins: 3 devices on east, 1 on west ---------------------------------------------------------------------
@pytest.mark.parametrize("method", _slow_but("splitfrozen", ["splitfrozen", "splitlora", "fedlora", "cenlora"]))
def test_uneven_pins_train_where_pinned(tiny_gpt2, tmp_path, method):
    out, scen = tmp_path / "run", _scenario(tmp_path, "uneven_pins.yaml", tiny_gpt2)
    m = _run(out, scen, method)
    _common(m, out, scen, method)
    assert {k: v["devices"] for k, v in m["servers"].items()} == {"east": ["e-1", "e-2", "e-3"], "west": ["w-1"]}
    if method.startswith("split"):
        assert _server_forwards(out, ["east", "west"]) == \
            {"e-1": {"east": 1}, "e-2": {"east": 1}, "e-3": {"east": 1}, "w-1": {"west": 3}}
    if method == "splitlora":  # up: activations + mask + labels + adapter; down: gradients + adapter
        for dev, shapes in m["microbatch_shapes"].items():
            assert m["uplink_bytes_by_device"][dev] - m["downlink_bytes_by_device"][dev] == \
                sum(b * t + 8 * b for b, t in shapes)


# -- a handover in the middle of a send ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", _slow_but("splitfrozen", ["splitfrozen", "splitlora", "fedlora"]))
def test_a_handover_mid_send_moves_what_the_simulator_moves(tiny_gpt2, tmp_path, method):
    """At 0.93 s (SplitLoRA: 1.12 s, its first send is later), in the middle of a send of the walker."""

    def at(data: dict) -> None:
        data["devices"][0]["handover"][0]["at"] = "1.12 s"

    out = tmp_path / "run"
    scen = _scenario(tmp_path, "handover_midsend.yaml", tiny_gpt2, at if method == "splitlora" else None)
    m = _run(out, scen, method)
    sim = _common(m, out, scen, method)
    keys = ("device", "from", "to", "at_s", "sent_before")
    assert [tuple(h[k] for k in keys) for h in m["handovers"]] == [tuple(h[k] for k in keys) for h in sim.handovers]
    (hand,) = sim.handovers
    # the send under way at the handover ends on the old server; the later ones go to the new one
    assert hand["sent_before"] == {"splitfrozen": 2, "splitlora": 1, "fedlora": 0}[method]
    if method != "fedlora":
        got = _server_forwards(out, ["north", "south"])
        assert got["walker"] == Counter({"north": hand["sent_before"], "south": 4 - hand["sent_before"]}) - Counter()
        assert (got["n-stay"], got["s-stay"]) == ({"north": 2}, {"south": 2})


# -- pause churn on one server, drop churn on the other ------------------------------------------------------------
@pytest.mark.parametrize("method", _slow_but("splitfrozen", list(METHODS)))
def test_pause_on_one_server_and_drop_on_the_other_leave_the_simulators_samples(tiny_gpt2, tmp_path, method):
    out, scen = tmp_path / "run", _scenario(tmp_path, "churn_split.yaml", tiny_gpt2)
    m = _run(out, scen, method)
    sim = _common(m, out, scen, method)
    assert sim.samples_not_trained["napper"] == 0  # a pause loses nothing
    if method.startswith("split"):
        got = _server_forwards(out, ["left", "right"])
        trained = 8 - sim.samples_not_trained["leaver"]
        assert got.get("leaver", Counter()) == (Counter({"right": trained // 4}) - Counter())
        assert (got["napper"], got["l-steady"], got["r-steady"]) == ({"left": 2}, {"left": 2}, {"right": 2})


# -- codecs on a slow uplink ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", [None, pytest.param("int8", marks=pytest.mark.slow),
                                   pytest.param("fp16", marks=pytest.mark.slow)])
def test_each_message_carries_the_simulators_bytes_in_the_runs_codec(tiny_gpt2, tmp_path, codec):
    """The scenario's int4, or a per-run override: each activation message is CostModel.uplink_bytes at its shape."""
    out, scen = tmp_path / "run", _scenario(tmp_path, "codec_slowlink.yaml", tiny_gpt2)
    m = _run(out, scen, "splitfrozen", **({"wire_dtype": codec} if codec else {}))
    _common(m, out, scen, "splitfrozen")
    for dev, shapes in m["microbatch_shapes"].items():
        assert m["uplink_bytes_by_device"][dev] == _message_bytes(scen, shapes, codec), dev
    assert _server_forwards(out, ["cell-1", "cell-2"]) == \
        {"far-0": {"cell-1": 2}, "far-1": {"cell-1": 2}, "near": {"cell-2": 4}}
    forwards = Counter(e["args"]["lane"] for e in json.loads((out / "trace.json").read_text())["traceEvents"]
                       if e.get("ph") == "X" and e["name"] == "F" and e["args"]["lane"] in ("cell-1", "cell-2"))
    assert forwards == {"cell-1": 4, "cell-2": 4}  # one F a micro-batch: the codec's decode is its own op


# -- the activation cache over 3 epochs, a server that holds no device at first -------------------------------------
def test_cached_epochs_send_nothing_and_train_where_cached(tiny_gpt2, tmp_path):
    """roamer hands over to the idle spare mid-send in epoch 1: its first 2 micro-batches are cached on busy, the
    other 2 on spare; epochs 2 and 3 send nothing, compute nothing on a device, and train each cached micro-batch
    on the server that holds it."""
    out, scen = tmp_path / "run", _scenario(tmp_path, "cache_idle_server.yaml", tiny_gpt2)
    m = _run(out, scen, "splitfrozen")
    sim = _common(m, out, scen, "splitfrozen")
    keys = ("device", "from", "to", "at_s", "sent_before")
    assert [tuple(h[k] for k in keys) for h in m["handovers"]] == [tuple(h[k] for k in keys) for h in sim.handovers] \
        == [("roamer", "busy", "spare", 0.47, 2)]
    events = [e for e in json.loads((out / "trace.json").read_text())["traceEvents"] if e.get("ph") == "X"]
    per_epoch = {"roamer": 4, "homebody-0": 2, "homebody-1": 2}
    for dev, n in per_epoch.items():  # one epoch of sends and device forwards, the first
        assert sum(e["args"]["lane"] == f"link:{dev}" and e["name"] == "send" for e in events) == n, dev
        assert sum(e["args"]["lane"] == dev and e["name"] == "F" for e in events) == n, dev
        assert m["uplink_bytes_by_device"][dev] == _message_bytes(scen, m["microbatch_shapes"][dev]), dev
        assert len(m["microbatch_shapes"][dev]) == n
    assert _server_forwards(out, ["busy", "spare"]) == {"roamer": {"busy": 6, "spare": 6},
                                                        "homebody-0": {"busy": 6}, "homebody-1": {"busy": 6}}
    assert [s["steps"] for s in m["servers"].values()] == [18, 6]
