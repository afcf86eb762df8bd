"""The claims report (``sfsim report``): its grid, budget, records, tables and figures."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.claims import grid, render
from trainer.claims.grid import Cell, CellError, Outcome, Settings, run_cells

FIXTURES = Path(__file__).parent / "fixtures"


def _rec(cell: Cell, **figures) -> dict:
    return {"key": cell.key, "cell": {"kind": cell.kind, "model": cell.model, "task": cell.task,
                                      "method": cell.method, "partition": cell.partition, "seed": cell.seed},
            "command": "sfsim run ...", "figures": figures}


def _gpt2(seq_len: int, micro_batch: int):
    """A one-device GPT-2 classification scenario, LoRA r=8 on c_attn (the cut arithmetic's setting)."""
    from sfsim.scenario.config import scenario_from_dict

    return scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": seq_len, "task": "classification", "num_labels": 2},
        "training": {"micro_batch": micro_batch, "lora": {"rank": 8, "alpha": 32, "targets": ["c_attn"]}},
        "servers": [{"name": "s", "flops": "1 TFLOPS", "memory": "16 GiB"}],
        "devices": [{"name": "d", "flops": "1 GFLOPS", "memory": "4 GiB", "samples": micro_batch,
                     "uplink": {"bandwidth": "10 Mbps", "latency": "5 ms"},
                     "downlink": {"bandwidth": "10 Mbps", "latency": "5 ms"}}]})


def test_a_cell_is_the_command_a_user_would_type():
    cell = Cell("accuracy", "minilm-l6", "mrpc", "splitlora-sequential", "dirichlet:0.1", 2)
    assert cell.key == "accuracy/minilm-l6/mrpc/dirichlet-0.1/splitlora-sequential/s2"
    assert cell.command("OUT", "DATA") == [
        "sfsim", "run", "--method", "splitlora", "--split", "2", "--client-order", "sequential", "--launch",
        "inprocess", "--quiet", "--devices", "bench/sst2_minilm_4dev.yaml", "--model", "minilm-l6", "--task", "mrpc",
        "--partition", "dirichlet:0.1", "--seed", "2", "--train-samples", "1000", "--max-len", "64",
        "--data-dir", "DATA", "--out", "OUT"]
    fed = Cell("accuracy", "minilm-l6", "sst2", "fedlora").command("O", "D")
    assert "--split" not in fed and fed[:4] == ["sfsim", "run", "--method", "fedlora"]
    timed = Cell("time", "minilm-l6", "sst2", "splitfrozen-sequential").command("O", "D")
    assert timed[:8] == ["sfsim", "validate", "--method", "splitfrozen-sequential", "--split", "2", "--emulate", "all"]
    seq = Cell("time", "minilm-l6", "sst2", "splitlora-sequential").command("O", "D")
    assert seq[:6] == ["sfsim", "validate", "--method", "splitlora", "--client-order", "sequential"]
    cen = Cell("gsm8k", "smollm2-135m", "gsm8k", "cenlora").command("O", "D")
    assert cen[2:5] == ["--method", "cenlora", "--eval-before"] and "--split" not in cen


def test_the_grid_runs_seed_zero_of_everything_before_any_second_seed():
    cells = grid.default_grid()
    assert len(cells) == len({c.key for c in cells}) == 3 * 4 * 5 * 3 + 5 + 2 * 5 * 3 + 2
    first_seed1 = next(i for i, c in enumerate(cells) if c.seed == 1)
    assert all(c.seed == 0 for c in cells[:first_seed1])
    assert sum(c.kind == "accuracy" and c.model == "minilm-l6" and c.seed == 0 for c in cells[:first_seed1]) == 60
    assert [c.method for c in cells[60:65]] == list(grid.TIME_METHODS)
    assert grid.select(cells, {"task": {"mrpc"}, "seed": {"1"}, "method": {"fedlora"}}) == [
        Cell("accuracy", "minilm-l6", "mrpc", "fedlora", p, 1) for p in grid.PARTITIONS]


