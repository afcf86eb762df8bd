"""``--resume`` keeps the network's clock: time-varying links, availability and handovers continue from the run's
clock at the checkpoint, which server 0 tells every process in the rendezvous (``trainer.transport.rendezvous.Start``),
so a device that cannot read the run folder (another machine) resumes too.

Real runs: tiny random GPT-2 processes on loopback, killed after the checkpoint of epoch 0 and resumed, against the
uninterrupted run of the same scenario.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sfsim.errors import SfsimError
from sfsim.network.linkrate import Steps, finish

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the pieces --------------------------------------------------------------------------------------------
def test_a_shifted_rate_is_the_runs_rate_from_the_checkpoint_on():
    from trainer.transport.dynamics import Shifted, shifted

    run = Steps([0.0, 3.0], [8.0, 2.0])
    late = Shifted(run, 2.0)  # attempt clock 0 = run clock 2 s
    assert late.segment(0.0) == (8.0, 1.0) and late.segment(1.0) == (2.0, math.inf)
    assert finish(late, 0.5, 8.0) == 1.0 + 4.0 / 2.0  # 4 bits by 1 s (run's 3 s), then 2/s
    assert shifted(run, 0.0) is run and shifted(None, 5.0) is None


def test_presence_resumed_at_40_s_sees_the_pause_and_the_departure_of_40_s():
    from trainer.transport.dynamics import Presence
    from trainer.transport.runtime import DeviceLeft

    avail = Steps([0.0, 30.0, 45.0, 50.0], [1.0, 0.0, 1.0, 0.0])  # offline 30-45 s, gone from 50 s
    pause = Presence(avail, "pause", lambda: 0.0, origin=40.0)
    assert pause.avail.segment(0.0) == (0.0, 5.0)  # offline until the run's 45 s
    assert pause.leave == math.inf
    dropped = Presence(avail, "drop", lambda: 0.0, origin=40.0)  # left at its first outage (30 s): gone already
    assert (dropped.join, dropped.leave) == (-40.0, -10.0)
    with pytest.raises(DeviceLeft, match="dropped out"):
        dropped.wait("d")
    fresh = Presence(avail, "drop", lambda: 0.0)
    assert (fresh.join, fresh.leave) == (0.0, 30.0)


def test_the_start_frame_is_checked_like_any_peer_field():
    from trainer.run.resume import from_start
    from trainer.transport.rendezvous import Start, read_start
    from trainer.transport.wire import WireError

    assert read_start(Start(12.5, (0, 2)).frame(2), 2) == Start(12.5, (0, 2))
    assert read_start(Start().frame(3), 3) == Start(0.0, (0, 0, 0))
    for clock in (math.nan, math.inf, -1.0):
        with pytest.raises(WireError, match="must be finite and >= 0"):
            read_start(struct.pack(">dH", clock, 0), 1)
    with pytest.raises(WireError, match="has 12 bytes, not 10"):
        read_start(Start(1.0, (0, 0)).frame(2), 1)
    legs = {"a": [(0.0, 0), (1.0, 1)], "b": [(0.0, 1)]}
    assert from_start(legs, ["a", "b"], Start(2.0, (1, 0))) == {"a": [(0.0, 1)], "b": [(0.0, 1)]}
    with pytest.raises(SfsimError, match="starts device b on its leg 1, but it has 1"):
        from_start(legs, ["a", "b"], Start(2.0, (0, 1)))


# -- killed and resumed ------------------------------------------------------------------------------------
def _epoch(path: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["progress"])["epoch"]
    except Exception:  # noqa: BLE001 (not written yet, or being replaced)
        return -1


def _catch(fn, *args):
    try:
        return fn(*args)
    except BaseException as err:  # noqa: BLE001 (handed to the test)
        return err


def _cfg(model: str, scenario: Path, out: Path, method: str):
    from trainer.run.runner import RunConfig

    return RunConfig(devices=str(scenario), model=model, task="sst2", method=method, partition="iid", epochs=2,
                     train_samples=32, eval_samples=8, max_len=48, lr=0.01, data_dir=str(FIXTURES / "data"),
                     out=str(out), progress=False, launch="local", peer_timeout=20.0, server_order="fifo",
                     emulate="all", split=1)


def _kill_after_epoch_0(cfg, checkpoints: list[Path]) -> None:
    """Start ``cfg``'s run, SIGKILL every process once each of ``checkpoints`` is of epoch 1 (epoch 0 done)."""
    from trainer.run.launch import run

    box = {}
    t = threading.Thread(target=lambda: box.update(result=_catch(run, cfg)))
    t.start()
    end = time.monotonic() + 120
    while min(_epoch(p) for p in checkpoints) < 1:
        assert time.monotonic() < end and t.is_alive(), "no epoch-1 checkpoint"
        time.sleep(0.02)
    for pid in json.loads((Path(cfg.out) / "logs" / "pids.json").read_text()).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t.join(60)
    assert isinstance(box["result"], SfsimError), box  # stopped in epoch 1, not finished


