"""The report's first table: each claim of the paper, against each baseline, with a verdict in plain words.

Rows are built from what the sections computed (``facts``) and from the recorded cells; nothing is
written by hand. An accuracy row is left out for a task whose centralised ceiling sits at its
majority class (such a task cannot rank methods); the earlier grid's rows say "inconclusive".
"""

from __future__ import annotations

import statistics

from trainer.claims import decisive, render
from trainer.claims.grid import TIME_REPEATS
from trainer.claims.paper import PAPER, pct
from trainer.claims.scale import SCALE
from trainer.claims.verdict import CEILING_MARGIN, judge, time_verdict

NAMES = {"fedlora": "FedLoRA", "splitlora-interleaved": "SplitLoRA, interleaved (its reference code)",
         "splitlora-sequential": "SplitLoRA, client after client",
         "splitlora": "SplitLoRA, interleaved (its reference code)"}


def ceiling_at_majority(recorded: dict, groups: dict, model: str, task: str) -> bool | None:
    """Whether CenLoRA's mean accuracy sits within :data:`CEILING_MARGIN` points of the majority class.

    The decisive grid's iid CenLoRA runs decide when recorded, else the earlier grid's; None when neither ran.
    """
    _, cen = decisive.method_runs(recorded, model, task, "iid", "cenlora")
    runs = list(cen.values()) or list(groups.get((model, task, "iid", "cenlora"), {}).values())
    accs = [f["accuracy"] for f in runs if f.get("accuracy") is not None]
    major = next((render.majority(f) for f in runs if render.majority(f) is not None), None)
    if not accs or major is None:
        return None
    return 100 * (statistics.fmean(accs) - major) < CEILING_MARGIN


def accuracy_rows(recorded: dict, groups: dict) -> list[str]:
    """Decisive-grid verdicts under label-skew:1 for every task that can decide, then the earlier grid's."""
    rows = []
    for (model, task), sc in SCALE.items():
        if ceiling_at_majority(recorded, groups, model, task):
            continue
        for b, v in decisive.verdicts(recorded, model, task).items():
            rows.append(f"| accuracy under extreme skew: {pct('accuracy_gain')} | {NAMES[b]} | **{v.word}** | "
                        f"{v.detail()} | {model}, {render.TASK_NAMES[task]}, label-skew:1, tuned, to convergence, "
                        f"{sc.metric} | 1 |")
    for model in ("minilm-l6", "smollm2-135m"):
        if ceiling_at_majority(recorded, groups, model, "sst2"):
            continue
        for r in render.claim_rows(groups, model):
            if r["task"] != "sst2":
                continue
            sf, base = groups[(model, "sst2", "label-skew:1", "splitfrozen")], groups[(model, "sst2", "label-skew:1",
                                                                                      r["baseline"])]
            pairs = [(sf[s]["accuracy"], base[s]["accuracy"]) for s in sorted(set(sf) & set(base))]
            v = judge(pairs, 5, None, None, decisive=False)
            rows.append(f"| (earlier grid) accuracy: {pct('accuracy_gain')} | {NAMES[r['baseline']]} | **{v.word}** | "
                        f"{v.detail()}; {r['relative']:+.1f}% relative | {model}, SST-2, label-skew:1, untuned, "
                        "one epoch | 6 |")
    return rows


def compute_row(facts: dict) -> list[str]:
    """Device compute: the cut at which the paper's figure arises and the range over all cuts."""
    c = facts.get("compute")
    if not c:
        return []
    lo_cut, lo, hi_cut, hi = c["range"]
    fc = "" if c.get("flop_counter") is None else f"; `FlopCounterMode` {100 * c['flop_counter']:.1f}%"
    return [f"| device compute: up to {pct('device_compute_saving')} less | FedLoRA | **holds at shallow cuts** | "
            f"{100 * c['cost_model']:.1f}% at cut {c['cut']} of {c['n_layers']} (cost model{fc}); "
            f"{100 * hi:.1f}% at cut {hi_cut} down to {100 * lo:.1f}% at cut {lo_cut} | {c['arch']}, cut computed, "
            "not chosen | 3 |"]


def time_rows(facts: dict) -> list[str]:
    """Training time per baseline: the verdict of the measured repeats on each emulated fleet (paired, 95%
    interval against the paper's figure), beside the simulator on the edge file and its bandwidth region."""
    t, level = facts.get("time") or {}, PAPER["time_saving"] / 100
    rows = []
    for b in ("splitlora", "splitlora-sequential", "fedlora"):
        verdicts = {fleet: time_verdict(vals, level, len(TIME_REPEATS))
                    for (fleet, m), vals in sorted((facts.get("time_measured") or {}).items()) if m == b and fleet}
        word = "; ".join(f"{v.word} on {fleet}" for fleet, v in verdicts.items()) or "not run"
        meas = "; ".join(f"{fleet}: {_pct_ci(v)}" for fleet, v in verdicts.items()) or "not run"
        sim = (t.get("simulated") or {}).get(b)
        reg = (t.get("regions") or {}).get(b) or []
        where = "; ".join(f"{a} to {z}" for a, z in reg) or "nowhere in the sweep"
        rows.append(f"| training time: up to {pct('time_saving')} less | {NAMES[b]} | **{word}** | measured, "
                    f"mean saving (95% CI, repeats): {meas}; simulated on `{t.get('edge')}` "
                    f"{'-' if sim is None else f'{100 * sim:.1f}%'}, and {pct('time_saving')} or more with the first "
                    f"uplink at {where} | measured: MiniLM-L6 on emulated fleets; simulated: {t.get('arch')} | 4 |")
    return rows


def _pct_ci(v) -> str:
    """``'31.0% (27.5 to 34.5, 3)'``: a time verdict's mean saving, its interval and repeats."""
    if v.mean is None:
        return v.reason
    ci = "" if v.ci is None else f"{v.ci[0]:.1f} to {v.ci[1]:.1f}, "
    return f"{v.mean:.1f}% ({ci}{v.seeds})"


def glance_lines(recorded: dict, groups: dict, facts: dict) -> list[str]:
    """The whole at-a-glance table."""
    head = ["| claim (paper) | against | verdict | our figures | setting | section |", "|---|---|---|---|---|---|"]
    return head + accuracy_rows(recorded, groups) + compute_row(facts) + time_rows(facts)
