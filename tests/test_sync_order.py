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
    ``own``: only the first ``own`` steps (the server's own; the runtime takes a drained server's joint steps in
    ``ServerSync.finish`` without a trace event)."""
    mine = sorted((e for e in events if e.op in ORDERED and e.lane in (server, f"backhaul:{server}")),
                  key=lambda e: (e.start, ORDERED.index(e.op)))
    steps = [e for e in mine if e.op == "step"]
    drop = set() if own is None else {id(e) for e in steps[own:]}
    return [e.op for e in mine if id(e) not in drop]


@pytest.mark.usefixtures("one_torch_thread")
def test_joint_rounds_come_before_each_step_in_both_halves(tiny_gpt2, tmp_path):
    """Sync every step (runtime_two_servers.yaml, b-1 removed: mec-a steps 4 times, mec-b twice and then with the
    others on its drained rounds): on every server each step follows its round's average, in the runtime
    (ServerSync.before_step) and in the simulator; rounds and bytes agree too."""
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
    assert server_ops(sim.events, "mec-b") == list(ORDERED) * 4  # 2 steps of its own, 2 with mec-a's mean
    assert server_ops(measured, "mec-b") == server_ops(sim.events, "mec-b", own=m["servers"]["mec-b"]["steps"]) == (
        list(ORDERED) * 2 + ["sync-send", "sync-recv"] * 2)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], 4)
    assert sim.sync_rounds == 4 and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
