"""Backhaul rounds of a server that waits for a visiting device, real against predicted.

``tests/fixtures/runtime_handover_drop.yaml`` (SplitLoRA, 2 servers on loopback, tiny GPT-2 through ``sfsim
validate``): stay-b is never online, so mec-b trains only what ``mover`` brings it and waits for it otherwise. A
waiting server joins exactly the rounds another server opens from an optimizer step
(:class:`trainer.transport.backhaul.ServerLinks`, :meth:`sfsim.network.backhaul.Rounds.opened`), so the rounds do
not depend on who polls first: before this rule the runtime made 6 rounds on A -> B -> A where the simulator said 4,
and 8 on A -> B -> A -> B where it said 6.
"""

from __future__ import annotations

import pytest
import yaml

from sfsim.outputs.trace import read_chrome_trace
from tests.emulation_guard import timed
from tests.test_handover import _scenario, _validate
from tests.test_sync_order import server_ops

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ABA = [("mec-b", 0.7), ("mec-a", 2.0)]
ABAB = [("mec-b", 0.7), ("mec-a", 2.0), ("mec-b", 3.2)]


def _rounds(tiny_gpt2, tmp_path, legs, every: int, *extra: str) -> tuple[dict, dict, dict]:
    """Validate the fixture with ``legs`` and ``sync: every``: (each server's ops per side, measured metrics, report)."""
    data = yaml.safe_load(_scenario(tmp_path, "splitlora").read_text())
    data["devices"][0]["handover"] = [{"at": f"{at} s", "to": to} for to, at in legs]
    data["training"]["sync"]["every"] = every
    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", data, *extra)
    both = read_chrome_trace(run.parent / "trace.json")
    ops = {}
    for server in ("mec-a", "mec-b"):
        side = {w: [e._replace(lane=e.lane.removeprefix(f"{w} ")) for e in both if e.lane.startswith(f"{w} ")]
                for w in ("predicted", "measured")}
        ops[server] = {w: server_ops(evs, server) for w, evs in side.items()}
    return ops, m, rep


def _check(ops: dict, m: dict, rep: dict, rounds: dict[str, int]) -> None:
    """Both halves: the same rounds and steps in the same order on each server, ``rounds`` rounds each, the same
    backhaul bytes (the sync row's time is their bytes x 8 / bandwidth), every handover listed alike."""
    for server, sides in ops.items():
        assert sides["measured"] == sides["predicted"], server
        assert sides["measured"].count("sync-send") == m["servers"][server]["sync_rounds"] == rounds[server]
    assert m["backhaul_bytes_by_server"]["mec-a"] == m["backhaul_bytes_by_server"]["mec-b"]
    assert rep["stages"]["sync"]["predicted_s"] == pytest.approx(rep["stages"]["sync"]["measured_s"], rel=1e-9)
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")


@pytest.mark.parametrize(("legs", "every", "rounds"), [
    # mec-a opens a round after its 2nd step while mec-b waits for mover (invited: it joins it); mec-b trains one
    # micro-batch, drains; mec-a's round after its 4th step pairs with mec-b's drain round; a drain round; closing
    pytest.param(ABA, 2, {"mec-a": 4, "mec-b": 4}, id="aba-every2"),
    # sync every step: a round before each of the 5 steps either server takes (the waiting one joins and steps with
    # the other), then the drain and closing rounds
    pytest.param(ABAB, 1, {"mec-a": 7, "mec-b": 7}, id="abab-every1"),
    pytest.param(ABAB, 2, {"mec-a": 5, "mec-b": 5}, id="abab-every2", marks=pytest.mark.slow),
    pytest.param(ABA, 1, {"mec-a": 7, "mec-b": 7}, id="aba-every1", marks=pytest.mark.slow),
])
def test_a_waiting_servers_rounds_are_the_simulators(tiny_gpt2, tmp_path, legs, every, rounds):
    ops, m, rep = _rounds(tiny_gpt2, tmp_path, legs, every)
    _check(ops, m, rep, rounds)


def test_handovers_with_sync_over_two_epochs_round_as_the_simulator_says(tiny_gpt2, tmp_path):
    """A -> B in epoch 0, back to A in epoch 1 (tests/test_handover.py's two-epoch run, sync every 2): each epoch ends
    with the servers' drain and closing rounds, a barrier before the next, in the runtime and now in the simulator
    (it left these rounds out with a note: its loops in time had no epoch ends); 9 rounds on each server."""
    ops, m, rep = _rounds(tiny_gpt2, tmp_path, [("mec-b", 0.7), ("mec-a", 5.6)], 2, "--epochs", "2")
    _check(ops, m, rep, {"mec-a": 9, "mec-b": 9})
    assert [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"]["measured"]] == \
        [("mec-a", "mec-b", 1), ("mec-b", "mec-a", 5)]
    # the wait between the epochs (evaluation, adapter, checkpoint) is its own row, measured and, since the simulator
    # replays SplitLoRA's wait with handovers between servers (after the closing round), predicted
    row = rep["stages"]["epoch_end"]
    assert row["predicted_s"] > 0 and row["measured_s"] > 0 and row.get("modelled") is not False
    assert row["error"] is not None
