"""Cost model: FLOPs, seconds, bytes and memory of every piece of work the schedules replay.

Pure functions and a cached per-scenario facade; no SimPy, no I/O beyond reading a device's or
server's latency profile once. Layer indexing used everywhere: ``j = 0`` embeddings, ``j = 1..L`` blocks
``0..L-1`` (block ``i`` is ``j = i + 1``), ``j = L + 1`` final norm, ``j = L + 2`` head (LM head for
``causal-lm``, classification head for ``classification``).

FLOPs count matmuls only, as ``torch.utils.flop_counter.FlopCounterMode`` does (see
:mod:`sfsim.model.flops`); elementwise ops (norms, activations, softmax, loss, optimizer) are excluded
from FLOPs. The embedding lookup and the final norm therefore have zero FLOPs; they still take
time on a device with a measured latency profile.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sfsim.cost.latency import load_latency_profile
from sfsim.cost.profilerates import ProfileRates
from sfsim.cost.wire import wire_bytes
from sfsim.cost.work import Work
from sfsim.model.arch import Arch
from sfsim.model.flops import (
    block_cost,
    block_params,
    embedding_params,
    forward_working_elems,
    lora_params,
    norm_params,
)
from sfsim.model.loratargets import resolve_targets
from sfsim.scenario.config import WIRE_BYTES, Device, Scenario, Server

ADAMW_FLOPS_PER_PARAM = 16.0
"""Elementwise FLOPs of one AdamW step per trainable parameter: decoupled weight decay (2), first
moment (3), second moment (4), bias corrections (2), sqrt + eps + divide (3), update (2)."""

ADAM_STATE_BYTES = 8
"""AdamW keeps two fp32 moments per trainable parameter."""

MASK_BYTES_PER_TOKEN = 1  # attention mask on the wire: one byte per token
LABEL_BYTES = 8  # labels are int64


@dataclass(frozen=True)
class LayerFlops:
    """Per-layer FLOPs of one micro-batch (arrays of shape ``(L+3,)``) in each training state.

    Attributes:
        F: forward FLOPs (without LoRA branches).
        F_lora: forward FLOPs with LoRA on the targets (blocks; head and others equal ``F``).
        B_frozen: B of a frozen layer on the backward path (gradient w.r.t. its input only).
        B_lora, W_lora: B and W of a LoRA-trainable layer whose input gradient is needed.
        B_first, W_first: the same for the lowest trainable layer (no input gradient).
        saved_frozen, saved_lora, saved_first: activation elements autograd keeps in those states.
    The head's "trainable" state has W = head weight gradient for classification, 0 for the
    frozen (tied) LM head. Embeddings and the final norm are zero everywhere (no matmuls).
    """

    F: np.ndarray
    F_lora: np.ndarray
    B_frozen: np.ndarray
    B_lora: np.ndarray
    W_lora: np.ndarray
    B_first: np.ndarray
    W_first: np.ndarray
    saved_frozen: np.ndarray
    saved_lora: np.ndarray
    saved_first: np.ndarray


def layer_flops(arch: Arch, *, seq_len: int, micro_batch: int, task: str, num_labels: int | None,
                lora_rank: int, lora_targets: Iterable[str]) -> LayerFlops:
    """Per-layer forward FLOPs, and backward FLOPs split B/W for each layer in three states.

    The states are frozen-not-on-backward-path (B = W = 0), frozen-on-backward-path (B only) and
    LoRA-trainable (B + LoRA W), the last either with or without an input gradient.

    Args:
        arch: model shape.
        seq_len, micro_batch: T and B of one micro-batch.
        task: ``classification`` (pooled (B, d) -> (B, C) trainable linear head) or ``causal-lm``
            ((B, T, d) -> (B, T, V) frozen tied LM head).
        num_labels: classes C for classification.
        lora_rank, lora_targets: LoRA rank and module leaf names.

    Returns:
        :class:`LayerFlops`.

    Example:
        >>> from sfsim.model.arch import BUILTIN
        >>> lf = layer_flops(BUILTIN["gpt2"], seq_len=128, micro_batch=8, task="classification",
        ...                  num_labels=2, lora_rank=8, lora_targets=("c_attn",))
        >>> round(float(lf.F[1]) / 1e9, 2)
        14.9
    """
    targets = tuple(lora_targets)
    L, bsz, T, d = arch.n_layers, micro_batch, seq_len, arch.hidden
    kw = dict(batch=bsz, seq=T, lora_rank=lora_rank)
    frozen = block_cost(arch, input_grad=True, lora_targets=(), **kw)
    lora = block_cost(arch, input_grad=True, lora_targets=targets, **kw)
    first = block_cost(arch, input_grad=False, lora_targets=targets, **kw)
    a = {k: np.zeros(L + 3) for k in LayerFlops.__dataclass_fields__}
    blocks = slice(1, L + 1)
    a["F"][blocks], a["F_lora"][blocks] = frozen.F, lora.F
    a["B_frozen"][blocks], a["B_lora"][blocks], a["W_lora"][blocks] = frozen.B, lora.B, lora.W
    a["B_first"][blocks], a["W_first"][blocks] = first.B, first.W
    a["saved_frozen"][blocks], a["saved_lora"][blocks] = frozen.saved_elems, lora.saved_elems
    a["saved_first"][blocks] = first.saved_elems
    if task == "classification":
        head = 2.0 * bsz * d * num_labels  # pooled (B, d) @ (d, C)
        head_w, head_saved = head, bsz * d
    else:
        head = 2.0 * bsz * T * d * arch.vocab  # (B, T, d) @ (d, V)
        head_w, head_saved = 0.0, bsz * T * (d + arch.vocab)  # input + logits for the loss
    h = L + 2
    a["F"][h] = a["F_lora"][h] = head
    a["B_frozen"][h] = a["B_lora"][h] = head
    a["W_lora"][h] = a["W_first"][h] = head_w
    for k in ("saved_frozen", "saved_lora", "saved_first"):
        a[k][h] = head_saved
    return LayerFlops(**a)


def _memo(method):
    """Cache a CostModel method's results per instance (keyed by arguments)."""

    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args):
        key = (name, *args)
        try:
            return self._memo[key]
        except KeyError:  # the first call: schedules ask again for every device
            got = self._memo[key] = method(self, *args)
            return got

    return wrapper


