"""Render the claims report: ``docs/results.md`` and its figures from recorded cells and the analytic parts.

Pure functions from data to text (:func:`accuracy_table`, :func:`claim_rows`, ...) and one function
per figure. Nothing here runs a model: :mod:`trainer.claims.grid` records the runs, and
:mod:`trainer.claims.compute` gives the simulated and analytic figures.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from trainer.claims.grid import METHODS, PARTITIONS, SETTINGS, TIME, TIME_METHODS
from trainer.claims.paper import pct

TASK_NAMES = {"sst2": "SST-2", "mrpc": "MRPC", "mnli": "MNLI (balanced 9k subset)", "gsm8k": "GSM8K"}
BASELINES = ("fedlora", "splitlora-interleaved", "splitlora-sequential")


def seeds_of(cells: dict[str, dict], kind: str = "accuracy") -> dict[tuple, dict[int, dict]]:
    """Recorded cells of one kind grouped by (model, task, partition, method) -> seed -> figures."""
    out: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for rec in cells.values():
        c = rec["cell"]
        if c["kind"] == kind:
            out[(c["model"], c["task"], c["partition"], c["method"])][c["seed"]] = rec["figures"]
    return out


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_pct(values: list[float]) -> str:
    """``'80.5 ± 1.6 (3)'`` in percent; one value has no ± ; none is ``'not run'``."""
    if not values:
        return "not run"
    m, sd = mean_sd([100 * v for v in values])
    return f"{m:.1f}" + (f" ± {sd:.1f}" if sd is not None else "") + f" ({len(values)})"


def figure(figs: dict, name: str) -> float | None:
    """A metric from a cell's figures, wherever the trainer put it (top level or ``eval_metrics``)."""
    if figs.get(name) is not None:
        return figs[name]
    return (figs.get("eval_metrics") or {}).get(name.removeprefix("eval_"))


def grid_partitions(cells, groups: dict[tuple, dict[int, dict]], model: str, task: str) -> tuple[str, ...]:
    """The partitions the report shows for ``model`` and ``task``: the grid's, then any other recorded one, in order."""
    seen = [c.partition for c in cells if c.kind == "accuracy" and (c.model, c.task) == (model, task)]
    seen += [k[2] for k in groups if k[:2] == (model, task)]
    ordered = [p for p in PARTITIONS if p in seen] + [p for p in dict.fromkeys(seen) if p not in PARTITIONS]
    return tuple(ordered)


def majority(figs: dict, metric: str = "accuracy") -> float | None:
    """The dev set's majority-class score (``accuracy``, ``macro_f1`` or ``f1``) recorded with a run, if any."""
    if figs.get(f"majority_{metric}") is not None:
        return figs[f"majority_{metric}"]
    base = figs.get("majority_baseline") or {}
    return base.get(metric)


def majority_note(groups: dict[tuple, dict[int, dict]], model: str, tasks: list[str]) -> str:
    """Why the claim tables carry macro-F1: the majority class's recorded accuracy and macro-F1 per task.

    E.g. "(MRPC: 68.4% and 40.6)", from the figures recorded with the runs; tasks without them are left out.
    """
    parts = []
    for task in dict.fromkeys(tasks):
        runs = [f for k, seeds in groups.items() if k[:2] == (model, task) for f in seeds.values()]
        pair = next(((majority(f), majority(f, "macro_f1")) for f in runs
                     if majority(f) is not None and majority(f, "macro_f1") is not None), None)
        if pair:
            parts.append(f"{TASK_NAMES.get(task, task).split(' (')[0]}: {100 * pair[0]:.1f}% and {100 * pair[1]:.1f}")
    return ("Accuracy alone flatters a degenerate model: one that always answers the majority class scores the "
            "majority baseline's accuracy but only its macro-F1" + (f" ({'; '.join(parts)})" if parts else "")
            + ", hence the macro-F1 columns.")


def accuracy_table(groups: dict[tuple, dict[int, dict]], model: str, task: str, metric: str = "accuracy",
                   partitions: tuple[str, ...] = PARTITIONS) -> list[str]:
    """Markdown rows: one per partition, one column per method, mean ± sd over seeds (count).

    ``partitions`` are the rows: the grid's partitions for this model and task, so that ``not run``
    always means a run the grid still needs (SmolLM2's grid has no Dirichlet rows at all).
    """
    head = "| partition | " + " | ".join(METHODS) + " | majority class |"
    rows = [head, "|" + "---|" * (len(METHODS) + 2)]
    for part in partitions:
        cols, base = [], None
        for meth in METHODS:
            runs = groups.get((model, task, part, meth), {})
            vals = [v for v in (figure(f, metric) for f in runs.values()) if v is not None]
            cols.append(fmt_pct(vals))
            base = base if base is not None else next(
                (majority(f, metric) for f in runs.values() if majority(f, metric) is not None), None)
        rows.append(f"| {part} | " + " | ".join(cols) + f" | {'-' if base is None else f'{100 * base:.1f}'} |")
    return rows


