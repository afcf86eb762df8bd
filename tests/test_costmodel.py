"""Cost model: closed-form FLOPs, identities between the work queries, bytes, memory, latency profiles."""

from __future__ import annotations

import numpy as np
import pytest

from sfsim.cost.model import ADAMW_FLOPS_PER_PARAM, CostModel, Work, layer_flops
from sfsim.errors import ConfigError
from sfsim.model.arch import BUILTIN
from sfsim.model.flops import block_params, embedding_params, norm_params
from sfsim.scenario.config import scenario_from_dict

D, BSZ, T, V = 768, 8, 128, 50257  # GPT-2 small at the paper's micro-batch
BLOCK_F = 24 * BSZ * T * D**2 + 4 * BSZ * T**2 * D  # linears 24 B T d^2 + attention 4 B T^2 d


def scenario(task="classification", model="gpt2", wire="fp32", dtype="fp32", device=None, **training):
    """A one-device, one-server scenario around GPT-2 small at B=8, T=128."""
    mdl = {"name": model, "seq_len": T, "task": task}
    if task == "classification":
        mdl["num_labels"] = 2
    dev = {"name": "d", "flops": "1 GFLOPS", "memory": "1 GiB", "samples": 10,
           "uplink": {"bandwidth": "10 Mbps"}, "downlink": {"bandwidth": "10 Mbps"}}
    dev.update(device or {})
    if "latency_profile" in dev:
        dev.pop("flops")
    return scenario_from_dict({
        "model": mdl,
        "training": {"micro_batch": BSZ, "lora": {"rank": 8}, "wire_dtype": wire, "dtype": dtype, **training},
        "servers": [{"name": "s", "flops": "2 TFLOPS", "memory": "16 GiB", "count": 4}],
        "devices": [dev],
    })


@pytest.fixture(scope="module")
def cm():
    return CostModel(scenario())


def test_gpt2_block_forward_closed_form(cm):
    assert BLOCK_F == 14_898_167_808  # 14.9 GFLOP, as in docs/splitfrozen.md
    assert cm.lf.F[1:13].tolist() == [BLOCK_F] * 12
    for k in range(13):
        assert cm.device_prefix(k).f == k * BLOCK_F
        assert cm.device_prefix(k).b == cm.device_prefix(k).w == 0


def test_whole_model_matches_measured_figures_in_docs():
    full = CostModel(scenario("causal-lm")).full_model()
    lm_head = 2 * BSZ * T * D * V
    lora_f = 12 * 2 * BSZ * T * 8 * (D + 3 * D)  # c_attn: d -> 3d, rank 8
    assert full.f == 12 * BLOCK_F + lm_head + lora_f
    assert round(full.f / 1e9, 1) == 258.4 and round(full.total / 1e9, 1) == 518.7


def test_lora_backward_split_closed_form(cm):
    n, r, att = BSZ * T, 8, 2 * BSZ * T * T * D
    lin = 24 * n * D**2  # all four linears of a block, forward
    lora_f = 2 * n * r * 4 * D
    lf = cm.lf
    assert lf.B_frozen[1] == lin + 4 * att  # dx of every linear; dQ, dK, dP, dV
    assert lf.B_lora[1] == lin + 4 * att + lora_f  # + g = dy B and dx = g A
    assert lf.W_lora[1] == lora_f  # dB and dA
    c_attn_dx = 2 * n * D * 3 * D
    assert lf.B_first[1] == lin - c_attn_dx + 4 * att  # no dx into the lowest LoRA block
    assert lf.W_first[1] == lora_f + 2 * n * r * 3 * D  # g now only feeds dA
    head = 2 * BSZ * D * 2  # pooled (B, d) -> (B, 2)
    assert (lf.F[14], lf.B_frozen[14], lf.W_lora[14]) == (head, head, head)
    assert lf.F[0] == lf.F[13] == 0  # embeddings, final norm: no matmuls


