"""Seconds per FLOP of each layer from a measured latency profile, at one scenario's shape.

A profile measures times at grid shapes (micro_batch, seq_len); a scenario asks for its own shape.
At each grid point every layer's time is turned into a rate (seconds per FLOP of that layer at that
point's shape; seconds per token for the zero-FLOP embeddings and final norm). The scenario's rates
are the **bilinear interpolation of those rates in (micro_batch, seq_len)** between the four grid
points around it, and its seconds are rate x the scenario's FLOPs. At a grid point this gives the
measured times exactly; in between, FLOPs carry the shape (attention's T^2 included) and only the
efficiency (seconds per FLOP) is interpolated, which varies slowly.

A shape outside a grid of two or more points is an error (one line naming the grid's ranges):
efficiency at small shapes is dominated by per-call overheads that no FLOP count predicts. A
profile with a single point (the older single-shape files, or a one-entry grid) is the exception
and scales by FLOP ratio to any shape, as it always has.

Which rate a layer uses depends on its state in the work: layers on the backward path (B or W > 0)
run their forward with autograd and LoRA (``forward_train``), the others frozen (``forward``); B and
W use ``input_grad`` / ``weight_grad`` rates per FLOP of a LoRA block with an input gradient; a
profile without them uses ``backward`` (B + W, older files) or else the forward rate. A profile of
a model with another depth uses its mean block rate for every block.
"""

from __future__ import annotations

import numpy as np

from sfsim.cost.latency import GridPoint, LatencyProfile
from sfsim.cost.work import Shape, Work
from sfsim.errors import ConfigError
from sfsim.model.arch import Arch, resolve_arch
from sfsim.model.flops import lora_params


