"""Assemble ``docs/results.md``: run the missing cells within a budget, then write the report and figures.

``sfsim report`` calls :func:`make_report`. The report is a function of the recorded cells (real
runs, each with its command) and of analytic/simulated figures recomputed every time, so running it
again with no budget rewrites the same document from the same records.
"""

from __future__ import annotations

from pathlib import Path

from sfsim.scenario.config import load_scenario
from sfsim.scenario.schema import write_atomic
from trainer.claims import budget, codecs, decisive, glance, plots, render, sections
from trainer.claims.grid import (
    METHODS,
    SETTINGS,
    Cell,
    Outcome,
    default_grid,
    load_cells,
    run_cells,
    time_cells,
)
from trainer.claims.paper import pct
from trainer.claims.render import TASK_NAMES
from trainer.claims.scale import decisive_grid, load_partials, run_decisive
from trainer.claims.scale import groups as scale_groups
from trainer.claims.speed import load_speeds
from trainer.claims.verdict import judge

#: Link scale factors of the bandwidth sweep (x0.01 .. x100 of profiles/edge.yaml, log-spaced).
FACTORS = [10 ** (e / 4) for e in range(-8, 9)]


def make_report(results: Path, docs: Path, data_dir: str, budget_s: float, cells: list[Cell] | None = None,
                edge: str = "profiles/edge.yaml", stream_order: Path | None = None, factors=None,
                measure_gpt2: bool = True, allow_dirty: bool = False, log=print) -> Outcome:
    """Run what is missing (within ``budget_s``), then write ``docs/results.md`` and ``docs/figures/``."""
    cells = full_grid() if cells is None else cells
    if budget_s > 0:
        p = budget.plan(cells, load_cells(results), budget_s, load_partials(results), load_speeds(results))
        log(f"plan: {p['fit']} of {len(p['rows'])} missing cells expected to fit in {budget_s / 3600:.2f} h; the rest "
            f"needs about {p['total_s'] / 3600:,.0f} h on this CPU (sfsim report --plan lists them)")
        outcome = run_cells(cells, results, data_dir, budget_s, runner=run_decisive(results, allow_dirty), log=log)
    else:
        have = load_cells(results)
        outcome = Outcome(skipped=[c.key for c in cells if c.key in have], left=[c.key for c in cells if c.key not in have])
    figs = docs / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    recorded = load_cells(results)
    groups = render.seeds_of(recorded)
    facts: dict = {}
    lines = _decisive(recorded, load_partials(results), figs, cells, load_speeds(results))
    lines += sections.compute_section(groups, figs, edge, measure_gpt2, facts)
    lines += sections.time_section(recorded, figs, edge, FACTORS if factors is None else factors, facts)
    lines += ["", "## 6. The earlier grid (untuned baselines, one epoch, toy scale)", "",
              "Kept for the record, not as evidence: every method shared one untuned learning rate (2e-3), trained "
              "one epoch of 1,000 (MiniLM-L6) or 800 (SmolLM2-135M) samples at length 64 (which truncates 19.9% "
              "of MRPC's dev pairs), FedLoRA ran 10 local steps a round (2 FedAvg rounds in the whole run), "
              "SmolLM2 was scored on 200 dev rows, and its budget was raised from 200 to 800 samples after a "
              "first grid learned nothing. Its verdicts are all **inconclusive at this scale**.", ""]
    lines += _accuracy(groups, figs, cells, {})
    order_file = stream_order or results.parent / "sst2_stream_order.json"
    lines += ["### The server's stream order under skew (distributed runtime)", "",
              f"Recorded by `bench/experiment_stream_order.py` in `{order_file.name}` beside the cells (250, 500, "
              "750 and 1,000 samples on 4 devices with one label each, MiniLM-L6, SST-2, one process per role).", ""]
    lines += render.stream_order_lines(order_file)
    lines += ["", "### GSM8K on SmolLM2-135M (Llama family)", "",
              "Greedy decoding of at most `--gen-tokens` tokens after `Question: ...\\nAnswer:`; exact match "
              "compares the number after `#### ` (else the last number) with the reference's. Every scored answer "
              "is kept in the cell's record (`generations`, before and after).", ""]
    lines += render.gsm8k_lines(recorded)
    lines += codecs.codec_section(results.parent)
    lines = (_header(outcome, recorded, cells, edge) + ["## At a glance: each claim, against each baseline", ""]
             + glance.glance_lines(recorded, groups, facts)
             + ["", "Each row's figures and their caveats are in the section it names. A task whose centralised "
                "ceiling sits at its majority class has no accuracy row here (it cannot rank methods).", ""] + lines)
    write_atomic(docs / "results.md", "\n".join(lines) + "\n")
    return outcome


