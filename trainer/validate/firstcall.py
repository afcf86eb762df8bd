"""A fresh process's first calls against steady ones: what a run's first micro-batch pays beyond the others.

- :func:`first_call`: the first frozen forward (embeddings and every block): a device's first micro-batch, the
  profile's ``first_call`` (``sfsim validate`` derives each device's ``warmup`` from it).
- :func:`first_step`: the first training micro-batch of the server's model (forward with autograd, loss, backward,
  the LoRA weight gradients and the AdamW step): a server's first micro-batch, the profile's ``first_step``, which
  the cost model adds to each server worker's first forward of the run (:meth:`sfsim.cost.model.CostModel.server_warmup`).

Each is only honest as the process's first use of its path: :func:`trainer.validate.profile.profile_model` measures
a server profile's ``first_step`` first, then ``first_call`` (a server profile's ``first_call`` therefore follows a
training micro-batch), and a device profile's ``first_call`` only. ``extra_s`` is ``cold_s - steady_s`` from the
rounded figures (never below 0), so it re-derives exactly from the file.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch


def cpu_clock(device: torch.device) -> Callable[[], float]:
    """The clock :func:`first_step` reads: this thread's CPU seconds on a CPU with one torch thread (all the work is
    this thread's, and a loaded machine's waits for a core stay out: a single cold sample in wall time moved by tens
    of ms at a load of 5-7 on 2 cores, its CPU time by under 1 ms), else wall time (an accelerator's kernels, or
    torch's other threads, are not this thread's CPU time)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def _figures(mb: int, seq: int, cold: float, steady: list[float]) -> dict:
    cold_s, steady_s = round(cold, 6), round(statistics.median(steady), 6)
    return {"micro_batch": mb, "seq_len": seq, "cold_s": cold_s, "steady_s": steady_s,
            "extra_s": round(max(0.0, cold_s - steady_s), 6)}


def first_call(parts, lm, spec, sync: Callable[[], None], repeats: int = 5) -> dict:
    """Time the first frozen forward (embeddings + every block) of this process, then ``repeats`` more.

    Run before anything else touches the model (in a device profile), so the first call pays what a device's first
    micro-batch pays in a fresh process; ``extra_s`` (cold minus the steady median) is what a scenario device's
    ``warmup`` takes. At the grid's first shape. ``parts``: the profile's ``_Parts``; ``sync``: waits for the
    accelerator's queued kernels.
    """
    mb, seq = spec.micro_batches[0], spec.seq_lens[0]
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, lm.model.config.vocab_size, (mb, seq), generator=g).to(parts.device)  # (B, T)
    mask = torch.ones(mb, seq, dtype=torch.long, device=parts.device)  # (B, T)

    def forward() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = parts.dev.embed(ids)  # (B, T, d)
            ctx = parts.fsrv.body.context(x, mask)
            for i, blk in enumerate(parts.blocks_f):
                x = blk(x, **parts.fsrv.body.kwargs(ctx, i))
        sync()
        return time.perf_counter() - t0

    cold = forward()
    return _figures(mb, seq, cold, [forward() for _ in range(repeats)])


def first_step(parts, lm, spec, sync: Callable[[], None], autocast: torch.dtype | None,
               repeats: int = 5) -> dict:
    """Time this process's first training micro-batch of the server's model, then ``repeats`` more.

    One micro-batch as a server trains it: activations in (the embeddings, computed outside the timing), every
    LoRA block forward with autograd, final norm, head and loss, the backward (input gradients and, by
    ``DeferredGrads``, the LoRA weight gradients), the AdamW step over every block and the head, and the gradients
    cleared. At the grid's largest shape (a run's micro-batches are near it). Run first in a server profile: its
    cold figure is then what a fresh server process's first micro-batch pays; ``extra_s`` is its warm-up.
    ``autocast``: the profile's precision (None: fp32). Timed by :func:`cpu_clock`.
    """
    mb, seq = spec.micro_batches[-1], spec.seq_lens[-1]
    step = training_step(parts, lm, spec, autocast)
    clock = cpu_clock(parts.device)

    def train() -> float:
        sync()
        t0 = clock()
        step()
        sync()
        return clock() - t0

    cold = train()
    return _figures(mb, seq, cold, [train() for _ in range(repeats)])


def training_step(parts, lm, spec, autocast: torch.dtype | None) -> Callable[[], torch.Tensor]:
    """One training micro-batch of the server's model at the grid's largest shape, as :func:`first_step` times it
    (the embeddings computed here, outside it): a callable that runs it and returns its loss (backward done)."""
    from trainer.methods.common import task_loss

    mb, seq = spec.micro_batches[-1], spec.seq_lens[-1]
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, lm.model.config.vocab_size, (mb, seq), generator=g)  # (B, T)
    labels = ids.clone() if parts.is_lm else torch.randint(0, spec.num_labels, (mb,), generator=g)
    ids, labels = ids.to(parts.device), labels.to(parts.device)
    mask = torch.ones(mb, seq, dtype=torch.long, device=parts.device)  # (B, T)
    ts = parts.tsrv
    with torch.no_grad():
        x0 = parts.dev.embed(ids).float()  # (B, T, d): what arrives at the server, outside the timing

    def train() -> torch.Tensor:
        with torch.autocast(parts.device.type, dtype=autocast) if autocast else contextlib.nullcontext():
            x = x0.clone().requires_grad_(True)  # the cut's activations: their gradient goes back down
            ctx = ts.body.context(x, mask)
            h = x
            for i, blk in enumerate(parts.blocks_t):
                h = blk(h, **ts.body.kwargs(ctx, i))
            loss = task_loss(parts.head_out(ts, ts.final_norm(h), mask), labels, parts.is_lm)
        loss.backward()
        parts.deferred.flush()
        parts.opt_all.step()
        parts.opt_all.zero_grad(set_to_none=True)
        return loss

    return train
