"""Matmul FLOPs, parameters and activation sizes of one transformer block, from its op graph.

Each family's block (GPT-2, BERT and the ``model.layers`` decoders: Llama, Qwen2, Qwen3, Mistral,
Gemma 3, Phi-3) is written down once as a small static graph of named tensors and ops. A tiny forward pass over that graph decides which tensors require gradients (the
block's input when something below is trainable, and everything downstream of a LoRA adapter), and
the backward pass charges exactly the matmuls that torch autograd would run:

* a frozen linear ``y = x W``: forward ``2 N fi fo``; backward ``2 N fi fo`` for ``dx`` when ``x``
  requires grad, nothing for ``W`` (frozen);
* a LoRA branch ``y += s (x A^T) B^T`` (rank r): forward ``2 N r (fi + fo)``; backward ``g = dy B``
  (``2 N r fo``), ``dB`` (``2 N r fo``), ``dA`` (``2 N r fi``) and, when ``x`` requires grad,
  ``dx = g A`` (``2 N r fi``);
* an attention matmul (``Q K^T`` or ``P V``): forward ``2 B h T T hd``; backward the same again for
  each operand that requires grad.

Counting follows ``torch.utils.flop_counter.FlopCounterMode``: only matmul-like ops (mm, addmm,
bmm, sdpa) count, at 2 FLOPs per multiply-add; elementwise ops (norms, activations, softmax,
residual adds, RoPE, dropout, LoRA scaling, loss) count zero, and causal masking saves nothing.
Attention is counted as the eager/"math" path that torch runs on CPU (backward = 2x forward); a
fused flash kernel on GPU recomputes the scores in backward (2.5x), which this model ignores.

Activation memory follows the same graph: an op whose output requires grad keeps what its
backward needs (a frozen linear keeps only its weight; a LoRA linear its input; attention q, k, v
and the softmax output; norms and activations their inputs), deduplicated as torch stores them.
This matches ``torch.autograd.graph.saved_tensors_hooks`` on the eager modules within 2% (norm
statistics and RoPE tables are left out); fused sdpa kernels keep less (no softmax output).

Backward is split as in zero-bubble pipeline parallelism: **B** is every matmul that produces a
gradient w.r.t. an activation needed further down, **W** is every matmul that produces a weight
gradient (LoRA A and B, a trainable head), plus the LoRA ``g = dy B`` when it feeds only ``dA``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfsim.model.arch import DECODERS, Arch

# Max positions of learned position embeddings (parameter memory only): GPT-2 n_positions,
# BERT max_position_embeddings (+ 2 token types). The decoders use RoPE (no table).
_POSITIONS = {"gpt2": 1024, "bert": 512, **{f: 0 for f in DECODERS}}


@dataclass(frozen=True)
class Op:
    """One op of a block graph.

    Attributes:
        kind: ``linear`` (a weight matmul), ``attn`` (activation x activation matmul) or ``ew``
            (elementwise: norm, activation, softmax, add; no FLOPs counted).
        name: module leaf name for linears, a label otherwise.
        inputs: names of the tensors it reads.
        output: name of the tensor it writes.
        fan_in, fan_out: linear shape (``fan_in -> fan_out`` per token).
        bias: whether a linear has a bias (parameter count only).
        saves: what autograd keeps when the output requires grad, as ``(key, width tensor, copies)``;
            for ``attn`` ops entry ``i`` is kept only when input ``i`` requires grad (the other
            operand). Keys deduplicate tensors that torch saves once.
        path: a linear's module path inside the block, as in Hugging Face (``attn.c_proj``); LoRA
            targets match it (:func:`target_matches`).
    """

    kind: str
    name: str
    inputs: tuple[str, ...]
    output: str
    fan_in: int = 0
    fan_out: int = 0
    bias: bool = False
    saves: tuple[tuple[str, str, int], ...] = ()
    path: str = ""


def _lin(path, src, dst, fi, fo, bias):
    return Op("linear", path.rsplit(".", 1)[-1], (src,), dst, fi, fo, bias, path=path)


def target_matches(path: str, target: str) -> bool:
    """Whether LoRA ``target`` names the linear at ``path`` inside a block (the trainer's rule too).

    A dotted target is a path from the block (``attn.c_proj``); a bare one a module name anywhere in
    it (``c_proj``: both of GPT-2's).

    Example:
        >>> target_matches("mlp.c_proj", "c_proj"), target_matches("mlp.c_proj", "attn.c_proj")
        (True, False)
    """
    return path == target if "." in target else path.rsplit(".", 1)[-1] == target


def _ew(name, srcs, dst, *saves):
    return Op("ew", name, tuple(srcs), dst, saves=tuple(saves))


def _attn(name, a, b, dst, save_for_a, save_for_b):
    # eager attention saves q, k, v (repeat_kv-expanded to all query heads) and the softmax output
    return Op("attn", name, (a, b), dst, saves=(save_for_a, save_for_b))


def block_graph(arch: Arch) -> tuple[list[Op], dict[str, int]]:
    """Ops of one block in execution order, and each tensor's width per token.

    Attention score tensors (``s``, ``p``) have width ``heads * T`` per token; they are marked with
    width ``-1`` here and sized by the caller, who knows T.
    """
    d, i_, qd = arch.hidden, arch.intermediate, arch.heads * arch.head_dim
    q_, k_, v_, p_ = ("att_q", "qd", 1), ("att_k", "qd", 1), ("att_v", "qd", 1), ("p", "p", 1)
    if arch.family == "gpt2":
        ops = [_ew("ln_1", ["x"], "h1", ("x", "x", 1)), _lin("attn.c_attn", "h1", "qkv", d, 3 * d, True),
               _attn("qk", "qkv", "qkv", "s", k_, q_), _ew("softmax", ["s"], "p", p_),
               _attn("pv", "p", "qkv", "ctx", v_, p_), _lin("attn.c_proj", "ctx", "a", d, d, True),
               _ew("add", ["x", "a"], "r1"), _ew("ln_2", ["r1"], "h2", ("r1", "r1", 1)),
               _lin("mlp.c_fc", "h2", "u", d, i_, True),
               _ew("gelu", ["u"], "g", ("u", "u", 4)),  # NewGELU (tanh form) keeps 4 tensors of (B, T, I)
               _lin("mlp.c_proj", "g", "m", i_, d, True), _ew("add", ["r1", "m"], "out")]
        widths = {"x": d, "h1": d, "qkv": 3 * d, "ctx": d, "a": d, "r1": d, "h2": d, "u": i_, "g": i_,
                  "m": d, "out": d}
    elif arch.family in DECODERS:
        ops, widths = _decoder_graph(arch)
    elif arch.family == "bert":
        ops = [_lin("attention.self.query", "x", "q", d, d, True), _lin("attention.self.key", "x", "k", d, d, True),
               _lin("attention.self.value", "x", "v", d, d, True), _attn("qk", "q", "k", "s", k_, q_),
               _ew("softmax", ["s"], "p", p_), _attn("pv", "p", "v", "ctx", v_, p_),
               _lin("attention.output.dense", "ctx", "a", d, d, True), _ew("add_ln", ["x", "a"], "r1", ("ln1_in", "r1", 1)),
               _lin("intermediate.dense", "r1", "u", d, i_, True), _ew("gelu", ["u"], "g", ("u", "u", 1)),
               _lin("output.dense", "g", "m", i_, d, True), _ew("add_ln", ["r1", "m"], "out", ("ln2_in", "out", 1))]
        widths = {"x": d, "q": d, "k": d, "v": d, "ctx": d, "a": d, "r1": d, "u": i_, "g": i_, "m": d,
                  "out": d}
    widths.update({"s": -1, "p": -1, "qd": qd})
    return ops, widths


def _decoder_graph(arch: Arch) -> tuple[list[Op], dict[str, int]]:
    """Block graph of the ``model.layers`` decoders: Llama (and Mistral, Qwen2) with what differs.

    Qwen2 adds q/k/v biases; Qwen3 and Gemma 3 normalise q and k per head (RMSNorm, before RoPE);
    Gemma 3 also normalises the attention and MLP outputs before their residual adds (four norms)
    and gates with GELU-tanh instead of SiLU (the same saved tensors); Phi-3 fuses q, k, v into one
    ``qkv_proj`` and gate and up into one ``gate_up_proj``, whose outputs are sliced (views).
    """
    f, d, i_ = arch.family, arch.hidden, arch.intermediate
    qd, kvd = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    q_, k_, v_, p_ = ("att_q", "qd", 1), ("att_k", "qd", 1), ("att_v", "qd", 1), ("p", "p", 1)
    ops = [_ew("input_layernorm", ["x"], "h1", ("x", "x", 1))]
    widths = {"x": d, "h1": d, "q": qd, "k": kvd, "v": kvd, "qr": qd, "kr": kvd, "ctx": qd, "a": d, "r1": d,
              "h2": d, "gt": i_, "up": i_, "g": i_, "m": d, "out": d}
    if f == "phi3":  # q, k, v: slices (views) of one fused output
        ops.append(_lin("self_attn.qkv_proj", "h1", "qkv", d, qd + 2 * kvd, False))
        widths["qkv"] = qd + 2 * kvd
        q, k, v = "qkv", "qkv", "qkv"
    else:
        ops += [_lin(f"self_attn.{n}_proj", "h1", n, d, w, arch.qkv_bias) for n, w in (("q", qd), ("k", kvd), ("v", kvd))]
        q, k, v = "q", "k", "v"
    if f in ("qwen3", "gemma3"):  # per-head RMSNorm of q and k, each keeping its input
        ops += [_ew("q_norm", ["q"], "qn", ("q", "q", 1)), _ew("k_norm", ["k"], "kn", ("k", "k", 1))]
        widths.update(qn=qd, kn=kvd)
        q, k = "qn", "kn"
    ops += [_ew("rope_q", [q], "qr"), _ew("rope_k", [k], "kr"), _attn("qk", "qr", "kr", "s", k_, q_),
            _ew("softmax", ["s"], "p", p_), _attn("pv", "p", v, "ctx", v_, p_),
            _lin("self_attn.o_proj", "ctx", "a", qd, d, False)]
    a, m = "a", "m"
    if f == "gemma3":
        ops.append(_ew("post_attention_layernorm", ["a"], "an", ("a", "a", 1)))
        widths.update(an=d, mn=d)
        a, m = "an", "mn"
    norm2 = "pre_feedforward_layernorm" if f == "gemma3" else "post_attention_layernorm"
    ops += [_ew("add", ["x", a], "r1"), _ew(norm2, ["r1"], "h2", ("r1", "r1", 1))]
    if f == "phi3":
        ops.append(_lin("mlp.gate_up_proj", "h2", "gu", d, 2 * i_, False))
        widths["gu"] = 2 * i_
        gate_in = up_in = "gu"
    else:
        ops += [_lin("mlp.gate_proj", "h2", "gt", d, i_, False), _lin("mlp.up_proj", "h2", "up", d, i_, False)]
        gate_in, up_in = "gt", "up"
    # act(gate) keeps gate; the product keeps act(gate) and up (Phi-3: both halves of one storage)
    ops += [_ew("act_mul", [gate_in, up_in], "g", ("gt", "gt", 2), ("up", "up", 1)),
            _lin("mlp.down_proj", "g", "m", i_, d, False)]
    if f == "gemma3":
        ops.append(_ew("post_feedforward_layernorm", ["m"], "mn", ("m", "m", 1)))
    ops.append(_ew("add", ["r1", m], "out"))
    return ops, widths


@dataclass(frozen=True)
class BlockCost:
    """FLOPs of one block for one micro-batch in one training state (see :func:`block_cost`)."""

    F: float
    B: float
    W: float
    saved_elems: float  # activation elements autograd keeps for backward (0 when nothing needs grad)


def block_cost(arch: Arch, *, batch: int, seq: int, input_grad: bool, lora_targets: tuple[str, ...],
               lora_rank: int) -> BlockCost:
    """Forward, B and W FLOPs of one block on a ``(batch, seq)`` micro-batch.

    Args:
        arch: the architecture.
        batch, seq: micro-batch shape B, T.
        input_grad: whether a gradient w.r.t. the block's input is needed (something below trains).
        lora_targets: LoRA targets (module names or in-block paths, :func:`target_matches`; empty: frozen).
        lora_rank: LoRA rank r.

    Returns:
        :class:`BlockCost` with matmul FLOPs as FlopCounterMode counts them.

    Example:
        >>> from sfsim.model.arch import BUILTIN
        >>> c = block_cost(BUILTIN["gpt2"], batch=8, seq=128, input_grad=False, lora_targets=(), lora_rank=8)
        >>> round(c.F / 1e9, 1), c.B, c.W
        (14.9, 0.0, 0.0)
    """
    ops, widths = block_graph(arch)
    n, r = batch * seq, lora_rank  # n tokens
    attn_flops = 2.0 * batch * arch.heads * seq * seq * arch.head_dim  # one of QK^T / PV
    rg = {"x": input_grad}
    f = b = w = 0.0
    saved: dict[str, float] = {}  # key -> elements kept for backward

    def size(t):
        return batch * arch.heads * seq * seq if widths[t] < 0 else n * widths[t]

    for op in ops:
        lora = op.kind == "linear" and any(target_matches(op.path, t) for t in lora_targets)
        rg[op.output] = lora or any(rg[t] for t in op.inputs)
        if op.kind == "linear":
            f += 2.0 * n * op.fan_in * op.fan_out + (2.0 * n * r * (op.fan_in + op.fan_out) if lora else 0)
        elif op.kind == "attn":
            f += attn_flops
        if not rg[op.output]:
            continue
        for i, (key, wt, copies) in enumerate(op.saves):
            if op.kind == "ew" or rg[op.inputs[i]]:
                saved[key] = copies * size(wt)
        if op.kind == "attn":
            b += attn_flops * sum(rg[t] for t in op.inputs)
        elif op.kind == "linear":
            x_grad = rg[op.inputs[0]]
            if x_grad:
                b += 2.0 * n * op.fan_in * op.fan_out  # dx through the frozen base weight
            if lora:
                saved[op.inputs[0]] = size(op.inputs[0])  # x for dA (a frozen base keeps only its weight)
                saved[f"{op.name}:{op.output}:lora"] = n * r  # x A^T for dB
                # g = dy B (n, r): on the B path when it also feeds dx, else only dA needs it
                g_cost = 2.0 * n * r * op.fan_out
                if x_grad:
                    b += g_cost + 2.0 * n * r * op.fan_in  # g, then dx = g A
                else:
                    w += g_cost
                w += 2.0 * n * r * (op.fan_out + op.fan_in)  # dB, dA
    return BlockCost(f, b, w, float(sum(saved.values())))


def block_params(arch: Arch) -> int:
    """Frozen parameters of one block (weights, biases, norm scales)."""
    ops, _ = block_graph(arch)
    lin = sum(op.fan_in * op.fan_out + (op.fan_out if op.bias else 0) for op in ops if op.kind == "linear")
    return lin + _norm_scales(arch)


def _norm_scales(arch: Arch) -> int:
    """Norm parameters of one block: two LayerNorms (scale + bias) or RMSNorms (scale), Gemma 3 four,
    plus the per-head q and k norms of Qwen3 and Gemma 3."""
    d = arch.hidden
    norms = {"gpt2": 4 * d, "bert": 4 * d, "gemma3": 4 * d}.get(arch.family, 2 * d)
    return norms + (2 * arch.head_dim if arch.family in ("qwen3", "gemma3") else 0)


def lora_params(arch: Arch, lora_targets: tuple[str, ...], lora_rank: int) -> int:
    """LoRA parameters (A and B of every targeted linear) in one block: ``r (fan_in + fan_out)`` each."""
    ops, _ = block_graph(arch)
    return sum(lora_rank * (op.fan_in + op.fan_out) for op in ops
               if op.kind == "linear" and any(target_matches(op.path, t) for t in lora_targets))


def embedding_params(arch: Arch) -> int:
    """Token (+ learned position, + BERT token-type and embedding-norm) parameters."""
    extra = 2 * arch.hidden + 2 * arch.hidden if arch.family == "bert" else 0  # token types, LayerNorm
    return (arch.vocab + _POSITIONS[arch.family]) * arch.hidden + extra


def norm_params(arch: Arch) -> int:
    """Parameters of the final norm (GPT-2 ln_f, the decoders' RMSNorm; BERT has none after the last layer)."""
    return {"gpt2": 2 * arch.hidden, "bert": 0}.get(arch.family, arch.hidden)


def forward_working_elems(arch: Arch, *, batch: int, seq: int) -> float:
    """Peak live activation elements in one block's forward without autograd.

    The input and residual streams, plus the widest op's inputs and output at once (scores and
    their softmax for attention; both MLP branches and their product for Llama).
    """
    ops, widths = block_graph(arch)
    n = batch * seq

    def size(t):
        return batch * arch.heads * seq * seq if widths[t] < 0 else n * widths[t]

    widest = max(sum(size(t) for t in set(op.inputs)) + size(op.output) for op in ops)
    return float(2 * n * arch.hidden + widest)
