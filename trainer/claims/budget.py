"""How long the decisive grid will take on this CPU, from measured speeds.

A tune or converge cell costs ``load_s + train/first + (epochs - 1) x train/later + (epochs x val_rows +
dev_epochs x dev_rows) / score_rps``: its first epoch at ``first`` training samples per second, later
epochs at ``later`` (SplitFrozen with the activation cache replays epoch 1's activations: faster; every
other method, and an uncached SplitFrozen, ``later = first``), the validation rows scored every epoch and
the dev rows only after an epoch that improved on validation (at most ``epochs - PATIENCE`` of them).

Speeds are measured, never assumed, in this order of preference:

1. the speed probe (:mod:`trainer.claims.speed`): every method of a (model, task) timed in one sitting, in
   this process's CPU time (core-seconds, which the other processes' load hardly moves); it gives
   ``first``, ``later``, ``score_rps`` and ``load_s``;
2. the decisive cells already recorded (samples seen over training seconds; scoring at
   :data:`EVAL_SPEEDUP` times the training speed, a start of :data:`LOAD_S`);
3. the earlier grid's one-epoch cells of the same model and method (length 64), scaled by the new length:
   an upper bound, since batches pad to their longest row.

Epochs: the median of the recorded decisive cells, else :data:`FIRST_EPOCHS`. :func:`plan` walks the
grid in its order and says what fits in a budget.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from trainer.claims.grid import Cell
from trainer.claims.scale import PATIENCE, SCALE, uses_cache

#: Epochs a cell is assumed to run before any decisive cell is recorded: best epoch ~4, then the patience.
FIRST_EPOCHS = 4 + PATIENCE
#: Model load and process start (s), and eval rows per training sample's time (a forward is ~1/3 of a step),
#: where no probe measured them.
LOAD_S, EVAL_SPEEDUP = 20.0, 3.0
EARLIER_LEN = 64
DEV_ROWS = {"sst2": 872, "mrpc": 408, "mnli": 1000}


@dataclass(frozen=True)
class Speed:
    """Measured speeds of one (model, task, method): training samples/s in epoch 1 and later (cached
    SplitFrozen replays), scoring rows/s, load and start seconds, and where they were measured."""

    first: float
    later: float
    score_rps: float
    load_s: float
    source: str
    wall_factor: float | None = None  # the probe's wall time over its CPU time (the shared machine's load)


def measured_speeds(recorded: dict[str, dict], partials: dict[str, dict] | None = None,
                    probes: dict[tuple[str, str, str], dict] | None = None) -> dict[tuple[str, str, str], Speed]:
    """Speeds by (model, task, method): probed, else from decisive cells (whole or stopped by a budget:
    every finished epoch counts), else from the earlier grid, length-scaled."""
    seen: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    early: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for rec in [*recorded.values(), *(partials or {}).values()]:
        c, f = rec["cell"], rec["figures"]
        key = (c["model"], c["task"], c["method"])
        if c["kind"] in ("tune", "converge") and f.get("curve"):
            seen[key][0] += f["curve"][-1]["samples_seen"]
            seen[key][1] += sum(r["train_s"] for r in f["curve"])
        elif c["kind"] == "accuracy" and f.get("train_s_by_epoch") and f.get("train_samples"):
            early[key][0] += f["train_samples"] * len(f["train_s_by_epoch"])
            early[key][1] += sum(f["train_s_by_epoch"])
    out = {k: Speed(sp["train_sps_cpu"][0], sp["train_sps_cpu"][1], sp["score_rps_cpu"], sp["load_cpu_s"],
                    f"the speed probe, CPU time (commit {sp['commit']}, {sp['recorded']} UTC; wall time "
                    f"{sp['train_sps_cpu'][0] / sp['train_sps'][0]:.1f}x longer under load {sp['load']['before'][0]:g})",
                    sp["train_sps_cpu"][0] / sp["train_sps"][0])
           for k, sp in (probes or {}).items()}
    for k, (n, s) in seen.items():
        if k not in out and s > 0:
            out[k] = _assumed(n / s, "decisive cells (a pilot's finished epochs included)")
    for (model, task, meth), (n, s) in early.items():
        sc = SCALE.get((model, task))
        if (model, task, meth) not in out and s > 0 and sc is not None:
            out[(model, task, meth)] = _assumed(n / s * EARLIER_LEN / sc.max_len, "earlier grid, length-scaled")
    return out


def _assumed(sps: float, source: str) -> Speed:
    return Speed(sps, sps, EVAL_SPEEDUP * sps, LOAD_S, source)


def expected_epochs(recorded: dict[str, dict]) -> float:
    """The median epochs run by the recorded decisive cells, else :data:`FIRST_EPOCHS`."""
    runs = [r["figures"]["epochs_run"] for r in recorded.values() if r["cell"]["kind"] in ("tune", "converge")]
    return statistics.median(runs) if runs else float(FIRST_EPOCHS)


def cell_seconds(cell: Cell, speeds: dict, epochs: float, cached: bool = True, dev_every_epoch: bool = False
                 ) -> float | None:
    """Estimated wall seconds of one decisive cell on this CPU; None without a measured speed. ``cached``:
    whether a SplitFrozen cell runs with the activation cache (else its later epochs run at ``first``);
    ``dev_every_epoch``: the dev set scored after every epoch (the protocol before the cost cuts)."""
    sc = SCALE.get((cell.model, cell.task))
    sp = speeds.get((cell.model, cell.task, cell.method))
    if sc is None or sp is None:
        return None
    later = sp.later if cached else sp.first
    dev_rows = sc.eval_samples or DEV_ROWS[cell.task]
    scored = epochs * sc.val_samples + (epochs if dev_every_epoch else max(1.0, epochs - PATIENCE)) * dev_rows
    return sp.load_s + sc.train_samples / sp.first + (epochs - 1) * sc.train_samples / later + scored / sp.score_rps


def plan(cells: list[Cell], recorded: dict[str, dict], budget_s: float, partials: dict[str, dict] | None = None,
         probes: dict | None = None, cuts: bool = True) -> dict:
    """The missing decisive and measured-time cells in run order, each with its estimate (a time cell: the
    median wall time of the recorded runs of its method); which fit in ``budget_s``; totals.

    ``cuts=False`` estimates the protocol before the cost cuts (no activation cache, the dev set scored after
    every epoch), for comparison. Returns ``{"rows": [(cell, seconds or None, fits)], "total_s", "unknown",
    "fit", "by_group": {(model, task, partition): seconds}, "sources": {(model, task, method): where its
    speed was measured}, "speeds"}``.
    """
    speeds, epochs = measured_speeds(recorded, partials, probes), expected_epochs(recorded)
    rows, used, total, unknown = [], 0.0, 0.0, 0
    by_group: dict[tuple, float] = defaultdict(float)
    walls: dict[str, list[float]] = defaultdict(list)  # measured-time cells: the recorded runs' wall seconds
    for rec in recorded.values():
        if rec["cell"]["kind"] == "time" and rec.get("wall_s"):
            walls[rec["cell"]["method"]].append(rec["wall_s"])
    for c in cells:
        if c.key in recorded or c.kind not in ("tune", "converge", "time"):
            continue
        if c.kind == "time":
            s = statistics.median(walls[c.method]) if walls.get(c.method) else None
            group = (c.model, c.task, f"time, {c.setting or 'earlier fleet'}")
        else:
            s = cell_seconds(c, speeds, epochs, cuts and uses_cache(recorded, c.model, c.task, c.partition),
                             dev_every_epoch=not cuts)
            group = (c.model, c.task, c.partition)
        fits = s is not None and used + s <= budget_s
        used += s if fits else 0.0
        total += s or 0.0
        unknown += s is None
        by_group[group] += s or 0.0
        rows.append((c, s, fits))
    return {"rows": rows, "total_s": total, "unknown": unknown, "fit": sum(f for *_, f in rows),
            "by_group": dict(by_group), "epochs": epochs,
            "epoch_cells": sum(r["cell"]["kind"] in ("tune", "converge") for r in recorded.values()),
            "sources": {k: v.source for k, v in speeds.items()}, "speeds": speeds}
