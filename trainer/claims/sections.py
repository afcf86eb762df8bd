"""The report's device-compute and training-time sections, with the facts the at-a-glance table reads.

Device compute: SplitFrozen's saving at every cut (cost model, figure), the cut at which the paper's
figure arises (computed, never fixed), and ``FlopCounterMode`` at that cut. Training time: measured
on every emulated fleet (``sfsim validate``, repeats with their spread) beside the simulator's figure
on the same fleet, the simulator on ``profiles/edge.yaml``, and the bandwidth region in which the
paper's saving holds (links swept, edges interpolated between sweep points on a log scale).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from sfsim.scenario.config import load_scenario
from trainer.claims import compute, plots, render
from trainer.claims.grid import TIME, TIME_FLEETS, TIME_METHODS, TIME_REPEATS
from trainer.claims.paper import PAPER, pct
from trainer.claims.verdict import time_verdict


def paper_cut(rows: list[dict], level: float) -> dict:
    """Where the cost model's saving against FedLoRA meets ``level`` (a fraction): the cut nearest it and the
    deepest cut still at or above it (the saving falls as the cut deepens).

    Example:
        >>> paper_cut([{"cut": 1, "saving_vs_fedlora": .95}, {"cut": 2, "saving_vs_fedlora": .9},
        ...            {"cut": 3, "saving_vs_fedlora": .85}], .868)
        {'nearest': 3, 'deepest_at_or_above': 2}
    """
    nearest = min(rows, key=lambda r: abs(r["saving_vs_fedlora"] - level))["cut"]
    above = [r["cut"] for r in rows if r["saving_vs_fedlora"] >= level]
    return {"nearest": nearest, "deepest_at_or_above": max(above) if above else None}


def compute_section(groups: dict, figs: Path, edge: str, measure_gpt2: bool, facts: dict) -> list[str]:
    """Section: device compute against the cut, and the cut at which the paper's figure arises."""
    sc = load_scenario(edge)
    rows = compute.cut_savings(sc)
    level = PAPER["device_compute_saving"] / 100
    where = paper_cut(rows, level)
    k = where["nearest"]
    at = next(r for r in rows if r["cut"] == k)
    measured = compute.measured_gpt2_saving(k, sc.model.seq_len) if measure_gpt2 else None
    plots.cut_figure(rows, measured, figs / "savings_vs_cut.png", sc.arch.name)
    lo, hi = min(rows, key=lambda r: r["saving_vs_fedlora"]), max(rows, key=lambda r: r["saving_vs_fedlora"])
    facts["compute"] = {"cut": k, "n_layers": len(rows) + 1, "cost_model": at["saving_vs_fedlora"],
                        "flop_counter": measured["saving_vs_fedlora"] if measured else None, "arch": sc.arch.name,
                        "range": (lo["cut"], lo["saving_vs_fedlora"], hi["cut"], hi["saving_vs_fedlora"]),
                        "measured": render.measured_compute_savings(groups)}
    lines = ["", "## 3. Device compute", "",
             f"{sc.arch.name} ({edge}: {sc.model.seq_len} tokens, micro-batch {sc.training.micro_batch}, LoRA on "
             f"{', '.join(sc.training.lora.targets or ['the defaults'])}). The saving against FedLoRA falls as the "
             f"cut deepens, from {100 * hi['saving_vs_fedlora']:.1f}% (cut {hi['cut']}) to "
             f"{100 * lo['saving_vs_fedlora']:.1f}% (cut {lo['cut']}): a single figure means nothing without its "
             f"cut. The paper's {pct('device_compute_saving')} arises at **cut {k} of {len(rows) + 1}** "
             f"({100 * at['saving_vs_fedlora']:.1f}% by the cost model"
             + (f", {100 * measured['saving_vs_fedlora']:.1f}% by `FlopCounterMode` on {sc.arch.name} built from "
                "its config" if measured else "")
             + f"); every cut up to {where['deepest_at_or_above']} saves at least as much. The cut is computed "
             "(the cut whose saving is nearest the paper's figure), not chosen. Why it is the comparable one: "
             "the paper gives its figure as an upper bound (\"up to\") and states no cut in its abstract; "
             f"a shallow cut, where the device keeps the embeddings and {where['deepest_at_or_above']} of "
             f"{len(rows) + 1} blocks or fewer, is the setting SplitFrozen targets (weak devices keep little of "
             "the model), so the figure is reproduced for those cuts and not beyond; a deeper cut saves less. Against SplitLoRA at the same cut the "
             f"saving is {100 * at['saving_vs_splitlora']:.1f}% at cut {k}: a SplitLoRA client also runs the "
             "backward of its blocks.", "",
             "| cut | saving vs FedLoRA | saving vs SplitLoRA (same cut) |", "|---|---|---|"]
    lines += [f"| {r['cut']} | {100 * r['saving_vs_fedlora']:.1f}% | {100 * r['saving_vs_splitlora']:.1f}% |"
              for r in rows]
    lines += ["", "![saving against the cut](figures/savings_vs_cut.png)", "",
              "Measured in the earlier grid's real runs (MiniLM-L6, cut 2 of 6, `FlopCounterMode` around each "
              "device's compute, seed 0, mean over the recorded tasks and partitions):", ""]
    return lines + render.compute_lines(groups)