def test_run_cells_skips_what_is_recorded_keeps_going_after_a_failure_and_stops_at_the_budget(tmp_path):
    cells = [Cell("accuracy", "m", "sst2", meth) for meth in ("a", "b", "c", "d")]
    (tmp_path / "cells" / "accuracy/m/sst2/iid/a").mkdir(parents=True)
    (tmp_path / "cells" / "accuracy/m/sst2/iid/a/s0.json").write_text(json.dumps(_rec(cells[0], accuracy=0.5)))
    calls = []

    def runner(cell, data_dir, timeout):
        calls.append((cell.method, data_dir))
        if cell.method == "b":
            raise CellError("error: boom")
        return _rec(cell, accuracy=0.75)

    grid.FIRST_GUESS_S["accuracy"] = 60.0
    out = run_cells(cells, tmp_path, "DATA", budget_s=30.0, runner=runner, log=lambda s: None)
    assert calls == [] and out.skipped == [cells[0].key] and out.left == [c.key for c in cells[1:]]
    out = run_cells(cells, tmp_path, "DATA", budget_s=3600.0, runner=runner, log=lambda s: None)
    assert calls == [("b", "DATA"), ("c", "DATA"), ("d", "DATA")]
    assert out.ran == [cells[2].key, cells[3].key] and out.failed == {cells[1].key: "error: boom"}
    assert set(grid.load_cells(tmp_path)) == {cells[0].key, cells[2].key, cells[3].key}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_exclusive_released_after_the_run_and_a_dead_process_claim_is_taken_over(tmp_path):
    path = tmp_path / "cells" / "accuracy/m/sst2/iid/a/s0.json"
    assert not grid.claimed(path) and grid.claim(path)
    assert grid.claimed(path) and not grid.claim(path)  # held by a live process (this one)
    grid.release(path)
    assert not grid.claimed(path)
    lock = path.with_name("s0.json.running")
    lock.write_text(f"{socket.gethostname()} {_dead_pid()}")  # killed while running
    assert not grid.claimed(path) and grid.claim(path)
    assert lock.read_text() == f"{socket.gethostname()} {os.getpid()}"
    lock.write_text("another-host 1")  # its process cannot be checked from here: respected
    assert grid.claimed(path) and not grid.claim(path)


def test_two_report_runs_share_a_grid_a_cell_claimed_or_recorded_elsewhere_is_not_run_again(tmp_path):
    cells = [Cell("accuracy", "m", "sst2", meth) for meth in ("a", "b", "c", "d")]
    held = grid.cell_path(tmp_path, cells[1])
    held.parent.mkdir(parents=True)
    held.with_name("s0.json.running").write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process
    calls = []

    def runner(cell, data_dir, timeout):
        calls.append(cell.method)
        assert grid.claimed(grid.cell_path(tmp_path, cell))
        if cell.method == "a":  # meanwhile another process records c
            path = grid.cell_path(tmp_path, cells[2])
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_rec(cells[2], accuracy=0.5)))
        if cell.method == "d":
            raise CellError("error: boom")
        return _rec(cell, accuracy=0.75)

    out = run_cells(cells, tmp_path, "DATA", budget_s=3600.0, runner=runner, log=lambda s: None)
    assert calls == ["a", "d"] and out.ran == [cells[0].key] and out.elsewhere == [cells[1].key]
    assert out.skipped == [cells[2].key] and list(out.failed) == [cells[3].key]
    assert sorted(p.name for p in (tmp_path / "cells").rglob("*.running")) == ["s0.json.running"]  # b's, not ours


def test_seed_table_lists_every_run_by_partition_and_seed():
    groups = {("m", "sst2", "iid", "splitfrozen"): {0: {"accuracy": 0.735}, 2: {"accuracy": 0.6}},
              ("m", "sst2", "iid", "fedlora"): {2: {"accuracy": 0.59}},
              ("m", "mrpc", "iid", "fedlora"): {1: {"accuracy": 0.7}}}
    rows = render.seed_table(groups, "m", "sst2", ("iid",))
    assert rows[0].startswith("<details>") and rows[-1] == "</details>"
    assert rows[2] == "| partition | seed | " + " | ".join(render.METHODS) + " |"
    assert rows[4:6] == ["| iid | 0 | 73.5 | not run | not run | not run | not run |",
                         "| iid | 2 | 60.0 | not run | not run | 59.0 | not run |"]
    assert render.seed_table(groups, "m", "mnli") == []


