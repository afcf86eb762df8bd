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


# -- killed and resumed for real ------------------------------------------------------------------------------------
def _one_server(tmp_path) -> dict:
    """runtime_handover.yaml's devices on one server, cache over 3 epochs, 16 + 8 + 4 samples: d2 sends its one
    micro-batch by ~0.7 s and drops for good at 1.0 s (epoch 0 ends ~1.9 s): no later epoch replays it."""
    import yaml

    from tests.test_cache_handover import FIXTURES

    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["training"].update(cache_activations=True, epochs=3)
    del data["training"]["sync"]
    data["servers"] = data["servers"][:1]
    devs = data["devices"]
    for d, (name, samples) in zip(devs, (("d0", 16), ("d1", 8), ("d2", 4)), strict=True):
        d.update(name=name, samples=samples, server="mec-a")
        d.pop("handover", None)
    (tmp_path / "w.yaml").write_text("d2: [[0, 1.0]]\n")
    devs[2]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "drop"}
    return data


def _two_servers(tmp_path) -> dict:
    """runtime_handover.yaml (mover hands over mec-a -> mec-b at 0.8 s), sync every 2, cache over 3 epochs, and
    dropper on mec-b, which sends one micro-batch and drops for good at 1.0 s; the devices of a server send at
    instants >= 0.1 s apart (stay-a 10, dropper 13 MFLOPS), so that fifo order is the same run to run."""
    from tests.test_cache_handover import _handover_fleet

    data = _handover_fleet(True)
    data["devices"][1]["flops"] = "10 MFLOPS"
    (tmp_path / "w.yaml").write_text("dropper: [[0, 1.0]]\n")
    data["devices"].append({**data["devices"][2], "name": "dropper", "flops": "13 MFLOPS",
                            "availability": {"file": str(tmp_path / "w.yaml"), "churn": "drop"}})
    return data


