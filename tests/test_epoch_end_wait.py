"""The wait between epochs (evaluation, adapter, checkpoint: sfsim.cost.epochend), predicted and replayed.

``training.eval_samples`` says how many dev rows ``sfsim run`` evaluates after each epoch (its default too); the
simulator then waits for the evaluation's forward passes and the server profile's ``save`` between the epochs,
as the runtime's server does before it sends the next epoch's ``start``. Fresh scenarios: one server and a
``count: 1`` device type, two servers without a backhaul, two servers with ``training.sync``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import sfsim
from sfsim.cost.epochend import EVAL_BATCH, epoch_end_seconds, eval_seconds, save_seconds
from sfsim.cost.model import CostModel
from sfsim.scenario.config import scenario_from_dict

FLEET = {
    "description": "epoch-end wait: a camera type and a count: 1 device",
    "model": {"name": "gpt2", "seq_len": 64, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "epochs": 3, "buffer": 2, "eval_samples": 100},
    "servers": [{"name": "edge", "flops": "2 TFLOPS", "memory": "16 GiB"}],
    "devices": [
        {"name": "cam", "count": 3, "flops": "50 GFLOPS", "memory": "4 GiB", "samples": 24,
         "uplink": {"bandwidth": "20 Mbps", "latency": "5 ms"}, "downlink": {"bandwidth": "20 Mbps", "latency": "5 ms"}},
        {"name": "solo", "count": 1, "flops": "20 GFLOPS", "memory": "4 GiB", "samples": 16,
         "uplink": {"bandwidth": "5 Mbps", "latency": "10 ms"}, "downlink": {"bandwidth": "5 Mbps", "latency": "10 ms"}},
    ],
}


def fleet(**training) -> dict:
    data = yaml.safe_load(yaml.safe_dump(FLEET))
    data["training"].update(training)
    for k, v in list(data["training"].items()):
        if v is None:
            del data["training"][k]
    return data


def two_servers(sync: dict | None = None, **training) -> dict:
    """FLEET on two servers (cam on edge, solo on far), optionally with a backhaul and ``training.sync``."""
    data = fleet(**training)
    data["servers"].append({"name": "far", "flops": "1 TFLOPS", "memory": "16 GiB"})
    data["devices"][0]["server"], data["devices"][1]["server"] = "edge", "far"
    if sync is not None:
        for s in data["servers"]:
            s["backhaul"] = {"bandwidth": "1 Gbps", "latency": "2 ms"}
        data["training"]["sync"] = sync
    return data


def sc_of(data: dict):
    return scenario_from_dict(data, source="fresh.yaml")


def test_eval_seconds_is_the_whole_models_forward_per_row():
    sc = sc_of(fleet())
    cm = CostModel(sc)
    srv = sc.servers[0]
    one = cm.eval_forward().f / srv.flops / sc.training.micro_batch  # seconds per row at the nominal rate
    assert eval_seconds(cm, srv, 100) == pytest.approx(100 * one, rel=1e-12)
    assert eval_seconds(cm, srv, 0) == 0.0
    assert cm.eval_forward().f == pytest.approx(sum(cm.lf.F), rel=1e-12)  # every layer, forward only
    assert cm.eval_forward().b == cm.eval_forward().w == 0.0
    assert save_seconds(srv) == 0.0  # a flops-rated server: nothing measured to price the writes
    assert EVAL_BATCH == 64


def test_save_comes_from_the_server_profile(tmp_path: Path):
    prof = {"model": "gpt2", "micro_batch": 4, "seq_len": 64, "save": "12 ms",
            "forward": {"embed": "1 ms", "blocks": "2 ms", "norm": 0, "head": "0.5 ms"}}
    (tmp_path / "srv.yaml").write_text(yaml.safe_dump(prof))
    data = fleet()
    data["servers"][0] = {"name": "edge", "latency_profile": str(tmp_path / "srv.yaml"), "memory": "16 GiB"}
    sc = sc_of(data)
    assert save_seconds(sc.servers[0]) == pytest.approx(0.012)
    # the profile's frozen forward: embed + 12 blocks + head per micro-batch of 4 rows, 100 rows
    wait = epoch_end_seconds(sc)["edge"]
    assert wait == pytest.approx(0.012 + 100 / 4 * (1e-3 + 12 * 2e-3 + 0.5e-3), rel=1e-9)


def test_the_profiles_eval_costs_and_the_report_round_trip_are_in_the_wait(tmp_path: Path):
    """The profile's eval: split + tokenise_row per row + the first evaluation's extra spread over the E - 1 waits;
    the save message down to the server's devices: the longest downlink latency of those the assignment gives it."""
    prof = {"model": "gpt2", "micro_batch": 4, "seq_len": 64, "save": "12 ms",
            "eval": {"split": "0.5 ms", "tokenise_row": "0.02 ms", "first": "30 ms"},
            "forward": {"embed": "1 ms", "blocks": "2 ms", "norm": 0, "head": "0.5 ms"}}
    (tmp_path / "srv.yaml").write_text(yaml.safe_dump(prof))
    data = fleet()  # 3 epochs, 100 rows
    data["servers"][0] = {"name": "edge", "latency_profile": str(tmp_path / "srv.yaml"), "memory": "16 GiB"}
    sc = sc_of(data)
    forward = 100 / 4 * (1e-3 + 12 * 2e-3 + 0.5e-3)
    assert epoch_end_seconds(sc)["edge"] == pytest.approx(0.012 + forward + 0.5e-3 + 100 * 0.02e-3 + 0.030 / 2,
                                                          rel=1e-12)
    every = {d.name: "edge" for d in sc.devices}
    assert epoch_end_seconds(sc, assignment=every)["edge"] - epoch_end_seconds(sc)["edge"] == pytest.approx(
        0.010, rel=1e-9)  # solo's 10 ms downlink, the cams' 5 ms
    cams = {d.name: "edge" for d in sc.devices if d.name.startswith("cam")}
    assert epoch_end_seconds(sc, assignment=cams)["edge"] - epoch_end_seconds(sc)["edge"] == pytest.approx(
        0.005, rel=1e-9)
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    assert [e.dur for e in _waits(res)] == [epoch_end_seconds(sc, assignment=every)["edge"]] * 2


