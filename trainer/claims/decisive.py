"""Render the decisive grid: its protocol, tuned settings, results, verdicts and learning curves.

Pure functions from recorded cells to markdown rows (and one figure function). A method's seed-0
result is its winning tuning trial (:func:`trainer.claims.scale.chosen`); until every trial of a
method is recorded, its trials so far are shown as such and it has no result.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from trainer.claims.compute import epoch_seconds
from trainer.claims.grid import METHODS, Cell
from trainer.claims.render import TASK_NAMES, mean_sd
from trainer.claims.scale import (
    FLEETS,
    MAX_EPOCHS,
    PATIENCE,
    SCALE,
    TRIALS,
    TRUNCATION,
    TUNING,
    chosen,
    groups,
    parse_setting,
    seeds_for,
    settings_of,
    uses_cache,
)
from trainer.claims.verdict import judge

BASELINES = ("fedlora", "splitlora-interleaved", "splitlora-sequential")
DEV_ROWS = {"sst2": 872, "mrpc": 408, "mnli": 1000}


def protocol_lines(recorded: dict | None = None) -> list[str]:
    """The grid's scale, stopping rule, SplitFrozen's activation cache per group (from ``recorded``) and the
    tuning grids, from :mod:`trainer.claims.scale` (never by hand)."""
    lines = ["| model | task | train samples | validation rows (held out of train) | dev rows (reported) | max length | "
             "longest row, tokens (train / dev) | rows truncated at it (train / dev) | primary metric | "
             "seeds (label-skew:1 / other) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, task), sc in SCALE.items():
        lengths = TRUNCATION.get((model, task), {})
        tr, longest = lengths.get("over", {}).get(sc.max_len), lengths.get("max_tokens")
        cut = "not measured" if tr is None else f"{100 * tr[0]:.2f}% / {100 * tr[1]:.2f}%"
        lines.append(f"| {model} | {TASK_NAMES[task]} | {sc.train_samples:,} | {sc.val_samples:,} | "
                     f"{sc.eval_samples or DEV_ROWS[task]:,} | {sc.max_len} | "
                     f"{'not measured' if longest is None else f'{longest[0]} / {longest[1]}'} | {cut} | {sc.metric} | "
                     f"{len(seeds_for('label-skew:1'))} / {len(seeds_for('iid'))} |")
    lines += ["", "What each task can show. SST-2: a binary task whose centralised ceiling sat far above its "
              "majority class in the earlier grid, so it can rank methods; it is where the accuracy claim is decided. MNLI: the "
              f"offline file is a balanced {TRUNCATION[('minilm-l6', 'mnli')]['rows'][0]:,}-row subset of MultiNLI, not "
              "GLUE's MNLI-matched, so 10,000 training samples cannot be drawn: the grid trains on every row left "
              f"after validation. MRPC: {TRUNCATION[('minilm-l6', 'mrpc')]['rows'][0]:,} training rows in all, and "
              "about two thirds of its dev pairs are paraphrases; accuracy rewards a model that always says "
              "\"paraphrase\", so macro-F1 is its primary figure. It can show whether a method learns both classes "
              "under skew; it cannot rank methods whose ceiling sits at its majority class, and label-skew:1 "
              "rebalances its training classes (68/32 to 50/50, one class per device), which the dev set does not "
              "share. SmolLM2-135M is scored on the whole SST-2 dev set (872 rows).", "",
              f"Stopping rule, the same for every method: after each epoch the global model is scored on the "
              f"validation rows; training stops when that score has not improved for {PATIENCE} epochs in a row "
              f"(or after {MAX_EPOCHS} epochs), and the reported dev score is the one at the best validation "
              "epoch. The dev set selects nothing: it is scored after each epoch whose validation score improved "
              "(only such an epoch can be the one reported; the first recorded cells scored it after every epoch, "
              "which changes no reported figure), so the learning curves plot the validation score.", "",
              *cache_lines(recorded or {}), "",
              f"Tuning, the same budget for every method ({TRIALS} trials each, seed 0 of each task and partition, "
              "selected on the validation score):", "", "| method | grid searched |", "|---|---|"]
    for meth, grid in TUNING.items():
        lines.append(f"| {meth} | " + " x ".join(f"{k} in {{{', '.join(f'{v:g}' for v in vals)}}}"
                                                 for k, vals in grid.items()) + " |")
    return lines


def cache_lines(recorded: dict) -> list[str]:
    """Which groups' SplitFrozen cells use the activation cache (:func:`trainer.claims.scale.uses_cache`)."""
    off = [g for g in groups() if not uses_cache(recorded, *g)]
    text = ("SplitFrozen's activation cache: its device prefix is frozen, forward-only and runs without dropout, "
            f"so SplitFrozen cells run on {' and '.join(f'`{c}`' for _, c in FLEETS.values())}: epoch 1's activations are kept at the server and "
            "epochs 2+ replay epoch 1's micro-batches in a fresh order, with no device compute (as a deployment "
            "would). The other methods train the device side, cannot cache, and re-draw their micro-batches "
            "every epoch; so does an uncached SplitFrozen run, which is why a group keeps the protocol its first "
            "SplitFrozen cell was recorded under.")
    if off:
        text += " Without the cache (a cell was recorded before it was adopted): " + "; ".join(
            f"{m}, {TASK_NAMES[t]}, {p}" for m, t, p in off) + "."
    return [text]


