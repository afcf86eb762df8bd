"""The activation cache: later epochs send nothing and train on bit-identical inputs, in memory or memory-mapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sfsim.errors import SfsimError
from trainer.methods.splitfrozen import SplitFrozen
from trainer.transport import cachefile
from trainer.transport.cache import ActivationCache

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mb(seed: int, B=3, T=5, d=8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"hidden": torch.randn(B, T, d, generator=g), "attention_mask": torch.ones(B, T, dtype=torch.uint8),
            "labels": torch.randint(0, 2, (B,), generator=g)}


def test_cache_spills_to_a_memory_mapped_file_past_its_bound(tmp_path):
    one = sum(t.nbytes for t in _mb(0).values())
    cache = ActivationCache(memory=2 * one, folder=tmp_path)
    for i in range(5):
        cache.put("dev/a", _mb(i))  # a name that is no file name
    assert cache.count("dev/a") == 5 and cache.in_memory_bytes == 2 * one and cache.file_bytes == 3 * one
    for i in range(5):
        got, want = cache.get("dev/a", i), _mb(i)
        assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    spill = list(tmp_path.glob("activation-cache-*/*.bin"))  # one log, every micro-batch in order (the first 2 too)
    assert len(spill) == 1
    with open(spill[0], "rb") as f:
        assert [cachefile.read(f)[1] for _ in range(5)] == cache.digests["dev/a"] and f.tell() == spill[0].stat().st_size
    cache.clear("dev/a")
    assert cache.count("dev/a") == 0 and cache.in_memory_bytes == 0
    cache.close()
    assert not list(tmp_path.glob("activation-cache-*"))


def _cfg(model, out, **over):
    from trainer.run.runner import RunConfig

    kw = dict(devices=str(FIXTURES / "runtime_tiny.yaml"), model=model, task="sst2", method="splitfrozen",
              partition="label-skew:1", split=1, epochs=2, train_samples=24, eval_samples=8, max_len=48, lr=0.01,
              data_dir=str(FIXTURES / "data"), out=str(out), progress=False, launch="inprocess", peer_timeout=20.0)
    kw.update(over)
    return RunConfig(**kw)


def _cached(tmp_path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    text = (FIXTURES / "runtime_tiny.yaml").read_text()
    path.write_text(text.replace("  micro_batch: 4", "  micro_batch: 4\n  cache_activations: true"))
    return path


def test_second_epoch_sends_nothing_and_trains_on_bit_identical_inputs(tiny_gpt2, tmp_path, monkeypatch):
    from trainer.run.launch import run

    seen: list[tuple[int, str, dict]] = []
    train = SplitFrozen._train

    def spy(self, msg):
        seen.append((msg.epoch, msg.device, {k: v.clone() for k, v in msg.tensors.items()}))
        return train(self, msg)

    monkeypatch.setattr(SplitFrozen, "_train", spy)
    scen = str(_cached(tmp_path, "cached"))
    one = run(_cfg(tiny_gpt2, tmp_path / "one", epochs=1, devices=scen))
    seen.clear()
    two = run(_cfg(tiny_gpt2, tmp_path / "two", devices=scen, cache_memory="1 KiB"))  # mostly memory-mapped
    assert two["uplink_bytes_by_device"] == one["uplink_bytes_by_device"]  # epoch 2: 0 bytes
    assert two["device_flops"] == one["device_flops"]  # and no device compute
    assert two["train_loss_history"][:7] == one["train_loss_history"]  # epoch 1 is the uncached run's
    for dev in ("big", "small-0", "small-1"):
        first = [t for e, d, t in seen if e == 0 and d == dev]
        second = [t for e, d, t in seen if e == 1 and d == dev]
        assert len(first) == len(second) == {"big": 3, "small-0": 2, "small-1": 2}[dev]
        for t in second:  # every epoch-2 input is one of epoch 1's, bit for bit, each used once
            i = next(i for i, f in enumerate(first) if all(torch.equal(t[k], f[k]) for k in f))
            first.pop(i)
    in_memory = run(_cfg(tiny_gpt2, tmp_path / "mem", devices=scen))
    assert in_memory["train_loss_history"] == two["train_loss_history"]  # memory or file: the same bits


@pytest.mark.slow  # two processes per role set: about 40 s on the loaded 2-core CI machine
def test_cache_over_the_real_wire_with_int8_equals_in_process(tiny_gpt2, tmp_path):
    from trainer.run.launch import run

    scen = str(_cached(tmp_path, "cached"))
    a = run(_cfg(tiny_gpt2, tmp_path / "inproc", devices=scen, wire_dtype="int8"))
    b = run(_cfg(tiny_gpt2, tmp_path / "local", devices=scen, wire_dtype="int8", launch="local"))
    assert max(abs(x - y) for x, y in zip(a["train_loss_history"], b["train_loss_history"], strict=True)) <= 1e-5
    assert a["uplink_bytes_by_device"] == b["uplink_bytes_by_device"]
    one = run(_cfg(tiny_gpt2, tmp_path / "one", devices=scen, wire_dtype="int8", epochs=1))
    assert b["uplink_bytes"] == one["uplink_bytes"] and b["lost_devices"] == {}


def test_cache_is_refused_where_activations_change(tiny_gpt2, tmp_path):
    from trainer.run.launch import run

    scen = str(_cached(tmp_path, "cached"))
    with pytest.raises(SfsimError, match="only splitfrozen can cache them"):
        run(_cfg(tiny_gpt2, tmp_path / "x", devices=scen, method="splitlora"))