def full_grid() -> list[Cell]:
    """The decisive grid, the measured times on every fleet, then the earlier grid (complete; never re-run)."""
    return decisive_grid() + time_cells() + default_grid()


def _hours(seconds: float) -> str:
    """``2.3 h`` or ``41 min``."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _claim(groups: dict, model: str) -> list[str]:
    """The earlier grid's claim table of one model: SplitFrozen against each baseline under label-skew:1."""
    rows = render.claim_rows(groups, model)
    if not rows:
        return []
    lines = [f"#### The {pct('accuracy_gain')} claim in the earlier grid ({model}, label-skew:1)", ""]
    lines += render.claim_lines(rows) + ["", render.majority_note(groups, model, [r["task"] for r in rows]), ""]
    for r in rows:
        sf, base = groups[(model, r["task"], "label-skew:1", "splitfrozen")], groups[(model, r["task"], "label-skew:1",
                                                                                     r["baseline"])]
        pairs = [(sf[s]["accuracy"], base[s]["accuracy"]) for s in sorted(set(sf) & set(base))]
        v = judge(pairs, 5, None, None, decisive=False)
        lines.append(f"- {TASK_NAMES[r['task']]}, against {r['baseline']}: {v.text()}.")
    return lines + [""]


def _header(outcome: Outcome, recorded: dict, cells: list[Cell], edge: str) -> list[str]:
    """Title, how the report is made, what is recorded, and which commits and models its figures come from."""
    have = [c for c in cells if c.key in recorded]
    by_kind: dict[str, set] = {}
    for c in have:
        rec = recorded[c.key]
        by_kind.setdefault(c.kind, set()).add(rec.get("commit") or "unknown")
    models = sorted({recorded[c.key]["cell"]["model"] for c in have if c.kind in ("tune", "converge", "accuracy")})
    timed = sorted({recorded[c.key]["cell"]["model"] for c in have if c.kind == "time"})
    sc = load_scenario(edge)
    commits = "; ".join(f"{kind}: {', '.join(sorted(v))}" for kind, v in sorted(by_kind.items()))
    return ["# SplitFrozen's claims, tested", "",
            "Generated by `sfsim report` from the runs recorded under `bench/results/claims/cells/` (one JSON file "
            "per run: its exact command with the data folder as `DATA`, its data files relative to that folder, "
            "its commit, and for the decisive grid its loss and learning curves) and from figures the simulator "
            "and cost model recompute each time. `sfsim report --budget 2h` runs the missing runs first, most "
            "decisive first, never repeats a recorded one, and refuses a dirty tree (`--allow-dirty` stores the "
            "diff by its hash); `sfsim report --budget 2h --plan` only prints what would run and the estimates.", "",
            f"Runs recorded: **{len(have)} of {len(cells)}** in the grid. This regeneration ran {len(outcome.ran)} "
            f"(failed {len(outcome.failed)}; left for lack of budget {len(outcome.left)}; waiting for tuning "
            f"{len(outcome.waiting)}). `not run` marks a run still missing, never a result.", "",
            f"Commits of the recorded runs, by kind: {commits or 'none'}.", "",
            f"The paper (Ma et al., arXiv 2503.18986) claims, under extremely imbalanced data, "
            f"**{pct('accuracy_gain')} accuracy** over FedLoRA and SplitLoRA, **up to {pct('device_compute_saving')} "
            f"less device compute** and **up to {pct('time_saving')} less training time** (GPT-2 small on MRPC, "
            "MNLI-matched, SST-2; Llama-3.2 on GSM8K). No GPT-2 weights exist offline here. Accuracy runs use "
            f"{', '.join(models) or 'no model yet'}; measured training times use {', '.join(timed) or 'no model yet'}; "
            f"device compute and simulated time use {sc.arch.name}'s shape (`{edge}`).", ""]