class ProfileRates:
    """Per-layer rates of one latency profile at a cost model's shape (see the module docstring).

    Attributes:
        f_rate, ft_rate, b_rate, w_rate: (L+3,) seconds per FLOP: frozen forward, training forward, B, W.
        f_flat, ft_flat: (L+3,) seconds per micro-batch of the zero-FLOP layers (embeddings, final norm).
        b_norm: seconds of the final norm's B (when a gradient passes through it).
        block_rate: sustained block forward FLOP/s (what :meth:`CostModel.effective_flops` reports).
        warmup: ``first_step.extra_s`` (0 without it): :meth:`CostModel.server_warmup`.
        loop_mb, loop_step: ``bookkeeping.micro_batch`` and ``.step`` (0 without it): a server loop's own work per
            training micro-batch and per optimizer step (:meth:`CostModel.seconds`, :meth:`CostModel.optimizer_seconds`).
    """

    def __init__(self, prof: LatencyProfile, cm: Shape, file: str):
        arch = _profile_arch(prof, file)
        if prof.task is not None and prof.task != cm.task:
            raise ConfigError(file, "task", f"measured with the {prof.task} head but the scenario's task is "
                              f"{cm.task}; profile with --task {cm.task}")
        for i, p in enumerate(prof.points()):
            _check_blocks(p, arch, file, f"grid[{i}]." if prof.grid is not None else "")
        self._cm, self._arch, self._prof = cm, arch, prof
        self.warmup = prof.first_step.extra_s if prof.first_step is not None else 0.0  # a server's first forward's extra
        kept = prof.bookkeeping
        self.loop_mb, self.loop_step = (kept.micro_batch, kept.step) if kept is not None else (0.0, 0.0)
        weights = _grid_weights(prof, cm.micro_batch, cm.seq_len, file)
        L, tokens = cm.n_layers, cm.micro_batch * cm.seq_len
        acc: dict[str, np.ndarray] = {}
        steps: dict[str, float] = {}
        codec: dict[tuple[str, str], float] = {}  # (codec, encode|decode) -> seconds per token
        for point, wgt in weights:
            for c, ct in (point.codec or {}).items():
                for op in ("encode", "decode"):
                    codec[(c, op)] = codec.get((c, op), 0.0) + wgt * getattr(ct, op) / (point.micro_batch * point.seq_len)
            for key, arr in self._point_rates(point).items():
                acc[key] = acc.get(key, 0.0) + wgt * _to_layout(arr, L, arch.n_layers)
            if point.step is not None:
                s = point.step
                for key, val in (("block", s.block), ("head", s.head), ("all", s.all)):
                    if val is not None:
                        steps[key] = steps.get(key, 0.0) + wgt * val
        self.f_rate, self.ft_rate, self.b_rate, self.w_rate = acc["f"], acc["ft"], acc["b"], acc["w"]
        self.f_flat, self.ft_flat = acc["f_tok"] * tokens, acc["ft_tok"] * tokens
        self.b_norm = float(acc["b_tok"][L + 1] * tokens)
        self.steps = steps or None
        self.codec = {k: v * tokens for k, v in codec.items()}  # (codec, op) -> seconds per micro-batch
        blocks = slice(1, L + 1)
        t = float(cm.lf.F[blocks] @ self.f_rate[blocks])
        self.block_rate = float(cm.lf.F[blocks].sum() / t) if t > 0 else float("inf")

    def _point_rates(self, p: GridPoint) -> dict[str, np.ndarray]:
        """Rates at one grid point, laid out on the profile's own depth (prof_L + 3,)."""
        cm, arch, prof = self._cm, self._arch, self._prof
        task = prof.task or cm.task
        labels = (prof.num_labels or cm.num_labels) if task == "classification" else None
        rank = prof.lora.rank if prof.lora else cm.lora_rank
        targets = tuple(prof.lora.targets) if prof.lora else arch.default_lora_targets
        lf = cm.flops_at(arch, p.seq_len, p.micro_batch, task, labels, rank, targets)
        n, tokens = arch.n_layers, p.micro_batch * p.seq_len
        fwd = _seconds(p.forward, n)
        out = {"f": _rate(fwd, lf.F, 0.0), "f_tok": np.where(lf.F > 0, 0.0, fwd / tokens)}
        if p.forward_train is not None:
            ft = _seconds(p.forward_train, n)
            out["ft"] = _rate(ft, lf.F_lora, out["f"])
            out["ft_tok"] = np.where(lf.F > 0, 0.0, np.where(ft > 0, ft, fwd) / tokens)
        else:
            out["ft"], out["ft_tok"] = out["f"], out["f_tok"]
        out["b_tok"] = np.zeros(n + 3)
        if p.input_grad is not None or p.weight_grad is not None:
            b = _seconds(p.input_grad, n) if p.input_grad is not None else np.zeros(n + 3)
            out["b"] = _rate(b, lf.B_lora, out["f"])
            out["w"] = _rate(_seconds(p.weight_grad, n) if p.weight_grad else np.zeros(n + 3), lf.W_lora, out["f"])
            out["b_tok"][n + 1] = b[n + 1] / tokens  # the final norm's B (zero FLOPs)
        elif p.backward is not None:  # older files: B + W of a LoRA block with input gradient
            bw = _rate(_seconds(p.backward, n), lf.B_lora + lf.W_lora, out["f"])
            out["b"], out["w"] = bw, bw
        else:
            out["b"], out["w"] = out["f"], out["f"]
        return out

    def seconds(self, work: Work) -> tuple[float, float, float]:
        """(F, B, W) seconds of ``work`` with these rates."""
        on_path = (work.B > 0) | (work.W > 0)  # forward with autograd recording (and LoRA where present)
        f = float(work.F @ np.where(on_path, self.ft_rate, self.f_rate))
        flat = self.ft_flat if work.b + work.w > 0 else self.f_flat
        f += float(flat[work.layers].sum())
        b = float(work.B @ self.b_rate)
        n = len(work.B)
        if work.B[n - 1] > 0 and work.layers[n - 2]:  # the head's gradient passes through the final norm
            b += self.b_norm
        return f, b, float(work.W @ self.w_rate)

    def step_seconds(self, trainable_params: int) -> float | None:
        """Seconds of one AdamW step over ``trainable_params`` LoRA (+ head) parameters; None if not measured.

        The count is read as n whole LoRA blocks plus the classification head when it fits exactly
        (the parameters a schedule trains always do). One ``step()`` call costs a fixed part ``a``
        plus ``b`` per block and ``h`` for the head, solved from the three measured steps: one
        block (a + b), the head (a + h) and every block + head (a + L b + h), with ``a`` clamped to
        [0, one block's step] against noise; so the ``all`` step is reproduced exactly. ``b`` scales
        by the scenario's LoRA target count over the profile's.
        """
        if self.steps is None:
            return None
        cm, arch, prof = self._cm, self._arch, self._prof
        per_block = lora_params(cm.arch, cm.lora_targets, cm.lora_rank)
        head = cm.arch.hidden * cm.num_labels + cm.num_labels if cm.task == "classification" else 0
        has_head = 0 < head <= trainable_params and (trainable_params - head) % per_block == 0
        blocks = (trainable_params - (head if has_head else 0)) / per_block
        one, head_s = self.steps.get("block", 0.0), self.steps.get("head", 0.0)
        per = (self.steps["all"] - head_s) / arch.n_layers if "all" in self.steps else one
        per = max(per, 0.0)  # noise: on a tiny model the head's step alone can time above every block's + head
        fixed = min(max(one - per, 0.0), one)
        n_targets = len(prof.lora.targets) if prof.lora else len(arch.default_lora_targets)
        per *= len(cm.lora_targets) / n_targets
        return fixed + blocks * per + (max(head_s - fixed, 0.0) if has_head else 0.0)


