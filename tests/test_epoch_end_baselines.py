"""The epoch-end wait (sfsim.cost.epochend) for CenLoRA, FedLoRA with ``training.sync`` and SplitLoRA with
handovers between servers, in the simulator (SimPy; the fast path replays CenLoRA's (tests/test_fast_cenlora_epochs.py)
and FedLoRA's with the same figures, and leaves SplitLoRA's to SimPy with one line) and, for
each, against a real run's trace: as many waits, at the same place among each server's ops.

Fleets: tests/test_epoch_end_wait.py's (one server and three epochs; two servers with a backhaul), and for the
real runs the fixtures the other real tests use (tiny random GPT-2, loopback, 2 epochs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import sfsim
from sfsim.cost.epochend import epoch_end_seconds
from tests.test_epoch_end_wait import _waits, fleet, sc_of, two_servers

FIXTURES = Path(__file__).parent / "fixtures"
SERVER_OPS = ("F", "B", "W", "BW", "step", "aggregate")


def handover(sync: dict | None = None, **training) -> dict:
    """two_servers() with a backhaul, ``solo`` handing over from far to edge at 0.5 s (its first micro-batch sent)."""
    data = two_servers(sync=sync, **training)
    for s in data["servers"]:
        s["backhaul"] = {"bandwidth": "1 Gbps", "latency": "2 ms"}
    data["devices"][1]["handover"] = [{"at": "0.5 s", "to": "edge"}]
    return data


def _placed(res, server: str) -> None:
    """Each of ``server``'s waits starts after its last op (and backhaul transfer) before it, and its next op starts
    after the wait."""
    mine = [e for e in res.events if e.lane in (server, f"backhaul:{server}")]
    for w in (e for e in _waits(res) if e.lane == f"epoch-end:{server}"):
        assert max(e.start + e.dur for e in mine if e.start < w.start) <= w.start + 1e-12
        assert min(e.start for e in mine if e.start >= w.start) >= w.start + w.dur - 1e-12


def test_cenlora_waits_between_its_epochs_on_one_server():
    """CenLoRA (one worker, a step a micro-batch): two waits of the predicted size, each exactly at its epoch's last
    step's end, the next epoch's first forward exactly at its end; the run is longer than without
    ``training.eval_samples`` by exactly the two waits, and the server busy by them too."""
    sc = sc_of(fleet())
    res = sfsim.simulate(sc, "cenlora", trace=True)
    wait = epoch_end_seconds(sc, assignment=res.assignment)["edge"]
    assert res.epoch_end_s == {"edge": wait} and [(e.lane, e.dur) for e in _waits(res)] == [("epoch-end:edge", wait)] * 2
    per = sum(-(-d.samples // 4) for d in sc.devices)  # micro-batches an epoch (a partial last one per device)
    steps = [e for e in res.events if e.lane == "edge" and e.op == "step"]
    for k, w in enumerate(_waits(res)):
        assert steps[(k + 1) * per - 1].start + steps[(k + 1) * per - 1].dur == w.start
        assert min(e.start for e in res.events if e.lane == "edge" and e.start >= w.start) == w.start + w.dur
    base = sfsim.simulate(sc_of(fleet(eval_samples=None)), "cenlora")
    auto = sfsim.simulate(sc, "cenlora")
    assert (base.engine, auto.engine, auto.engine_note) == ("fast", "fast", None)  # sfsim.fast.cenlora.replay_epochs
    assert auto.to_dict() == sfsim.simulate(sc, "cenlora", engine="simpy").to_dict()
    assert auto.makespan_s - base.makespan_s == pytest.approx(2 * wait, rel=1e-9)
    assert auto.server_busy_s["edge"] - base.server_busy_s["edge"] == pytest.approx(2 * wait, rel=1e-9)


@pytest.mark.parametrize(("method", "sync"), [("cenlora", {"every": 1, "mode": "sync"}),
                                              ("cenlora", {"every": 2, "mode": "async"}),
                                              ("fedlora", {"every": 1, "mode": "sync"}),
                                              ("fedlora", {"every": 2, "mode": "async"})])
def test_with_training_sync_each_server_waits_after_its_closing_round(method, sync):
    """CenLoRA and FedLoRA with training.sync on two servers: each server waits (its own size: far computes at half
    edge's rate, its device's downlink latency is twice) once its epoch's closing round is over, and takes part in
    the next epoch's rounds after it; the rounds are those of the run without the wait, and the run is longer by
    exactly the slower server's two waits (the next epoch's rounds wait for it)."""
    sc = sc_of(two_servers(sync=sync))
    res = sfsim.simulate(sc, method, trace=True)
    waits = epoch_end_seconds(sc, assignment=res.assignment)
    assert waits["far"] == pytest.approx(2 * waits["edge"], rel=1e-12) and res.epoch_end_s == waits
    assert sorted((e.lane, e.dur) for e in _waits(res)) == sorted(
        [("epoch-end:edge", waits["edge"])] * 2 + [("epoch-end:far", waits["far"])] * 2)
    for server in waits:
        _placed(res, server)
    base = sfsim.simulate(sc_of(two_servers(sync=sync, eval_samples=None)), method)
    assert res.sync_rounds == base.sync_rounds and res.backhaul_bytes_by_server == base.backhaul_bytes_by_server
    assert res.makespan_s - base.makespan_s == pytest.approx(2 * waits["far"], rel=1e-9)
    auto = sfsim.simulate(sc, method)
    if method == "cenlora":  # on the fast path (sfsim.fast.censync), with the SimPy figures
        assert (auto.engine, auto.engine_note) == ("fast", None)
        assert auto.to_dict() == sfsim.simulate(sc, method, engine="simpy").to_dict()
    else:  # FedLoRA with training.sync: the fast path replays the wait (tests/test_fast_fed_sync_eval.py)
        assert (auto.engine, auto.makespan_s, auto.server_busy_s, auto.epoch_end_s, auto.sync_rounds) == (
            "fast", res.makespan_s, res.server_busy_s, res.epoch_end_s, res.sync_rounds)


@pytest.mark.parametrize("sync", [None, {"every": 2, "mode": "sync"}, {"every": 2, "mode": "async"}])
def test_splitlora_with_a_handover_between_servers_waits_after_the_closing_round(sync):
    """SplitLoRA, solo handing over from far to edge in epoch 1, a backhaul (each epoch's closing round; with
    training.sync its rounds too): each server waits after its closing round and before its next epoch's first op;
    the handover, the rounds and the backhaul bytes are those of the run without the wait."""
    sc = sc_of(handover(sync))
    res = sfsim.simulate(sc, "splitlora", splits=2, trace=True)
    waits = epoch_end_seconds(sc, assignment=res.assignment)
    assert res.epoch_end_s == waits and sorted((e.lane, e.dur) for e in _waits(res)) == sorted(
        [("epoch-end:edge", waits["edge"])] * 2 + [("epoch-end:far", waits["far"])] * 2)
    for server in waits:
        _placed(res, server)
    base = sfsim.simulate(sc_of(handover(sync, eval_samples=None)), "splitlora", splits=2)
    assert (res.handovers, res.sync_rounds, res.backhaul_bytes_by_server) == (
        base.handovers, base.sync_rounds, base.backhaul_bytes_by_server)
    assert res.handovers[0]["sent_before"] == 1 and res.makespan_s > base.makespan_s
    assert sfsim.simulate(sc, "splitlora", splits=2).engine_note == (
        "the epoch-end wait (training.eval_samples, several epochs) of SplitLoRA with handovers between servers is "
        "replayed by the SimPy engine only")


def test_simulate_notes_only_what_still_leaves_the_wait_out(tmp_path: Path):
    """One server: every schedule replays the wait (no note). SplitLoRA with a handover between servers and no
    backhaul link replays it too now (tests/test_splitlora_epoch_end_unshaped.py)."""
    from sfsim.cli import main

    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump(fleet()))
    out = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--split", "2", "--schedule", "all"]).output
    assert "is left out" not in out, out


# -- against real runs ------------------------------------------------------------------------------------------
MARKS = ("F", "aggregate", "sync-send", "sync-recv", "epoch_end")


def placement(events, server: str) -> list[tuple]:
    """Where each of ``server``'s waits lies among its ops: (server forwards and aggregates before it, its last op or
    backhaul transfer before it), in time order."""
    mine = sorted((e for e in events if e.op in MARKS and e.lane in (server, f"backhaul:{server}", f"epoch-end:{server}")),
                  key=lambda e: e.start)
    out = []
    for w in (e for e in mine if e.op == "epoch_end"):
        before = [e for e in mine if e.start < w.start and e.op != "epoch_end"]
        after = [e for e in mine if e.start >= w.start and e.op != "epoch_end"]
        assert not after or min(e.start for e in after) >= w.start + w.dur - 1e-6, (server, w)  # nothing during it
        out.append((sum(e.op in ("F", "aggregate") for e in before), before[-1].op if before else None))
    return out


def _real(tiny_gpt2: str, tmp_path: Path, method: str, data: dict) -> tuple[dict, list, list]:
    """``sfsim validate --epochs 2`` of ``method`` on scenario ``data``: (the run's metrics, the predicted and the
    measured trace)."""
    from sfsim.cli import main
    from sfsim.outputs.trace import read_chrome_trace

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(tmp_path / "s.yaml"), "--model", tiny_gpt2, "--method",
                                    method, "--split", "1", "--max-len", "48", "--train-samples", "32", "--data-dir",
                                    str(FIXTURES / "data"), "--out", str(out), "--server-order", "fifo", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    both = read_chrome_trace(out / "trace.json")
    side = {s: [e._replace(lane=e.lane.removeprefix(f"{s} ")) for e in both if e.lane.startswith(f"{s} ")]
            for s in ("predicted", "measured")}
    return json.loads((out / "run" / "metrics.json").read_text()), side["predicted"], side["measured"]


def _fixture(name: str, edit=None) -> dict:
    data = yaml.safe_load((FIXTURES / name).read_text())
    if edit is not None:
        edit(data)
    return data


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("method", "name", "edit", "want"), [
    # one server, no backhaul: the wait after epoch 1's 8 micro-batches (each F on the server)
    ("cenlora", "runtime_tiny.yaml", None, {"srv": [(8, "F")]}),
    # two servers, sync every step: after each server's 4 micro-batches and its closing round
    ("cenlora", "runtime_two_servers.yaml", None, {"mec-a": [(4, "sync-recv")], "mec-b": [(4, "sync-recv")]}),
    # FedLoRA, training.sync every round: after each server's one FedAvg round (2 local steps) and its closing round
    ("fedlora", "runtime_two_servers.yaml", None, {"mec-a": [(1, "sync-recv")], "mec-b": [(1, "sync-recv")]}),
    # SplitLoRA, mover hands over from mec-a to mec-b at 0.8 s (after its first send), each epoch's closing round:
    # mec-a trained mover's first micro-batch and stay-a's two, mec-b mover's other three and stay-b's two, each
    # server then one FedAvg of its clients' adapters
    ("splitlora", "runtime_handover.yaml", lambda d: d["training"].pop("sync"),
     {"mec-a": [(3 + 1, "sync-recv")], "mec-b": [(5 + 1, "sync-recv")]}),
], ids=["cenlora-1-server", "cenlora-sync", "fedlora-sync", "splitlora-handover"])
def test_the_predicted_waits_are_where_the_runtime_waits(tiny_gpt2, tmp_path, method, name, edit, want):
    """A real 2-epoch run (2 servers: one process each, loopback, tiny random GPT-2) and its prediction: one wait per
    server, the predicted size (epoch_end_s), and in both halves after the same server ops and backhaul transfers,
    with none during it. Timing margins: the halves are compared by order only, not by time."""
    m, predicted, measured = _real(tiny_gpt2, tmp_path, method, _fixture(name, edit))
    servers = sorted(m["server_flops"])
    assert {s: placement(predicted, s) for s in servers} == {s: placement(measured, s) for s in servers} == want
