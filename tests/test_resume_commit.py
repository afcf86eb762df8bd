"""Two servers stopped inside a checkpoint's commit (issue 21's narrow race): every server has written its
checkpoint of an epoch's end and passed the barrier; server 0 is stopped at its 2nd checkpoint just before its own
rename ("before") or just after it ("after"), and every process is killed.

Server 0 commits first and the others after a second barrier (``trainer.run.resume._checkpoint``), because a
resumed run takes the run's clock from server 0's committed trace and each device's generation from the committed
checkpoints before the servers agree. Stopped before server 0's commit, no server has committed that epoch and all
resume from the one before; stopped after it, mec-b commits its written one on resume and the devices take its
generation from that written file. Either way every server resumes one logical model and the run ends as an
uninterrupted one: untrained samples, rounds, handovers, losses, eval and bit-identical adapters on both servers.
(With every server committing after one barrier, as before, "before" let mec-b commit the later epoch and
resumed its model on the earlier epoch's clock and device states.)"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import pytest
import torch

from tests.test_resume_cache import _adapter, _same_end, _two_servers
from tests.test_runtime import HALTED, _in_thread, _wait_for, kill_run
from trainer.methods.checkpoint import NEXT
from trainer.run.resume import TRACE_NEXT


class _HaltingOs:
    """``trainer.run.resume``'s ``os`` in server 0's process: at its ``nth`` commit it writes :data:`HALTED` and
    sleeps until killed, just before its first rename (``before``) or just after its last (``after``)."""

    def __init__(self, out: Path, nth: int, where: str):
        self.out, self.nth, self.where, self.commits = out, nth, where, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst) -> None:
        first, last = Path(src).name == TRACE_NEXT, Path(src).name == NEXT
        self.commits += first
        if first and self.commits == self.nth and self.where == "before":
            self._halt()
        os.replace(src, dst)
        if last and self.commits == self.nth and self.where == "after":
            self._halt()

    def _halt(self) -> None:
        (self.out / HALTED).touch()
        while True:
            time.sleep(60)


def _server_halting_in_its_commit(cfg_json: str, master: str, world: int, rank: int, log: str, nth: int = 2,
                                  where: str = "before") -> None:
    from trainer.run import launch, resume
    from trainer.transport import secure

    resume.os = _HaltingOs(Path(json.loads(cfg_json)["out"]), nth, where)
    encrypt = "off" if secure.encrypt_default(multi_host=False) is False else "on"
    launch._role_process(cfg_json, "server", rank, world, master, False, log, os.environ[secure.SECRET_FILE_ENV],
                         encrypt)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.usefixtures("one_torch_thread")
def test_two_servers_stopped_in_server_0s_commit_resume_as_one_model(tiny_gpt2, tmp_path, where):
    import yaml

    from sfsim.errors import SfsimError
    from tests.test_multiserver import _cfg
    from trainer.run.launch import launch_local, run
    from trainer.run.runner import load_run_config

    data = _two_servers(tmp_path)
    data["training"]["cache_activations"] = False
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    kw = dict(devices=path, train_samples=sum(d["samples"] for d in data["devices"]), epochs=3, emulate="all",
              server_order="fifo", method="fedlora")
    ref = run(_cfg(tiny_gpt2, tmp_path / "ref", **kw))
    cut = _cfg(tiny_gpt2, tmp_path / "cut", **kw)
    out = tmp_path / "cut"
    stand_in = functools.partial(_server_halting_in_its_commit, json.dumps(dataclasses.asdict(cut)), where=where)
    t, box = _in_thread(launch_local, cut, targets={0: stand_in})
    _wait_for(out / HALTED, timeout=180)
    epochs = [_epoch(out / "servers" / "mec-b" / f) for f in ("checkpoint.safetensors", NEXT)]
    kill_run(out)
    t.join(60)
    assert isinstance(box.get("error"), SfsimError), box
    assert epochs[0] >= 0 and epochs[1] == epochs[0] + 1  # mec-b waits for server 0's commit before its own
    assert _epoch(out / "checkpoint.safetensors") == epochs[where == "after"]
    m = run(load_run_config(str(out)), resume=True)
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == {k: v["sync_rounds"] for k, v in ref["servers"].items()}
    assert [(h["from"], h["to"]) for h in m["handovers"]] == [("mec-a", "mec-b")]
    _same_end(ref, m, tmp_path / "ref", out)
    other = _adapter(out / "servers" / "mec-b")
    assert all(torch.equal(v, other[k]) for k, v in _adapter(out).items())


def _epoch(path: Path) -> int:
    from trainer.methods.checkpoint import read_progress

    return (read_progress(path) or {}).get("epoch", -1)