def time_groups(recorded: dict) -> dict[tuple[str, str], dict[int, dict]]:
    """Time cells by (fleet name, method) -> repeat -> figures; the earlier single runs under fleet ``''``."""
    out: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for rec in recorded.values():
        c = rec["cell"]
        if c["kind"] == "time":
            out[(c.get("setting", ""), c["method"])][c["seed"]] = {**rec["figures"], "commit": rec.get("commit"),
                                                                   "load": rec.get("load")}
    return out


def savings(tg: dict, fleet: str, method: str, key: str) -> list[float]:
    """SplitFrozen's saving against ``method`` on ``fleet`` (``key``: measured_s or predicted_s), one per repeat
    both ran (paired by repeat: the same seed), as fractions."""
    sf, other = tg.get((fleet, "splitfrozen"), {}), tg.get((fleet, method), {})
    return [1 - sf[r][key] / other[r][key] for r in sorted(set(sf) & set(other))]


def saving_stats(tg: dict, fleet: str, method: str, key: str) -> tuple[float, float | None, int] | None:
    """:func:`savings` summed up: mean, sample sd (None for one repeat) and repeats; None when no pair is recorded."""
    vals = savings(tg, fleet, method, key)
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _secs(vals: list[float]) -> str:
    """``'41.2 ± 0.8'`` (mean ± sample sd of seconds), ``'41.2'`` for one, ``''`` for none."""
    if not vals:
        return ""
    m, sd = render.mean_sd(vals)
    return f"{m:.1f}" + ("" if sd is None else f" ± {sd:.1f}")


def _stat(s) -> str:
    if s is None:
        return "not run"
    m, sd, n = s
    return f"{100 * m:.1f}%" + ("" if sd is None else f" ± {100 * sd:.1f}") + f" ({n})"


def _loads(runs: dict[int, dict]) -> str:
    """The 1-minute load average before the repeats, ``'2.1-5.3'`` (runs recorded before cells kept it: not recorded)."""
    vals = [f["load"]["before"][0] for f in runs.values() if f.get("load")]
    if not vals:
        return "not recorded" if runs else "-"
    text = f"{min(vals):.1f}" if min(vals) == max(vals) else f"{min(vals):.1f}-{max(vals):.1f}"
    return text + (f" ({len(runs) - len(vals)} not recorded)" if len(vals) < len(runs) else "")