def _adapter(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {**load_file(out / "adapter" / "adapter_model.safetensors"), **load_file(out / "adapter" / "head.safetensors")}


def _killed_and_resumed(tiny_gpt2, tmp_path, data: dict, nth: int, killed=None, **over) -> tuple[dict, dict]:
    """The uninterrupted run of ``data`` and the same run killed before server 0's ``nth`` checkpoint (``killed`` is
    called with its output folder then), then resumed."""
    import yaml

    from tests.test_multiserver import _cfg
    from tests.test_runtime import kill_halted
    from trainer.run.launch import run
    from trainer.run.runner import load_run_config

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    kw = dict(devices=path, train_samples=sum(d["samples"] for d in data["devices"]), epochs=3, emulate="all", **over)
    ref = run(_cfg(tiny_gpt2, tmp_path / "ref", **kw))
    kill_halted(_cfg(tiny_gpt2, tmp_path / "cut", **kw), nth)
    if killed is not None:
        killed(tmp_path / "cut")
    return ref, run(load_run_config(str(tmp_path / "cut")), resume=True)


def _same_end(ref: dict, m: dict, ref_out, out) -> None:
    """The resumed run ends where the uninterrupted one does: untrained samples, steps, losses, eval, bit-identical
    adapters, and every server's cache held and replayed the same micro-batches (digests)."""
    assert m["samples_not_trained"] == ref["samples_not_trained"]
    assert not m["lost_devices"] and not ref["lost_devices"]
    assert len(m["train_loss_history"]) == len(ref["train_loss_history"])
    assert max(abs(x - y) for x, y in zip(m["train_loss_history"], ref["train_loss_history"], strict=True)) <= 1e-5
    assert m["eval_history"] == ref["eval_history"]
    a, b = _adapter(ref_out), _adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for x, y in ((ref, m), *((ref["servers"][s], m["servers"][s]) for s in ref.get("servers", {}) if "servers" in m)):
        if "activation_cache" in x:
            assert {n: (sorted(c["held"]), sorted(c["replayed"])) for n, c in x["activation_cache"]["devices"].items()} \
                == {n: (sorted(c["held"]), sorted(c["replayed"])) for n, c in y["activation_cache"]["devices"].items()}


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_one_server_killed_mid_cached_epoch_after_a_drop_resumes_as_uninterrupted(tiny_gpt2, tmp_path):
    """Checkpoints every 2 steps; killed before the 6th (step 10: epoch 1 has 7 steps, epoch 2 replays 6 micro-batches),
    resumed from step 8, mid epoch 2, whose cache holds d2's micro-batch though d2 dropped at 1.0 s. The resumed run
    replays epoch 2's rest from the saved cache (no device sends again), d2 never again: 2 x 4 of its samples untrained,
    as uninterrupted (without the saved cache and its departures: 12, epoch 2 sent again, other adapters). It is also
    the real run of ``Goodbye.arm``'s ``leave < 0`` guard: d2 dropped before the resumed attempt, and without the guard
    its timer fires at once and sends a gone stamped before the attempt's clock; the resumed run then counted 4 of its
    samples untrained, not 8 (2 of 2 runs without the guard, session 12)."""
    ref, m = _killed_and_resumed(tiny_gpt2, tmp_path, _one_server(tmp_path), 6, checkpoint_every=2,
                                 server_order="round-robin")
    assert ref["samples_not_trained"] == {"d2": 8}
    assert m["resumed"]["totals_before"]["uplink_bytes"] == ref["uplink_bytes_by_device"]  # nothing sent again
    _same_end(ref, m, tmp_path / "ref", tmp_path / "cut")


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_two_servers_with_a_handover_and_a_drop_killed_in_the_cached_epoch_resume_as_uninterrupted(tiny_gpt2, tmp_path):
    """Killed before server 0's 2nd checkpoint (the end of epoch 2, the first cached one: every server checkpoints at
    epoch ends), resumed from the end of epoch 1: each server replays its own saved part of mover's cache (mover is on
    mec-b by then and has no handover left), weighs its replays' samples in the averages and replays in the scenario's
    order, as uninterrupted: the same rounds, bit-identical adapters on both servers."""
    ref, m = _killed_and_resumed(tiny_gpt2, tmp_path, _two_servers(tmp_path), 2, server_order="fifo")
    assert ref["samples_not_trained"] == {"dropper": 4 + 2 * 8}
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == {k: v["sync_rounds"] for k, v in ref["servers"].items()}
    assert [(h["from"], h["to"]) for h in m["handovers"]] == [("mec-a", "mec-b")]
    _same_end(ref, m, tmp_path / "ref", tmp_path / "cut")
    other = _adapter(tmp_path / "cut" / "servers" / "mec-b")
    assert all(torch.equal(v, other[k]) for k, v in _adapter(tmp_path / "cut").items())


def test_a_checkpoint_without_the_cache_refuses_to_resume_a_cached_run(tmp_path):
    """A cached run's checkpoint written before checkpoints saved the cache: one line, not a resume that sends again
    what the servers held (and trains other micro-batches than the interrupted run)."""
    from trainer.run.resume import restore_cache

    method = SimpleNamespace(cache=ActivationCache(memory=1e9, folder=tmp_path), departures=SimpleNamespace(at={}))
    with pytest.raises(SfsimError, match=r"^--resume: the checkpoint in .* does not hold the activation cache"):
        restore_cache(tmp_path, method, None, 1, 0.0)
    restore_cache(tmp_path, SimpleNamespace(cache=None), None, 1, 0.0)  # no cache: nothing to restore


class _Clock:
    """A server's clock that moves 1 s per replay trained (the stub's ``_train``)."""

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t


def _server(tmp_path, cache: ActivationCache, clock: _Clock, gone_at: dict[str, float]):
    """A SplitFrozen server's replay path on stubs: its cache, departures at ``gone_at`` (the run's clock), a training
    step that only moves the clock and records the device."""
    from trainer.methods.splitfrozen import SplitFrozen

    sf = SplitFrozen.__new__(SplitFrozen)
    sf.setup = SimpleNamespace(seed=3, accumulate=1, micro_batch=2, server_order="round-robin", periods=None,
                               meter=clock, samples={"a": 6, "b": 6}, cuts={"a": 1, "b": 1})
    sf.cache, sf.lost, sf.not_trained, sf.cursor, sf.legs, sf.sync = cache, {}, {}, {}, {}, None
    sf.on_step_done, sf.trained = None, []
    sf.departures = SimpleNamespace(gone=lambda n, now: gone_at.get(n, float("inf")) <= now)

    def train(msg):
        sf.trained.append(msg.device)
        clock.t += 1.0
        return 0.5, 2

    sf._train, sf._step = train, lambda last=False: None
    return sf


def test_a_replay_path_resumed_mid_epoch_after_a_departure_counts_each_replay_once(tmp_path):
    """Epoch 1 replays a and b in turns (3 micro-batches of 2 samples each; 1 s a replay); b departs at 0.5 s, before
    its first. Uninterrupted: a trains 3, b none, 6 samples of b untrained. A checkpoint after the 2nd step (b's first
    replay skipped), resumed from its cursor and cache: the same replays, b's skipped ones counted once, 6 in all (a
    skipped replay did not advance the cursor, so the resumed run replayed b's slots from its first again: 8)."""
    out = tmp_path / "out"
    cache = _filled_ab(tmp_path)
    whole = _server(tmp_path, cache, _Clock(), {"b": 0.5})
    steps, saved = [], {}

    def on_step(loss, n):
        steps.append(n)
        if len(steps) == 2:  # a checkpoint after the 2nd step: the cursor and what the cache records
            saved.update(cursor=dict(whole.cursor), not_trained=dict(whole.not_trained), cache=cache.checkpoint(out),
                         trained=list(whole.trained), t=whole.setup.meter.now())

    assert whole._from_cache(1, on_step, {"a": 3, "b": 3}, {}, ["a", "b"]) is True
    assert whole.trained == ["a", "a", "a"] and whole.not_trained == {"b": 6} and saved["not_trained"] == {"b": 2}
    back = ActivationCache(memory=1e9, folder=tmp_path / "spill2")
    back.restore(out, saved["cache"], 1)
    clock = _Clock()
    clock.t = saved["t"]  # the run's clock at the checkpoint
    resumed = _server(tmp_path, back, clock, {"b": 0.5})
    resumed.not_trained = dict(saved["not_trained"])
    assert resumed._from_cache(1, lambda loss, n: None, {"a": 3, "b": 3}, saved["cursor"], ["a", "b"]) is True
    assert saved["trained"] + resumed.trained == whole.trained and resumed.not_trained == whole.not_trained
    for c in (cache, back):
        c.close()


def _filled_ab(tmp_path) -> ActivationCache:
    cache = ActivationCache(memory=1e9, folder=tmp_path / "spill")
    cache.fill(0, resumed=False)
    for name in ("a", "b"):
        for seed in range(3):
            cache.put(name, _mb(seed + (10 if name == "b" else 0)))
    return cache


def test_a_resumed_device_arms_its_drop_timer_and_tells_every_server_of_its_legs():
    """A resumed attempt gets no ``start`` in a cached epoch: the device arms its drop timer at once (due 0.05 s into
    the attempt) and will tell every server of its legs; one that dropped before the attempt (its drop instant < 0)
    arms nothing (a gone stamped before the attempt's clock would be refused by the wire, and its servers have it)."""
    import queue

    from trainer.transport.departure import Goodbye

    box = queue.Queue()
    presence = {"later": SimpleNamespace(churn="drop", leave=0.05), "before": SimpleNamespace(churn="drop", leave=-1.0)}
    setup = SimpleNamespace(meter=SimpleNamespace(presence=presence, now=lambda: 0.0),
                            transport=SimpleNamespace(inbox=SimpleNamespace(put=box.put)))
    bye = Goodbye(setup)
    bye.resumed("later", {0, 1})
    bye.resumed("before", {1})
    msg = box.get(timeout=5)
    assert (msg.device, msg.kind) == ("later", "depart") and bye.sent_to == {"later": {0, 1}, "before": {1}}
    assert bye.armed == {"later"}


def test_a_resumed_server_takes_a_due_drop_at_its_instant_without_waiting_for_a_gone():
    """In a resumed attempt a device connects only to the servers of its legs from the checkpoint on: one that handed
    over before cannot reach a server holding an earlier part of its cache. That server takes its drop instant when
    due (the stamp its gone carries), without waiting; the device's own gone, stamped on the wire in whole
    microseconds, is the same departure, not a second one."""
    import time

    from trainer.transport.departure import Departures
    from trainer.transport.runtime import Message

    inbox = SimpleNamespace(cv=_NoLock(), by_device={}, lost=set())
    setup = SimpleNamespace(transport=SimpleNamespace(inbox=inbox, drops={"mover": 1.2345674}, lost={}))
    deps = Departures(setup, lambda n: True, lambda n, why: None)
    deps.resumed = True
    t = time.monotonic()
    assert not deps.gone("mover", 1.0) and deps.gone("mover", 1.5) and time.monotonic() - t < 1.0
    assert deps.check(Message("mover", -1, kind="gone", epoch=0, at=1.234567)) is None
    assert "a second gone" in deps.check(Message("mover", -1, kind="gone", epoch=0, at=1.2346))


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_mover_that_drops_in_the_cached_epoch_after_the_resume_is_replayed_by_neither_server(tiny_gpt2, tmp_path):
    """drop21's fleet (mover sends 2 micro-batches to mec-a, hands over at 0.8 s, 2 to mec-b; 0.1 Mbps backhaul, so
    epoch 2's replays are ~1 s apart) with mover dropping at 3.75 s, in epoch 2; killed before the end of epoch 2 and
    resumed from the end of epoch 1. In the resumed attempt mover has no handover left (it connects to mec-b only) and
    drops: mec-b hears its gone, mec-a takes its drop instant; neither replays it after it, as uninterrupted (24 of
    its samples untrained, no device lost: mec-a used to wait 5 s for a gone that could not come and drop it)."""
    from tests.test_cache_handover_drop_run import _fleet

    ref, m = _killed_and_resumed(tiny_gpt2, tmp_path, _fleet(tmp_path), 2, server_order="fifo")
    assert ref["samples_not_trained"] == {"mover": 24}
    _same_end(ref, m, tmp_path / "ref", tmp_path / "cut")


def test_a_saved_cache_with_a_garbled_record_refuses_to_resume_in_one_line(tmp_path):
    from trainer.run.resume import restore_cache

    out = tmp_path / "out"
    cache = _filled(tmp_path)
    state = cache.checkpoint(out)
    path = max((out / SAVED).iterdir(), key=os.path.getsize)
    raw = bytearray(path.read_bytes())
    raw[8:20] = b"not a header"  # the first record's header
    path.write_bytes(bytes(raw))
    method = SimpleNamespace(cache=ActivationCache(memory=1e9, folder=tmp_path), departures=SimpleNamespace(at={}))
    with pytest.raises(SfsimError, match=r"^--resume: the activation cache saved with the checkpoint in .* cannot be "
                                         r"read \(.*\); start the run again$"):
        restore_cache(out, method, {**state, "gone": {}}, 1, 0.0)
    cache.close()


# -- one copy on disk: the files the cache spills to are the checkpoint's -----------------------------------------
def _big(seed: int) -> dict[str, torch.Tensor]:
    """A micro-batch whose tensors (8 KiB) outweigh a record's header many times over."""
    g = torch.Generator().manual_seed(seed)
    return {"hidden": torch.randn(4, 16, 32, generator=g), "attention_mask": torch.ones(4, 16, dtype=torch.uint8),
            "labels": torch.randint(0, 2, (4,), generator=g)}


def _record_bytes(mbs) -> int:
    """The bytes of ``mbs`` as records of a cache file (each one's tensors once, and its header)."""
    import io

    from trainer.transport import cachefile

    return sum(cachefile.write(io.BytesIO(), 0, mb, digest(mb))[1] for mb in mbs)


def _bytes_under(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_checkpoint_keeps_one_copy_of_the_cache_on_disk(tmp_path):
    """Two micro-batches fit in memory, four spill: after a checkpoint the bytes under OUT are each of the six once as
    a record (its tensors and its header), not a spill file plus a saved copy (which held the four spilled twice).
    A record put after the checkpoint (the run killed before the next) is cut off by the restore, and the resumed
    cache appends to the same file: one copy again at its checkpoint, every micro-batch bit for bit."""
    out = tmp_path / "out"
    mbs = [_big(s) for s in range(8)]
    one = sum(t.nbytes for t in mbs[0].values())
    cache = ActivationCache(memory=2 * one, folder=out)
    cache.fill(0, resumed=False)
    for j, mb in enumerate(mbs[:6]):
        cache.put("ab"[j % 2], mb)
    assert cache.file_bytes == 4 * one
    state = cache.checkpoint(out)
    assert _bytes_under(out) == _record_bytes(mbs[:6]) < 6 * one * 1.05
    assert sum(size for _, size in state["saved"].values()) == _record_bytes(mbs[:6])
    assert [digest(cache.get("ab"[j % 2], j // 2)) for j in range(6)] == [digest(mb) for mb in mbs[:6]]
    cache.put("a", mbs[6])  # after the checkpoint: not its
    assert _bytes_under(out) == _record_bytes(mbs[:7])
    back = ActivationCache(memory=one, folder=out)
    back.restore(out, state, 0)  # killed in epoch 0, which fills the cache
    assert _bytes_under(out) == _record_bytes(mbs[:6]) and back.count("a") == 3 and back.count("b") == 3
    back.fill(0, resumed=True)  # the resumed epoch 0 keeps its restored part and fills on
    back.put("b", mbs[7])
    again = back.checkpoint(out)
    assert _bytes_under(out) == _record_bytes(mbs[:6] + mbs[7:])
    final = ActivationCache(memory=0, folder=out)
    final.restore(out, again, 1)
    assert final.replays(1) == {"a": 3, "b": 4}
    assert [digest(final.get("b", j)) for j in range(4)] == [digest(mb) for mb in (mbs[1], mbs[3], mbs[5], mbs[7])]


def test_a_new_fill_writes_new_files_and_the_last_checkpoints_stay_until_a_later_one(tmp_path):
    """A fill after a checkpoint (an epoch sent whole again) writes new files: a kill before the next checkpoint
    commits still finds the last one's records; they are deleted once it is committed (nothing counts on them)."""
    out = tmp_path / "out"
    cache = ActivationCache(memory=0, folder=out)
    cache.fill(0, resumed=False)
    cache.put("a", _big(0))
    first = cache.checkpoint(out)
    cache.fill(1, resumed=False)
    cache.put("a", _big(1))
    assert _bytes_under(out) == _record_bytes([_big(0), _big(1)])
    back = ActivationCache(memory=0, folder=out)
    back.restore(out, first, 0)
    assert digest(back.get("a", 0)) == digest(_big(0))
    cache.checkpoint(out)
    assert _bytes_under(out) == _record_bytes([_big(0), _big(1)])  # the last one's, until this one is committed
    cache.committed()
    assert _bytes_under(out) == _record_bytes([_big(1)])


def test_a_saved_record_whose_bytes_changed_refuses_to_resume_in_one_line(tmp_path):
    from trainer.run.resume import restore_cache

    out = tmp_path / "out"
    cache = ActivationCache(memory=0, folder=out)
    cache.fill(0, resumed=False)
    cache.put("a", _big(0))
    state = cache.checkpoint(out)
    (path,) = (out / SAVED).iterdir()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # the last label's byte: the same length, another micro-batch
    path.write_bytes(bytes(raw))
    method = SimpleNamespace(cache=ActivationCache(memory=1e9, folder=out), departures=SimpleNamespace(at={}))
    with pytest.raises(SfsimError, match=r"^--resume: the activation cache saved with the checkpoint in .* cannot be "
                                         r"read \(.*micro-batch 0 of a is not what was saved \(digest\)\); start the "
                                         r"run again$"):
        restore_cache(out, method, {**state, "gone": {}}, 1, 0.0)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_killed_cached_run_holds_its_cache_once_on_disk_and_resumes_from_it(tiny_gpt2, tmp_path):
    """The one-server fleet above with no cache memory (every micro-batch on file), killed before its 6th checkpoint
    (mid epoch 2, the second cached one): the bytes under OUT's cache folders are the committed checkpoint's records
    and nothing else (the spill folder, left by the kill, held every micro-batch a second time), and the resumed run,
    reading its micro-batches from those files, ends as the uninterrupted one."""
    from safetensors import safe_open

    def one_copy(out):
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
            import json

            saved = json.loads(f.metadata()["progress"])["cache"]["saved"]
        cached = [p for p in out.rglob("*") if p.is_file() and any(q.name.startswith(SAVED) for q in p.parents)]
        assert sum(p.stat().st_size for p in cached) == sum(size for _, size in saved.values()) > 0
        assert {p.parent.name for p in cached} == {SAVED}

    ref, m = _killed_and_resumed(tiny_gpt2, tmp_path, _one_server(tmp_path), 6, killed=one_copy, checkpoint_every=2,
                                 server_order="round-robin", cache_memory="0 B")
    assert ref["activation_cache"]["in_memory_bytes"] == 0 and ref["activation_cache"]["file_bytes"] > 0
    _same_end(ref, m, tmp_path / "ref", tmp_path / "cut")
