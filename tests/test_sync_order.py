"""The order of backhaul rounds and optimizer steps on each server: a real 2-server run (tiny GPT-2 on loopback, the
backhaul shaped) and the simulator on the same run (``sfsim validate``'s prediction) agree op for op."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sfsim.outputs.trace import read_chrome_trace

FIXTURES = Path(__file__).parent / "fixtures"
ORDERED = ("sync-send", "sync-recv", "step")


def server_ops(events, server: str, own: int | None = None) -> list[str]:
    """``server``'s backhaul transfers and optimizer steps in time order (a send, its receive, then what follows).
    ``own``: only the first ``own`` steps (the server's own, without the joint steps a drained server takes in
    ``ServerSync.finish``)."""
    mine = sorted((e for e in events if e.op in ORDERED and e.lane in (server, f"backhaul:{server}")),
                  key=lambda e: (e.start, ORDERED.index(e.op)))
    steps = [e for e in mine if e.op == "step"]
    drop = set() if own is None else {id(e) for e in steps[own:]}
    return [e.op for e in mine if id(e) not in drop]


@pytest.mark.usefixtures("one_torch_thread")
def test_joint_rounds_come_before_each_step_in_both_halves(tiny_gpt2, tmp_path):
    """Sync every step (runtime_two_servers.yaml, b-1 removed: mec-a steps 4 times, mec-b twice and then with the
    others on its drained rounds, which both halves trace): on every server each step follows its round's average,
    in the runtime (ServerSync.before_step) and in the simulator; rounds and bytes agree too."""
    from tests.test_multiserver import TWO, _cfg, _with
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def edit(d):
        d["devices"] = [x for x in d["devices"] if x["name"] != "b-1"]
        for s in d["servers"]:
            s["backhaul"] = {"bandwidth": "20 Mbps", "latency": "10 ms"}
    devices = _with(tmp_path, TWO, edit)
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=devices, train_samples=24, emulate="links"))
    vc = ValidateConfig(devices=str(devices), model=tiny_gpt2, method="splitfrozen", out=str(tmp_path / "v"),
                        max_len=48, data_dir=str(FIXTURES / "data"), train_samples=24, server_order="round-robin")
    sim = predict(vc, m)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    assert server_ops(measured, "mec-a") == server_ops(sim.events, "mec-a") == list(ORDERED) * 4
    # mec-b: 2 steps of its own, then 2 drained ones with mec-a's mean, traced in both halves (ServerSync.finish's)
    assert server_ops(measured, "mec-b") == server_ops(sim.events, "mec-b") == list(ORDERED) * 4
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 4)
    assert sim.sync_rounds == 4 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server


def test_a_waiting_splitlora_server_joins_only_the_rounds_another_server_opens():
    """SplitLoRA, sync every 2 (runtime_handover_drop.yaml: stay-b never online, so mec-b has nothing to train until
    mover's first upload after 0.8 s): nobody opens a round before mec-b trains, so it sends nothing while it waits
    (it used to answer with a round of zeros in flight from 0 s); each server's round after its second step pairs
    with the other's; mec-a, drained, answers mec-b's second round (after mec-b's fourth step) with zeros; then one
    drain round (none trains) and the closing round, 4 in all on each server."""
    import sfsim

    sc = sfsim.load_scenario(str(FIXTURES / "runtime_handover_drop.yaml"))
    res = sfsim.simulate(sc, "splitlora", splits=1, trace=True)
    assert res.sync_rounds == 4 and res.backhaul_bytes_by_server["mec-a"] == res.backhaul_bytes_by_server["mec-b"]
    assert server_ops(res.events, "mec-b") == ["step", "step", "sync-send", "sync-recv", "step", "step"] + \
        ["sync-send", "sync-recv"] * 3
    assert server_ops(res.events, "mec-a") == ["step", "step"] + ["sync-send", "sync-recv"] * 4
    ev = sorted(res.events, key=lambda e: (e.start, e.lane))
    a_sends = [e for e in ev if e.lane == "backhaul:mec-a" and e.op == "sync-send"]
    b_sends = [e for e in ev if e.lane == "backhaul:mec-b" and e.op == "sync-send"]
    b_steps = [e for e in ev if e.lane == "mec-b" and e.op == "step"]
    assert b_sends[1].start == b_steps[3].start + b_steps[3].dur  # it opens its second round after its 4th step
    assert a_sends[1].start < b_sends[1].start  # mec-a drained before: its drain round waited for mec-b's


@pytest.mark.slow  # ~60 s: a validate run (profile, runtime, simulator)
@pytest.mark.usefixtures("one_torch_thread")
def test_splitlora_rounds_with_a_handover_equal_the_runtimes(tiny_gpt2, tmp_path):
    """tests/test_handover.py's SplitLoRA run (sync every 2; mec-b waits for mover from the start): both timelines of
    ``sfsim validate`` hold the same rounds and steps in the same order on each server, and the same backhaul bytes
    (the sync row: every transfer is bytes x 8 / bandwidth)."""
    import json

    from click.testing import CliRunner

    from sfsim.cli import main
    from tests.test_handover import _scenario

    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(_scenario(tmp_path, "splitlora")), "--model",
                                    tiny_gpt2, "--method", "splitlora", "--split", "1", "--max-len", "48",
                                    "--train-samples", "32", "--data-dir", str(FIXTURES / "data"), "--out", str(out),
                                    "--server-order", "fifo"])
    assert res.exit_code == 0, res.output
    both = read_chrome_trace(out / "trace.json")
    for server in ("mec-a", "mec-b"):
        side = {w: [e._replace(lane=e.lane.removeprefix(f"{w} ")) for e in both if e.lane.startswith(f"{w} ")]
                for w in ("predicted", "measured")}
        assert server_ops(side["predicted"], server) == server_ops(side["measured"], server)
    rep = json.loads((out / "report.json").read_text())
    assert rep["stages"]["sync"]["predicted_s"] == pytest.approx(rep["stages"]["sync"]["measured_s"], rel=1e-9)