def test_majority_note_quotes_the_recorded_majority_figures_of_the_tasks_shown():
    groups = {("m", "mnli", "iid", "fedlora"): {0: {"majority_accuracy": 0.347, "majority_macro_f1": 0.172}},
              ("m", "mrpc", "iid", "fedlora"): {1: {"majority_baseline": {"accuracy": 0.684, "macro_f1": 0.406}}},
              ("m", "sst2", "iid", "fedlora"): {0: {"accuracy": 0.9}},
              ("other", "sst2", "iid", "fedlora"): {0: {"majority_accuracy": 0.5, "majority_macro_f1": 0.3}}}
    note = render.majority_note(groups, "m", ["mrpc", "mnli", "sst2", "mrpc"])
    assert note.endswith("only its macro-F1 (MRPC: 68.4% and 40.6; MNLI: 34.7% and 17.2), hence the macro-F1 columns.")
    assert render.majority_note(groups, "m", ["sst2"]).endswith("only its macro-F1, hence the macro-F1 columns.")


def test_accuracy_table_is_mean_and_sample_sd_over_seeds():
    groups = {("minilm-l6", "sst2", "iid", "splitfrozen"): {0: {"accuracy": 0.8}, 1: {"accuracy": 0.9},
                                                           2: {"accuracy": 0.85}},
              ("minilm-l6", "sst2", "iid", "fedlora"): {0: {"accuracy": 0.5, "majority_accuracy": 0.509}}}
    rows = render.accuracy_table(groups, "minilm-l6", "sst2")
    assert rows[2] == "| iid | 85.0 ± 5.0 (3) | not run | not run | 50.0 (1) | not run | 50.9 |"
    assert rows[5] == "| label-skew:1 | not run | not run | not run | not run | not run | - |"


def test_accuracy_rows_are_the_grids_partitions_so_not_run_means_still_to_run():
    cells = grid.default_grid()
    groups = {("smollm2-135m", "sst2", "iid", "cenlora"): {0: {"accuracy": 0.86}}}
    parts = render.grid_partitions(cells, groups, "smollm2-135m", "sst2")
    assert parts == ("iid", "label-skew:1")  # SmolLM2's grid has no Dirichlet rows
    rows = render.accuracy_table(groups, "smollm2-135m", "sst2", partitions=parts)
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| iid", "| label-skew:1"]
    assert render.grid_partitions(cells, {}, "minilm-l6", "mnli") == grid.PARTITIONS
    # a recorded run outside the grid is still shown, after the grid's rows
    extra = {("smollm2-135m", "sst2", "dirichlet:0.3", "splitfrozen"): {0: {"accuracy": 0.7}}}
    assert render.grid_partitions(cells, extra, "smollm2-135m", "sst2") == ("iid", "label-skew:1", "dirichlet:0.3")


def test_claim_rows_compare_seed_by_seed_in_points_and_relative():
    g = {("minilm-l6", "sst2", "label-skew:1", "splitfrozen"): {0: {"accuracy": 0.8}, 1: {"accuracy": 0.82}},
         ("minilm-l6", "sst2", "label-skew:1", "fedlora"): {0: {"accuracy": 0.5}, 1: {"accuracy": 0.6},
                                                           2: {"accuracy": 0.9}}}
    (row,) = render.claim_rows(g, "minilm-l6")
    assert row["seeds"] == 2 and row["points"] == pytest.approx(26.0) and row["relative"] == pytest.approx(
        100 * (0.81 / 0.55 - 1))
    assert row["points_sd"] == pytest.approx(statistics.stdev([30.0, 22.0]))  # paired: seed 2 has no SplitFrozen
    assert row["f1_points"] is None and render.claim_lines([row])[2] == (
        "| SST-2 | fedlora | 2 | 81.0% | 55.0% | +26.0 ± 5.7 | +47.3% | - | - | - |")


