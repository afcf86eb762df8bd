"""SplitLoRA: an idle client whose handover falls while its server's step waits on a backhaul round (issue 21).

The runtime's server reads and sends nothing while it is in a step and its round: it ``release``-s an idle client
whose leg there has ended when it next looks at it (``may_issue``: after the step, or at the next segment's start),
and the client joins the server of the leg holding when it gets the release. The simulator moved such a client at
its handover's instant instead, so the client's ``join``, its next ``fwd`` and its next upload came one round early
there. Now the simulator's ``Moves.tick`` defers it while the server steps, and ``InTime._release_deferred`` releases
it after the step, as the runtime does (the release is the protocol: a server in a barrier cannot send one)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def release_fleet() -> dict:
    """runtime_handover.yaml with sync every step (joint rounds, a barrier before each step) and stay-b at 5 MFLOPS, so
    that mec-a's round after mover's first micro-batch (~0.7 s) waits for mec-b's first step (~1.65 s). mover is idle
    then (its next fwd goes after the step); its handover to mec-b at 1.0 s falls inside that round, and a second one,
    back to mec-a, at 1.85 s."""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["training"]["sync"] = {"every": 1, "mode": "sync"}
    data["devices"][2]["flops"] = "5 MFLOPS"
    data["devices"][0]["handover"] = [{"at": "1.0 s", "to": "mec-b"}, {"at": "1.85 s", "to": "mec-a"}]
    return data


@pytest.mark.slow
def test_an_idle_client_is_released_after_its_servers_step_round_as_the_runtime_does(tiny_gpt2, tmp_path):
    """Real run (2 servers + 3 devices, emulated, ~35-55 s under load) against the simulator on the same scenario.

    The runtime releases mover at mec-a's round end (~1.7 s, before 1.85 s): it joins mec-b, whose ``fwd`` comes at
    once, and its upload starts at ~2.0 s, after its handover back, so mec-a trains it (``sent_before`` 1 and 1), and
    mec-b trains only stay-b: 8 rounds a server. With the move at the handover's instant the simulator had mover join
    mec-b at 1.0 s and upload at ~1.4 s, to mec-b (``sent_before`` 1 and 2), 7 rounds, and mec-b trained mover's
    micro-batch 1 (the fix removed: this test fails on all three)."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_handover import _validate
    from tests.test_sync_order import server_ops
    from trainer.validate.compare import ValidateConfig, predict

    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", release_fleet())
    vc = ValidateConfig(devices=str(tmp_path / "s.yaml"), model=tiny_gpt2, method="splitlora", out=str(tmp_path / "v"),
                        split=1, max_len=48, data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo")
    sim = predict(vc, m)
    moves = [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]]
    assert moves == [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers]
    assert moves == [("mec-a", "mec-b", 1), ("mec-b", "mec-a", 1)]
    measured = read_chrome_trace(run / "trace.json")

    def trained(events) -> Counter:  # the server that trained each micro-batch
        return Counter((e.lane, e.device, e.mb) for e in events if e.op == "F" and e.lane in ("mec-a", "mec-b"))

    assert trained(measured) == trained(sim.events) == Counter(
        [("mec-a", "mover", j) for j in range(4)] + [("mec-a", "stay-a", j) for j in range(2)]
        + [("mec-b", "stay-b", j) for j in range(2)])
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == {"mec-a": 8, "mec-b": 8}
    assert sim.sync_rounds == 8 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    for server in ("mec-a", "mec-b"):  # the order of steps and rounds on each server
        assert server_ops(measured, server) == server_ops(sim.events, server), server
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}


def test_the_simulator_releases_an_idle_client_after_its_servers_step_round(tmp_path):
    """The same fleet in the simulator alone, on the scenario's own times (gpt2, cut 1: a forward of mover ~91 s): mec-a's
    round after mover's first micro-batch (~98 s) waits for mec-b's first step (~372 s); mover's handovers at 200 s
    (inside that round, mover idle) and 420 s (back to mec-a). Released at the round's end, mover joins mec-b, uploads
    at ~463 s, after 420 s: to mec-a (``sent_before`` 1 and 1), 8 rounds. Moved at 200 s (before the fix) it uploaded
    at ~291 s to mec-b (1 and 2), 7 rounds, a 1,375.72 s makespan. SplitLoRA sync with handovers runs on SimPy (auto
    says so in one line)."""
    import sfsim
    from sfsim.scenario.config import load_scenario

    data = release_fleet()
    data["devices"][0]["handover"] = [{"at": "200 s", "to": "mec-b"}, {"at": "420 s", "to": "mec-a"}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    auto = sfsim.simulate(load_scenario(path), "splitlora", splits=1, engine="auto")
    assert (auto.engine, auto.engine_note) == ("simpy", "splitlora's backhaul sync with handovers between servers is "
                                                        "replayed by the SimPy engine only")
    res = sfsim.simulate(load_scenario(path), "splitlora", splits=1, trace=True, engine="simpy")
    assert res.makespan_s == auto.makespan_s
    assert [(h["from"], h["to"], h["sent_before"]) for h in res.handovers] == [("mec-a", "mec-b", 1),
                                                                                ("mec-b", "mec-a", 1)]
    assert Counter((e.lane, e.device) for e in res.events if e.op == "F" and e.lane.startswith("mec")) == \
        {("mec-a", "mover"): 4, ("mec-a", "stay-a"): 2, ("mec-b", "stay-b"): 2}
    sends = [e.start for e in res.events if e.lane == "link:mover" and e.op == "send" and e.mb == 1]
    assert len(sends) == 1 and 460 < sends[0] < 470  # after the round's end (~372 s) + join + fwd + forward
    assert res.sync_rounds == 8 and res.makespan_s == 1642.1618229188664
