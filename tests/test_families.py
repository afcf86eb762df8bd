"""Every model family splits bit-exactly: tiny random models built from their configs, at every cut.

The ``model.layers`` decoders (Llama, Qwen2, Qwen3, Mistral, Gemma 3, Phi-3) share one adapter
(``trainer.model.families``); each tiny model carries what differs in its family at a size the
test sees (sliding windows of 8 tokens under 40-token prompts, head widths other than d / heads,
q/k norms, biases, fused projections, Gemma's two rotary embeddings and scaled embeddings).
"""

from __future__ import annotations

import pytest
import torch

from sfsim.errors import SfsimError
from sfsim.model.loratargets import resolve_for_family
from trainer import add_lora, default_targets, load_model, split_model, tiny_model
from trainer.methods import generate as gen
from trainer.model.families import DECODERS, FAMILIES, family_of, layer_type

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["a prompt longer than every sliding window here", "ab", "a middling sentence!"]


def _batch(lm, side: str):
    lm.tokenizer.padding_side = side
    return lm.tokenizer(TEXTS, padding=True, return_tensors="pt")


def _unsplit(lm, batch) -> torch.Tensor:
    with torch.no_grad():
        out = lm.model(**batch)
    return out.last_hidden_state if lm.family == "bert" else out.logits


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_split_is_bit_exact_at_every_cut(family, side):
    lm = tiny_model(family, n_layers=4)
    batch = _batch(lm, side)
    extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
    ref = _unsplit(lm, batch)
    for cut in range(lm.n_layers):
        device, server = split_model(lm.model, cut)
        with torch.no_grad():
            out = server(device(batch["input_ids"], batch["attention_mask"], **extra), batch["attention_mask"])
        assert torch.equal(out, ref), (family, side, cut)


@pytest.mark.parametrize("family", ["gemma3", "qwen2", "mistral"])
def test_sliding_windows_are_exercised(family):
    """With every layer made full-attention the unsplit output changes: the windows really cut in."""
    lm = tiny_model(family, n_layers=4)
    kinds = [layer_type(lm.model.config, family, i) for i in range(4)]
    assert "sliding_attention" in kinds
    batch = _batch(lm, "right")
    ref = _unsplit(lm, batch)
    if family == "mistral":
        lm.model.config.sliding_window = None
    else:
        lm.model.config.layer_types = ["full_attention"] * 4
    assert not torch.allclose(_unsplit(lm, batch), ref, atol=1e-4)


def test_gemma3_has_two_rotary_bases_and_scaled_embeddings():
    lm = tiny_model("gemma3")
    rope, x, pos = lm.model.model.rotary_emb, torch.zeros(1, 5, 32), torch.arange(5)[None]
    assert not torch.allclose(rope(x, pos, "full_attention")[0], rope(x, pos, "sliding_attention")[0])
    device, _ = split_model(lm.model, 1)
    ids = torch.tensor([[7, 8, 9]])
    raw = lm.model.model.embed_tokens.weight[ids]
    assert torch.allclose(device.embed(ids), raw * 32 ** 0.5)


@pytest.mark.parametrize("family", FAMILIES)
def test_default_lora_targets_train_and_keep_the_output(family):
    lm = tiny_model(family, n_layers=3)
    batch = _batch(lm, "right")
    extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
    device, server = split_model(lm.model, 1)
    with torch.no_grad():
        before = server(device(batch["input_ids"], batch["attention_mask"], **extra), batch["attention_mask"])
    add_lora(server, blocks=[1, 2], targets=default_targets(family), rank=2, alpha=4)
    out = server(device(batch["input_ids"], batch["attention_mask"], **extra), batch["attention_mask"])
    assert torch.equal(out, before)  # LoRA B starts at zero
    n_mods = len(default_targets(family))
    assert sum(1 for n, _ in server.named_parameters() if "lora_A" in n) == 2 * n_mods


@pytest.mark.parametrize(("family", "alias", "names"), [
    ("phi3", "qkv", {"qkv_proj"}), ("phi3", "mlp", {"gate_up_proj", "down_proj"}),
    ("qwen3", "attn", {"q_proj", "k_proj", "v_proj", "o_proj"}), ("gemma3", "mlp", {"gate_proj", "up_proj", "down_proj"}),
])
def test_aliases_reach_the_family_modules(family, alias, names):
    lm = tiny_model(family, n_layers=2)
    targets = list(resolve_for_family(family, [alias]))
    add_lora(lm.model, blocks=[1], targets=targets, rank=2, alpha=4)
    hit = {n.split(".lora_A")[0].split(".")[-1] for n, _ in lm.model.named_parameters() if "lora_A" in n}
    assert hit == names


def test_phi3_refuses_q_alone():
    with pytest.raises(ValueError, match="'q' has no module of its own in phi3-family models: Phi-3 computes q, k "
                                         "and v in one fused qkv_proj, so write qkv \\(or qkv_proj\\)"):
        resolve_for_family("phi3", ["q"])


@pytest.mark.parametrize("family", DECODERS)
def test_cached_decoding_equals_the_uncached_reference(family):
    lm = tiny_model(family, n_layers=4, seed=3)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    dev, srv = split_model(lm.model, 2)
    cached = gen.greedy_generate(dev, srv, ids * mask, mask, max_new_tokens=6, eos_id=None)
    full = gen.greedy_generate(dev, srv, ids * mask, mask, max_new_tokens=6, eos_id=None, use_cache=False)
    assert cached == full


def test_a_family_outside_the_adapters_is_one_line(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("opt", vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                               num_attention_heads=2, word_embed_proj_dim=16)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(SfsimError, match=r"^model type 'opt' is not supported: the trainer splits bert, gemma3_text, "
                                         r"gpt2, llama, mistral, phi3, qwen2, qwen3 models$"):
        family_of(model)
    model.save_pretrained(tmp_path / "opt")
    with pytest.raises(SfsimError, match="opt: model type 'opt' is not supported"):
        load_model(str(tmp_path / "opt"))


def test_a_local_folder_of_each_new_family_loads(tmp_path):
    for family in ("qwen3", "gemma3", "phi3"):
        lm = tiny_model(family, n_layers=2)
        lm.model.save_pretrained(tmp_path / family)
        lm.tokenizer.save_pretrained(tmp_path / family)
        again = load_model(str(tmp_path / family))
        assert again.family == family and again.n_layers == 2
        assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                     lm.model.state_dict().values(), strict=True))