def _accuracy(groups: dict, figs: Path, cells: list[Cell], facts: dict) -> list[str]:
    lines = ["### Accuracy under non-IID partitions (earlier grid)", "",
             "Partitions: `iid`; `dirichlet:ALPHA` (each class's samples split among the devices by Dir(alpha)); "
             "`label-skew:1` (each device holds one class: the paper's extreme case). Methods: SplitFrozen, "
             "SplitLoRA with clients interleaved per batch (its reference code) and client after client "
             "(classic split learning), FedLoRA, CenLoRA (centralised, the ceiling). Cells: dev accuracy "
             "in %, mean ± standard deviation over seeds (number of seeds).", ""]
    for model in SETTINGS:
        if not any(k[0] == model for k in groups):
            lines += [f"{model}: no run recorded yet ({render.settings_line(model)}).", ""]
            continue
        lines += [f"Settings, {render.settings_line(model)}.", ""]
        for task in ("sst2", "mrpc", "mnli"):
            if not any(k[0] == model and k[1] == task for k in groups):
                continue
            parts = render.grid_partitions(cells, groups, model, task)
            lines += [f"#### {model}, {TASK_NAMES[task]} (earlier grid)", ""] + render.accuracy_table(groups, model, task,
                                                                                     partitions=parts)
            if any(render.figure(f, "macro_f1") is not None for k, r in groups.items()
                   if k[:2] == (model, task) for f in r.values()):
                lines += ["", "Macro-F1 (%):", ""] + render.accuracy_table(groups, model, task, "macro_f1",
                                                                                     partitions=parts)
            if task == "mrpc" and any(render.figure(f, "f1") is not None for k, r in groups.items()
                                      if k[:2] == (model, task) for f in r.values()):
                lines += ["", "F1 of the paraphrase class (%):", ""] + render.accuracy_table(
                    groups, model, task, "f1", partitions=parts)
            lines += [""] + render.seed_table(groups, model, task, parts)
            name = f"accuracy_{model}_{task}.png"
            if plots.accuracy_figure(groups, model, task, f"{model}, {TASK_NAMES[task]}", figs / name, parts):
                lines += ["", f"![accuracy {model} {task}](figures/{name})"]
            lines.append("")
    for model in SETTINGS:
        lines += _claim(groups, model)
    return lines


def budget_lines(cells: list[Cell], recorded: dict, partials: dict, probes: dict) -> list[str]:
    """The budget subsection: what is left and its estimate (with and without the cost cuts), by group, and
    the measured speeds the estimate rests on."""
    p = budget.plan(cells, recorded, 0.0, partials, probes)
    before = budget.plan(cells, recorded, 0.0, partials, probes, cuts=False)
    lines = ["", "### Budget: what is left, estimated on this CPU", "", budget_sentence(p, before), "",
             "| model | task | partition | cells left | estimated hours | without the cost cuts |", "|---|---|---|---|---|---|"]
    left: dict[tuple, int] = {}
    for c, _, _ in p["rows"]:
        g = (c.model, c.task, f"time, {c.setting or 'earlier fleet'}" if c.kind == "time" else c.partition)
        left[g] = left.get(g, 0) + 1
    for g, n in left.items():
        lines.append(f"| {' | '.join(g)} | {n} | {p['by_group'][g] / 3600:.1f} | {before['by_group'][g] / 3600:.1f} |")
    lines += ["", "Speeds behind the estimate, per second of one core (the probe's CPU time; elsewhere wall time): "
              "training samples per second in epoch 1 and in later epochs (SplitFrozen replays its activation "
              "cache), scoring rows per second, seconds to load and build:", "",
              "| model | task | method | epoch 1 (samples/s) | later epochs (samples/s) | scoring (rows/s) | load (s) | "
              "measured in |", "|---|---|---|---|---|---|---|---|"]
    for (model, task, meth), sp in sorted(p["speeds"].items()):
        lines.append(f"| {model} | {TASK_NAMES[task]} | {meth} | {sp.first:.1f} | {sp.later:.1f} | {sp.score_rps:.1f} | "
                     f"{sp.load_s:.0f} | {sp.source} |")
    return lines