def _sends(out: Path) -> dict[str, list[float]]:
    """Each device's uplink sends in the run's trace.json (all attempts): their durations in seconds."""
    data = json.loads((out / "trace.json").read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    got: dict[str, list[float]] = {}
    for e in events:
        lane = e.get("args", {}).get("lane", "")
        if e.get("name") == "send" and lane.startswith("link:"):
            got.setdefault(lane[5:], []).append(e["dur"] / 1e6)
    return got


def _same_network_outcome(ref: dict, m: dict, ref_out: Path, out: Path) -> dict[str, list[float]]:
    """The resumed run sent what the uninterrupted one sent, handed over alike, left the same samples untrained."""
    moves = [(h["device"], h["at_s"], h["from"], h["to"], h["sent_before"]) for h in ref["handovers"]]
    assert [(h["device"], h["at_s"], h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == moves
    assert m["samples_not_trained"] == ref["samples_not_trained"]
    assert m["uplink_bytes_by_device"] == ref["uplink_bytes_by_device"]
    a, b = _sends(ref_out), _sends(out)
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}
    return b


def _no_run_folder(run_dir: str):
    """An audit hook: opening anything in ``run_dir`` fails (a device on another machine has no such folder)."""
    def hook(event: str, args) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike) and \
                os.path.abspath(os.fsdecode(args[0])).startswith(run_dir):
            raise PermissionError(f"{args[0]}: no access to the run folder from a device elsewhere")
    return hook


def device_elsewhere(cfg_json: str, where: str, master: str, world: int, rank: int, log: str) -> None:
    """A device process resumed in its own folder ``where`` (its own working dir and --out), which cannot open
    anything in the run's folder: it learns the run's clock and its leg from server 0 only."""
    from trainer.run.launch import exit_now, role_main

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    cfg = json.loads(cfg_json)
    run_dir = os.path.abspath(cfg["out"])
    cfg["out"] = os.path.join(where, f"rank-{rank}")
    os.makedirs(cfg["out"], exist_ok=True)
    os.chdir(where)
    sys.addaudithook(_no_run_folder(run_dir))
    exit_now(role_main(["--config-json", json.dumps(cfg), "--role", "device", "--rank", str(rank),
                        "--world-size", str(world), "--master", master, "--resume"]))


def _handover_scenario(tmp_path: Path) -> Path:
    data = yaml.safe_load((FIXTURES / "runtime_handover_drop.yaml").read_text())
    for d in data["devices"]:
        if "availability" in d:
            d["availability"]["file"] = str(FIXTURES / d["availability"]["file"])
    data["devices"][0]["handover"] = [{"at": "0.5 s", "to": "mec-b"}, {"at": "2.9 s", "to": "mec-a"}]
    path = tmp_path / "handover.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_splitfrozen_with_handovers_resumed_by_devices_elsewhere_ends_as_the_uninterrupted_run(tiny_gpt2, tmp_path,
                                                                                                  monkeypatch):
    """SplitFrozen, 2 servers: mover (sends at ~0.3, 0.7, 1.1, 1.5 s, then ~2.3, 2.7, 3.1, 3.5 s) hands over to mec-b at
    0.5 s and back at 2.9 s, in epoch 1, after the checkpoint; stay-b never comes online. Resumed with every device
    process in its own folder, unable to open the run's: each starts on the leg server 0 tells it."""
    from trainer.run import launch
    from trainer.run.runner import load_run_config

    scenario = _handover_scenario(tmp_path)
    ref = launch.run(_cfg(tiny_gpt2, scenario, tmp_path / "ref", "splitfrozen"))
    assert [(h["at_s"], h["to"], h["sent_before"]) for h in ref["handovers"]] == [(0.5, "mec-b", 1), (2.9, "mec-a", 6)]
    out = tmp_path / "cut"
    _kill_after_epoch_0(_cfg(tiny_gpt2, scenario, out, "splitfrozen"),
                        [out / "checkpoint.safetensors", out / "servers" / "mec-b" / "checkpoint.safetensors"])
    cfg = load_run_config(str(out))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = functools.partial(device_elsewhere, json.dumps(dataclasses.asdict(cfg)), str(elsewhere))
    monkeypatch.setattr(launch, "launch_local", functools.partial(launch.launch_local,
                                                                  targets={r: target for r in (2, 3, 4)}))
    m = launch.run(cfg, resume=True)
    _same_network_outcome(ref, m, tmp_path / "ref", out)
    assert m["samples_not_trained"] == {"stay-b": 16}
    assert not any(elsewhere.glob("rank-*/checkpoint*")) and (elsewhere / "rank-2").is_dir()


