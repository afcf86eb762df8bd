"""Split equivalence, frozen device parts and model loading, on tiny random GPT-2 / Llama / BERT models."""

from __future__ import annotations

import hashlib

import pytest
import torch

from sfsim.errors import SfsimError
from trainer import ClassificationHead, add_lora, default_targets, load_model, split_model, tiny_model

FAMILIES = ["gpt2", "llama", "bert"]
TEXTS = ["hello there, friend", "ab", "a longer sentence here!"]  # different lengths -> padding


def _batch(lm, side: str):
    lm.tokenizer.padding_side = side
    return lm.tokenizer(TEXTS, padding=True, return_tensors="pt")


def _reference(lm, batch) -> torch.Tensor:
    with torch.no_grad():
        out = lm.model(**batch)
    return out.last_hidden_state if lm.family == "bert" else out.logits


def _split_output(lm, batch, cut: int, head=None) -> torch.Tensor:
    device, server = split_model(lm.model, cut, head=head)
    extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
    with torch.no_grad():
        return server(device(batch["input_ids"], batch["attention_mask"], **extra), batch["attention_mask"])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_split_reproduces_unsplit_output_at_every_cut(family, side):
    lm = tiny_model(family, n_layers=4)  # llama: 4 heads, 2 kv heads (GQA) + rotary
    batch = _batch(lm, side)
    assert batch["attention_mask"].min() == 0  # the batch really is padded
    ref = _reference(lm, batch)
    for cut in range(lm.n_layers):
        out = _split_output(lm, batch, cut)
        assert out.shape == ref.shape
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max().item() <= 1e-4, (family, side, cut)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_mask_reaches_the_server(family):
    lm = tiny_model(family)
    batch = _batch(lm, "left")
    device, server = split_model(lm.model, 2)
    h = device(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        masked, unmasked = server(h, batch["attention_mask"]), server(h, None)
    real = batch["attention_mask"].bool()
    assert (masked - unmasked)[real].abs().max() > 1e-3  # ignoring the mask would change real tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_head_runs_on_final_hidden_states(family):
    lm = tiny_model(family)
    batch = _batch(lm, "right")
    torch.manual_seed(1)
    head = ClassificationHead(lm.hidden, 3, pooling="mean")
    base = {"gpt2": lambda m: m.transformer, "llama": lambda m: m.model, "bert": lambda m: m}[family](lm.model)
    kw = {k: v for k, v in batch.items() if k != "token_type_ids"}
    with torch.no_grad():
        ref = head(base(**kw).last_hidden_state, batch["attention_mask"])  # (B, 3)
    out = _split_output(lm, batch, 1, head=head)
    assert out.shape == (3, 3)
    assert (out - ref).abs().max().item() <= 1e-5


def test_blocks_keep_model_indices_and_bad_cuts_fail():
    lm = tiny_model("llama", n_layers=5)
    device, server = split_model(lm.model, 2)
    assert list(device.body.blocks) == ["0", "1"] and list(server.body.blocks) == ["2", "3", "4"]
    assert device.cut == 2 and server.first_block == 2
    for bad in (5, 9, -1):
        with pytest.raises(SfsimError, match=rf"cut {bad} is beyond the model's depth.*0\.\.4"):
            split_model(lm.model, bad)


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("family", FAMILIES)
def test_device_part_stays_frozen_while_server_trains(family):
    lm = tiny_model(family)
    batch = _batch(lm, "right")
    head = ClassificationHead(lm.hidden, 2, pooling="last")
    device, server = split_model(lm.model, 2, head=head)
    add_lora(server, blocks=[3], targets=default_targets(family), rank=2, alpha=4)
    head.requires_grad_(True)
    before_dev, before_srv = _digest(device), _digest(server)
    assert not any(p.requires_grad for p in device.parameters())
    lm.model.train()
    device.train()
    assert not device.training and not any(m.training for m in device.modules())
    opt = torch.optim.SGD([p for p in server.parameters() if p.requires_grad], lr=0.5)
    labels = torch.tensor([0, 1, 1])
    for _ in range(3):
        h = device(batch["input_ids"], batch["attention_mask"])
        assert not h.requires_grad and not h.is_inference()
        loss = torch.nn.functional.cross_entropy(server(h, batch["attention_mask"]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _digest(device) == before_dev
    assert _digest(server) != before_srv  # the server did train


def test_unfrozen_device_part_gets_gradients():
    lm = tiny_model("gpt2")
    batch = _batch(lm, "right")
    device, server = split_model(lm.model, 2, frozen_device=False)
    add_lora(device, blocks=[0, 1], targets=["c_attn"], rank=2, alpha=4)
    server(device(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"]).sum().backward()
    grads = [p.grad for n, p in device.named_parameters() if "lora_B" in n]  # lora_A's grad is 0 while B = 0
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_load_model_errors_and_local_folder(tmp_path):
    with pytest.raises(SfsimError, match="unknown model 'nope'.*smollm2-135m, minilm-l6, gemma3-270m, gpt2"):
        load_model("nope")
    with pytest.raises(SfsimError, match="no GPT-2 weights are available offline"):
        load_model("gpt2")
    with pytest.raises(SfsimError, match="no config.json"):
        load_model(str(tmp_path))
    lm = tiny_model("llama", n_layers=2)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert (again.family, again.n_layers, again.hidden, again.name) == ("llama", 2, 32, "m")
    batch = _batch(lm, "right")
    assert torch.equal(_reference(again, batch), _reference(lm, batch))


@pytest.mark.data
@pytest.mark.parametrize("name", ["smollm2-135m", "minilm-l6"])
def test_split_equivalence_on_pretrained_models(name):
    lm = load_model(name)
    for side in ("right", "left"):
        batch = _batch(lm, side)
        ref = _reference(lm, batch)
        for cut in range(lm.n_layers):
            diff = (_split_output(lm, batch, cut) - ref).abs().max().item()
            assert diff <= 1e-4, (name, side, cut, diff)