def test_the_earlier_grids_claim_bullets_give_the_paired_interval_and_call_it_inconclusive():
    from trainer.claims.report import _claim
    g = {("m", "sst2", "label-skew:1", "splitfrozen"): {0: {"accuracy": 0.80}, 1: {"accuracy": 0.81}},
         ("m", "sst2", "label-skew:1", "fedlora"): {0: {"accuracy": 0.50}, 1: {"accuracy": 0.49}}}
    lines = _claim(g, "m")
    assert lines[0] == "#### The +69.4% claim in the earlier grid (m, label-skew:1)"
    # per-seed gains 30 and 32 points: mean 31, sd 1.414, t(0.975, 1) = 12.706 -> half-width 12.706
    assert ("- SST-2, against fedlora: inconclusive at this scale: +31.0 points, 95% CI +18.3 to +43.7, 2 seeds "
            "(earlier grid: untuned baselines, one epoch, toy scale).") in lines


def test_claim_rows_put_macro_f1_beside_accuracy():
    # a baseline that always answers the majority class: higher accuracy, far lower macro-F1
    g = {("minilm-l6", "mrpc", "label-skew:1", "splitfrozen"): {0: {"accuracy": 0.63, "eval_metrics": {"macro_f1": 0.604}}},
         ("minilm-l6", "mrpc", "label-skew:1", "fedlora"): {0: {"accuracy": 0.684, "eval_metrics": {"macro_f1": 0.406}}}}
    (row,) = render.claim_rows(g, "minilm-l6")
    assert row["points"] == pytest.approx(-5.4) and row["f1_points"] == pytest.approx(19.8)
    assert render.claim_lines([row])[2] == ("| MRPC | fedlora | 1 | 63.0% | 68.4% | -5.4 | -7.9% | 60.4 | 40.6 | "
                                            "+19.8 |")


def test_cut_savings_reproduce_the_gpt2_arithmetic():
    from trainer.claims.compute import cut_savings

    rows = cut_savings(_gpt2(128, 8))
    assert [r["cut"] for r in rows] == list(range(1, 12))
    k3 = rows[2]
    assert round(100 * k3["saving_vs_fedlora"], 1) == 87.6  # the figure the paper's 86.8% is set against
    assert 0.45 < k3["saving_vs_splitlora"] < 0.5  # forward-only vs forward + backward of the same blocks
    assert all(a["saving_vs_fedlora"] > b["saving_vs_fedlora"] for a, b in zip(rows, rows[1:], strict=False))


def test_flop_counter_measures_the_same_saving_as_the_cost_model(one_torch_thread):
    from trainer.claims.compute import cut_savings, measured_gpt2_saving

    got = measured_gpt2_saving(cut=3, seq_len=16)
    model = cut_savings(_gpt2(16, 1))[2]
    # the prefix is the same computation in both (forward only): exact; the whole-model count differs by
    # the head's pooling only (mean here, last token in the cost model)
    assert got["splitfrozen_flops"] == model["splitfrozen_flops"]
    assert abs(got["saving_vs_fedlora"] - model["saving_vs_fedlora"]) < 0.005


def test_report_renders_tables_figures_and_what_is_missing(tmp_path):
    from trainer.claims.report import make_report

    results, docs = tmp_path / "res", tmp_path / "docs"
    cells = [Cell("accuracy", "minilm-l6", "sst2", m, "label-skew:1") for m in ("splitfrozen", "fedlora")]
    cells.append(Cell("time", "minilm-l6", "sst2", "splitfrozen"))
    for c, figs in zip(cells, ({"accuracy": 0.8, "device_flops_total": 1e9, "train_samples": 10},
                               {"accuracy": 0.5, "device_flops_total": 4e9, "train_samples": 10},
                               {"predicted_s": 9.0, "measured_s": 10.0, "error": -0.1, "stages": {}}), strict=True):
        path = grid.cell_path(results, c)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_rec(c, **figs)))
    wanted = cells + [Cell("accuracy", "minilm-l6", "sst2", "cenlora", "label-skew:1")]
    out = make_report(results, docs, "DATA", 0, cells=wanted, factors=[0.1, 1.0], measure_gpt2=False,
                      stream_order=tmp_path / "none.json", log=lambda s: None)
    assert isinstance(out, Outcome) and out.left == [wanted[-1].key] and len(out.skipped) == 3
    md = (docs / "results.md").read_text()
    assert "Runs recorded: **3 of 4**" in md
    assert "| label-skew:1 | 80.0 (1) | not run | not run | 50.0 (1) | not run | - |" in md
    assert "| SST-2 | fedlora | 1 | 80.0% | 50.0% | +30.0 | +60.0% |" in md
    assert "- SST-2, against fedlora: inconclusive at this scale: +30.0 points, 1 seeds (earlier grid" in md
    assert "| splitfrozen | 1 | 1.000e+08 | - |" in md and "| fedlora | 1 | 4.000e+08 | 75.0% |" in md
    assert "| earlier grid: `bench/runtime_4dev.yaml`, one run | splitfrozen | 1 | 10.0 | 9.0 | not recorded | - | - |" in md
    assert "| earlier grid: `bench/runtime_4dev.yaml`, one run | fedlora | 0 | not run | - | - | not run | not run |" in md
    for name in ("accuracy_minilm-l6_sst2.png", "savings_vs_cut.png", "savings_vs_bandwidth.png"):
        assert (docs / "figures" / name).stat().st_size > 10_000
    assert "![accuracy minilm-l6 sst2](figures/accuracy_minilm-l6_sst2.png)" in md


