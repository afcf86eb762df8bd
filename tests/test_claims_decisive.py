"""The decisive grid of the claims report: convergence rule, tuning, verdicts, budget, provenance, sections."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from trainer.claims import budget, decisive, grid, scale, sections
from trainer.claims.grid import Cell, CellError, CellWaiting
from trainer.claims.verdict import judge, paired_ci
from trainer.methods.convergence import EarlyStop, holdout


def test_holdout_is_a_fixed_disjoint_draw_whatever_the_run_seed():
    tr, va = holdout(100, 10)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    assert np.array_equal(va, holdout(100, 10)[1])  # the same rows for every method and seed
    with pytest.raises(ValueError, match="validation rows must be in 1..99"):
        holdout(100, 100)


def test_early_stop_waits_patience_epochs_after_the_best_and_keeps_the_best_epoch():
    es = EarlyStop(patience=2, max_epochs=10)
    goes = [es.update(s) for s in (0.5, 0.7, 0.65, 0.7)]
    assert goes == [True, True, True, False]  # 0.7 again is no improvement: two epochs without one
    assert (es.best_epoch, es.best, es.converged) == (1, 0.7, True)
    capped = EarlyStop(patience=5, max_epochs=3)
    assert [capped.update(s) for s in (0.1, 0.2, 0.3)] == [True, True, False]
    assert capped.stopped and not capped.converged and capped.improved


def test_every_method_gets_the_same_number_of_tuning_trials():
    assert {m: len(scale.settings_of(m)) for m in scale.TUNING} == dict.fromkeys(scale.TUNING, scale.TRIALS)
    assert scale.settings_of("fedlora")[:2] == ["lr=0.0005+local_steps=1", "lr=0.0005+local_steps=10"]
    assert scale.parse_setting("lr=0.002+fedavg_every=10") == {"lr": 0.002, "fedavg_every": 10}


def test_the_grid_tunes_first_then_runs_seeds_and_five_seeds_decide_a_claim():
    cells = scale.decisive_grid()
    first = [c for c in cells if (c.model, c.task, c.partition) == ("minilm-l6", "sst2", "label-skew:1")]
    assert len(first) == 5 * scale.TRIALS + 4 * 5  # 30 tuning trials, then seeds 1-4 of 5 methods
    assert all(c.kind == "tune" for c in first[:30]) and {c.seed for c in first[30:]} == {1, 2, 3, 4}
    assert cells[: len(first)] == first  # the claim's own setting runs first
    iid = [c for c in cells if (c.model, c.task, c.partition) == ("minilm-l6", "mnli", "iid") and c.kind == "converge"]
    assert {c.seed for c in iid} == {1, 2}


def _tune(model, task, part, meth, setting, val, **figs):
    c = Cell("tune", model, task, meth, part, 0, setting)
    return c.key, {"key": c.key, "cell": {**c.__dict__}, "setting": setting, "figures": {"val_best": val, **figs}}


def test_the_chosen_setting_is_the_best_validation_score_once_every_trial_is_in():
    rec = dict(_tune("minilm-l6", "sst2", "iid", "fedlora", s, v)
               for s, v in zip(scale.settings_of("fedlora"), (0.7, 0.8, 0.8, 0.6, 0.5, 0.1), strict=True))
    win = scale.chosen(rec, "minilm-l6", "sst2", "iid", "fedlora")
    assert win["cell"]["setting"] == "lr=0.0005+local_steps=10"  # ties go to the earlier setting
    rec.pop(next(iter(rec)))
    assert scale.chosen(rec, "minilm-l6", "sst2", "iid", "fedlora") is None


def test_a_seed_waits_for_its_methods_tuning(tmp_path):
    run = scale.run_decisive(tmp_path)
    with pytest.raises(CellWaiting, match="waits for every tuning trial of fedlora"):
        run(Cell("converge", "minilm-l6", "sst2", "fedlora", "iid", 1), "DATA", "10")


def test_a_cells_command_carries_its_setting_and_the_grids_scale():
    cmd = scale.converge_command(Cell("tune", "minilm-l6", "mnli", "splitlora-interleaved", "label-skew:1", 0),
                                 "lr=0.008+fedavg_every=1", "DATA", "OUT")
    text = " ".join(cmd)
    assert text.startswith("python -m trainer.claims.converge --devices bench/sst2_minilm_4dev.yaml --model minilm-l6 "
                           "--task mnli --method splitlora --client-order interleaved --partition label-skew:1 ")
    assert "--lr 0.008 --train-samples 8099 --val-samples 900 --max-len 96 --patience 2 --max-epochs 12" in text
    assert text.endswith("--split 2 --fedavg-every 1")


def test_paired_interval_and_the_three_words():
    m, (lo, hi) = paired_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0 and round(hi - m, 4) == round(2.776445 * np.std([1, 2, 3, 4, 5], ddof=1) / 5 ** 0.5, 4)
    win = [(0.80 + d, 0.70) for d in (0.0, 0.01, 0.02, 0.01, 0.0)]
    assert judge(win, 5, 0.9, 0.5).word == "holds"
    tie = [(0.70 + d, 0.70) for d in (0.002, -0.002, 0.001, -0.001, 0.0)]
    assert judge(tie, 5, 0.9, 0.5).word == "does not hold"
    assert judge(win[:3], 5, 0.9, 0.5).reason == "3 of 5 seeds"
    assert judge(win, 5, 0.70, 0.684).reason == "the ceiling sits at the majority class"
    assert judge(win, 5, 0.9, 0.5, decisive=False).word == "inconclusive at this scale"
    noisy = [(0.70 + d, 0.70) for d in (0.10, -0.08, 0.09, -0.07, 0.08)]
    assert judge(noisy, 5, 0.9, 0.5).reason == "the interval spans 0 and gains above a point"


def test_verdict_table_pairs_seeds_at_the_chosen_settings():
    rec = {}
    for meth, val in (("splitfrozen", 0.9), ("fedlora", 0.6), ("cenlora", 0.95)):
        for s in scale.settings_of(meth):
            k, r = _tune("minilm-l6", "sst2", "label-skew:1", meth, s, val if s == scale.settings_of(meth)[0] else 0.1,
                         accuracy=val, macro_f1=val, majority_accuracy=0.51)
            rec[k] = r
        for seed in (1, 2, 3, 4):
            c = Cell("converge", "minilm-l6", "sst2", meth, "label-skew:1", seed)
            rec[c.key] = {"key": c.key, "cell": c.__dict__, "setting": scale.settings_of(meth)[0],
                          "figures": {"accuracy": val + 0.01 * seed * (meth == "splitfrozen"), "macro_f1": val}}
    v = decisive.verdicts(rec, "minilm-l6", "sst2")
    assert v["fedlora"].word == "holds" and v["fedlora"].seeds == 5 and round(v["fedlora"].mean, 6) == 32.0
    assert v["splitlora-sequential"].reason == "not run"


def test_budget_estimates_from_measured_samples_per_second():
    c = Cell("tune", "minilm-l6", "sst2", "splitfrozen", "iid", 0, "lr=0.001")
    rec = {"x": {"cell": {"kind": "tune", "model": "minilm-l6", "task": "sst2", "method": "splitfrozen",
                          "partition": "label-skew:1"},
                 "figures": {"train_s": 800.0, "epochs_run": 4,
                             "curve": [{"samples_seen": 8_000 * (e + 1), "train_s": 200.0} for e in range(4)]}}}
    p = budget.plan([c], rec, 10_000)
    # 40 samples/s; 4 epochs x 8000/40, validation 4 x 800 rows and dev (4 - patience 2) x 872 rows at 3 x 40 rows/s,
    # 20 s of start
    assert p["rows"][0][1] == pytest.approx(4 * 200 + (4 * 800 + 2 * 872) / 120 + 20) and p["rows"][0][2]
    assert budget.plan([c], rec, 10_000, cuts=False)["rows"][0][1] == pytest.approx(4 * (200 + 1672 / 120) + 20)
    assert budget.plan([c], rec, 100)["fit"] == 0


def test_bandwidth_region_and_the_cut_of_the_paper_are_computed():
    rows = [{"factor": f, "saving_vs_b": s} for f, s in ((0.1, -0.2), (1.0, 0.3), (10.0, 0.7), (100.0, 0.4))]
    (lo, hi), = sections.region(rows, "b", 0.5)
    assert lo == pytest.approx(10 ** 0.5) and hi == pytest.approx(10 ** (1 + 2 / 3))
    cuts = [{"cut": k, "saving_vs_fedlora": 1 - 0.04 * k} for k in range(1, 12)]
    assert sections.paper_cut(cuts, 0.868) == {"nearest": 3, "deepest_at_or_above": 3}


def test_a_dirty_tree_is_refused_or_its_diff_stored_by_hash(tmp_path, monkeypatch):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "a"], check=True)
    monkeypatch.setattr(grid, "ROOT", tmp_path)
    clean = grid.provenance()
    assert set(clean) == {"commit"} and len(clean["commit"]) >= 7
    (tmp_path / "trainer" / "a.py").write_text("x = 2\n")
    with pytest.raises(CellError, match="commit first"):
        grid.provenance()
    dirty = grid.provenance(allow_dirty=True)
    assert dirty["commit"] == clean["commit"] + "+dirty"
    stored = tmp_path / "bench" / "results" / "claims" / "diffs" / f"{dirty['diff_sha256']}.diff"
    assert "+x = 2" in stored.read_text()


def test_simulated_epoch_time_follows_the_cells_samples_and_knobs():
    from trainer.claims.compute import epoch_seconds

    fleet = "bench/sst2_minilm_4dev.yaml"
    small, big = (epoch_seconds(fleet, "splitfrozen", n, 72, 2) for n in (800, 8000))
    assert 0 < small < big
    assert epoch_seconds(fleet, "cenlora", 800, 72, 2) is None
    once, often = (epoch_seconds(fleet, "fedlora", 800, 72, 2, {"local_steps": k}) for k in (10, 1))
    assert often > once  # a round per step: ten times the adapter traffic


def test_learning_curves_draw_trials_and_pilots(tmp_path):
    curve = [{"epoch": e, "samples_seen": 8000 * e, "optimizer_steps": 500 * e, "fedavg_rounds": None,
              "train_loss": 0.4, "val": {"accuracy": 0.8}, "dev": {"accuracy": 0.78 + 0.01 * e} if e != 2 else None,
              "train_s": 700.0}
             for e in (1, 2, 3)]
    key, rec = _tune("minilm-l6", "sst2", "label-skew:1", "splitfrozen", "lr=0.002", 0.8, curve=curve, best_epoch=1,
                     majority_accuracy=0.509)
    pilot = {**rec, "stopped_by_budget": True, "cell": {**rec["cell"], "method": "fedlora",
                                                        "setting": "lr=0.002+local_steps=1"}}
    path = tmp_path / "c.png"
    assert decisive.curves_figure({key: rec}, "minilm-l6", "sst2", "label-skew:1", path, {"p": pilot})
    assert path.stat().st_size > 20_000
    assert not decisive.curves_figure({}, "minilm-l6", "sst2", "iid", tmp_path / "none.png")
    lines = decisive.partial_lines({"p": pilot}, "minilm-l6", "sst2", "label-skew:1")
    assert lines[-1] == "| fedlora lr=0.002+local_steps=1 s0 | 3 | 24,000 | 1,500 | - | 0.4000 | 80.0 | 81.0 | 700 | None |"
