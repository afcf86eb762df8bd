"""``--resume`` with the activation cache (issue 21): a checkpoint saves what the cache holds and who departed
(``ActivationCache.checkpoint``, ``trainer.run.resume.saved_cache``), and a resumed run replays what the interrupted
one would have: the same micro-batches, the same replays left in the epoch it stopped in, no device that departed
before the checkpoint replayed again, nor its untrained samples counted twice."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from sfsim.errors import SfsimError
from trainer.transport.cache import SAVED, ActivationCache, digest


def _mb(seed: int, rows: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"hidden": torch.randn(rows, 3, 4, generator=g), "attention_mask": torch.ones(rows, 3, dtype=torch.uint8),
            "labels": torch.randint(0, 2, (rows,), generator=g)}


def _filled(tmp_path, memory_mbs: int = 1) -> ActivationCache:
    """A cache filled in epoch 0 (one micro-batch in memory, the rest on file): stay 0, 2; mover 1; gone 3 (left)."""
    cache = ActivationCache(memory=memory_mbs * sum(t.nbytes for t in _mb(0).values()), folder=tmp_path / "spill")
    cache.fill(0, resumed=False)
    for name, seed in (("stay", 0), ("mover", 1), ("stay", 2), ("gone", 3)):
        cache.put(name, _mb(seed))
    cache.leave("gone")
    return cache


def test_a_restored_cache_holds_bit_for_bit_what_the_checkpoint_saved_and_nothing_after_it(tmp_path):
    """Saved at two checkpoints (the second appends only what came after the first), then a third write the run was
    killed in before its checkpoint: the restored cache holds the second checkpoint's micro-batches, bit for bit (the
    digests they were put with), what was replayed and who left; the epoch it was taken in replays as it did."""
    out = tmp_path / "out"
    cache = _filled(tmp_path)
    first = cache.checkpoint(out)
    assert first["held"] == {"stay": 2, "mover": 1} and first["left"] == ["gone"]
    size = os.path.getsize(next((out / SAVED).iterdir()))
    cache.put("mover", _mb(5))
    cache.get("stay", 1)
    cache.replaying = (1, {"stay": 2, "mover": 2})
    second = cache.checkpoint(out)
    assert second["saved"]["stay"] == first["saved"]["stay"]  # nothing of stay's saved again
    cache.put("stay", _mb(6))
    cache.checkpoint(out)  # killed before the server's checkpoint recorded this one: the files run past `second`
    back = ActivationCache(memory=0, folder=tmp_path / "spill2")  # everything on file
    back.restore(out, second, 1)
    assert {n: back.count(n) for n in ("stay", "mover", "gone")} == {"stay": 2, "mover": 2, "gone": 0}
    for name, j, seed in (("stay", 0, 0), ("stay", 1, 2), ("mover", 0, 1), ("mover", 1, 5)):
        assert digest(back.get(name, j)) == digest(_mb(seed)), (name, j)
    assert back.left == {"gone"} and back.reads["stay"][0] == digest(_mb(2))
    assert back.resumed_replays(1) == {"stay": 2, "mover": 2} and back.resumed_replays(1) is None  # once
    assert size > 0 and back.filled_in == 0
    for c in (cache, back):
        c.close()


def test_a_cache_stopped_in_its_filling_epoch_keeps_its_part_and_fills_on(tmp_path):
    """Killed mid epoch 0 (the one that fills the cache): the resumed epoch keeps the restored part and appends what the
    devices send from where they stopped, so epoch 1 replays the whole epoch (it used to be sent again)."""
    out = tmp_path / "out"
    cache = _filled(tmp_path)
    state = cache.checkpoint(out)
    back = ActivationCache(memory=1e9, folder=tmp_path / "spill2")
    back.restore(out, state, 0)
    back.fill(0, resumed=True)  # the resumed epoch 0
    back.put("mover", _mb(7))
    assert back.replays(1) == {"stay": 2, "mover": 2}
    cache.close()
    back.close()


def test_a_torn_saved_cache_refuses_to_resume_in_one_line(tmp_path):
    from trainer.run.resume import restore_cache

    out = tmp_path / "out"
    cache = _filled(tmp_path)
    state = cache.checkpoint(out)
    path = max((out / SAVED).iterdir(), key=os.path.getsize)
    path.write_bytes(path.read_bytes()[:-5])
    method = SimpleNamespace(cache=ActivationCache(memory=1e9, folder=tmp_path), departures=SimpleNamespace(at={}))
    with pytest.raises(SfsimError, match=r"^--resume: the activation cache saved with the checkpoint in .* cannot be "
                                         r"read \(.*shorter than the checkpoint's \d+ bytes\); start the run again$"):
        restore_cache(out, method, {**state, "gone": {}}, 1, 0.0)
    cache.close()


def test_departures_read_before_a_checkpoint_are_carried_on_the_runs_clock(tmp_path):
    """A device that departed at 3.75 s of the run (its gone read by the server), a checkpoint at 5 s, the resumed
    attempt's clock 0 at 5 s: its departure is at -1.25 s there, so every replay of it in the resumed attempt is after
    it; a device whose drop instant is before the attempt and whose gone never came is taken at its drop instant,
    not waited for (it sends none: its servers had it, or have its instant)."""
    from trainer.run.resume import restore_cache, saved_cache
    from trainer.transport.departure import Departures

    inbox = SimpleNamespace(cv=_NoLock(), by_device={}, lost=set())
    setup = SimpleNamespace(transport=SimpleNamespace(inbox=inbox, drops={"late": -0.5}, lost={}))
    deps = Departures(setup, lambda n: True, lambda n, why: None)
    deps.at["mover"] = 1.75  # read in an attempt whose clock started at 2.0 s of the run
    cache = _filled(tmp_path)
    state = saved_cache(tmp_path / "out", SimpleNamespace(cache=cache, departures=deps), 2.0)
    assert state["gone"] == {"mover": 3.75}
    again = Departures(setup, lambda n: True, lambda n, why: None)
    restore_cache(tmp_path / "out", SimpleNamespace(cache=ActivationCache(1e9, tmp_path), departures=again), state, 1,
                  5.0)
    assert again.at == {"mover": -1.25}
    assert again.gone("mover", 0.0) and again.gone("late", 0.0) and again.at["late"] == -0.5
    assert not again.gone("stay", 0.0)  # no drop: trains
    cache.close()


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