def test_work_identities(cm):
    L = 12
    full = cm.full_model()
    for k in range(1, L):
        parts = cm.splitlora_client(k) + cm.splitlora_server(k)
        assert np.array_equal(parts.F, full.F) and np.array_equal(parts.B, full.B)
        assert np.array_equal(parts.W, full.W)
    same = cm.device_prefix(0) + cm.server_suffix(0, 0)
    assert (same.F == full.F).all() and (same.B == full.B).all() and (same.W == full.W).all()
    # SplitLoRA's server also sends the cut-layer gradient: exactly the first LoRA block's extra B
    lf = cm.lf
    for k in range(L):
        assert cm.splitlora_server(k).b - cm.server_suffix(k, k).b == lf.B_lora[k + 1] - lf.B_first[k + 1]


def test_server_suffix_frozen_middle_and_B_stop(cm):
    s = cm.server_suffix(2, 5)
    lf = cm.lf
    assert s.F[:3].sum() == 0 and (s.F[3:6] == BLOCK_F).all()  # blocks 2..4 frozen, forward only
    assert s.B[:6].sum() == 0 and s.W[:6].sum() == 0
    assert s.B[6] == lf.B_first[6] and (s.B[7:13] == lf.B_lora[7:13]).all()
    assert bool(s.layers[13]) and not s.layers[2]  # final norm takes part; block 1 does not
    assert s.f == 3 * BLOCK_F + 7 * lf.F_lora[1] + lf.F[14]


def test_work_add_and_totals():
    a = Work(np.array([1.0, 2.0]), np.array([0.0, 3.0]), np.array([0.0, 4.0]))
    b = Work(np.array([0.0, 0.0]), np.array([0.0, 0.0]), np.array([5.0, 0.0]))
    c = a + b
    assert (c.f, c.b, c.w, c.total) == (3.0, 3.0, 9.0, 15.0)
    assert c.layers.tolist() == [True, True] and b.layers.tolist() == [True, False]


def test_uplink_and_gradient_bytes():
    act = BSZ * T * D
    assert CostModel(scenario()).uplink_bytes(3) == act * 4 + BSZ * T + BSZ * 8
    assert CostModel(scenario(wire="fp16")).uplink_bytes(3) == act * 2 + BSZ * T + BSZ * 8
    # int8 and int4 also send a float32 absmax scale per token (sfsim.cost.wire)
    assert CostModel(scenario(wire="int8")).uplink_bytes(0) == act + 4 * BSZ * T + BSZ * T + BSZ * 8
    assert CostModel(scenario(wire="int4")).uplink_bytes(0) == act // 2 + 4 * BSZ * T + BSZ * T + BSZ * 8
    assert CostModel(scenario("causal-lm")).uplink_bytes(3) == act * 4 + BSZ * T + BSZ * T * 8
    assert CostModel(scenario(wire="bf16")).gradient_bytes(3) == act * 2


def test_trainable_params_and_adapter_bytes():
    cm32, cm16 = CostModel(scenario()), CostModel(scenario(dtype="bf16"))
    per_block = 8 * (D + 3 * D)
    assert cm32.trainable_params(range(12), head=False) == 12 * per_block
    assert cm32.trainable_params(range(3, 12), head=True) == 9 * per_block + D * 2 + 2
    assert CostModel(scenario("causal-lm")).trainable_params([0], head=True) == per_block  # LM head frozen
    assert cm32.adapter_bytes([1, 2], head=False) == 2 * per_block * 4
    assert cm16.adapter_bytes([1, 2], head=False) == 2 * per_block * 2


def test_parameter_counts_match_hf():
    # GPT-2 small has 124,439,808 parameters (HF gpt2, tied LM head)
    g = BUILTIN["gpt2"]
    assert 12 * block_params(g) + embedding_params(g) + norm_params(g) == 124_439_808
    # SmolLM2-135M: 134,515,008 (HF config, tied embeddings)
    s = BUILTIN["smollm2-135m"]
    assert 30 * block_params(s) + embedding_params(s) + norm_params(s) == 134_515_008