def measured_time_lines(recorded: dict, facts: dict) -> list[str]:
    """Per fleet and method: measured and predicted seconds (mean ± sd over repeats), the load average the
    repeats started under, and both savings."""
    tg = time_groups(recorded)
    lines = ["| fleet | method | repeats | measured (s) | predicted, same fleet (s) | load average before (1 min) | "
             "SplitFrozen's saving, measured (paired by repeat) | predicted |", "|---|---|---|---|---|---|---|---|"]
    for fleet in [*TIME_FLEETS, ""]:
        if fleet == "" and not any(f == "" for f, _ in tg):
            continue
        for meth in TIME_METHODS:
            runs = tg.get((fleet, meth), {})
            meas = [f["measured_s"] for f in runs.values()]
            pred = [f["predicted_s"] for f in runs.values()]
            ms, ps = _secs(meas) or "not run", _secs(pred) or "-"
            sm = sp = "-"
            if meth != "splitfrozen":
                sm, sp = _stat(saving_stats(tg, fleet, meth, "measured_s")), _stat(saving_stats(tg, fleet, meth,
                                                                                                  "predicted_s"))
                facts.setdefault("time_measured", {})[(fleet, meth)] = savings(tg, fleet, meth, "measured_s")
            name = f"`{TIME_FLEETS[fleet]}`" if fleet else f"earlier grid: `{TIME.fleet}`, one run"
            lines.append(f"| {name} | {meth} | {len(runs)} | {ms} | {ps} | {_loads(runs)} | {sm} | {sp} |")
    return lines


#: The baselines of the time claim (the paper's: SplitLoRA in both client orders, FedLoRA).
TIME_BASELINES = ("splitlora", "splitlora-sequential", "fedlora")


def time_verdict_lines(recorded: dict, level: float) -> list[str]:
    """One bullet per fleet and baseline: the verdict on the paper's time saving from the paired measured
    repeats (:func:`trainer.claims.verdict.time_verdict`), beside the simulator's saving on the same fleet.
    SplitFrozen's sequential ablation is no baseline: its saving is in the table, with no verdict."""
    tg, lines = time_groups(recorded), []
    for fleet in TIME_FLEETS:
        for meth in TIME_BASELINES:
            meas, pred = savings(tg, fleet, meth, "measured_s"), savings(tg, fleet, meth, "predicted_s")
            if not meas:
                continue
            v = time_verdict(meas, level, len(TIME_REPEATS))
            lines.append(f"- `{TIME_FLEETS[fleet]}`, SplitFrozen against {meth}: **{v.word}** ({v.reason}): measured "
                         f"saving {v.mean:.1f}%" + ("" if v.ci is None else f", 95% CI {v.ci[0]:.1f}% to {v.ci[1]:.1f}%")
                         + f", {v.seeds} repeats; the simulator on the same fleet: "
                         f"{100 * statistics.fmean(pred):.1f}%.")
    return lines


def region(rows: list[dict], baseline: str, level: float) -> list[tuple[float, float]]:
    """Intervals of the link factor in which the saving against ``baseline`` is at or above ``level``.

    Edges are interpolated linearly in log(factor) between the sweep points that straddle ``level``; an
    interval that reaches the sweep's end stops there (nothing is said beyond it).

    Example:
        >>> rows = [{"factor": 1, "saving_vs_x": .2}, {"factor": 10, "saving_vs_x": .6}, {"factor": 100, "saving_vs_x": .6}]
        >>> [(round(a, 2), b) for a, b in region(rows, "x", .4)]
        [(3.16, 100)]
    """
    key, out, start = f"saving_vs_{baseline}", [], None
    for i, r in enumerate(rows):
        above = r[key] >= level
        if above and start is None:
            start = r["factor"] if i == 0 else _edge(rows[i - 1], r, key, level)
        if not above and start is not None:
            out.append((start, _edge(rows[i - 1], r, key, level)))
            start = None
    if start is not None:
        out.append((start, rows[-1]["factor"]))
    return out


def _edge(a: dict, b: dict, key: str, level: float) -> float:
    t = (level - a[key]) / (b[key] - a[key])
    la, lb = math.log10(a["factor"]), math.log10(b["factor"])
    return 10 ** (la + t * (lb - la))


