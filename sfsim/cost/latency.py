"""Measured per-layer latency tables for devices and servers (the alternative to a nominal ``flops`` rate).

A grid profile (what ``sfsim profile`` writes) holds one entry per (micro_batch, seq_len) of a full
micro-batch x sequence-length grid; times are unit strings or seconds, medians over the repeats::

    device: ci-x86-2core            # what was measured (free text; sfsim profile --name)
    role: server                    # which side of the split it plays (recorded; both measure the same)
    model: minilm-l6                # built-in name or config path; ``arch`` inlines other models' shapes
    task: classification            # head measured: pooled linear (classification) or LM head (causal-lm)
    num_labels: 2
    lora: {rank: 8, alpha: 16, targets: [query, value]}
    warmup: 2
    repeats: 5
    machine: {cpu: AMD EPYC, cores: 2, threads: 1, torch: 2.13.0+cpu, date: ..., wall_s: 250,
              load_average: {before: 0.4, after: 0.6, after_5min: 0.5}}
    grid:
      - micro_batch: 4
        seq_len: 32
        forward: {embed: 1 ms, blocks: [...], norm: 0 ms, head: 0.1 ms}        # frozen, inference_mode
        forward_train: {embed: ..., blocks: [...], norm: ..., head: ...}     # LoRA blocks, autograd on
        input_grad: {blocks: [...], norm: ..., head: ...}                    # B (frozen input gradient)
        weight_grad: {blocks: [...], head: ...}                              # W (LoRA weight gradient)
        step: {block: 0.2 ms, head: 0.1 ms, all: 1.1 ms}                    # AdamW steps
        iqr: {forward: {...}, forward_train: ..., input_grad: ..., weight_grad: ..., step: ...}
        peak_memory: 412 MiB        # process peak RSS while measuring this entry
        activation_bytes: [...]     # hidden states (B, T, d) leaving the device at cut 0..L
        codec: {int8: {encode: 0.2 ms, decode: 0.1 ms}, ...}  # wire codecs on those activations
    first_call: {micro_batch: 4, seq_len: 32, cold_s: 0.012, steady_s: 0.004, extra_s: 0.008}  # frozen forward
    first_step: {micro_batch: 8, seq_len: 128, cold_s: 0.03, steady_s: 0.02, extra_s: 0.01}   # training (server)
    bookkeeping: {micro_batch: 0.15 ms, step: 0.12 ms}  # the server loop's own work outside its ops (role server)
    save: 12 ms                     # adapter + checkpoint written at an epoch's end (role server)
    eval: {split: 0.3 ms, tokenise_row: 0.02 ms, first: 15 ms}  # evaluation beyond its forward (role server)
    source: "sfsim profile --model minilm-l6 ..."

``first_call`` and ``first_step`` are a fresh process's first frozen forward and first training micro-batch
against steady ones (``extra_s``: the difference): a device's ``warmup`` (``sfsim validate`` derives it) and a
server's warm-up (the cost model adds ``first_step.extra_s`` to each server worker's first forward of the run, once,
not again each epoch). A server profile without ``first_step`` models no server warm-up: 0 s.

``bookkeeping`` (:class:`Bookkeeping`) is what a server's training loop spends outside its timed ops, per
micro-batch and per optimizer step; the cost model adds ``micro_batch`` to a server's forward of every training
micro-batch and ``step`` to its optimizer step. A profile without it models none: 0 s.

The older single-shape file (``bench/profile_device.py``) still loads: top-level ``micro_batch``,
``seq_len``, ``forward`` and an optional ``backward`` (B + W per layer) make a one-point grid, which
the cost model scales by FLOP ratio to any shape. How grids are interpolated: :mod:`sfsim.cost.model`.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from sfsim.cost.wire import CODECS
from sfsim.scenario.schema import STRICT, Bytes, Seconds, read_yaml, validate

_TIMES = ("forward", "forward_train", "input_grad", "weight_grad", "backward")


@dataclass(config=STRICT, kw_only=True)
class LayerTimes:
    """Seconds per micro-batch for each layer kind."""

    embed: Seconds = 0.0
    blocks: list[Seconds] | Seconds
    norm: Seconds = 0.0
    head: Seconds = 0.0

    def block_times(self, n_layers: int) -> list[float]:
        """Per-block times as a list of ``n_layers`` (a scalar is repeated)."""
        if isinstance(self.blocks, list):
            return list(self.blocks)
        return [float(self.blocks)] * n_layers


@dataclass(config=STRICT, kw_only=True)
class StepTimes:
    """Seconds of one AdamW step over the LoRA parameters of one block, of the head, of every block + head."""

    block: Seconds
    head: Seconds = 0.0
    all: Seconds | None = None


@dataclass(config=STRICT, kw_only=True)
class Spread:
    """Interquartile ranges (seconds) of the medians beside them, same layout."""

    forward: LayerTimes | None = None
    forward_train: LayerTimes | None = None
    input_grad: LayerTimes | None = None
    weight_grad: LayerTimes | None = None
    backward: LayerTimes | None = None
    step: StepTimes | None = None


@dataclass(config=STRICT, kw_only=True)
class CodecTimes:
    """Seconds to encode one micro-batch's (B, T, d) activations in a wire codec (device) and decode them (server)."""

    encode: Seconds
    decode: Seconds