def _profile_arch(prof: LatencyProfile, file: str) -> Arch:
    if prof.arch is not None:
        a = prof.arch
        return Arch(prof.model, a.family, a.n_layers, a.hidden, a.heads, a.kv_heads, a.intermediate, a.vocab,
                    a.tie_embeddings, tuple(prof.lora.targets) if prof.lora else (),
                    attn_head_dim=a.head_dim or 0, qkv_bias=a.family == "qwen2")
    try:
        return resolve_arch(prof.model)
    except ConfigError as err:
        raise ConfigError(file, "model", err.problem) from None


def _check_blocks(p: GridPoint, arch: Arch, file: str, where: str) -> None:
    for key in ("forward", "forward_train", "input_grad", "weight_grad", "backward"):
        lt = getattr(p, key)
        if lt is not None and isinstance(lt.blocks, list) and len(lt.blocks) != arch.n_layers:
            raise ConfigError(file, f"{where}{key}.blocks", f"{len(lt.blocks)} times for {arch.n_layers} blocks "
                              f"of {arch.name}; give one per block or a single value")


def _bracket(axis: list[int], x: int) -> tuple[int, int, float]:
    """(lower, upper, weight of upper) of ``x`` on a sorted axis that spans it."""
    if x in axis:
        return x, x, 0.0
    hi = next(v for v in axis if v > x)
    lo = max(v for v in axis if v < x)
    return lo, hi, (x - lo) / (hi - lo)


def _grid_weights(prof: LatencyProfile, mb: int, seq: int, file: str) -> list[tuple[GridPoint, float]]:
    """The grid points around (mb, seq) with their bilinear weights; one point scales to any shape."""
    pts = prof.points()
    if len(pts) == 1:
        return [(pts[0], 1.0)]
    mbs, seqs = prof.axes()
    if not (mbs[0] <= mb <= mbs[-1] and seqs[0] <= seq <= seqs[-1]):
        raise ConfigError(file, "grid", f"the scenario's micro_batch {mb} x seq_len {seq} is outside the measured "
                          f"grid (micro_batch {mbs[0]}..{mbs[-1]}, seq_len {seqs[0]}..{seqs[-1]}); measure one that "
                          f"covers it: sfsim profile --micro-batch {_join(mbs, mb)} --seq-len {_join(seqs, seq)}")
    by = {(p.micro_batch, p.seq_len): p for p in pts}
    m0, m1, a = _bracket(mbs, mb)
    s0, s1, b = _bracket(seqs, seq)
    out: dict[tuple[int, int], float] = {}
    for m, wm in ((m0, 1.0 - a), (m1, a)):
        for s, ws in ((s0, 1.0 - b), (s1, b)):
            if wm * ws > 0:
                out[(m, s)] = out.get((m, s), 0.0) + wm * ws
    return [(by[k], w) for k, w in out.items()]


def _join(axis: list[int], x: int) -> str:
    return ",".join(str(v) for v in sorted({*axis, x}))


def _seconds(lt, n: int) -> np.ndarray:
    """(n+3,) seconds: embeddings, n blocks, final norm, head."""
    return np.array([lt.embed, *lt.block_times(n), lt.norm, lt.head], dtype=float)


def _rate(seconds: np.ndarray, flops: np.ndarray, fallback) -> np.ndarray:
    """seconds / FLOPs where both are positive, else ``fallback`` (a layer the table leaves out)."""
    ok = (flops > 0) & (seconds > 0)
    return np.where(ok, np.divide(seconds, flops, out=np.zeros_like(seconds), where=ok), fallback)


def _to_layout(arr: np.ndarray, L: int, prof_L: int) -> np.ndarray:
    """A (prof_L+3,) array on the scenario's (L+3,) layout; another depth uses its mean block value."""
    if prof_L == L:
        return arr
    return np.array([arr[0], *([float(np.mean(arr[1:prof_L + 1]))] * L), arr[prof_L + 1], arr[prof_L + 2]])
