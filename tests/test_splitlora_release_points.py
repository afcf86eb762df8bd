"""SplitLoRA: an idle client whose handover falls while its segment's quota is full (issue 21, the other release points).

The runtime's server (``trainer.methods.splitlora``) ``release``-s an idle client whose leg there has ended only when it
looks at it (``may_issue``): after each serve (its step and backhaul round included) and at each segment's start. A
client is idle there while the segment's quota (``fedavg_every`` x ``accumulate`` micro-batches) is full, waiting for
the next segment; the simulator moved it at its handover's instant instead. Its new server reads the client's ``join``
in arrival order, and only while it waits for a micro-batch: a ``join`` that comes after the last micro-batch it read in
a segment is read in its next segment, so the visitor is not in the FedAvg round between (with ``training.sync``).
``InTime.look_at`` and ``InTime._read_join`` model both; the fast path's joint loop sends such a run to SimPy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.emulation_guard import timed

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quota_fleet(at: str = "1.0 s") -> dict:
    """runtime_handover.yaml with a FedAvg every 2 server steps (a segment: 2 micro-batches) and stay-a at 5 MFLOPS: mec-a
    sends ``fwd`` to mover and stay-a, serves mover's micro-batch 0 (~0.7 s in a real run), and then waits for
    stay-a's (~1.65 s) with mover idle, its segment's quota full. mover hands over to mec-b at ``at``, meanwhile."""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["training"]["fedavg_every"] = 2
    data["devices"][1]["flops"] = "5 MFLOPS"
    data["devices"][0]["handover"] = [{"at": at, "to": "mec-b"}]
    return data


def server_lane(events, server: str) -> list[tuple]:
    """``server``'s forwards (device, micro-batch), steps and FedAvg aggregates in time order."""
    return [(e.op, e.device, e.mb) for e in sorted(events, key=lambda e: e.start)
            if e.lane == server and e.op in ("F", "step", "aggregate")]


@pytest.mark.slow
def test_a_client_idle_on_a_full_quota_is_released_at_its_servers_next_look_as_the_runtime_does(tiny_gpt2, tmp_path):
    """Real run (2 servers + 3 devices, emulated, ~60 s at load 5) against the simulator on the same scenario.

    The runtime releases mover after stay-a's serve and its step's round (with mec-b's second step, ~1.9 s); mover's
    ``join`` reaches mec-b after the last micro-batch mec-b read in its segment, so mec-b's FedAvg round after stay-b's
    two micro-batches does not take it, and mover trains micro-batches 1-3 on mec-b from ~2.2 s. Moved at 1.0 s, the
    simulator had mover in that round (an adapter upload to mec-b at ~1.85 s, a third aggregate on mec-b) and its
    micro-batch 1 sent at ~2.6 s. Handovers, micro-batches per server, rounds, bytes and the order of forwards, steps
    and aggregates on each server agree now (without ``look_at`` or ``_read_join`` mec-b's order fails)."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_handover import _validate
    from trainer.validate.compare import ValidateConfig, predict

    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", quota_fleet())
    vc = ValidateConfig(devices=str(tmp_path / "s.yaml"), model=tiny_gpt2, method="splitlora", out=str(tmp_path / "v"),
                        split=1, max_len=48, data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo")
    sim = predict(vc, m)
    measured = read_chrome_trace(run / "trace.json")
    moves = [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]]
    assert moves == [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers] == [("mec-a", "mec-b", 1)]
    for server in ("mec-a", "mec-b"):
        timed(server_lane(measured, server) == server_lane(sim.events, server), rep["emulation"],
              f"{server}: measured {server_lane(measured, server)}, simulated {server_lane(sim.events, server)}")
    assert server_lane(measured, "mec-b") == [
        ("F", "stay-b", 0), ("step", "", -1), ("F", "stay-b", 1), ("step", "", -1), ("F", "mover", 1), ("step", "", -1),
        ("F", "mover", 2), ("step", "", -1), ("aggregate", "", -1), ("F", "mover", 3), ("step", "", -1),
        ("aggregate", "", -1)]
    trained = Counter((e.lane, e.device) for e in measured if e.op == "F" and e.lane.startswith("mec-"))
    assert trained == Counter((e.lane, e.device) for e in sim.events if e.op == "F" and e.lane.startswith("mec-")) == {
        ("mec-a", "mover"): 1, ("mec-a", "stay-a"): 2, ("mec-b", "stay-b"): 2, ("mec-b", "mover"): 3}
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == {"mec-a": 4, "mec-b": 4} and sim.sync_rounds == 4
    assert m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}


SIM_ONLY = {  # stay-b's speed: mover's uplink sends (start s, micro-batch; -1: its adapters), the run's makespan
    "20 MFLOPS": ([(91.388, 0), (463.338, 1), (632.093, 2), (1304.65, -1), (1397.026, 3), (1474.398, -1)],
                 1475.3924919943188),
    "10 MFLOPS": ([(91.388, 0), (610.201, 1), (778.956, 2), (1304.65, -1), (1397.026, 3), (1474.398, -1)],
                  1475.3924919943188)}


@pytest.mark.parametrize("stay_b", list(SIM_ONLY))
def test_the_simulator_releases_a_client_idle_on_a_full_quota_at_its_servers_next_look(tmp_path, stay_b):
    """The same fleet in the simulator alone, on the scenario's own times (gpt2, cut 1): mec-a serves mover's micro-batch 0
    at ~98 s and waits for stay-a's (~372 s) with mover idle, its quota full; mover's handover at 300 s. Released after
    stay-a's serve and its round (~372 s), mover's ``join`` reaches mec-b after the last micro-batch mec-b read in its
    segment, so mec-b's FedAvg round then does not take it (mover's adapters go up only at the epoch's end).
    Before the fix (moved at 300 s) mover uploaded its adapters to mec-b for that round (at 371.94 s with stay-b at
    20 MFLOPS, 518.81 s at 10) and sent its micro-batch 1 at 464.32 s / 751.64 s; with the look but without
    ``_read_join``, at 10 MFLOPS it still went into that round (518.81 s) and sent micro-batch 1 at 751.64 s.
    At 20 MFLOPS stay-b is done before mover joins: mec-b keeps its epoch open for it with no round between (the
    measured lane of the real run above; issue 21's open epoch): micro-batch 1 at 463.338 s (464.124 s with stay-b's
    round first).
    SplitLoRA sync with handovers runs on SimPy (auto says so in one line)."""
    import sfsim
    from sfsim.scenario.config import load_scenario

    data = quota_fleet("300 s")
    data["devices"][2]["flops"] = stay_b
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    auto = sfsim.simulate(load_scenario(path), "splitlora", splits=1, engine="auto")
    assert (auto.engine, auto.engine_note) == ("simpy", "splitlora's backhaul sync with handovers between servers is "
                                                        "replayed by the SimPy engine only")
    res = sfsim.simulate(load_scenario(path), "splitlora", splits=1, trace=True, engine="simpy")
    assert [(h["from"], h["to"], h["sent_before"]) for h in res.handovers] == [("mec-a", "mec-b", 1)]
    sends = [(round(e.start, 3), e.mb) for e in res.events if e.lane == "link:mover" and e.op == "send"]
    assert (sends, res.makespan_s) == SIM_ONLY[stay_b] and auto.makespan_s == res.makespan_s
    assert res.sync_rounds == 4


def unsynced_fleet(at: str = "1.0 s") -> dict:
    """:func:`quota_fleet` without ``training.sync`` and without backhaul links (no round at all), stay-b with one
    micro-batch (4 samples): mec-b's own client is done at once, and mec-b waits for its visitor."""
    data = quota_fleet(at)
    del data["training"]["sync"]
    for server in data["servers"]:
        del server["backhaul"]
    data["devices"][2]["samples"] = 4
    return data