def test_memory_monotone_and_exact_weights(cm):
    dm = [cm.device_memory(k) for k in range(13)]
    assert all(b - a == block_params(BUILTIN["gpt2"]) * 4 for a, b in zip(dm, dm[1:], strict=False))
    sm = [cm.server_memory(k, 11, 1) for k in range(12)]
    assert all(a > b for a, b in zip(sm, sm[1:], strict=False))
    assert cm.server_memory(3, 3, 2) > cm.server_memory(3, 3, 1) > cm.server_memory(3, 6, 1)
    step = cm.server_memory(3, 3, 2) - cm.server_memory(3, 3, 1)  # one more micro-batch's saved activations
    assert step == pytest.approx((cm.server_memory(3, 3, 5) - cm.server_memory(3, 3, 1)) / 4)
    assert cm.device_train_memory(range(12)) > cm.device_train_memory(range(6, 12)) > cm.device_memory(12)
    assert cm.device_train_memory(range(3), cut=3) > cm.device_memory(3)
    assert CostModel(scenario(dtype="fp16")).device_memory(3) < cm.device_memory(3)


def test_nominal_seconds_and_optimizer(cm):
    dev, srv = cm.scenario.devices[0], cm.scenario.servers[0]
    w = cm.server_suffix(3, 3)
    assert cm.seconds(w, srv) == (w.f / 2e12, w.b / 2e12, w.w / 2e12)  # one of 4 accelerators
    assert cm.seconds(cm.device_prefix(2), dev) == (2 * BLOCK_F / 1e9, 0.0, 0.0)
    assert cm.optimizer_seconds(1000, srv) == ADAMW_FLOPS_PER_PARAM * 1000 / 2e12


def test_bad_cuts_raise(cm):
    with pytest.raises(ValueError, match="outside 0..12"):
        cm.device_prefix(13)
    with pytest.raises(ValueError, match="lora_start 2"):
        cm.server_suffix(3, 2)
    with pytest.raises(ValueError, match="in_flight"):
        cm.server_memory(3, 3, 0)


PROFILE = """\
device: test-board
model: gpt2
micro_batch: 4
seq_len: 64
forward:
  embed: 2 ms
  blocks: 100 ms
  norm: 1 ms
  head: 4 ms
source: hand-written for the test
"""


def _profiled(tmp_path, text):
    (tmp_path / "board.yaml").write_text(text)
    return CostModel(scenario(device={"latency_profile": str(tmp_path / "board.yaml")}))


def test_latency_profile_scales_by_flop_ratio(tmp_path):
    cm = _profiled(tmp_path, PROFILE)
    dev = cm.scenario.devices[0]
    prof_block = 24 * 4 * 64 * D**2 + 4 * 4 * 64**2 * D
    tokens = (BSZ * T) / (4 * 64)
    f, b, w = cm.seconds(cm.device_prefix(3), dev)
    assert f == pytest.approx(0.002 * tokens + 3 * 0.100 * BLOCK_F / prof_block, rel=1e-12)
    assert b == w == 0
    # no backward table: backward seconds = forward seconds x backward / forward FLOPs, per layer
    full = cm.full_model()
    f, b, w = cm.seconds(full, dev)
    rate = 0.100 / prof_block
    head_rate = 0.004 / (2 * 4 * D * 2)
    assert b == pytest.approx(full.B[1:13].sum() * rate + full.B[14] * head_rate, rel=1e-12)
    assert w == pytest.approx(full.W[1:13].sum() * rate + full.W[14] * head_rate, rel=1e-12)
    assert f == pytest.approx(0.002 * tokens + full.F[1:13].sum() * rate + 0.001 * tokens + 0.004 * 2)
    assert cm.effective_flops(dev) == pytest.approx(prof_block / 0.100)


def test_latency_profile_backward_table(tmp_path):
    cm = _profiled(tmp_path, PROFILE + "backward:\n  blocks: [" + ", ".join(["300 ms"] * 12) + "]\n")
    plf = layer_flops(BUILTIN["gpt2"], seq_len=64, micro_batch=4, task="classification", num_labels=2,
                      lora_rank=8, lora_targets=("c_attn",))
    work = cm.splitlora_client(4)
    _, b, w = cm.seconds(work, cm.scenario.devices[0])
    rate = 0.300 / (plf.B_lora[1] + plf.W_lora[1])
    assert b == pytest.approx(work.B.sum() * rate, rel=1e-12)
    assert w == pytest.approx(work.W.sum() * rate, rel=1e-12)
    full = cm.full_model()  # no backward time for the head: it falls back to the head's forward rate
    _, b, _ = cm.seconds(full, cm.scenario.devices[0])
    head_rate = 0.004 / (2 * 4 * D * 2)
    assert b == pytest.approx(full.B[1:13].sum() * rate + full.B[14] * head_rate, rel=1e-12)