def method_runs(recorded: dict, model: str, task: str, part: str, meth: str) -> tuple[dict | None, dict[int, dict]]:
    """The winning tuning record (None until every trial is in) and the figures by seed at its setting."""
    win = chosen(recorded, model, task, part, meth)
    if win is None:
        return None, {}
    runs = {0: win["figures"]}
    for seed in seeds_for(part)[1:]:
        rec = recorded.get(Cell("converge", model, task, meth, part, seed).key)
        if rec is not None and rec.get("setting") == win["cell"]["setting"]:
            runs[seed] = rec["figures"]
    return win, runs


def trials(recorded: dict, model: str, task: str, part: str, meth: str) -> list[dict]:
    """The recorded tuning trials of one method, in grid order."""
    keys = [Cell("tune", model, task, meth, part, 0, s).key for s in settings_of(meth)]
    return [recorded[k] for k in keys if k in recorded]


def results_lines(recorded: dict, model: str, task: str, part: str) -> list[str]:
    """One row per method: chosen setting, trials, seeds, dev score, epochs, steps, rounds, samples seen."""
    metric = SCALE[(model, task)].metric
    lines = [f"| method | chosen setting (trials recorded) | seeds | dev {metric} (%), mean ± sd | dev accuracy (%) | "
             "best epoch / epochs run | optimizer steps | FedAvg rounds | samples seen |", "|---|---|---|---|---|---|---|---|---|"]
    for meth in METHODS:
        win, runs = method_runs(recorded, model, task, part, meth)
        done = trials(recorded, model, task, part, meth)
        if win is None:
            lines.append(f"| {meth} | not chosen yet ({len(done)} of {TRIALS}) | - | - | - | - | - | - | - |")
            continue
        f0 = win["figures"]
        vals = [100 * f[metric] for f in runs.values()]
        acc = [100 * f["accuracy"] for f in runs.values()]
        lines.append(f"| {meth} | {win['cell']['setting']} ({len(done)} of {TRIALS}) | {len(runs)} | {_ms(vals)} | "
                     f"{_ms(acc)} | {f0['best_epoch']} / {f0['epochs_run']} | {f0['optimizer_steps']:,} | "
                     f"{'-' if f0['fedavg_rounds'] is None else f0['fedavg_rounds']} | {f0['samples_seen']:,} |")
    return lines + ["", "Steps, rounds, samples seen and epochs are seed 0's, up to its best validation epoch."]