def seed_table(groups: dict[tuple, dict[int, dict]], model: str, task: str,
               partitions: tuple[str, ...] = PARTITIONS) -> list[str]:
    """Every run's dev accuracy (%), one row per partition and seed, in a collapsed ``<details>`` block.

    The mean ± sd tables hide which seeds move together: methods fed the same stream order (SplitFrozen
    and interleaved SplitLoRA) tend to rise and fall on the same seed.
    """
    seeds = sorted({s for k, runs in groups.items() if k[:2] == (model, task) for s in runs})
    if not seeds:
        return []
    rows = ["<details><summary>Per seed: every run's dev accuracy (%)</summary>", "",
            "| partition | seed | " + " | ".join(METHODS) + " |", "|" + "---|" * (len(METHODS) + 2)]
    for part in partitions:
        for seed in seeds:
            cells = []
            for meth in METHODS:
                v = figure(groups.get((model, task, part, meth), {}).get(seed, {}), "accuracy")
                cells.append("not run" if v is None else f"{100 * v:.1f}")
            rows.append(f"| {part} | {seed} | " + " | ".join(cells) + " |")
    return rows + ["", "</details>"]


def claim_rows(groups: dict[tuple, dict[int, dict]], model: str, partition: str = "label-skew:1") -> list[dict]:
    """SplitFrozen's gain over each baseline per task, seed means: accuracy (points, relative) and macro-F1 points.

    Only seeds both have are compared (paired); ``points_sd`` is the sample standard deviation of the
    per-seed gain in points (None under two seeds): a gain smaller than it is within seed noise.

    Macro-F1 sits beside accuracy because a method that always answers the majority class scores the
    majority baseline's accuracy (68.4% on MRPC) but only its macro-F1 (40.6): :func:`majority_note`.
    """
    rows = []
    for (m, task, part, meth), runs in sorted(groups.items()):
        if m != model or part != partition or meth not in BASELINES:
            continue
        sf = groups.get((m, task, part, "splitfrozen"), {})
        seeds = [s for s in sorted(set(sf) & set(runs))
                 if sf[s].get("accuracy") is not None and runs[s].get("accuracy") is not None]
        if not seeds:
            continue
        a_sf = statistics.fmean(sf[s]["accuracy"] for s in seeds)
        a_b = statistics.fmean(runs[s]["accuracy"] for s in seeds)
        f1 = [(figure(sf[s], "macro_f1"), figure(runs[s], "macro_f1")) for s in seeds]
        f1 = [p for p in f1 if None not in p]
        f_sf = statistics.fmean(p[0] for p in f1) if f1 else None
        f_b = statistics.fmean(p[1] for p in f1) if f1 else None
        diffs = [100 * (sf[s]["accuracy"] - runs[s]["accuracy"]) for s in seeds]
        rows.append({"task": task, "baseline": meth, "seeds": len(seeds), "splitfrozen": a_sf, "baseline_acc": a_b,
                     "points": 100 * (a_sf - a_b), "relative": 100 * (a_sf / a_b - 1),
                     "points_sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
                     "splitfrozen_f1": f_sf, "baseline_f1": f_b,
                     "f1_points": None if f_sf is None else 100 * (f_sf - f_b)})
    return rows


def gain_points(r: dict) -> str:
    """A claim row's gain in points with the sd of the per-seed gain when there is one: ``+30.5 ± 2.6``."""
    return f"{r['points']:+.1f}" + ("" if r.get("points_sd") is None else f" ± {r['points_sd']:.1f}")


def claim_lines(rows: list[dict]) -> list[str]:
    """The claim table: accuracy of both, the gain in points and relative, and the same in macro-F1 points."""
    lines = ["| task | baseline | seeds | SplitFrozen | baseline | gain (points ± sd over seeds) | gain (relative) | "
             "macro-F1: SplitFrozen | baseline | gain (points) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f1 = (["-", "-", "-"] if r.get("f1_points") is None else
              [f"{100 * r['splitfrozen_f1']:.1f}", f"{100 * r['baseline_f1']:.1f}", f"{r['f1_points']:+.1f}"])
        lines.append(f"| {TASK_NAMES[r['task']]} | {r['baseline']} | {r['seeds']} | {100 * r['splitfrozen']:.1f}% | "
                     f"{100 * r['baseline_acc']:.1f}% | {gain_points(r)} | {r['relative']:+.1f}% | "
                     + " | ".join(f1) + " |")
    return lines