def test_latency_profile_wrong_block_count(tmp_path):
    cm = _profiled(tmp_path, PROFILE.replace("blocks: 100 ms", "blocks: [100 ms, 100 ms]"))
    with pytest.raises(ConfigError, match="forward.blocks: 2 times for 12 blocks"):
        cm.seconds(cm.device_prefix(1), cm.scenario.devices[0])


def test_layer_params_and_activation_bytes(cm):
    lp = cm.layer_params()
    assert lp.shape == (15,) and lp[0] == (V + 1024) * D and (lp[1:13] == block_params(BUILTIN["gpt2"])).all()
    assert lp[13] == 2 * D and lp[14] == 2 * D + 2
    assert CostModel(scenario("causal-lm")).layer_params()[14] == 0  # tied LM head
    assert cm.activation_bytes(0) == cm.activation_bytes(12) == BSZ * T * D * 4
    assert not cm.device_prefix(2).F.flags.writeable  # cached work is shared: read-only


def test_committed_ci_profile_reproduces_its_own_times():
    """At the profile's own shape the FLOP ratio is 1: prefix seconds = embed + measured block times."""
    from pathlib import Path

    from sfsim.cost.latency import load_latency_profile

    path = Path(__file__).resolve().parents[1] / "profiles/latency/ci-x86-2core-gpt2.yaml"
    prof = load_latency_profile(path)
    assert (prof.model, prof.micro_batch, prof.seq_len) == ("gpt2", BSZ, T)
    cm = CostModel(scenario(device={"latency_profile": str(path)}))
    blocks = prof.forward.block_times(12)
    for k in (0, 3, 12):
        f, _, _ = cm.seconds(cm.device_prefix(k), cm.scenario.devices[0])
        assert f == pytest.approx(prof.forward.embed + sum(blocks[:k]), rel=1e-12)
    _, b, _ = cm.seconds(cm.splitlora_client(3), cm.scenario.devices[0])
    lf = cm.lf  # measured backward is per LoRA block with input grad; the lowest block does less
    bt = prof.backward.block_times(12)
    expected = bt[0] * lf.B_first[1] / (lf.B_lora[1] + lf.W_lora[1]) + bt[1] * lf.B_lora[2] / (
        lf.B_lora[2] + lf.W_lora[2]) + bt[2] * lf.B_lora[3] / (lf.B_lora[3] + lf.W_lora[3])
    assert b == pytest.approx(expected, rel=1e-12)


def test_profile_of_another_model_scales_its_mean_block(tmp_path):
    (tmp_path / "board.yaml").write_text(PROFILE.replace("blocks: 100 ms", "blocks: [" + ", ".join(
        ["50 ms", "150 ms"] * 6) + "]"))
    cm = CostModel(scenario(model="gpt2-medium", device={"latency_profile": str(tmp_path / "board.yaml")}))
    d2 = 1024
    medium_block = 24 * BSZ * T * d2**2 + 4 * BSZ * T**2 * d2
    prof_block = 24 * 4 * 64 * D**2 + 4 * 4 * 64**2 * D
    f, _, _ = cm.seconds(cm.device_prefix(2), cm.scenario.devices[0])
    assert f == pytest.approx(0.002 * 4 + 2 * 0.100 * medium_block / prof_block, rel=1e-12)


def test_profile_with_unknown_model_names_file_and_key(tmp_path):
    cm = _profiled(tmp_path, PROFILE.replace("model: gpt2", "model: gpt5"))
    with pytest.raises(ConfigError, match=r"board\.yaml: model: 'gpt5' is neither a built-in model"):
        cm.seconds(cm.device_prefix(1), cm.scenario.devices[0])