class CostModel:
    """All cost queries for one scenario (cached). Built from :class:`sfsim.scenario.config.Scenario`.

    Example:
        >>> from sfsim.scenario.config import load_scenario
        >>> cm = CostModel(load_scenario("profiles/edge.yaml"))
        >>> round(cm.device_prefix(3).f / 1e9, 1)
        44.7
    """

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.arch: Arch = scenario.arch
        self.n_layers: int = scenario.arch.n_layers
        m, tr = scenario.model, scenario.training
        self.micro_batch, self.seq_len, self.task = tr.micro_batch, m.seq_len, m.task
        self.num_labels = m.num_labels
        self.lora_rank = tr.lora.rank
        self.lora_targets: tuple[str, ...] = resolve_targets(self.arch, tr.lora.targets)  # aliases -> modules
        self.dtype_bytes = WIRE_BYTES[tr.dtype]
        self.wire_codec = tr.wire_dtype  # activations and SplitLoRA's gradients (sfsim.cost.wire)
        self.lf: LayerFlops = self._layer_flops(self.arch, self.seq_len, self.micro_batch)
        self._profiles: dict[str, ProfileRates] = {}
        self._memo: dict[tuple, Work] = {}

    def _layer_flops(self, arch: Arch, seq_len: int, micro_batch: int) -> LayerFlops:
        return _cached_layer_flops(arch, seq_len, micro_batch, self.task, self.num_labels,
                                   self.lora_rank, self.lora_targets)

    @staticmethod
    def flops_at(arch: Arch, seq_len: int, micro_batch: int, task: str, num_labels: int | None, lora_rank: int,
                 lora_targets: tuple[str, ...]) -> LayerFlops:
        """Cached :func:`layer_flops` of any shape and settings (a latency profile's grid points)."""
        return _cached_layer_flops(arch, seq_len, micro_batch, task, num_labels, lora_rank, tuple(lora_targets))

    # ---------------------------------------------------------------- work per micro-batch
    def _check_cut(self, cut: int, name: str = "cut", lo: int = 0) -> None:
        if not lo <= cut <= self.n_layers:
            raise ValueError(f"{name} {cut} is outside {lo}..{self.n_layers} for {self.arch.name}")

    def _work(self, fwd: range, lora: range, first: int | None, head: bool) -> Work:
        """Assemble a Work: forward over ``fwd`` layers, LoRA F/B/W over ``lora`` blocks (layer index).

        ``first`` is the lowest LoRA layer with no input gradient (None: every LoRA layer passes its
        gradient down); ``head`` adds the head's B and W (norm is elementwise: no FLOPs).
        """
        lf, n = self.lf, self.n_layers + 3
        F, B, W, used = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
        for j in fwd:
            F[j], used[j] = lf.F[j], True
        for j in lora:
            F[j] = lf.F_lora[j]
            B[j], W[j] = (lf.B_first[j], lf.W_first[j]) if j == first else (lf.B_lora[j], lf.W_lora[j])
        if head:
            h = n - 1
            B[h] = lf.B_lora[h] if len(lora) else 0.0  # nothing below the head trains: no input grad
            W[h] = lf.W_lora[h]
        for arr in (F, B, W, used):
            arr.flags.writeable = False  # cached and shared between callers
        return Work(F, B, W, used)

    @_memo
    def device_prefix(self, cut: int) -> Work:
        """Embeddings + blocks 0..cut-1, forward only (B = W = 0)."""
        self._check_cut(cut)
        return self._work(range(0, cut + 1), range(0), None, head=False)

    @_memo
    def server_suffix(self, cut: int, lora_start: int) -> Work:
        """SplitFrozen server: frozen blocks cut..lora_start-1 (F), LoRA blocks lora_start..L-1 (F, B, W), norm + head.

        B stops at the input of block ``lora_start``; the head is trainable for classification (W).
        """
        self._check_cut(cut)
        self._check_cut(lora_start, "lora_start", lo=cut)
        L = self.n_layers
        lora = range(lora_start + 1, L + 1)
        return self._work(range(cut + 1, L + 3), lora, lora_start + 1, head=True)

    @_memo
    def full_model(self) -> Work:
        """LoRA in every block; whole model F, B, W (fedlora, cenlora); B stops at block 0's input."""
        L = self.n_layers
        return self._work(range(0, L + 3), range(1, L + 1), 1, head=True)

    @_memo
    def eval_forward(self) -> Work:
        """Evaluation: embeddings, every block, norm and head, forward only (no gradient; LoRA's low-rank share of
        the blocks' FLOPs is left out)."""
        return self._work(range(0, self.n_layers + 3), range(0), None, head=False)

    @_memo
    def splitlora_client(self, cut: int) -> Work:
        """SplitLoRA client: embeddings + blocks 0..cut-1 with LoRA, F, B, W (B stops at block 0's input)."""
        self._check_cut(cut)
        return self._work(range(0, cut + 1), range(1, cut + 1), 1, head=False)

    @_memo
    def splitlora_server(self, cut: int) -> Work:
        """SplitLoRA server: blocks cut..L-1 with LoRA + norm + head, F, B (incl. the cut-layer gradient), W."""
        self._check_cut(cut)
        L = self.n_layers
        return self._work(range(cut + 1, L + 3), range(cut + 1, L + 1), None, head=True)

    # ---------------------------------------------------------------- time
    def seconds(self, work: Work, node: Device | Server) -> tuple[float, float, float]:
        """(F, B, W) seconds of ``work`` on ``node`` (a Device or Server).

        Nominal rate: FLOPs / node.flops (a Server with ``count > 1`` is one accelerator; the engine
        runs ``count`` workers). A device or server with a latency profile: per-layer measured
        seconds per FLOP, interpolated in the profile's grid, times this work's FLOPs (see
        :mod:`sfsim.cost.profilerates`). A server's training work (B or W) adds its profile's
        ``bookkeeping.micro_batch`` to F: the loop's own work per micro-batch, folded into the stage time every
        engine reads (:class:`sfsim.cost.latency.Bookkeeping`; 0 without it).
        """
        if getattr(node, "latency_profile", None):
            rates = self._profile(node.latency_profile)
            f, b, w = rates.seconds(work)
            if rates.loop_mb and isinstance(node, Server) and work.b + work.w > 0:  # a training micro-batch
                f += rates.loop_mb  # the server loop's own work around it (LatencyProfile.bookkeeping)
            return f, b, w
        rate = node.flops
        return work.f / rate, work.b / rate, work.w / rate

    def effective_flops(self, node: Device | Server) -> float:
        """Sustained FLOP/s of a node: its ``flops``, or a profile's block forward FLOPs / block forward time."""
        if getattr(node, "latency_profile", None):
            return self._profile(node.latency_profile).block_rate
        return float(node.flops)

    def optimizer_seconds(self, trainable_params: int, node: Device | Server) -> float:
        """Seconds of one AdamW step over ``trainable_params`` on ``node``.

        A profile with measured steps: :meth:`ProfileRates.step_seconds`; otherwise
        ADAMW_FLOPS_PER_PARAM FLOPs per parameter at the node's effective FLOP/s. A server's profile
        adds its ``bookkeeping.step`` (the loop's own work per step: :class:`sfsim.cost.latency.Bookkeeping`).
        """
        if getattr(node, "latency_profile", None):
            rates = self._profile(node.latency_profile)
            measured = rates.step_seconds(trainable_params)
            if measured is None:
                measured = ADAMW_FLOPS_PER_PARAM * trainable_params / rates.block_rate
            if rates.loop_step and isinstance(node, Server):
                measured += rates.loop_step  # the server loop's own work per step (LatencyProfile.bookkeeping)
            return measured
        return ADAMW_FLOPS_PER_PARAM * trainable_params / self.effective_flops(node)

    def server_warmup(self, server: Server) -> float:
        """Seconds a server worker's first forward of a run takes beyond a steady one: its latency profile's
        ``first_step.extra_s`` (:class:`sfsim.cost.latency.FirstStep`); 0 for a server rated by ``flops`` or with a
        profile that has no ``first_step``."""
        if not getattr(server, "latency_profile", None):
            return 0.0
        return self._profile(server.latency_profile).warmup

    def _profile(self, path: str) -> ProfileRates:
        if path not in self._profiles:
            file = self.scenario.resolve_path(path)
            self._profiles[path] = ProfileRates(load_latency_profile(file), self, str(file))
        return self._profiles[path]

    # ---------------------------------------------------------------- bytes
    def _act_bytes(self) -> int:
        """(B, T, d) activations in the wire codec, scales included: exactly what the runtime sends."""
        return wire_bytes(self.wire_codec, self.micro_batch * self.seq_len, self.arch.hidden)

    @_memo
    def uplink_bytes(self, cut: int) -> float:
        """Per micro-batch: hidden states (B, T, d) in the wire codec + mask (1 B/token) + int64 labels."""
        self._check_cut(cut)
        bsz, T = self.micro_batch, self.seq_len
        labels = bsz if self.task == "classification" else bsz * T
        return float(self._act_bytes() + bsz * T * MASK_BYTES_PER_TOKEN + labels * LABEL_BYTES)

    def gradient_bytes(self, cut: int) -> float:
        """Cut-layer activation gradient (B, T, d) in the wire codec (the SplitLoRA downlink)."""
        self._check_cut(cut)
        return float(self._act_bytes())

    def codec_seconds(self, node: Device | Server, op: str) -> float:
        """Seconds to ``encode`` (device) or ``decode`` (server) one full micro-batch in the wire codec.

        Measured by a latency profile with codec timings (``sfsim profile``), interpolated in its grid
        and linear in tokens. Zero for ``fp32`` (sent as computed), for a nominal ``flops`` rate (the
        codecs are elementwise, and FLOPs count matmuls only) and for a profile without codec timings.
        """
        if op not in ("encode", "decode"):
            raise ValueError(f"codec op {op!r}: use encode or decode")
        if self.wire_codec == "fp32" or not getattr(node, "latency_profile", None):
            return 0.0
        return self._profile(node.latency_profile).codec.get((self.wire_codec, op), 0.0)

    def trainable_params(self, blocks: Iterable[int], head: bool) -> int:
        """LoRA parameters in those blocks (0-based block indices), plus the classification head's."""
        per_block = lora_params(self.arch, self.lora_targets, self.lora_rank)
        n = per_block * len(list(blocks))
        if head and self.task == "classification":
            n += self.arch.hidden * self.num_labels + self.num_labels  # weight + bias
        return n

    def adapter_bytes(self, blocks: Iterable[int], head: bool) -> float:
        """Bytes of :meth:`trainable_params` in ``training.dtype`` (FedAvg upload/download)."""
        return float(self.trainable_params(blocks, head) * self.dtype_bytes)

    @_memo
    def activation_bytes(self, cut: int) -> float:
        """Hidden states (B, T, d) leaving the first ``cut`` blocks, in the wire codec (equal at every cut)."""
        self._check_cut(cut)
        return float(self._act_bytes())

    # ---------------------------------------------------------------- memory
    def layer_params(self) -> np.ndarray:
        """Frozen parameter count of each layer, shape (L+3,): embeddings, blocks, final norm, head.

        The tied LM head counts zero (it is the embedding matrix); a classification head counts
        its weight and bias.
        """
        a, L = self.arch, self.n_layers
        out = np.zeros(L + 3, dtype=np.int64)
        out[0], out[1:L + 1], out[L + 1] = embedding_params(a), block_params(a), norm_params(a)
        if self.task == "classification":
            out[L + 2] = a.hidden * self.num_labels + self.num_labels
        elif not a.tie_embeddings:
            out[L + 2] = a.vocab * a.hidden
        return out

    def _weight_bytes(self, first_block: int, last_block: int, embed: bool, tail: bool) -> float:
        """Frozen weights of blocks first..last-1, optionally embeddings and norm + head."""
        a = self.arch
        n = block_params(a) * max(0, last_block - first_block)
        if embed:
            n += embedding_params(a)
        if tail:
            n += norm_params(a)
            if self.task == "classification":
                n += a.hidden * self.num_labels + self.num_labels
            elif not (a.tie_embeddings and embed):
                n += a.vocab * a.hidden  # LM head (tied: a copy of the embedding matrix when not held)
        return float(n * self.dtype_bytes)

    def _working_bytes(self) -> float:
        return forward_working_elems(self.arch, batch=self.micro_batch, seq=self.seq_len) * self.dtype_bytes

    def _lora_state_bytes(self, params: int) -> float:
        return float(params * (2 * self.dtype_bytes + ADAM_STATE_BYTES))  # weight + grad + 2 moments

    def device_memory(self, cut: int) -> float:
        """Prefix weights (embeddings + blocks 0..cut-1) + one micro-batch's forward working set (no autograd)."""
        self._check_cut(cut)
        return self._weight_bytes(0, cut, embed=True, tail=False) + self._working_bytes()

    def device_train_memory(self, blocks_with_lora: Iterable[int], cut: int | None = None) -> float:
        """Training memory of a device: fedlora (``cut=None``: whole model) or a SplitLoRA client (prefix ``cut``).

        Weights + LoRA weight/grad/AdamW state + activations saved for backward of one micro-batch
        over the trained layers (from the lowest LoRA block up) + the forward working set.
        """
        blocks = sorted(set(blocks_with_lora))
        top = self.n_layers if cut is None else cut
        if cut is not None:
            self._check_cut(cut)
        if any(not 0 <= i < top for i in blocks):
            raise ValueError(f"LoRA blocks {blocks} must lie in 0..{top - 1}")
        lf, mem = self.lf, self._weight_bytes(0, top, embed=True, tail=cut is None)
        mem += self._lora_state_bytes(self.trainable_params(blocks, head=cut is None))
        saved = 0.0
        if blocks:
            for i in range(blocks[0], top):
                j = i + 1
                saved += lf.saved_first[j] if i == blocks[0] else (
                    lf.saved_lora[j] if i in blocks else lf.saved_frozen[j])
            if cut is None:
                saved += lf.saved_lora[self.n_layers + 2]
        return mem + saved * self.dtype_bytes + self._working_bytes()

    def server_memory(self, min_cut: int, lora_start: int, in_flight: int) -> float:
        """SplitFrozen server: weights of blocks min_cut..L-1 + norm + head, LoRA state, saved activations.

        Activations saved for B/W are counted for ``in_flight`` micro-batches (buffer + being
        processed), plus one forward working set.
        """
        self._check_cut(min_cut, "min_cut")
        self._check_cut(lora_start, "lora_start", lo=min_cut)
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        L, lf = self.n_layers, self.lf
        mem = self._weight_bytes(min_cut, L, embed=False, tail=True)
        mem += self._lora_state_bytes(self.trainable_params(range(lora_start, L), head=True))
        saved = sum(lf.saved_first[j] if j == lora_start + 1 else lf.saved_lora[j]
                    for j in range(lora_start + 1, L + 1)) + lf.saved_lora[L + 2]
        return mem + in_flight * saved * self.dtype_bytes + self._working_bytes()


@lru_cache(maxsize=64)
def _cached_layer_flops(arch, seq_len, micro_batch, task, num_labels, rank, targets) -> LayerFlops:
    return layer_flops(arch, seq_len=seq_len, micro_batch=micro_batch, task=task, num_labels=num_labels,
                       lora_rank=rank, lora_targets=targets)