def device_flops_per_sample(groups: dict[tuple, dict[int, dict]], model: str = "minilm-l6") -> dict[str, list[float]]:
    """Measured device FLOPs per training sample of each method's seed-0 runs (every task and partition)."""
    per: dict[str, list[float]] = defaultdict(list)
    for (m, _task, _part, meth), runs in groups.items():
        f = runs.get(0)
        if m == model and f and f.get("device_flops_total") is not None and f.get("train_samples"):
            per[meth].append(f["device_flops_total"] / f["train_samples"])
    return per


def measured_compute_savings(groups: dict[tuple, dict[int, dict]], model: str = "minilm-l6") -> dict[str, float]:
    """SplitFrozen's measured device-FLOP saving against each method whose devices compute (means of seed 0)."""
    per = device_flops_per_sample(groups, model)
    if not per.get("splitfrozen"):
        return {}
    sf = statistics.fmean(per["splitfrozen"])
    return {meth: 1 - sf / statistics.fmean(v) for meth, v in per.items()
            if meth != "splitfrozen" and statistics.fmean(v) > 0}


def compute_lines(groups: dict[tuple, dict[int, dict]], model: str = "minilm-l6") -> list[str]:
    """Measured device FLOPs per training sample of each method (seed 0, every task and partition pooled)."""
    per = device_flops_per_sample(groups, model)
    if not per:
        return ["No accuracy cell recorded yet."]
    saves = measured_compute_savings(groups, model)
    lines = ["| method | runs | device FLOP per training sample (mean) | SplitFrozen's saving |", "|---|---|---|---|"]
    for meth in METHODS:
        if meth not in per:
            continue
        save = f"{100 * saves[meth]:.1f}%" if meth in saves else "-"
        lines.append(f"| {meth} | {len(per[meth])} | {statistics.fmean(per[meth]):.3e} | {save} |")
    return lines


def measured_time_savings(cells: dict[str, dict]) -> dict[str, float]:
    """SplitFrozen's measured training-time saving against each other timed method (runtime cells)."""
    rec = {r["cell"]["method"]: r["figures"] for r in cells.values() if r["cell"]["kind"] == "time"}
    sf = rec.get("splitfrozen")
    if not sf:
        return {}
    return {m: 1 - sf["measured_s"] / f["measured_s"] for m, f in rec.items() if m != "splitfrozen"}


def time_lines(cells: dict[str, dict]) -> list[str]:
    """Measured (distributed runtime, emulated fleet) and predicted training time per method."""
    rec = {r["cell"]["method"]: r for r in cells.values() if r["cell"]["kind"] == "time"}
    if not rec:
        return ["No time cell recorded yet."]
    lines = ["| method | measured (s) | predicted (s) | prediction error | SplitFrozen's saving, measured | "
             "SplitFrozen's saving, predicted |", "|---|---|---|---|---|---|"]
    sf = rec.get("splitfrozen", {}).get("figures")
    for meth in TIME_METHODS:
        if meth not in rec:
            lines.append(f"| {meth} | not run | | | | |")
            continue
        f = rec[meth]["figures"]
        sm = sp = "-"
        if sf and meth != "splitfrozen":
            sm = f"{100 * (1 - sf['measured_s'] / f['measured_s']):.1f}%"
            sp = f"{100 * (1 - sf['predicted_s'] / f['predicted_s']):.1f}%"
        err = f["error"]
        lines.append(f"| {meth} | {f['measured_s']:.1f} | {f['predicted_s']:.1f} | "
                     f"{'-' if err is None else f'{100 * err:+.1f}%'} | {sm} | {sp} |")
    return lines