def test_a_real_cell_runs_the_trainer_and_records_its_command(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setitem(grid.SETTINGS, tiny_gpt2, Settings(str(FIXTURES / "runtime_tiny.yaml"), 16, 8, 32, 1))
    monkeypatch.setattr(grid, "provenance", lambda allow_dirty=False: {"commit": "abc1234"})  # whatever the tree
    cell = Cell("accuracy", tiny_gpt2, "sst2", "splitfrozen", "label-skew:1")
    out = run_cells([cell], tmp_path, str(FIXTURES / "data"), budget_s=600, log=lambda s: None)
    assert out.ran == [cell.key], out.failed
    rec = grid.load_cells(tmp_path)[cell.key]
    f = rec["figures"]
    assert f["train_samples"] == 16 and f["eval_samples"] == 8 and 0 <= f["accuracy"] <= 1
    assert f["device_flops_total"] > 0 and set(f["cuts"].values()) == {1} and len(f["cuts"]) == 3
    assert rec["command"].startswith("sfsim run --method splitfrozen --split 1 ") and "--out OUT" in rec["command"]
    assert "--data-dir DATA " in rec["command"] and rec["data"] == {"train": "sst2/train.tsv", "dev": "sst2/dev.tsv"}
    assert rec["commit"] == "abc1234"
    assert [len(rec["load"][k]) for k in ("before", "after")] == [3, 3]  # 1, 5, 15 min


def test_report_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from sfsim.cli import main

    for args, msg in ((["--only", "colour=red"], "--only 'colour=red': write FIELD=V1,V2"),
                      (["--budget", "soon"], "--budget:"),
                      (["--only", "task=nothing"], "--only matches no cell")):
        res = CliRunner().invoke(main, ["report", "--results", str(tmp_path), *args])
        assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
    res = CliRunner().invoke(main, ["report", "--results", str(tmp_path), "--list", "--only", "kind=gsm8k"])
    assert res.exit_code == 0 and res.output.splitlines()[-1] == "0 of 2 recorded"
    assert grid.claim(grid.cell_path(tmp_path, Cell("gsm8k", "smollm2-135m", "gsm8k", "cenlora")))
    res = CliRunner().invoke(main, ["report", "--results", str(tmp_path), "--list", "--only", "kind=gsm8k"])
    assert res.output.splitlines() == ["running   gsm8k/smollm2-135m/gsm8k/iid/cenlora/s0",
                                       "missing   gsm8k/smollm2-135m/gsm8k/iid/splitfrozen/s0", "0 of 2 recorded"]


def test_readme_report_commands_run_or_list(tmp_path, monkeypatch):
    """The report guide's ``sfsim report`` lines: ``--list`` ones run here; the others parse (they train for hours)."""
    import re
    import shlex

    from click.testing import CliRunner

    from sfsim.cli import main

    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "report.md").read_text()
    cmds = [ln.split("  #")[0].strip() for ln in re.findall(r"^sfsim report.*$", readme, re.M)]
    assert len(cmds) == 2
    for cmd in cmds:
        args = shlex.split(cmd)[1:] + ["--results", str(tmp_path)]
        if "--list" in args:
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 0 and res.output.splitlines()[-1] == "0 of 140 recorded", res.output  # 20 earlier + 120 tuning
        else:
            assert main.get_command(None, "report").make_context("report", args[1:]).params["budget"] == "2 h"


