"""SplitLoRA with handovers between servers, no backhaul link and the epoch-end wait (``training.eval_samples``,
several epochs): ``sfsim run`` still ends each epoch with its closing round over unshaped links (a barrier that takes
no time), then each server evaluates and saves before its next epoch's first command; the simulator replays that
(:func:`sfsim.schedules.splitlora.schedule.unshaped_rounds`, SimPy only: the fast path says so in one line), in the
simulator and against a real run's trace. Without the wait nothing changes (the epochs back to back, no rounds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import sfsim
from sfsim.cost.epochend import epoch_end_seconds
from tests.test_epoch_end_baselines import _fixture, _real, handover, placement
from tests.test_epoch_end_wait import _waits, sc_of

NOTE = ("the epoch-end wait (training.eval_samples, several epochs) of SplitLoRA with handovers between servers is "
        "replayed by the SimPy engine only")


def unlinked(**training) -> dict:
    """tests/test_epoch_end_baselines.handover() (solo hands over from far to edge at 0.5 s) with no backhaul link."""
    data = handover(**training)
    for s in data["servers"]:
        del s["backhaul"]
    return data


def test_each_server_waits_after_the_barrier_then_its_next_epoch_starts():
    """3 epochs: each server waits twice (its own size), both at the same instant each time (the closing round
    takes no time: a barrier), edge once its last op of the epoch is over and before its next epoch's first op;
    the rounds are counted as the runtime counts them (3, the closing round's bytes on each server), the handover is
    the run's without the wait, and the fast path leaves the run to SimPy in its one line."""
    sc = sc_of(unlinked())
    res = sfsim.simulate(sc, "splitlora", splits=2, trace=True)
    waits = epoch_end_seconds(sc, assignment=res.assignment)
    assert waits["far"] == pytest.approx(2 * waits["edge"], rel=1e-12) and res.epoch_end_s == waits
    got = sorted((e.start, e.lane, e.dur) for e in _waits(res))
    assert [(lane, dur) for _, lane, dur in got] == [("epoch-end:edge", waits["edge"]), ("epoch-end:far", waits["far"])] * 2
    assert got[0][0] == got[1][0] and got[2][0] == got[3][0] and got[0][0] < got[2][0]
    edge = [e for e in res.events if e.lane == "edge"]
    forwards = [e for e in res.events if e.op == "F" and e.lane in ("cam", "solo")]  # the clients' forwards
    for start, _lane, dur in got[::2]:  # edge's waits: after its epoch's last op, before its next epoch's first
        assert max(e.start + e.dur for e in edge if e.start < start) <= start + 1e-12
        assert min(e.start for e in edge if e.start >= start) >= start + dur - 1e-12
        assert min(e.start for e in forwards if e.start >= start) >= start + dur - 1e-12  # after its fwd, sent then
    assert res.sync_rounds == 3 and set(res.backhaul_bytes_by_server) == {"edge", "far"}
    base = sfsim.simulate(sc_of(unlinked(eval_samples=None)), "splitlora", splits=2)
    assert (base.engine, base.sync_rounds, base.epoch_end_s) == ("fast", 0, {})
    assert res.handovers == base.handovers and res.handovers[0]["sent_before"] == 1
    assert res.makespan_s > base.makespan_s
    auto = sfsim.simulate(sc, "splitlora", splits=2)
    assert (auto.engine, auto.engine_note, auto.makespan_s) == ("simpy", NOTE, res.makespan_s)


def test_simulate_no_longer_notes_the_wait_left_out(tmp_path: Path):
    """The CLI: no 'left out' note for it any more, and the JSON has the waits."""
    from sfsim.cli import main

    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump(unlinked()))
    out = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--split", "2", "--schedule", "splitlora",
                                    "--json", str(tmp_path / "r.json")]).output
    assert "is left out" not in out and NOTE in out, out
    waits = json.loads((tmp_path / "r.json").read_text())["epoch_end_s"]
    assert set(waits) == {"edge", "far"} and waits["far"] > waits["edge"] > 0


def _unlinked_fixture(data: dict) -> None:
    data["training"].pop("sync")
    for s in data["servers"]:
        del s["backhaul"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_the_predicted_waits_are_where_the_runtime_waits_without_a_backhaul_link(tiny_gpt2, tmp_path):
    """A real 2-epoch run of runtime_handover.yaml with no backhaul link (mover hands over from mec-a to mec-b at
    0.8 s, after its first send) and its prediction: one wait per server, after the same server ops in both halves
    (mec-a: mover's first micro-batch, stay-a's two and its FedAvg; mec-b: mover's other three, stay-b's two and its
    FedAvg), none during it. The closing round is unshaped: no backhaul transfer in either trace."""
    m, predicted, measured = _real(tiny_gpt2, tmp_path, "splitlora", _fixture("runtime_handover.yaml", _unlinked_fixture))
    servers = sorted(m["server_flops"])
    want = {"mec-a": [(3 + 1, "aggregate")], "mec-b": [(5 + 1, "aggregate")]}
    assert {s: placement(predicted, s) for s in servers} == {s: placement(measured, s) for s in servers} == want