def test_without_sync_the_simulator_releases_a_client_idle_on_a_full_quota_at_its_servers_next_look(tmp_path):
    """No ``training.sync``, the simulator alone (gpt2, cut 1): mover idle on mec-a's full quota from ~98 s, its handover
    at 300 s; mec-a looks at it after stay-a's serve (~372 s) and releases it then, so mover's micro-batch 1 goes up at
    463.23 s (moved at 300 s, before the fix: 391.388 s). The fast path's joint loop replays the look
    (``splitholds._look_at``, ``_release_deferred``): ``auto`` runs it, with SimPy's figures (the makespan is stay-a's,
    1,304.75 s, either way)."""
    import sfsim
    from sfsim.scenario.config import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(unsynced_fleet("300 s")))
    auto = sfsim.simulate(load_scenario(path), "splitlora", splits=1, engine="auto")
    assert (auto.engine, auto.engine_note) == ("fast", None)
    res = sfsim.simulate(load_scenario(path), "splitlora", splits=1, trace=True, engine="simpy")
    mine, fast = res.to_dict(), auto.to_dict()
    for key in ("engine", "engine_note"):
        mine.pop(key, None), fast.pop(key, None)
    assert mine == fast and res.makespan_s == 1304.7488774312967
    sends = [(round(e.start, 3), e.mb) for e in res.events if e.lane == "link:mover" and e.op == "send"]
    assert sends == [(91.388, 0), (463.23, 1), (540.602, -1), (632.978, 2), (801.734, 3), (879.106, -1)]


# Without training.sync the runtime's mec-b, its own client done, keeps its epoch open while its visitor may still come
# (``while sum(left.values()) > 0 or waiting``) and makes no FedAvg round before it: mover's micro-batches 1 and 2 come
# first. The simulator closed the server's clients' part of the epoch with a FedAvg round (stay-b alone) before the
# visitor joined; it waits now too (``InTime._visitor``, the fast path's ``splitmoves._visit``; issue 21, see
# tests/test_splitlora_open_epoch.py). Both halves release mover at the same look (its micro-batch 1 went up at 2.011 s
# measured, 1.832 s simulated, 1.638 s before release21's fix).
@pytest.mark.slow
def test_without_sync_a_client_idle_on_a_full_quota_is_released_as_the_runtime_does(tiny_gpt2, tmp_path):
    """Real run (~60 s at load 5) of :func:`unsynced_fleet`: handovers, what each server trained, and the order of
    forwards, steps and FedAvg aggregates on each server agree (mec-b's one round before mover's last micro-batch is
    the one due after mover's micro-batch 1, with stay-b and mover; none with stay-b alone before mover joins)."""
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_handover import _validate
    from trainer.validate.compare import ValidateConfig, predict

    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", unsynced_fleet())
    vc = ValidateConfig(devices=str(tmp_path / "s.yaml"), model=tiny_gpt2, method="splitlora", out=str(tmp_path / "v"),
                        split=1, max_len=48, data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo")
    sim = predict(vc, m)
    measured = read_chrome_trace(run / "trace.json")
    moves = [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]]
    assert moves == [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers] == [("mec-a", "mec-b", 1)]
    trained = Counter((e.lane, e.device) for e in measured if e.op == "F" and e.lane.startswith("mec-"))
    assert trained == Counter((e.lane, e.device) for e in sim.events if e.op == "F" and e.lane.startswith("mec-"))
    for server in ("mec-a", "mec-b"):
        timed(server_lane(measured, server) == server_lane(sim.events, server), rep["emulation"],
              f"{server}: measured {server_lane(measured, server)}, simulated {server_lane(sim.events, server)}")
