"""FLOPs, parameters and saved activations of every ``model.layers`` decoder family against torch.

Each family's block is built from a small config of its own (random weights, eager attention) with
the peculiarities that change the arithmetic: Qwen2 q/k/v biases, Qwen3 and Gemma 3 head widths
other than hidden / heads and q/k norms, Gemma 3 four norms and GELU-tanh, Phi-3 fused ``qkv_proj``
and ``gate_up_proj``. Our block graph (``sfsim.model.flops``) must count exactly the matmuls
``FlopCounterMode`` counts, forward and backward, frozen and with LoRA, as for GPT-2 in
``tests/test_flops_torch.py``.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from sfsim.model.arch import arch_from_hf_config  # noqa: E402
from sfsim.model.flops import block_cost, block_params, embedding_params, lora_params, norm_params  # noqa: E402
from sfsim.model.loratargets import resolve_targets  # noqa: E402
from tests.test_flops_torch import _saved_elems as _saved  # noqa: E402 (one way to count saved activations)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
B, T, RANK = 2, 32, 4
EXACT = 1e-9

_COMMON = dict(vocab_size=300, hidden_size=256, intermediate_size=384, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, attn_implementation="eager", tie_word_embeddings=True, pad_token_id=0,
               bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {},
    "qwen3": {"head_dim": 96},
    "gemma3_text": {"head_dim": 96, "sliding_window": 8, "query_pre_attn_scalar": 96},
    "phi3": {},
}


def _model(model_type):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **_COMMON, **CONFIGS[model_type])
    return AutoModelForCausalLM.from_config(cfg).eval(), cfg


def _block(model_type):
    """The model's one block, a callable running it on x (with the rotary the model hands it), and our Arch."""
    model, cfg = _model(model_type)
    block, rope = model.model.layers[0], model.model.rotary_emb
    pos = torch.arange(T)[None]
    kind = cfg.layer_types[0] if model_type == "gemma3_text" else None

    def run(x):
        pe = rope(x, pos, kind) if kind else rope(x, position_ids=pos)
        return block(x, position_embeddings=pe, attention_mask=None, position_ids=pos)

    return block, run, arch_from_hf_config(cfg.to_dict())


def _count(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _out(y):
    return y[0] if isinstance(y, tuple) else y


def _left_out(arch) -> int:
    """What our activation model leaves out, in elements: the RoPE cos and sin tables (T, hd) each, one
    (B, T) statistic per RMSNorm (per head for q/k norms), and Gemma's (1 + weight) of each norm."""
    qk = arch.family in ("qwen3", "gemma3_text", "gemma3")
    norms = 4 if arch.family == "gemma3" else 2
    stats = B * T * (norms + ((arch.heads + arch.kv_heads) if qk else 0))
    gemma = 4 * arch.hidden + 2 * arch.head_dim if arch.family == "gemma3" else 0
    return 2 * T * arch.head_dim + stats + gemma


def _cost(arch, input_grad, targets):
    return block_cost(arch, batch=B, seq=T, input_grad=input_grad, lora_targets=tuple(targets), lora_rank=RANK)


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_params_of_every_piece(model_type):
    model, cfg = _model(model_type)
    arch = arch_from_hf_config(cfg.to_dict())
    assert block_params(arch) == sum(p.numel() for p in model.model.layers[0].parameters())
    assert norm_params(arch) == sum(p.numel() for p in model.model.norm.parameters())
    assert embedding_params(arch) == model.model.embed_tokens.weight.numel()


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_frozen_forward_and_backward(model_type):
    mod, run, arch = _block(model_type)
    mod.requires_grad_(False)
    x = torch.randn(B, T, arch.hidden, requires_grad=True)
    ours = _cost(arch, True, ())
    assert ours.F == pytest.approx(_count(lambda: run(x.detach())), rel=EXACT)
    assert ours.F + ours.B == pytest.approx(_count(lambda: _out(run(x)).sum().backward()), rel=EXACT)
    assert ours.saved_elems + _left_out(arch) == _saved(mod, run, x)


@pytest.mark.parametrize("alias", ["default", "attn", "mlp", "all-linear"])
@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_lora_forward_backward(model_type, alias):
    mod, run, arch = _block(model_type)
    targets = resolve_targets(arch, None if alias == "default" else [alias])
    holder = torch.nn.Module()
    holder.layers = torch.nn.ModuleList([mod])
    from trainer.model.lora import add_lora

    add_lora(holder, blocks=[0], targets=list(targets), rank=RANK, alpha=8)
    assert lora_params(arch, targets, RANK) == sum(p.numel() for p in mod.parameters() if p.requires_grad)
    for input_grad in (True, False):
        x = torch.randn(B, T, arch.hidden, requires_grad=input_grad)
        ours = _cost(arch, input_grad, targets)
        assert ours.F + ours.B + ours.W == pytest.approx(_count(lambda x=x: _out(run(x)).sum().backward()), rel=EXACT)
        # only the norms and RoPE that autograd records leave something out: at most all of it
        assert 0 <= _saved(mod, run, x) - ours.saved_elems <= _left_out(arch), (input_grad, targets)