@dataclass(config=STRICT, kw_only=True)
class EvalCosts:
    """An epoch end's evaluation beyond its forward passes (role server; ``trainer.validate.evalcost``): ``split``
    the model split per evaluation, ``tokenise_row`` per dev row, ``first`` the process's first evaluation's extra."""

    split: Seconds
    tokenise_row: Seconds
    first: Seconds


@dataclass(config=STRICT, kw_only=True)
class FirstCall:
    """A fresh process's first forward (embeddings + every block, frozen) against a steady one, at one shape.

    ``extra_s = cold_s - steady_s`` is the first-call overhead (lazy initialisation, allocator growth,
    kernel selection) that a device's first micro-batch pays: a scenario device's ``warmup``.
    """

    micro_batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    cold_s: Seconds
    steady_s: Seconds
    extra_s: Seconds


@dataclass(config=STRICT, kw_only=True)
class FirstStep(FirstCall):
    """A fresh process's first training micro-batch (forward with autograd, backward, AdamW step of every block and
    the head) against a steady one, at one shape (role server).

    ``extra_s = cold_s - steady_s`` (never below 0) is what a server's first micro-batch of a run pays beyond a steady
    one (lazy initialisation of the autograd and optimizer paths, allocator growth, the optimizer's state); the cost
    model adds it, unscaled, to each server worker's first forward of the run
    (:meth:`sfsim.cost.model.CostModel.server_warmup`). A profile without it models no server warm-up (0 s).
    The fields are :class:`FirstCall`'s.
    """

    @model_validator(mode="after")
    def _finite(self):
        for key in ("cold_s", "steady_s", "extra_s"):
            if not math.isfinite(getattr(self, key)):  # Seconds takes inf; a warm-up of inf would stall every run
                raise ValueError(f"{key} must be a finite time, got {getattr(self, key)}")
        return self


@dataclass(config=STRICT, kw_only=True)
class Bookkeeping:
    """A server's own work in its training loop outside the timed ops (forward, backward, step), in seconds
    (role server; :func:`trainer.validate.loopcost.bookkeeping` measures it).

    ``micro_batch``: per training micro-batch: the micro-batch's tensors unpacked for the server's model, the loss
    read back (``loss.item()``) and its labels recorded. ``step``: per optimizer step: the step's loss and rate
    logged (the progress bar, ``steps.csv``) and the optimizer's parameters gathered. The cost model adds
    ``micro_batch`` to the server's forward of each training micro-batch of SplitFrozen, SplitLoRA and CenLoRA (the
    engines' ``srv_f``: a partial last micro-batch of an epoch takes its share of it, as of the forward) and ``step``
    to each server optimizer step (``ServerTimes.step``); a device is never charged them. A profile without it
    models none (0 s).
    """

    micro_batch: Seconds
    step: Seconds

    @model_validator(mode="after")
    def _finite(self):
        for key in ("micro_batch", "step"):
            if not math.isfinite(getattr(self, key)):  # Seconds takes inf; a cost of inf would stall every run
                raise ValueError(f"{key} must be a finite time, got {getattr(self, key)}")
        return self


@dataclass(config=STRICT, kw_only=True)
class GridPoint:
    """Measured tables at one (micro_batch, seq_len)."""

    micro_batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    forward: LayerTimes
    forward_train: LayerTimes | None = None
    input_grad: LayerTimes | None = None
    weight_grad: LayerTimes | None = None
    backward: LayerTimes | None = Field(default=None, description="B + W per layer (single-shape files)")
    step: StepTimes | None = None
    iqr: Spread | None = None
    peak_memory: Bytes | None = None
    activation_bytes: list[float] | None = None
    codec: dict[str, CodecTimes] | None = Field(default=None, description="wire codec -> encode/decode seconds "
                                                 "of this shape's activations (sfsim.cost.wire)")

    @model_validator(mode="after")
    def _non_empty(self):
        unknown = sorted(set(self.codec or {}) - set(CODECS))
        if unknown:
            raise ValueError(f"codec: unknown codec {unknown[0]!r}; use {', '.join(CODECS)}")
        for key in _TIMES:
            lt = getattr(self, key)
            if lt is not None and isinstance(lt.blocks, list) and not lt.blocks:
                raise ValueError(f"{key}.blocks: give one time per block or a single time for all blocks")
        return self


