"""Tests for the trainer's methods, the decomposed backward and the measurement."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from trainer.backward import DeferredGrads
from trainer.measure import Meter, tensor_bytes


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(8, 16)
        self.l2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (B, T, 8) -> (B, 3)
        return self.head(torch.tanh(self.l2(torch.relu(self.l1(x)))).mean(1))


def _lora_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = _Net()
    net = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["l1", "l2"]), net)
    for name, p in net.named_parameters():
        p.requires_grad = "lora_" in name or name.startswith("head")
    for name, p in net.named_parameters():  # non-zero lora_B so every gradient is non-trivial
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    return net


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_deferred_w_equals_plain_backward(micro_batches):
    plain = _lora_net(0)
    split = copy.deepcopy(plain)
    dg = DeferredGrads(split)
    assert len(dg.layers) == 5  # lora_A/lora_B of l1 and l2, plus the head
    torch.manual_seed(1)
    xs = [torch.randn(2, 5, 8) for _ in range(micro_batches)]
    ys = [torch.randint(0, 3, (2,)) for _ in range(micro_batches)]
    for x, y in zip(xs, ys, strict=True):
        nn.functional.cross_entropy(plain(x), y).backward()
        nn.functional.cross_entropy(split(x), y).backward()
    trainable = [n for n, p in split.named_parameters() if p.requires_grad]
    # after B only, no trainable Linear has a gradient yet: W really is deferred
    assert all(dict(split.named_parameters())[n].grad is None for n in trainable)
    assert dg.pending == 5 * micro_batches
    dg.flush()
    assert dg.pending == 0
    for n, p in plain.named_parameters():
        q = dict(split.named_parameters())[n]
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-6)
        else:
            assert q.grad is None


def test_deferred_grads_input_gradient_and_remove():
    net = _lora_net(2)
    ref = copy.deepcopy(net)
    x = torch.randn(3, 4, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    dg = DeferredGrads(net)
    net(x).sum().backward()
    ref(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-6, rtol=1e-6)
    dg.remove()
    assert dg.layers == [] and "forward" not in net.head.__dict__


def test_meter_counts_matmul_flops_and_bytes():
    meter = Meter()
    a, b = torch.randn(4, 5), torch.randn(5, 6)
    with meter.compute("dev", "F", "device_forward", mb=0, device="dev"):
        a @ b
    assert meter.flops["dev"] == 2 * 4 * 5 * 6
    assert tensor_bytes({"x": a, "y": [b, torch.zeros(3, dtype=torch.int64)]}) == (20 + 30) * 4 + 24
    meter.transfer("dev", 100, 0.0, 0.5, mb=0)
    s = meter.summary(["dev"])
    assert s["device_flops"] == 240 and s["uplink_bytes"] == 100 and s["downlink_bytes"] == 0
    assert [(e.lane, e.op) for e in meter.events] == [("dev", "F"), ("link:dev", "send")]