def _decisive(recorded: dict, partials: dict, figs: Path, cells: list[Cell], probes: dict | None = None) -> list[str]:
    """Sections 1-2: the decisive grid's protocol, budget, per-group results and curves, and its verdicts."""
    lines = ["## 1. The decisive grid: tuned baselines, trained to convergence", ""] + decisive.protocol_lines(recorded)
    lines += budget_lines(cells, recorded, partials, probes or {})
    for model, task, part in scale_groups():
        have = [r for r in [*recorded.values(), *partials.values()] if r["cell"]["kind"] in ("tune", "converge")
                and (r["cell"]["model"], r["cell"]["task"], r["cell"]["partition"]) == (model, task, part)]
        if not have:
            continue
        name = f"curves_{model}_{task}_{part.replace(':', '-')}.png"
        lines += ["", f"### {model}, {TASK_NAMES[task]}, {part}", ""]
        lines += decisive.results_lines(recorded, model, task, part)
        lines += ["", "Every tuning trial recorded so far (validation selects; dev is what is reported):", ""]
        lines += decisive.trial_lines(recorded, model, task, part)
        lines += [""] + decisive.partial_lines(partials, model, task, part)
        if decisive.curves_figure(recorded, model, task, part, figs / name, partials):
            lines += ["", f"![learning curves {model} {task} {part}](figures/{name})"]
    tuned = decisive.seed_groups(recorded)
    for model, task in sorted({k[:2] for k in tuned}):
        name = f"decisive_accuracy_{model}_{task}.png"
        parts = tuple(dict.fromkeys(k[2] for k in tuned if k[:2] == (model, task)))
        if plots.accuracy_figure(tuned, model, task, f"{model}, {TASK_NAMES[task]}, tuned, to convergence",
                                 figs / name, parts):
            lines += ["", f"![tuned accuracy {model} {task}](figures/{name})"]
    lines += ["", "## 2. Verdicts of the decisive grid", "",
              "Paired over seeds (the same seed gives both methods the same partition and stream): the per-seed "
              "difference of the task's primary metric, its mean and 95% Student-t interval. **Holds**: the whole "
              "interval above 0; **does not hold**: the whole interval below +1 point; otherwise, or with fewer "
              "seeds than the grid asks, or on a task whose ceiling sits at its majority class: **inconclusive at "
              "this scale**.", ""]
    return lines + decisive.verdict_lines(recorded)


def budget_sentence(p: dict, before: dict | None = None) -> str:
    """What the rest of the decisive grid costs (and, given ``before``, what it cost before the cost cuts),
    and how the estimate is made."""
    kinds = sorted({src.split(" (")[0] for src in p["sources"].values()})
    cut = "" if before is None else (
        f" (**{before['total_s'] / 3600:,.0f} hours** without the cost cuts: SplitFrozen's activation cache and the "
        "dev set scored only after epochs that improved on validation)")
    walls = [sp.wall_factor for sp in p.get("speeds", {}).values() if sp.wall_factor is not None]
    wall = "" if not walls else (f"; on this shared machine a probe's wall time ran {min(walls):.1f}x to "
                                 f"{max(walls):.1f}x its CPU time, so a sitting takes that much longer")
    return (f"{len(p['rows'])} cells of the decisive grid and the measured times are missing: about "
            f"**{p['total_s'] / 3600:,.0f} hours** of one core of this shared 2-core CPU{cut}{wall} ({p['unknown']} "
            f"without a measured speed), at {p['epochs']:g} epochs a cell (the median of {p['epoch_cells']} recorded "
            f"decisive cells; with none, a first guess) and the speeds measured in {' and '.join(kinds) or 'no run yet'} "
            "(table below). A GPU server shortens this by orders of magnitude; the report "
            "stays completable on CPU over budgeted sittings (`sfsim report --budget 2h`), group by group in the "
            "order of the table (the claim's own setting first).")


def missing(cells: list[Cell], recorded: dict) -> dict[str, int]:
    """How many cells of each kind and model are still to run."""
    out: dict[str, int] = {}
    for c in cells:
        if c.key not in recorded:
            k = f"{c.kind} {c.model}"
            out[k] = out.get(k, 0) + 1
    return out


__all__ = ["FACTORS", "METHODS", "full_grid", "make_report", "missing"]
