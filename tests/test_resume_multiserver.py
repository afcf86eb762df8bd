"""``--resume`` with several servers: each server checkpoints its own state at the end of every epoch (after
the closing sync round) and a resumed run restores each server's; the servers must agree on the epoch.

2 server + 4 device processes on loopback with a tiny random GPT-2 (``tests/fixtures/runtime_two_servers.yaml``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sfsim.errors import SfsimError
from tests.test_runtime import kill_run
from trainer.run.resume import agree_across_servers, checkpoint_totals

FIXTURES = Path(__file__).parent / "fixtures"
TWO = FIXTURES / "runtime_two_servers.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model: str, out, **over):
    from trainer.run.runner import RunConfig

    kw = dict(devices=str(TWO), model=model, task="sst2", method="splitfrozen", partition="iid", epochs=2,
              train_samples=24, eval_samples=8, max_len=48, lr=0.01, data_dir=str(FIXTURES / "data"), out=str(out),
              progress=False, launch="local", peer_timeout=20.0, server_order="round-robin", emulate="compute")
    kw.update(over)
    return RunConfig(**kw)


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


def _stop_after_epoch_1(run, cfg, out: Path) -> None:
    """Run ``cfg`` in a thread; SIGKILL every role once both servers checkpointed epoch 1."""
    box = {}
    t = threading.Thread(target=lambda: box.update(result=_catch(run, cfg)))
    t.start()
    end = time.monotonic() + 120
    while min(_epoch(out / "checkpoint.safetensors"), _epoch(out / "servers" / "mec-b" / "checkpoint.safetensors")) < 1:
        assert time.monotonic() < end and t.is_alive(), "no epoch-1 checkpoint on both servers"
        time.sleep(0.02)
    kill_run(out)
    t.join(60)
    assert isinstance(box["result"], SfsimError), box  # stopped in epoch 2, not finished


def _catch(fn, *args):
    try:
        return fn(*args)
    except BaseException as err:  # noqa: BLE001 (handed to the test)
        return err


@pytest.mark.parametrize("method", ["fedlora", pytest.param("splitfrozen", marks=pytest.mark.slow)])  # about 21 s
def test_two_servers_stopped_and_resumed_end_as_an_uninterrupted_run(tiny_gpt2, tmp_path, method):
    from trainer.run.launch import run
    from trainer.run.runner import load_run_config

    ref = run(_cfg(tiny_gpt2, tmp_path / "ref", method=method))
    out = tmp_path / "cut"
    _stop_after_epoch_1(run, _cfg(tiny_gpt2, out, method=method), out)
    before = checkpoint_totals(out)
    assert set(before["flops"]) >= {"a-0", "a-1", "b-0", "b-1"}  # every server's devices, as they reported
    m = run(load_run_config(str(out)), resume=True)
    # each server restored its own state: the adapters, the losses, the evaluations and the backhaul's rounds
    a, b = _adapter(tmp_path / "ref"), _adapter(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    other = _adapter(out / "servers" / "mec-b")
    assert all(torch.equal(b[k], other[k]) for k in b)  # still one logical model
    assert max(abs(x - y) for x, y in zip(m["train_loss_history"], ref["train_loss_history"], strict=True)) <= 1e-5
    assert m["eval_history"] == ref["eval_history"]
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == {k: v["sync_rounds"] for k, v in ref["servers"].items()}
    # an epoch-end checkpoint has nothing in flight: the cumulative totals are the uninterrupted run's
    for key in ("device_flops", "server_flops", "uplink_bytes_by_device", "downlink_bytes_by_device"):
        assert m[key] == ref[key], key
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    assert sorted(e["args"]["lane"] for e in events if e.get("name") == "resume") == ["mec-a", "mec-b"]


class _Links:
    """A backhaul stand-in for a server's view: the other server's (committed, written) epochs are added."""

    def __init__(self, other: int, committed: float, written: float = -1.0):
        self.at, self.theirs = 2 * other, (committed, written)

    def all_reduce(self, flat: torch.Tensor) -> None:
        flat[self.at] += self.theirs[0]
        flat[self.at + 1] += self.theirs[1]


def test_servers_whose_checkpoints_are_from_different_epochs_refuse_to_resume(tmp_path):
    from trainer.methods.checkpoint import save_checkpoint

    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {}, {"epoch": 2})
    agree_across_servers(_Links(1, 2.0), 0, 2, tmp_path, "mec-a")  # the same epoch: nothing to say
    with pytest.raises(SfsimError, match=r"not from the same epoch \(server 0: epoch 2, server 1: epoch 1\)"):
        agree_across_servers(_Links(1, 1.0), 0, 2, tmp_path, "mec-a")  # server 1 never wrote epoch 2
    with pytest.raises(SfsimError, match="server 1: none"):
        agree_across_servers(_Links(1, -1.0), 0, 2, tmp_path, "mec-a")


def test_a_server_stopped_before_its_commit_commits_on_resume(tmp_path):
    """Server 1 wrote epoch 2 but was stopped before renaming it; server 0 committed epoch 2: server 1 commits."""
    from trainer.methods.checkpoint import save_checkpoint
    from trainer.run.resume import NEXT

    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {}, {"epoch": 1})
    save_checkpoint(tmp_path, {"w": torch.ones(1)}, {}, {"epoch": 2}, name=NEXT)
    agree_across_servers(_Links(0, 2.0), 1, 2, tmp_path, "mec-b")
    assert _epoch(tmp_path / "checkpoint.safetensors") == 2 and not (tmp_path / NEXT).exists()
    # server 0's view of the same stop: nothing to change on its side
    other = tmp_path / "a"
    other.mkdir()
    save_checkpoint(other, {"w": torch.ones(1)}, {}, {"epoch": 2})
    agree_across_servers(_Links(1, 1.0, 2.0), 0, 2, other, "mec-a")
    assert _epoch(other / "checkpoint.safetensors") == 2


def test_servers_agree_over_their_real_backhaul_links_when_one_wrote_a_later_epoch(tmp_path):
    """Over real backhaul links (``ServerLinks``, which read a vector's last values as a round's opening and instant):
    server 1 committed epoch 1 and wrote epoch 2 (stopped in the barrier before its commit), server 0 committed epoch 1
    and was stopped before writing 2. Both resume from epoch 1, on their own clocks near 0. (Its written epoch 2 used to
    be read as the round's instant, 2 s ahead of server 1's clock: the resume ended 'the servers can no longer agree'.)"""
    from tests.test_runtime_peer_fields import _linked
    from trainer.methods.checkpoint import save_checkpoint
    from trainer.run.resume import NEXT

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        save_checkpoint(folder, {"w": torch.zeros(1)}, {}, {"epoch": 1})
    save_checkpoint(b, {"w": torch.ones(1)}, {}, {"epoch": 2}, name=NEXT)
    s0, s1, _ = _linked()
    s0.now = s1.now = lambda: 0.01
    got = {}
    t = threading.Thread(target=lambda: got.update(b=_catch(agree_across_servers, s1, 1, 2, b, "mec-b")))
    t.start()
    got["a"] = _catch(agree_across_servers, s0, 0, 2, a, "mec-a")
    t.join(10)
    assert got == {"a": None, "b": None}
    assert (_epoch(a / "checkpoint.safetensors"), _epoch(b / "checkpoint.safetensors")) == (1, 1)


def test_a_device_that_handed_over_loads_the_generation_of_the_server_that_asked_it(tmp_path):
    """Each server counts its own steps: mec-b's checkpoint (epoch 1, its step 6) asked mover, mec-a's (its step 9)
    did not. Killed after mover saved for mec-b's uncommitted epoch 2 (step 12): mover takes the generation of step 6
    (it took the run folder's, mec-a's 9, found neither and loaded 12: 'the run was killed between the two writes')."""
    from trainer.methods.checkpoint import (
        load_device_state,
        save_checkpoint,
        save_device_state,
        wanted_device_checkpoint,
    )

    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {}, {"epoch": 1, "device_checkpoint": 9, "devices": ["stay-a"]})
    (tmp_path / "servers" / "mec-b").mkdir(parents=True)
    save_checkpoint(tmp_path / "servers" / "mec-b", {"w": torch.zeros(1)}, {},
                    {"epoch": 1, "device_checkpoint": 6, "devices": ["mover", "stay-b"]})
    for ckpt in (6, 12):
        save_device_state(tmp_path, "mover", {"a": torch.full((1,), float(ckpt))}, {}, ckpt)
    assert (wanted_device_checkpoint(tmp_path, "mover"), wanted_device_checkpoint(tmp_path, "stay-a")) == (6, 9)
    assert wanted_device_checkpoint(tmp_path) == 9  # no name: the run folder's (one server)
    got, tensors = load_device_state(tmp_path, "mover", {}, wanted_device_checkpoint(tmp_path, "mover"))
    assert got == 6 and tensors["a"].item() == 6.0


def test_a_checkpoints_trace_is_committed_with_it(tmp_path):
    """Several servers: a server stopped between its write and its commit keeps the committed checkpoint's trace (a
    resumed run starts on its clock); one that commits on resume commits its trace too."""
    from trainer.methods.checkpoint import save_checkpoint
    from trainer.run.resume import NEXT, TRACE_FILE, TRACE_NEXT

    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {}, {"epoch": 1})
    (tmp_path / TRACE_FILE).write_text(json.dumps({"epoch": 1, "until_s": 2.0}))
    save_checkpoint(tmp_path, {"w": torch.ones(1)}, {}, {"epoch": 2}, name=NEXT)
    (tmp_path / TRACE_NEXT).write_text(json.dumps({"epoch": 2, "until_s": 4.0}))
    agree_across_servers(_Links(0, 2.0), 1, 2, tmp_path, "mec-b")
    assert json.loads((tmp_path / TRACE_FILE).read_text())["until_s"] == 4.0 and not (tmp_path / TRACE_NEXT).exists()
