"""``--resume`` of a run with handovers: each device starts the resumed run on the server of its leg at the
checkpoint, and the later handovers follow the run's clock from the checkpoint on (``trainer.run.resume.resumed_legs``).

2 server + 3 device processes on loopback with a tiny random GPT-2 (``tests/fixtures/runtime_handover_drop.yaml``:
mover hands over from mec-a to mec-b in epoch 0 and back in epoch 1; stay-b is never online, so both epochs leave
its samples untrained).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from sfsim.errors import SfsimError
from tests.test_runtime import kill_run

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


LEGS = {"fedlora": [("mec-b", 0.3), ("mec-a", 4.5)], "splitlora": [("mec-b", 0.7), ("mec-a", 5.6)]}
"""FedLoRA: uploads (2 micro-batches each) at ~1.2, 2.5 s, then (epoch 1) ~3.85 and 5.15 s; SplitLoRA (cut 1): sends at
~0.35, 1.5, 2.7, 3.85 s, then (epoch 1) ~5.1, 6.3, 7.5 and 8.6 s. The second handover falls after the checkpoint."""
BEFORE = {"fedlora": [0, 6], "splitlora": [1, 5]}


def _scenario(tmp_path: Path, method: str) -> Path:
    data = yaml.safe_load((FIXTURES / "runtime_handover_drop.yaml").read_text())
    for d in data["devices"]:
        if method == "fedlora":
            d["flops"] = "100 MFLOPS"
        if "availability" in d:
            d["availability"]["file"] = str(FIXTURES / d["availability"]["file"])
    if method == "fedlora":  # the simulator leaves training.sync's rounds out with handovers (tests/test_handover.py)
        del data["training"]["sync"]
    data["devices"][0]["handover"] = [{"at": f"{at} s", "to": to} for to, at in LEGS[method]]
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cfg(model: str, scenario: Path, out: Path, method: str):
    from trainer.run.runner import RunConfig

    return RunConfig(devices=str(scenario), model=model, task="sst2", method=method, partition="iid", epochs=2,
                     train_samples=32, eval_samples=8, max_len=48, lr=0.01, data_dir=str(FIXTURES / "data"),
                     out=str(out), progress=False, launch="local", peer_timeout=20.0, server_order="fifo",
                     emulate="all", split=1)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(out / "adapter" / "adapter_model.safetensors")
    tensors.update({f"head.{k}": v for k, v in load_file(out / "adapter" / "head.safetensors").items()})
    return tensors


def _epoch(path: Path) -> int:
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


@pytest.mark.parametrize("method", ["fedlora", pytest.param("splitlora", marks=pytest.mark.slow)])  # about 35 s
def test_a_run_with_handovers_stopped_and_resumed_ends_as_an_uninterrupted_run(tiny_gpt2, tmp_path, method):
    """Stopped after both servers checkpointed epoch 0 (mover then on mec-b), resumed: mover starts epoch 1 on mec-b,
    hands back to mec-a on the run's clock, and the run ends as the uninterrupted one."""
    from trainer.run.launch import run
    from trainer.run.runner import load_run_config

    scenario = _scenario(tmp_path, method)
    ref = run(_cfg(tiny_gpt2, scenario, tmp_path / "ref", method))
    out = tmp_path / "cut"
    box = {}
    t = threading.Thread(target=lambda: box.update(result=_catch(run, _cfg(tiny_gpt2, scenario, out, method))))
    t.start()
    end = time.monotonic() + 120
    while min(_epoch(out / "checkpoint.safetensors"), _epoch(out / "servers" / "mec-b" / "checkpoint.safetensors")) < 1:
        assert time.monotonic() < end and t.is_alive(), "no epoch-1 checkpoint on both servers"
        time.sleep(0.02)
    kill_run(out)
    t.join(60)
    assert isinstance(box["result"], SfsimError), box  # stopped in epoch 1, not finished
    m = run(load_run_config(str(out)), resume=True)
    a, b = _adapter(tmp_path / "ref"), _adapter(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    other = _adapter(out / "servers" / "mec-b")
    assert all(torch.equal(b[k], other[k]) for k in b)  # still one logical model
    moves = [(h["device"], h["at_s"], h["from"], h["to"], h["sent_before"]) for h in ref["handovers"]]
    (b1, t1), (a2, t2) = LEGS[method]
    assert moves == [("mover", t1, "mec-a", b1, BEFORE[method][0]), ("mover", t2, b1, a2, BEFORE[method][1])]
    assert [(h["device"], h["at_s"], h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == moves
    assert m["samples_not_trained"] == ref["samples_not_trained"] == {"stay-b": 16}
    assert max(abs(x - y) for x, y in zip(m["train_loss_history"], ref["train_loss_history"], strict=True)) <= 1e-5


def test_resumed_legs_start_each_device_on_the_leg_it_was_on_at_the_checkpoint(tmp_path):
    """Legs (at, rank) from the run's clock at the checkpoint (2.0 s) on; ``mover`` took its 0.5 s handover, not yet
    the one at 1.5 s (due at its next send: at once), ``back`` took both of its own; a missing record is refused."""
    from trainer.methods.checkpoint import save_checkpoint
    from trainer.run.resume import TRACE_FILE, resumed_legs

    legs = {"mover": [(0.0, 0), (0.5, 1), (1.5, 0), (3.0, 1)], "back": [(0.0, 1), (0.2, 0), (1.0, 1)],
            "still": [(0.0, 0)]}
    with pytest.raises(SfsimError, match=r"checkpoint_trace.json is missing or unreadable; a run whose network changes"):
        resumed_legs(tmp_path, legs)
    (tmp_path / TRACE_FILE).write_text(json.dumps({"epoch": 1, "steps": 4, "until_s": 2.0, "events": []}))
    moves = [{"device": "mover", "at_s": 0.5}, {"device": "back", "at_s": 0.2}, {"device": "back", "at_s": 1.0}]
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {}, {"epoch": 1, "totals": {"wall_s": 1.0, "handovers": moves}})
    clock, out = resumed_legs(tmp_path, legs)
    assert clock == 2.0
    assert out == {"mover": [(0.0, 1), (0.0, 0), (1.0, 1)], "back": [(0.0, 1)], "still": [(0.0, 0)]}
