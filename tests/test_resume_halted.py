"""Two servers stopped between a checkpoint's write and its commit, as a user's kill can (issue 21): server 0 halted
before writing epoch 2's checkpoint, mec-b wrote its own and waits in the commit barrier; every process is killed. The
resumed run agrees on epoch 1 over the real backhaul links (mec-b's written epoch 2 was read as a sync round's
instant: 'the servers can no longer agree'), each device that handed over loads the state it saved for the server
holding it then (it loaded mec-b's uncommitted generation: 'killed between the two writes'), and the run ends as an
uninterrupted one: untrained samples, rounds, handovers, losses, eval and bit-identical adapters on both servers."""

from __future__ import annotations

import pytest
import torch

from tests.test_resume_cache import _adapter, _killed_and_resumed, _same_end, _two_servers


@pytest.mark.slow
@pytest.mark.parametrize("method, sync", [("fedlora", "sync"), ("splitlora", "async"), ("splitfrozen", "sync")])
@pytest.mark.usefixtures("one_torch_thread")
def test_two_servers_killed_between_write_and_commit_resume_as_uninterrupted(tiny_gpt2, tmp_path, method, sync):
    data = _two_servers(tmp_path)
    data["training"]["cache_activations"] = False
    data["training"]["sync"]["mode"] = sync
    ref, m = _killed_and_resumed(tiny_gpt2, tmp_path, data, 2, server_order="fifo", method=method)
    assert ref["samples_not_trained"]["dropper"] > 0  # dropper left in epoch 1, before the kill
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == {k: v["sync_rounds"] for k, v in ref["servers"].items()}
    assert [(h["from"], h["to"]) for h in m["handovers"]] == [("mec-a", "mec-b")]
    _same_end(ref, m, tmp_path / "ref", tmp_path / "cut")
    other = _adapter(tmp_path / "cut" / "servers" / "mec-b")
    assert all(torch.equal(v, other[k]) for k, v in _adapter(tmp_path / "cut").items())
