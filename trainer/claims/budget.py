"""How long the decisive grid will take on this CPU, from measured samples per second.

A tune or converge cell costs ``epochs x (train_samples / train_sps + eval_rows / eval_rps) + load_s``.
Training speed is measured, never assumed: from the decisive cells already recorded (samples seen
over training seconds), else from the earlier grid's one-epoch cells of the same model and method
(recorded ``train_samples`` over ``train_s_by_epoch``, at length 64, scaled by the new length: an upper
bound, since batches pad to their longest row). Epochs: the median of the recorded decisive cells, else
:data:`FIRST_EPOCHS`. :func:`plan` walks the grid in its order and says what fits in a budget.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from trainer.claims.grid import Cell
from trainer.claims.scale import PATIENCE, SCALE

#: Epochs a cell is assumed to run before any decisive cell is recorded: best epoch ~4, then the patience.
FIRST_EPOCHS = 4 + PATIENCE
#: Model load and process start (s), and eval rows per training sample's time (a forward is ~1/3 of a step).
LOAD_S, EVAL_SPEEDUP = 20.0, 3.0
EARLIER_LEN = 64


def measured_sps(recorded: dict[str, dict], partials: dict[str, dict] | None = None
                 ) -> dict[tuple[str, str, str], tuple[float, str]]:
    """Training samples per second by (model, task, method), with where it was measured: decisive cells
    (whole or stopped by a budget: every finished epoch counts), else the earlier grid."""
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
    out = {k: (n / s, "decisive cells (a pilot's finished epochs included)") for k, (n, s) in seen.items() if s > 0}
    for (model, task, meth), (n, s) in early.items():
        sc = SCALE.get((model, task))
        if (model, task, meth) not in out and s > 0 and sc is not None:
            out[(model, task, meth)] = (n / s * EARLIER_LEN / sc.max_len, "earlier grid, length-scaled")
    return out


def expected_epochs(recorded: dict[str, dict]) -> float:
    """The median epochs run by the recorded decisive cells, else :data:`FIRST_EPOCHS`."""
    runs = [r["figures"]["epochs_run"] for r in recorded.values() if r["cell"]["kind"] in ("tune", "converge")]
    return statistics.median(runs) if runs else float(FIRST_EPOCHS)


def cell_seconds(cell: Cell, sps: dict, epochs: float) -> float | None:
    """Estimated wall seconds of one decisive cell on this CPU; None without a measured speed."""
    sc = SCALE.get((cell.model, cell.task))
    speed = sps.get((cell.model, cell.task, cell.method))
    if sc is None or speed is None:
        return None
    dev_rows = sc.eval_samples or {"sst2": 872, "mrpc": 408, "mnli": 1000}[cell.task]
    per_epoch = sc.train_samples / speed[0] + (sc.val_samples + dev_rows) / (EVAL_SPEEDUP * speed[0])
    return epochs * per_epoch + LOAD_S


def plan(cells: list[Cell], recorded: dict[str, dict], budget_s: float, partials: dict[str, dict] | None = None
         ) -> dict:
    """The missing decisive and measured-time cells in run order, each with its estimate (a time cell: the
    median wall time of the recorded runs of its method); which fit in ``budget_s``; totals.

    Returns ``{"rows": [(cell, seconds or None, fits)], "total_s", "unknown", "fit", "by_group": {(model,
    task, partition): seconds}, "sources": {(model, task, method): where its speed was measured}}``.
    """
    sps, epochs = measured_sps(recorded, partials), expected_epochs(recorded)
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
            s, group = cell_seconds(c, sps, epochs), (c.model, c.task, c.partition)
        fits = s is not None and used + s <= budget_s
        used += s if fits else 0.0
        total += s or 0.0
        unknown += s is None
        by_group[group] += s or 0.0
        rows.append((c, s, fits))
    return {"rows": rows, "total_s": total, "unknown": unknown, "fit": sum(f for *_, f in rows),
            "by_group": dict(by_group), "epochs": epochs,
            "epoch_cells": sum(r["cell"]["kind"] in ("tune", "converge") for r in recorded.values()), "sources": {k: v[1] for k, v in sps.items()},
            "sps": {k: v[0] for k, v in sps.items()}}