def time_section(recorded: dict, figs: Path, edge: str, factors: list[float], facts: dict) -> list[str]:
    """Section: measured times on the emulated fleets, the simulator on ``edge``, and the bandwidth sweep."""
    sc = load_scenario(edge)
    times = compute.edge_times(sc)
    level = PAPER["time_saving"] / 100
    lines = ["", "## 4. Training time", "", "### Measured on the distributed runtime", "",
             f"One OS process per role over torch.distributed; {render.time_settings_line()}; each fleet repeated "
             "(the repeat is the seed: partition and order change with it). The predicted column is the simulator "
             "on the same fleet (`sfsim validate`). With `--emulate all` most of a device's time is emulation "
             "sleep at the fleet's FLOP rate, so a measured saving tests the schedule on that fleet, not a device. "
             "The server computes at this shared CPU's real speed: other processes inflate its stages, so each "
             "repeat records the machine's load average before it started, and the spread over repeats shows "
             "what the load did.", ""]
    lines += measured_time_lines(recorded, facts) + [""] + time_verdict_lines(recorded, level)
    if plots.time_figure(time_groups(recorded), TIME_FLEETS, TIME_METHODS, figs / "time_measured.png"):
        lines += ["", "![measured and predicted training time](figures/time_measured.png)"]
    facts["time"] = {"edge": edge, "arch": sc.arch.name,
                     "simulated": {n: t["splitfrozen_time_saving"] for n, t in times.items() if n != "splitfrozen"}}
    lines += ["", f"### Simulated on `{edge}` ({sc.arch.name})", "",
              "SplitFrozen (pipelined and sequential) on the planner's cuts, SplitLoRA at the scenario's cut with "
              "its clients interleaved (`splitlora`) and one after another (`splitlora-sequential`), FedLoRA on "
              "whole models; one epoch.", "",
              "| schedule | makespan (s) | device FLOP | uplink (B) | downlink (B) | SplitFrozen's time saving |",
              "|---|---|---|---|---|---|"]
    for name, t in times.items():
        save = t.get("splitfrozen_time_saving")
        lines.append(f"| {name} | {t['makespan_s']:.1f} | {t['device_flops_total']:.3e} | {t['uplink_bytes']:.3e} | "
                     f"{t['downlink_bytes']:.3e} | {'-' if save is None else f'{100 * save:.1f}%'} |")
    rows = compute.bandwidth_sweep(edge, factors)
    raw = compute.load_raw(edge)
    baselines = tuple(n for n in compute.SCHEDULES if n != "splitfrozen")
    plots.bandwidth_figure(rows, baselines, [compute.bandwidth_label(raw, f) for f in factors],
                           figs / "savings_vs_bandwidth.png")
    lines += ["", "Every device link scaled by a factor (x1 is the file; SplitFrozen re-planned at each point):", "",
              "| factor | " + " | ".join(f"{n} (s)" for n in compute.SCHEDULES) + " | "
              + " | ".join(f"saving vs {b}" for b in baselines) + " |", "|" + "---|" * (1 + 2 * len(baselines) + 1)]
    for r in rows:
        lines.append(f"| {r['factor']:.3g} | " + " | ".join(f"{r[f'{n}_s']:.1f}" for n in compute.SCHEDULES) + " | "
                     + " | ".join(f"{100 * r[f'saving_vs_{b}']:.1f}%" for b in baselines) + " |")
    lines += ["", "![time saving against bandwidth](figures/savings_vs_bandwidth.png)", ""]
    facts["time"]["regions"] = {}
    for b in baselines:
        reg = region(rows, b, level)
        facts["time"]["regions"][b] = [(compute.bandwidth_label(raw, a), compute.bandwidth_label(raw, z))
                                       for a, z in reg]
        text = "; ".join(f"x{a:.3g} to x{z:.3g} ({compute.bandwidth_label(raw, a)} to "
                         f"{compute.bandwidth_label(raw, z)} on the first device's uplink)" for a, z in reg)
        lines.append(f"- vs {b}: a saving of {pct('time_saving')} or more holds for link factors "
                     + (text or "nowhere in the sweep") + f" (swept x{factors[0]:.3g} to x{factors[-1]:.3g}).")
    return lines