def trial_lines(recorded: dict, model: str, task: str, part: str) -> list[str]:
    """Every recorded tuning trial: its validation score (what selects) and its dev score at that epoch."""
    metric = SCALE[(model, task)].metric
    lines = [f"| method | setting | validation {metric} (%) | dev {metric} (%) | dev accuracy (%) | best epoch / "
             "epochs run | stopped by | optimizer steps | FedAvg rounds | samples seen | train s | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for meth in METHODS:
        for rec in trials(recorded, model, task, part, meth):
            f = rec["figures"]
            lines.append(f"| {meth} | {rec['cell']['setting']} | {100 * f['val_best']:.1f} | {100 * f[metric]:.1f} | "
                         f"{100 * f['accuracy']:.1f} | {f['best_epoch']} / {f['epochs_run']} | "
                         f"{'patience' if f['converged'] else 'epoch limit'} | {f['optimizer_steps']:,} | "
                         f"{'-' if f['fedavg_rounds'] is None else f['fedavg_rounds']} | {f['samples_seen']:,} | "
                         f"{f['train_s']:.0f} | {rec.get('commit')} |")
    return lines


def partial_lines(partials: dict, model: str, task: str, part: str) -> list[str]:
    """Cells stopped by a session's budget: each finished epoch's scores, as a pilot (never a result)."""
    metric = SCALE[(model, task)].metric
    recs = [r for r in partials.values() if (r["cell"]["model"], r["cell"]["task"], r["cell"]["partition"])
            == (model, task, part)]
    if not recs:
        return []
    lines = ["Pilot: cells stopped by a session's budget before their stopping rule was met. Their epochs are "
             "real and kept (with command and commit), but they are **not results**: the cell runs again in full.", "",
             f"| cell | epoch | samples seen | optimizer steps | FedAvg rounds | train loss | validation {metric} (%) | "
             f"dev {metric} (%) | train s | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        for e in r["figures"]["curve"]:
            dev = "-" if e["dev"] is None else f"{100 * e['dev'][metric]:.1f}"  # not scored: validation did not improve
            lines.append(f"| {r['cell']['method']} {r['cell']['setting']} s{r['cell']['seed']} | {e['epoch']} | "
                         f"{e['samples_seen']:,} | {e['optimizer_steps']:,} | "
                         f"{'-' if e['fedavg_rounds'] is None else e['fedavg_rounds']} | {e['train_loss']:.4f} | "
                         f"{100 * e['val'][metric]:.1f} | {dev} | {e['train_s']:.0f} | {r.get('commit')} |")
    return lines


def _ms(vals: list[float]) -> str:
    if not vals:
        return "-"
    m, sd = mean_sd(vals)
    return f"{m:.1f}" + ("" if sd is None else f" ± {sd:.1f}") + f" ({len(vals)})"


def seed_groups(recorded: dict) -> dict[tuple, dict[int, dict]]:
    """The decisive grid's results in the earlier grid's shape, (model, task, partition, method) -> seed -> figures,
    each method at its chosen setting (for :func:`trainer.claims.plots.accuracy_figure`)."""
    out = {}
    for model, task, part in groups():
        for meth in METHODS:
            _, runs = method_runs(recorded, model, task, part, meth)
            if runs:
                out[(model, task, part, meth)] = runs
    return out


def verdicts(recorded: dict, model: str, task: str, part: str = "label-skew:1") -> dict[str, object]:
    """SplitFrozen against each baseline on one task and partition: a :class:`~trainer.claims.verdict.Verdict` each."""
    metric = SCALE[(model, task)].metric
    _, sf = method_runs(recorded, model, task, part, "splitfrozen")
    _, cen = method_runs(recorded, model, task, part, "cenlora")
    ceiling = statistics.fmean(f["accuracy"] for f in cen.values()) if cen else None
    major = next((f["majority_accuracy"] for f in sf.values()), None)
    out = {}
    for b in BASELINES:
        _, base = method_runs(recorded, model, task, part, b)
        pairs = [(sf[s][metric], base[s][metric]) for s in sorted(set(sf) & set(base))]
        out[b] = judge(pairs, len(seeds_for(part)), ceiling, major)
    return out


def verdict_lines(recorded: dict) -> list[str]:
    """The verdict table of the decisive grid: every model, task and baseline under label-skew:1 and iid."""
    lines = ["| model | task | partition | baseline | verdict | gain, points of the primary metric (95% CI) | "
             "relative | seeds |", "|---|---|---|---|---|---|---|---|"]
    for model, task, part in groups():
        if part not in ("label-skew:1", "iid"):
            continue
        for b, v in verdicts(recorded, model, task, part).items():
            gain = "-" if v.mean is None else f"{v.mean:+.1f}" + (
                "" if v.ci is None else f" ({v.ci[0]:+.1f} to {v.ci[1]:+.1f})")
            rel = "-" if v.relative is None else f"{v.relative:+.1f}%"
            lines.append(f"| {model} | {TASK_NAMES[task]} | {part} | {b} | **{v.word}** ({v.reason}) | {gain} | "
                         f"{rel} | {v.seeds} |")
    return lines


def _sim_seconds(rec: dict, model: str, task: str) -> list[float] | None:
    """Simulated seconds at the end of each epoch of a trial on the fleet it ran on (None: CenLoRA); a cached
    fleet's later epochs are cheaper, so each epoch count is simulated whole."""
    sc, curve, meth = SCALE[(model, task)], rec["figures"]["curve"], rec["cell"]["method"]
    fleet, knobs = rec.get("settings", {}).get("fleet", FLEETS[model][0]), parse_setting(rec["cell"]["setting"])
    one = epoch_seconds(fleet, meth, sc.train_samples, sc.max_len, sc.split, knobs, model)
    if one is None:
        return None
    if not rec.get("settings", {}).get("cache_activations"):
        return [one * r["epoch"] for r in curve]
    return [epoch_seconds(fleet, meth, sc.train_samples, sc.max_len, sc.split, knobs, model, r["epoch"]) for r in curve]


def curves_figure(recorded: dict, model: str, task: str, part: str, path: Path, partials: dict | None = None) -> bool:
    """Validation score per epoch (the score that selects, measured after every epoch) against samples seen,
    measured training seconds and simulated seconds on the trial's fleet (:func:`_sim_seconds`), one line
    per recorded trial (the chosen ones solid, the others dashed, a pilot stopped by its budget dotted),
    and a star at the reported dev score of each finished trial's best epoch; False (nothing written)
    when there is nothing to draw."""
    recs = [(m, r) for m in METHODS for r in trials(recorded, model, task, part, m)]
    recs += [(r["cell"]["method"], r) for r in (partials or {}).values()
             if (r["cell"]["model"], r["cell"]["task"], r["cell"]["partition"]) == (model, task, part)]
    if not recs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = SCALE[(model, task)].metric
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for meth, rec in recs:
        win = chosen(recorded, model, task, part, meth)
        curve, colour = rec["figures"]["curve"], f"C{list(METHODS).index(meth)}"
        ys = [100 * r["val"][metric] for r in curve]
        xs = ([r["samples_seen"] for r in curve], [sum(r["train_s"] for r in curve[: i + 1]) for i in range(len(curve))],
              _sim_seconds(rec, model, task))
        pilot = rec.get("stopped_by_budget", False)
        style = ":" if pilot else "-" if win is not None and win["key"] == rec["key"] else "--"
        label = f"{meth} {rec['cell']['setting']}" + (" (pilot, stopped by budget)" if pilot else "")
        for i, (ax, x) in enumerate(zip(axes, xs, strict=True)):
            if x is None:
                continue
            ax.plot(x, ys, style, marker="o", ms=3, color=colour, label=label if i == 0 else None)
            best = None if pilot else rec["figures"]["best_epoch"] - 1
            if best is not None and curve[best]["dev"] is not None:  # the reported dev score
                ax.plot([x[best]], [100 * curve[best]["dev"][metric]], "*", color=colour, mec="black", ms=9)
    major = next((r["figures"].get(f"majority_{metric}") for _, r in recs if not r.get("stopped_by_budget")), None)
    for ax in axes:
        if major is not None:
            ax.axhline(100 * major, color="black", ls=":", lw=1)
    axes[0].set_xlabel("training samples seen")
    axes[1].set_xlabel("measured training s (in-process, shared CPU)", fontsize=8)
    axes[2].set_xlabel("simulated s on the trial's fleet (cached or not; no CenLoRA)", fontsize=8)
    axes[0].set_ylabel(f"{metric} (%)")
    fig.suptitle(f"{model}, {TASK_NAMES[task]}, {part}: validation {metric} per epoch (lines); star: dev {metric} "
                 "reported, at the best validation epoch; dotted: the dev set's majority class", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