@dataclass(config=STRICT, kw_only=True)
class ArchSpec:
    """Shape of a model that is not built in (see :class:`sfsim.model.arch.Arch`)."""

    family: str
    n_layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    intermediate: int = Field(gt=0)
    vocab: int = Field(gt=0)
    tie_embeddings: bool = True
    head_dim: int | None = Field(default=None, gt=0)  # where it is not hidden / heads (Qwen3, Gemma 3)


@dataclass(config=STRICT, kw_only=True)
class LoraInfo:
    """The LoRA the training tables were measured with."""

    rank: int = Field(gt=0)
    alpha: float = Field(default=16.0, gt=0)
    targets: list[str] = Field(min_length=1)


@dataclass(config=STRICT, kw_only=True)
class LatencyProfile:
    """A measured per-layer latency table (see the module docstring for the file format)."""

    model: str
    arch: ArchSpec | None = None
    micro_batch: int | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, gt=0)
    forward: LayerTimes | None = None
    backward: LayerTimes | None = None
    grid: list[GridPoint] | None = Field(default=None, min_length=1)
    device: str = ""
    role: str = ""
    task: str | None = None
    num_labels: int | None = None
    lora: LoraInfo | None = None
    dtype: str = "fp32"
    warmup: int | None = None
    repeats: int | None = None
    machine: dict | None = None
    first_call: FirstCall | None = None
    first_step: FirstStep | None = None  # a server's first training micro-batch (its warm-up; none: 0 s)
    bookkeeping: Bookkeeping | None = None  # a server loop's own work per micro-batch and per step (none: 0 s)
    save: Seconds | None = None  # writing the adapter and the checkpoint at an epoch's end (sfsim.cost.epochend)
    eval: EvalCosts | None = None  # an epoch end's evaluation beyond its forward (sfsim.cost.epochend)
    source: str = ""

    @model_validator(mode="after")
    def _one_layout(self):
        single = (self.micro_batch, self.seq_len, self.forward)
        if self.grid is None:
            if any(v is None for v in single):
                raise ValueError("give 'grid' (a list of measured shapes) or 'micro_batch', 'seq_len' and 'forward'")
            for key, lt in (("forward", self.forward), ("backward", self.backward)):
                if lt is not None and isinstance(lt.blocks, list) and not lt.blocks:
                    raise ValueError(f"{key}.blocks: give one time per block or a single time for all blocks")
        elif any(v is not None for v in (*single, self.backward)):
            raise ValueError("give either 'grid' or top-level 'micro_batch'/'seq_len'/'forward'/'backward', not both")
        if self.task not in (None, "classification", "causal-lm"):
            raise ValueError(f"task {self.task!r} is unknown; use classification or causal-lm")
        return self

    @field_validator("grid")
    @classmethod
    def _full_grid(cls, grid):
        if grid is not None:
            _check_full_grid(grid)
        return grid

    def points(self) -> list[GridPoint]:
        """The measured shapes (a single-shape file gives one point)."""
        if self.grid is not None:
            return list(self.grid)
        return [GridPoint(micro_batch=self.micro_batch, seq_len=self.seq_len, forward=self.forward,
                          backward=self.backward)]

    def axes(self) -> tuple[list[int], list[int]]:
        """(sorted micro-batch sizes, sorted sequence lengths) of the grid."""
        pts = self.points()
        return sorted({p.micro_batch for p in pts}), sorted({p.seq_len for p in pts})


def _check_full_grid(grid: list[GridPoint]) -> None:
    """Every micro_batch x seq_len pair once, and every entry with the same tables."""
    seen = {}
    for i, p in enumerate(grid):
        key = (p.micro_batch, p.seq_len)
        if key in seen:
            raise ValueError(f"entry {i} repeats micro_batch {key[0]}, seq_len {key[1]} (also entry {seen[key]})")
        seen[key] = i
    mbs, seqs = sorted({k[0] for k in seen}), sorted({k[1] for k in seen})
    for mb in mbs:
        for t in seqs:
            if (mb, t) not in seen:
                raise ValueError(f"no entry for micro_batch {mb}, seq_len {t}; "
                                 "measure every micro_batch x seq_len pair (sfsim profile does)")
    tables = [tuple(getattr(p, k) is not None for k in (*_TIMES, "step")) + (tuple(sorted(p.codec or ())),)
              for p in grid]
    if len(set(tables)) > 1:
        raise ValueError("the entries measure different tables; give every entry the same keys")


def load_latency_profile(path: str | Path) -> LatencyProfile:
    """Read and validate a latency table; one-line ``ConfigError`` on bad input."""
    return validate(LatencyProfile, read_yaml(path), file=str(path))
