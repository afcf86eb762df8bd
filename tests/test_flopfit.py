"""Exact FLOP counts of new sequence lengths from counted ones (trainer.run.measure.ShapeFit) and runs using them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.model.loading import tiny_model
from trainer.run.measure import Meter
from trainer.run.runner import RunConfig, build

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _attention_like(T: int) -> None:
    """2·3·T·8·5 (a linear layer) + 2·3·T·T·8 (scores) FLOPs."""
    x = torch.randn(3, T, 8)
    x @ torch.randn(8, 5)  # (3, T, 5)
    x @ x.transpose(1, 2)  # (3, T, T)


def test_quadratic_work_is_fitted_exactly_after_a_check():
    meter = Meter()
    lengths = [5, 9, 7, 12, 30, 3, 9]
    for T in lengths:
        with meter.compute("srv", "F", "server_forward", key=(2, 3, T, 8)):
            _attention_like(T)
    assert meter.flops["srv"] == sum(2 * 3 * T * 8 * 5 + 2 * 3 * T * T * 8 for T in lengths)
    # 5, 9, 7 counted; 12 counted as the family's check; 30 and 3 fitted; the second 9 reused
    assert meter.n_counted == 4 and list(meter._fit.trusted.values()) == [True]


def test_work_that_is_not_quadratic_fails_the_check_and_is_always_counted():
    meter = Meter()
    lengths = [2, 3, 4, 5, 6, 7]
    for T in lengths:
        with meter.compute("srv", "F", "server_forward", key=(T,)):
            torch.randn(T, T) @ torch.randn(T, T)  # 2·T³
    assert meter.flops["srv"] == sum(2 * T**3 for T in lengths)
    assert meter.n_counted == len(lengths) and list(meter._fit.trusted.values()) == [False]


def test_sizes_that_move_together_are_one_family():
    meter = Meter()
    for T in (4, 6, 8, 10, 16):  # a deferred-W-like signature: T at two places
        with meter.compute("srv", "W", "server_W", key=((3, T, 8), (3, T, 5))):
            torch.randn(5, 3 * T) @ torch.randn(3 * T, 8)
    assert meter.flops["srv"] == sum(2 * 5 * 3 * T * 8 for T in (4, 6, 8, 10, 16)) and meter.n_counted == 4


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    lm = tiny_model("llama", n_layers=4, hidden=32, seed=3)
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "fedlora", "cenlora"])
def test_a_run_counts_the_same_flops_with_and_without_the_fit_and_sharing(tiny_llama, tmp_path, monkeypatch, method):
    flops, counted = [], []
    for fit in (False, True):
        monkeypatch.setattr(Meter, "fit_shapes", fit)
        monkeypatch.setattr(Meter, "share_devices", fit)
        cfg = RunConfig(devices=str(FIXTURES / "run_tiny.yaml"), model=tiny_llama, task="sst2", method=method,
                        partition="iid", out=str(tmp_path / f"{method}-{fit}"), split=1 if "split" in method else None,
                        epochs=1, train_samples=40, eval_samples=4, data_dir=str(FIXTURES / "data"), progress=False,
                        micro_batch=2, max_len=48)
        b = build(cfg)
        setup, m = b.setup, b.method
        for epoch in range(2):
            m.train_epoch(epoch, lambda loss, n: None)
        flops.append(dict(setup.meter.flops))
        counted.append(setup.meter.n_counted)
    assert flops[0] == flops[1] and sum(flops[0].values()) > 0
    assert counted[1] < counted[0]  # fit and sharing were used, and gave exactly the counted figures


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("train", [True, False])
def test_total_counter_equals_flop_counter_mode(family, train):
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.model.lora import add_lora, default_targets
    from trainer.run.measure import CPU_ATTENTION, TotalFlopCounter

    lm = tiny_model(family, n_layers=2, hidden=32, seed=4)
    add_lora(lm.model, blocks=[1], targets=default_targets(family), rank=4, alpha=8)
    lm.model.train(train)
    ids = torch.randint(5, 60, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    counts = []
    for counter in (FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION), TotalFlopCounter()):
        with counter:
            out = lm.model(input_ids=ids, attention_mask=mask)
            (out.last_hidden_state if family == "bert" else out.logits).float().pow(2).mean().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_emulated_device_counts_fused_attention_backward_as_the_simulator(family):
    """torch prices the fused kernel's backward at 2.5x its forward (the scores are recomputed), the eager path
    and sfsim.model.flops at 2x: an emulated device counts the eager path's FLOPs, one Q K^T per block less."""
    from trainer.model.lora import add_lora, default_targets
    from trainer.run.measure import flop_counter

    B, T, hidden = 3, 11, 32
    counts = {}
    for impl, emulated in (("sdpa", False), ("sdpa", True), ("eager", False)):
        lm = tiny_model(family, n_layers=2, hidden=hidden, seed=4)
        add_lora(lm.model, blocks=[0, 1], targets=default_targets(family), rank=4, alpha=8)
        lm.model.set_attn_implementation(impl)
        lm.model.eval()  # no dropout: sdpa runs the fused CPU kernel, forward and backward
        counter = flop_counter(emulated)
        with counter:
            lm.model(input_ids=torch.randint(5, 60, (B, T))).logits.float().pow(2).mean().backward()
        counts[impl, emulated] = counter.get_total_flops()
    assert counts["sdpa", False] - counts["sdpa", True] == 2 * (2 * B * T * T * hidden)  # both blocks' Q K^T
    if family == "gpt2":  # c_attn's LoRA: q, k and v all need their gradient, as eager computes them
        assert counts["sdpa", True] == counts["eager", False]