def _baseline_scenario(tmp_path: Path) -> Path:
    """runtime_churn.yaml for FedLoRA (one round an epoch; uploads at ~2.3 s and ~4.9 s): phone-0 pauses and is
    gone from 4 s (its epoch-1 round cannot end), phone-1's uplink falls from 0.5 to 0.25 Mbps at 3 s."""
    data = yaml.safe_load((FIXTURES / "runtime_churn.yaml").read_text())
    (tmp_path / "windows.yaml").write_text("phone-0: [[0, 0.2], [0.4, 4.0]]\n")
    (tmp_path / "falls.csv").write_text("time_s,bandwidth\n0,0.5 Mbps\n3,0.25 Mbps\n1000,0.25 Mbps\n")
    d0, d1 = data["devices"]
    d0["availability"]["file"] = str(tmp_path / "windows.yaml")
    del d1["availability"]
    d1["uplink"] = {"trace": str(tmp_path / "falls.csv"), "latency": "5 ms"}
    for d in data["devices"]:
        d["flops"] = "100 MFLOPS"
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_fedlora_with_a_falling_link_and_a_pause_resumed_ends_as_the_uninterrupted_run(tiny_gpt2, tmp_path):
    """Restarted at 0, the resumed epoch would find phone-0 online (its round trained) and phone-1's uplink fast;
    on the run's clock phone-0's round is lost (its 16 samples untrained) and phone-1's upload takes twice as long."""
    from trainer.run.launch import run
    from trainer.run.runner import load_run_config

    scenario = _baseline_scenario(tmp_path)
    ref = run(_cfg(tiny_gpt2, scenario, tmp_path / "ref", "fedlora"))
    assert ref["samples_not_trained"] == {"phone-0": 16}
    out = tmp_path / "cut"
    _kill_after_epoch_0(_cfg(tiny_gpt2, scenario, out, "fedlora"), [out / "checkpoint.safetensors"])
    m = run(load_run_config(str(out)), resume=True)
    sends = _same_network_outcome(ref, m, tmp_path / "ref", out)
    first, second = sends["phone-1"]  # the same bytes at 0.5, then at 0.25 Mbps
    assert second > 1.6 * first, sends