def test_gsm8k_table_reads_before_from_cenlora_and_after_from_each_method():
    cen = Cell("gsm8k", "smollm2-135m", "gsm8k", "cenlora")
    rec = _rec(cen, accuracy=0.05, train_samples=64, eval_samples=40,
               eval_metrics={"accuracy": 0.05, "answer_loss": 1.234567, "marked": 0.9, "hit_limit": 0.125},
               eval_before={"accuracy": 0.025, "answer_loss": 2.5})  # recorded before the shares existed
    lines = render.gsm8k_lines({cen.key: rec})
    assert lines[2:] == ["| before fine-tuning | 2.5% | 2.500 | - | - | 0 | 40 |",
                         "| after cenlora | 5.0% | 1.235 | 90.0% | 12.5% | 64 | 40 |",
                         "| after splitfrozen | not run | | | | | |", "",
                         "- Exact match 1/40 before against 2/40 after cenlora: two-sided Fisher exact p = 1.00 "
                         "(no evidence of a difference on this many questions)."]
    # 0/40 against 12/40 is no accident (p = 0.0002)
    assert render.exact_match_tests([("before", {"accuracy": 0.0}, 0, 40), ("after x", {"accuracy": 0.3}, 8, 40)]) == [
        "- Exact match 0/40 before against 12/40 after x: two-sided Fisher exact p = 0.00."]


def test_the_majority_column_matches_the_metric():
    figs = {"accuracy": 0.7, "macro_f1": 0.5, "majority_accuracy": 0.684, "majority_macro_f1": 0.406,
            "majority_baseline": {"accuracy": 0.684, "macro_f1": 0.406, "f1": 0.812}}
    groups = {("minilm-l6", "mrpc", "iid", "splitfrozen"): {0: figs}}
    assert render.accuracy_table(groups, "minilm-l6", "mrpc")[2].endswith("| 68.4 |")
    assert render.accuracy_table(groups, "minilm-l6", "mrpc", "macro_f1")[2].endswith("| 40.6 |")
    assert render.accuracy_table(groups, "minilm-l6", "mrpc", "f1")[2].endswith("| 81.2 |")


def test_a_generation_cell_keeps_its_scored_answers(tmp_path):
    (tmp_path / "generations.jsonl").write_text('{"row": 0, "correct": true}\n{"row": 1, "correct": false}\n')
    assert grid.run_generations(tmp_path) == {"after": [{"row": 0, "correct": True}, {"row": 1, "correct": False}]}
    (tmp_path / "generations_before.jsonl").write_text('{"row": 0, "correct": false}\n')
    assert grid.run_generations(tmp_path)["before"] == [{"row": 0, "correct": False}]
    assert grid.run_generations(tmp_path / "none") == {}


def test_accuracy_bars_keep_each_methods_colour_and_each_partitions_slot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from trainer.claims import plots

    groups = {("smollm2-135m", "sst2", "iid", "cenlora"): {0: {"accuracy": 0.86}},
              ("smollm2-135m", "sst2", "label-skew:1", "splitlora-sequential"): {0: {"accuracy": 0.5},
                                                                                 1: {"accuracy": 0.6}}}
    fig, ax = plt.subplots()
    plots.accuracy_axes(ax, groups, "smollm2-135m", "sst2", ("iid", "label-skew:1"))
    bars = [(round(p.get_x() + p.get_width() / 2, 6), round(p.get_height(), 6), to_hex(p.get_facecolor()))
            for p in ax.patches]
    plt.close(fig)
    # cenlora is the 5th method (C4), splitlora-sequential the 3rd (C2); bars centred at slot + offset
    assert bars == [(1.0, 55.0, to_hex("C2")), (0.32, 86.0, to_hex("C4"))]
    assert ax.get_xlim() == (-0.5, 1.5)