@pytest.mark.parametrize(("training", "why"), [({"eval_samples": None}, "unset"), ({"epochs": 1}, "one epoch")])
def test_no_wait_without_eval_samples_or_with_one_epoch(training, why):
    assert epoch_end_seconds(sc_of(fleet(**training))) == {}, why


def _waits(res) -> list:
    return [e for e in res.events if e.op == "epoch_end"]


def test_the_next_epoch_waits_for_it_on_one_server():
    """3 epochs: two waits on lane epoch-end:edge, each right after the epoch's last server op; no device forwards
    a micro-batch of the next epoch before the wait ends; more rows move the run by exactly the waits' growth."""
    sc = sc_of(fleet())
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    wait = epoch_end_seconds(sc, assignment=res.assignment)["edge"]
    assert res.epoch_end_s == {"edge": wait} and wait > 0
    waits = _waits(res)
    assert [(e.lane, e.dur) for e in waits] == [("epoch-end:edge", wait)] * 2
    per_epoch = {d.name: d.samples // 4 for d in sc.devices}
    for k, w in enumerate(waits):
        before = [e for e in res.events if e.lane == "edge" and e.start < w.start]
        assert max(e.start + e.dur for e in before) == pytest.approx(w.start, abs=1e-12)
        nxt = [e for e in res.events if e.op == "F" and e.lane in per_epoch and e.mb // per_epoch[e.lane] == k + 1]
        assert min(e.start for e in nxt) >= w.start + w.dur - 1e-12
    more = sfsim.simulate(sc_of(fleet(eval_samples=300)), "splitfrozen", splits=2)
    grow = epoch_end_seconds(sc_of(fleet(eval_samples=300)), assignment=res.assignment)["edge"] - wait
    assert more.makespan_s - res.makespan_s == pytest.approx(2 * grow, rel=1e-9)
    assert more.engine == "fast"  # the wait without backhaul rounds: tests/test_fast_epoch_end_alone.py


def test_without_the_key_the_figures_are_the_fast_paths():
    """No training.eval_samples: no wait, the fast path replays the run, and the SimPy engine gives its figures."""
    sc = sc_of(fleet(eval_samples=None))
    fast, slow = (sfsim.simulate(sc, "splitfrozen", splits=2, engine=e) for e in ("auto", "simpy"))
    assert fast.engine == "fast" and fast.epoch_end_s == {} and "epoch_end_s" not in fast.to_dict()
    assert fast.makespan_s == pytest.approx(slow.makespan_s, rel=1e-9)


def test_each_server_waits_after_its_own_epoch():
    """Two servers without a backhaul: each evaluates at its own epoch's end, with its own rate."""
    sc = sc_of(two_servers())
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    waits = epoch_end_seconds(sc, assignment=res.assignment)
    # half the FLOP rate, no profile; far's device's downlink latency (its save message) is twice edge's too
    assert waits["far"] == pytest.approx(2 * waits["edge"], rel=1e-12)
    assert sorted((e.lane, e.dur) for e in _waits(res)) == sorted(
        [("epoch-end:edge", waits["edge"])] * 2 + [("epoch-end:far", waits["far"])] * 2)


def test_with_sync_the_wait_follows_the_closing_round():
    """training.sync: the wait begins when the epoch's backhaul rounds are over, on every server."""
    sc = sc_of(two_servers(sync={"every": 2, "mode": "sync"}, epochs=2))
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    waits = _waits(res)
    assert len(waits) == 2 and res.epoch_end_s == epoch_end_seconds(sc, assignment=res.assignment)
    sync_end = max(e.start + e.dur for e in res.events if e.lane.startswith("backhaul:") and e.start < waits[0].start)
    assert waits[0].start == waits[1].start  # the closing round ends on both servers at once (sync mode)
    assert 0 <= waits[0].start - sync_end <= 2e-3 + 1e-9  # its last transfer's end + the backhaul's 2 ms latency
    base = sfsim.simulate(sc_of(two_servers(sync={"every": 2, "mode": "sync"}, epochs=2, eval_samples=None)),
                          "splitfrozen", splits=2)
    assert res.sync_rounds == base.sync_rounds and res.makespan_s > base.makespan_s


def test_simulate_notes_where_the_wait_is_left_out(tmp_path: Path):
    from sfsim.cli import main

    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump(fleet(eval_samples=None)))
    out = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--split", "2"]).output
    assert "the wait between epochs (sfsim run's evaluation on every dev row" in out
    path.write_text(yaml.safe_dump(fleet()))
    out = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--split", "2", "--schedule", "all"]).output
    assert "fedlora" in out.split("the wait between epochs (evaluation, adapter, checkpoint) is left out")[0]
    assert "splitfrozen," not in out.split("is left out")[0].split("note:")[-1]


@pytest.mark.usefixtures("one_torch_thread")
def test_sfsim_run_evaluates_the_scenarios_rows_unless_told(tiny_gpt2, tmp_path: Path):
    """training.eval_samples is sfsim run's default too (the two halves never differ silently); --eval-samples wins."""
    from tests.test_multiserver import FIXTURES, _cfg
    from trainer.run.launch import run

    data = yaml.safe_load((FIXTURES / "runtime_tiny.yaml").read_text())
    data["training"]["eval_samples"] = 5
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    common = dict(devices=path, launch="inprocess", train_samples=16, server_order="fifo")
    assert run(_cfg(tiny_gpt2, tmp_path / "a", eval_samples=None, **common))["eval_samples"] == 5
    assert run(_cfg(tiny_gpt2, tmp_path / "b", eval_samples=3, **common))["eval_samples"] == 3


def test_a_cached_epoch_is_replayed_after_the_wait():
    """training.cache_activations: the devices send epoch 1 only; the server waits at its end, then replays the
    cached epoch 2 (its first op starts as the wait ends, no device forwards again); more rows move the run by
    exactly the wait's growth."""
    sc = sc_of(fleet(epochs=2, cache_activations=True))
    res = sfsim.simulate(sc, "splitfrozen", splits=2, trace=True)
    (w,) = _waits(res)
    assert res.epoch_end_s == {"edge": w.dur} == epoch_end_seconds(sc, assignment=res.assignment)
    assert max(e.start + e.dur for e in res.events if e.lane == "edge" and e.start < w.start) == pytest.approx(
        w.start, abs=1e-12)
    assert min(e.start for e in res.events if e.lane == "edge" and e.start >= w.start) == pytest.approx(
        w.start + w.dur, abs=1e-12)
    assert not [e for e in res.events if e.op == "F" and e.lane in {d.name for d in sc.devices} and e.start > w.start]
    more = sfsim.simulate(sc_of(fleet(epochs=2, cache_activations=True, eval_samples=300)), "splitfrozen", splits=2)
    grow = epoch_end_seconds(sc_of(fleet(epochs=2, eval_samples=300)), assignment=res.assignment)["edge"] - w.dur
    assert more.makespan_s - res.makespan_s == pytest.approx(grow, rel=1e-9)


@pytest.mark.parametrize("order", ["sequential", "interleaved"])
def test_splitlora_waits_between_its_epochs(order):
    """SplitLoRA's server (the runtime's train_server, as every method's) evaluates after each epoch but the last:
    one wait of the predicted size per epoch end, after the epoch's last server op and before the next epoch's
    first; sequential clients start epoch 2 after it, so the run is longer by exactly the waits; interleaved ones
    overlap it with their adapters' way down. The fast path replays the wait (issue 19) with SimPy's figures."""
    sc = sc_of(fleet(client_order=order))
    res = sfsim.simulate(sc, "splitlora", splits=2, trace=True)
    wait = epoch_end_seconds(sc, assignment=res.assignment)["edge"]
    waits = _waits(res)
    assert res.epoch_end_s == {"edge": wait} and [(e.lane, e.dur) for e in waits] == [("epoch-end:edge", wait)] * 2
    srv = [e for e in res.events if e.lane == "edge"]
    for w in waits:
        assert max(e.start + e.dur for e in srv if e.start < w.start) <= w.start + 1e-12
        assert min(e.start for e in srv if e.start >= w.start) >= w.start + w.dur - 1e-12
    base = sfsim.simulate(sc_of(fleet(client_order=order, eval_samples=None)), "splitlora", splits=2)
    auto = sfsim.simulate(sc, "splitlora", splits=2)
    assert base.engine == auto.engine == "fast" and auto.to_dict() == sfsim.simulate(sc, "splitlora", splits=2,
                                                                                     engine="simpy").to_dict()
    if order == "sequential":
        assert auto.makespan_s - base.makespan_s == pytest.approx(2 * wait, rel=1e-9)
    else:
        assert auto.makespan_s >= base.makespan_s


@pytest.mark.parametrize("servers", [1, 2])
def test_fedlora_waits_between_its_epochs(servers):
    """FedLoRA: each server evaluates once its epoch's last FedAvg (and, on two servers without training.sync, the
    epoch's closing round) is over; its devices' next downloads start after it. One server: the run is longer by
    exactly the two waits of three epochs. The fast path replays these runs with the SimPy engine's figures."""
    data = fleet() if servers == 1 else two_servers()
    if servers == 2:
        for s in data["servers"]:
            s["backhaul"] = {"bandwidth": "1 Gbps", "latency": "2 ms"}
    sc = sc_of(data)
    res = sfsim.simulate(sc, "fedlora", trace=True)
    waits = epoch_end_seconds(sc, assignment=res.assignment)
    assert res.epoch_end_s == waits and len(waits) == servers
    for name, wait in waits.items():
        mine = [e for e in _waits(res) if e.lane == f"epoch-end:{name}"]
        assert [e.dur for e in mine] == [wait] * 2
        members = [d for d, s in res.assignment.items() if s == name]
        for w in mine:
            agg = [e.start + e.dur for e in res.events if e.lane == name and e.op == "aggregate" and e.start < w.start]
            assert max(agg) <= w.start + 1e-12
            downs = [e.start for e in res.events if e.lane in {f"downlink:{d}" for d in members} and e.start >= max(agg)]
            assert min(downs) >= w.start + w.dur - 1e-12
    base = sfsim.simulate(sc_of({**data, "training": {**data["training"], "eval_samples": 1}}), "fedlora")
    auto, slow = (sfsim.simulate(sc, "fedlora", engine=e) for e in ("auto", "simpy"))
    assert (auto.engine, auto.engine_note, slow.engine) == ("fast", None, "simpy") and auto.makespan_s > base.makespan_s
    assert auto.to_dict() == slow.to_dict() and auto.epoch_end_s == slow.epoch_end_s == waits
    if servers == 1:
        no_wait = sfsim.simulate(sc_of(fleet(eval_samples=None)), "fedlora")
        assert no_wait.engine == "fast" and auto.makespan_s - no_wait.makespan_s == pytest.approx(
            2 * waits["edge"], rel=1e-9)


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "fedlora"])
def test_the_wait_counts_as_server_busy(method):
    """The server evaluates and saves during the wait (the runtime's server process computes then): its busy
    seconds hold the E - 1 waits beside its ops, so utilisation and compute energy count them."""
    sc = sc_of(fleet())
    res = sfsim.simulate(sc, method, splits=2, trace=True)
    wait = res.epoch_end_s["edge"]
    ops = sum(e.dur for e in res.events if e.lane == "edge" and e.op in ("F", "B", "W", "BW", "step", "aggregate"))
    assert res.server_busy_s["edge"] == pytest.approx(ops + 2 * wait, rel=1e-9)


def test_a_churning_fleet_on_one_server_waits_between_its_epochs():
    """runtime_churn.yaml (a pausing and a dropping device, one server, no backhaul) over 2 epochs: the server waits
    once, after its epoch's last op; no device forwards a micro-batch of epoch 2 before the wait ends."""
    data = yaml.safe_load((Path(__file__).parent / "fixtures" / "runtime_churn.yaml").read_text())
    data["training"].update(epochs=2, eval_samples=8)
    for d in data["devices"]:
        d["availability"]["file"] = str(Path(__file__).parent / "fixtures" / d["availability"]["file"])
    sc = sc_of(data)
    res = sfsim.simulate(sc, "splitfrozen", splits=1, trace=True)
    (w,) = _waits(res)
    assert res.epoch_end_s == {"srv": w.dur} == epoch_end_seconds(sc, assignment=res.assignment)
    assert max(e.start + e.dur for e in res.events if e.lane == "srv" and e.start < w.start) <= w.start + 1e-12
    per_epoch = {d.name: d.samples // 4 for d in sc.devices}
    later = [e for e in res.events if e.op == "F" and e.lane in per_epoch and e.mb >= per_epoch[e.lane]]
    assert later and min(e.start for e in later) >= w.start + w.dur - 1e-12
