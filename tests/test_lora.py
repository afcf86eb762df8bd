"""LoRA placement, the B = 0 identity, the closed form of one adapted layer, state dicts and FedAvg."""

from __future__ import annotations

import re

import pytest
import torch

from sfsim.errors import SfsimError
from trainer import (
    ClassificationHead,
    add_lora,
    default_targets,
    fedavg,
    load_lora_state_dict,
    lora_state_dict,
    split_model,
    tiny_model,
)

FAMILIES = ["gpt2", "llama", "bert"]


def _server(family: str, cut: int = 1, lora_start: int = 3, rank: int = 2):
    lm = tiny_model(family, n_layers=5)
    head = ClassificationHead(lm.hidden, 2)
    device, server = split_model(lm.model, cut, head=head)
    batch = lm.tokenizer(["some text", "x"], padding=True, return_tensors="pt")
    h = device(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        frozen = server(h, batch["attention_mask"])
    add_lora(server, blocks=range(lora_start, 5), targets=default_targets(family), rank=rank, alpha=4.0)
    head.requires_grad_(True)
    return lm, server, h, batch["attention_mask"], frozen


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_only_on_server_blocks_from_lora_start(family):
    _, server, *_ = _server(family, cut=1, lora_start=3)
    trainable = sorted(n for n, p in server.named_parameters() if p.requires_grad)
    inner = {"gpt2": ["attn.c_attn"], "llama": ["self_attn.q_proj", "self_attn.v_proj"],
             "bert": ["attention.self.query", "attention.self.value"]}[family]
    expected = sorted([f"body.blocks.{b}.{m}.lora_{ab}.default.weight"
                       for b in (3, 4) for m in inner for ab in "AB"]
                      + ["head.classifier.bias", "head.classifier.weight"])
    assert trainable == expected
    # blocks 1..2 sit on the server between the cut and lora_start: no adapters at all
    assert not any(re.match(r"body\.blocks\.[12]\..*lora_", n) for n, _ in server.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_lora_keeps_the_frozen_output(family):
    _, server, h, mask, frozen = _server(family)
    with torch.no_grad():
        assert torch.equal(server(h, mask), frozen)  # B = 0 at init
        for n, p in server.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
        assert (server(h, mask) - frozen).abs().max() > 1e-4  # a non-zero B does change it


def test_lora_layer_matches_closed_form():
    lm = tiny_model("llama", n_layers=2)
    _, server = split_model(lm.model, 0)
    add_lora(server, blocks=[1], targets=["q_proj"], rank=3, alpha=6.0)
    layer = server.body.blocks["1"].self_attn.q_proj
    torch.manual_seed(0)
    A, B = torch.randn(3, 32), torch.randn(32, 3)  # lora_A (r, d_in), lora_B (d_out, r)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
        x = torch.randn(2, 5, 32)  # (B, T, d)
        want = x @ layer.base_layer.weight.T + (6.0 / 3) * (x @ A.T @ B.T)
        assert torch.allclose(layer(x), want, atol=1e-5)


def test_lora_on_an_unsplit_model_uses_hf_block_names():
    lm = tiny_model("gpt2", n_layers=3)
    add_lora(lm.model, blocks=[2], targets=["c_attn"], rank=2, alpha=2)
    names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert names == ["transformer.h.2.attn.c_attn.lora_A.default.weight",
                     "transformer.h.2.attn.c_attn.lora_B.default.weight"]


def test_bad_lora_arguments():
    lm = tiny_model("bert", n_layers=2)
    with pytest.raises(SfsimError, match=r"match no module in blocks \[7\]"):
        add_lora(lm.model, blocks=[7], targets=["query"], rank=2, alpha=2)
    with pytest.raises(SfsimError, match="rank >= 1"):
        add_lora(lm.model, blocks=[0], targets=["query"], rank=0, alpha=2)
    with pytest.raises(SfsimError, match="unknown model family 'opt'"):
        default_targets("opt")
    assert default_targets("llama") == ["q_proj", "v_proj"]


def test_no_blocks_just_freezes():
    lm = tiny_model("bert", n_layers=2)
    add_lora(lm.model, blocks=[], targets=["query"], rank=2, alpha=2)
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_state_dict_round_trip_and_fedavg():
    _, a, *_ = _server("llama")
    _, b, *_ = _server("llama")
    sd_a = lora_state_dict(a)
    assert len(sd_a) == 8 and all("lora_" in k for k in sd_a)
    sd_b = {k: torch.full_like(v, 2.0) for k, v in lora_state_dict(b).items()}
    sd_a = {k: torch.full_like(v, 6.0) for k, v in sd_a.items()}
    avg = fedavg([sd_a, sd_b], [1, 3])  # (6 * 1 + 2 * 3) / 4 = 3
    assert all(torch.equal(v, torch.full_like(v, 3.0)) for v in avg.values())
    load_lora_state_dict(b, avg)
    assert all(torch.equal(v, torch.full_like(v, 3.0)) for v in lora_state_dict(b).values())
    with pytest.raises(SfsimError, match="does not fit the module"):
        load_lora_state_dict(b, {"x": torch.zeros(1)})
    with pytest.raises(SfsimError, match="one weight per state dict"):
        fedavg([sd_a], [1, 2])
    with pytest.raises(SfsimError, match="different keys"):
        fedavg([sd_a, {"x": torch.zeros(1)}], [1, 1])
    with pytest.raises(SfsimError, match="positive sum"):
        fedavg([sd_a, sd_b], [0, 0])