def gsm8k_lines(cells: dict[str, dict]) -> list[str]:
    """GSM8K before and after fine-tuning: exact match, answer-only loss, and how the answers ended.

    ``#### N`` mark: share of generated answers that hold GSM8K's final-answer mark (else the last
    number is scored); at the limit: share whose decoding stopped at ``--gen-tokens`` rather than at
    EOS (the answer may have been cut before its end). Cells run before these were recorded show ``-``.
    """
    rec = {r["cell"]["method"]: r["figures"] for r in cells.values() if r["cell"]["kind"] == "gsm8k"}
    if not rec:
        return ["No GSM8K cell recorded yet."]
    lines = ["| model state | exact match | answer-only loss (held-out) | `#### N` mark | stopped at the token limit | "
             "train samples | eval questions |", "|---|---|---|---|---|---|---|"]
    cen = rec.get("cenlora") or {}
    rows = [("before fine-tuning", cen.get("eval_before"), 0, cen.get("eval_samples"))]
    for meth in ("cenlora", "splitfrozen"):
        f = rec.get(meth)
        rows.append((f"after {meth}", None if f is None else {**(f.get("eval_metrics") or {}),
                                                             "accuracy": f.get("accuracy"),
                                                             "answer_loss": figure(f, "answer_loss")},
                     None if f is None else f.get("train_samples"), None if f is None else f.get("eval_samples")))

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    for label, s, n_train, n_eval in rows:
        if s is None:
            lines.append(f"| {label} | not run | | | | | |")
            continue
        loss = s.get("answer_loss")
        lines.append(f"| {label} | {pct(s.get('accuracy'))} | {'-' if loss is None else f'{loss:.3f}'} | "
                     f"{pct(s.get('marked'))} | {pct(s.get('hit_limit'))} | {n_train} | {n_eval} |")
    return lines + [""] + exact_match_tests(rows)


def exact_match_tests(rows: list[tuple]) -> list[str]:
    """Whether each fine-tuned exact match differs from the pretrained one by more than chance.

    Two-sided Fisher exact test on correct/incorrect counts over the same questions (rows of
    :func:`gsm8k_lines`: ``(label, scores, train samples, eval questions)``, the first the pretrained model).
    """
    from scipy.stats import fisher_exact

    _, before, _, n = rows[0]
    if before is None or not n or before.get("accuracy") is None:
        return []
    a = round(before["accuracy"] * n)
    out = []
    for label, s, _, m in rows[1:]:
        if s is None or s.get("accuracy") is None or m != n:
            continue
        b = round(s["accuracy"] * n)
        p = fisher_exact([[a, n - a], [b, n - b]]).pvalue
        out.append(f"- Exact match {a}/{n} before against {b}/{n} {label}: two-sided Fisher exact p = {p:.2f}"
                   + (" (no evidence of a difference on this many questions)." if p >= 0.05 else "."))
    return out


def stream_order_lines(path: Path) -> list[str]:
    """The recorded stream-order experiment (its own command), as a table."""
    if not path.is_file():
        return [f"Not recorded ({path.name} missing)."]
    data = json.loads(path.read_text())
    lines = ["| server order | accuracy | training time (s) | label entropy (mean) | longest one-device run |",
             "|---|---|---|---|---|"]
    for r in data.values():
        mix = r.get("stream_mixing") or {}
        lines.append(f"| {r['order']} (seed {r['seed']}) | {100 * r['eval_accuracy']:.2f}% | {r['train_s']:.1f} | "
                     f"{mix.get('label_entropy_mean', '-')} | {mix.get('longest_device_run', '-')} |")
    return lines


def settings_line(model: str) -> str:
    s = SETTINGS[model]
    return (f"{model}: fleet `{s.fleet}` (4 devices, equal budgets), {s.train_samples} training samples, 1 epoch, "
            f"max length {s.max_len}, cut {s.split} for the split methods, eval on "
            f"{'the whole dev set' if s.eval_samples is None else f'the first {s.eval_samples} dev rows'}")


def fleet_line(path: str) -> str:
    """A fleet file's devices in words, read from the file: ``'2 x 4 GFLOPS on a 20 Mbps uplink, ...'``."""
    from sfsim.scenario.config import load_scenario
    from sfsim.units import format_quantity

    groups: dict[tuple, int] = {}
    for d in load_scenario(path).devices:
        key = (format_quantity(d.flops, "flops") if d.flops else "profiled", format_quantity(d.uplink.bandwidth, "bandwidth"))
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{n} x {f} on a {bw} uplink" for (f, bw), n in groups.items())


def time_settings_line() -> str:
    """The measured-time settings, from the grid's constants and the fleet files."""
    from trainer.claims.grid import TIME_FLEETS

    fleets = "; ".join(f"`{path}` ({name}: {fleet_line(path)})" for name, path in TIME_FLEETS.items())
    return (f"fleets {fleets}, device compute and links emulated (sleeping to the fleet's rates); "
            f"MiniLM-L6, SST-2, {TIME.train_samples} samples, cut {TIME.split}, `sfsim validate --emulate all` with "
            f"the server at this machine's measured speed (`{TIME.extra[1]}`)")


def paper_line(name: str) -> str:
    """A paper figure as text (:func:`trainer.claims.paper.pct`)."""
    return pct(name)
