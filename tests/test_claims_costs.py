"""The decisive grid's cost cuts and the measured-time verdict: SplitFrozen's activation cache per group,
the dev set scored only where the stopping rule can report it, estimates from probed speeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainer.claims import budget, decisive, scale, sections
from trainer.claims.grid import Cell
from trainer.claims.verdict import time_verdict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def _rec(method: str, part: str, cached: bool | None) -> dict:
    settings = {} if cached is None else {"cache_activations": cached}
    return {"cell": {"kind": "tune", "model": "minilm-l6", "task": "sst2", "method": method, "partition": part},
            "settings": settings}


def test_the_cached_fleets_are_the_grids_fleets_with_the_cache_on_and_differ_by_model_only():
    def load(f):
        data = yaml.safe_load((ROOT / f).read_text())
        data.pop("description")
        return data

    for model, (plain_file, cached_file) in scale.FLEETS.items():
        plain, cached = load(plain_file), load(cached_file)
        assert cached["training"].pop("cache_activations") is True and "cache_activations" not in plain["training"]
        assert plain == cached and plain["model"]["name"] == model
    minilm, smollm2 = (load(scale.FLEETS[m][0]) for m in ("minilm-l6", "smollm2-135m"))
    assert minilm["training"]["lora"].pop("targets") == ["query", "value"]  # SmolLM2: its family's defaults
    minilm["model"]["name"] = "smollm2-135m"
    assert minilm == smollm2


def test_a_group_keeps_the_cache_protocol_its_first_splitfrozen_cell_ran_under():
    rec = {"a": _rec("splitfrozen", "label-skew:1", None), "b": _rec("fedlora", "iid", False),
           "c": _rec("splitfrozen", "dirichlet:0.5", True)}
    assert not scale.uses_cache(rec, "minilm-l6", "sst2", "label-skew:1")  # recorded before the cache
    assert scale.uses_cache(rec, "minilm-l6", "sst2", "iid") and scale.uses_cache(rec, "minilm-l6", "sst2", "dirichlet:0.5")
    sf = Cell("tune", "minilm-l6", "sst2", "splitfrozen", "iid", 0, "lr=0.001")
    assert scale.cell_fleet(sf, rec) == scale.CACHED_FLEET
    assert scale.cell_fleet(Cell("tune", "minilm-l6", "sst2", "splitfrozen", "label-skew:1"), rec) == scale.FLEET
    assert scale.cell_fleet(Cell("tune", "minilm-l6", "sst2", "fedlora", "iid"), rec) == scale.FLEET
    assert scale.cell_fleet(Cell("tune", "smollm2-135m", "sst2", "splitfrozen", "iid"), rec) == scale.FLEETS[
        "smollm2-135m"][1]
    cmd = scale.converge_command(sf, "lr=0.001", "DATA", "OUT", scale.cell_fleet(sf, rec))
    assert cmd[cmd.index("--devices") + 1] == scale.CACHED_FLEET
    text = " ".join(decisive.cache_lines(rec))
    assert "Without the cache (a cell was recorded before it was adopted): minilm-l6, SST-2, label-skew:1." in text


def test_estimates_use_probed_speeds_the_cache_and_dev_scored_after_improving_epochs():
    probes = {("minilm-l6", "sst2", "splitfrozen"): {"train_sps_cpu": [40.0, 80.0], "score_rps_cpu": 100.0,
                                                    "load_cpu_s": 10.0, "train_sps": [10.0, 20.0],
                                                    "commit": "abc", "recorded": "now", "load": {"before": [3.0, 2, 1]}}}
    rec = {"x": {**_rec("splitfrozen", "label-skew:1", None), "figures": {"epochs_run": 5, "curve": []}}}
    cached = Cell("tune", "minilm-l6", "sst2", "splitfrozen", "iid", 0, "lr=0.001")
    plain = Cell("tune", "minilm-l6", "sst2", "splitfrozen", "label-skew:1", 0, "lr=0.001")
    p = budget.plan([cached, plain], rec, 1e9, probes=probes)
    scored = (5 * 800 + 3 * 872) / 100  # validation every epoch, dev after at most 5 - patience 2 epochs
    assert p["rows"][0][1] == pytest.approx(10 + 8000 / 40 + 4 * 8000 / 80 + scored)
    assert p["rows"][1][1] == pytest.approx(10 + 5 * 8000 / 40 + scored)  # its group started uncached
    before = budget.plan([cached], rec, 1e9, probes=probes, cuts=False)
    assert before["rows"][0][1] == pytest.approx(10 + 5 * 8000 / 40 + (5 * 800 + 5 * 872) / 100)
    assert p["sources"][("minilm-l6", "sst2", "splitfrozen")] == ("the speed probe, CPU time (commit abc, now UTC; "
                                                                  "wall time 4.0x longer under load 3)")


def test_the_time_verdict_needs_the_whole_interval_on_one_side_of_the_papers_figure():
    assert time_verdict([0.60, 0.62, 0.61], 0.502, 3).word == "holds"
    v = time_verdict([0.30, 0.32, 0.31], 0.502, 3)
    assert v.word == "does not hold" and v.mean == pytest.approx(31.0) and v.ci[0] < 31.0 < v.ci[1]
    assert time_verdict([0.30, 0.70, 0.50], 0.502, 3).word == "inconclusive at this scale"
    assert time_verdict([0.60, 0.62], 0.502, 3).reason == "2 of 3 repeats"
    assert time_verdict([], 0.502, 3).reason == "not run"


def test_measured_time_rows_carry_the_load_and_the_verdict_per_fleet(tmp_path):
    def cell(meth, seed, measured, load):
        return {"cell": {"kind": "time", "model": "minilm-l6", "task": "sst2", "method": meth, "partition": "iid",
                         "seed": seed, "setting": "mixed-links"},
                "figures": {"measured_s": measured, "predicted_s": measured}, "load": {"before": [load, 0, 0]}}

    rec = {f"{m}{s}": cell(m, s, t, 2.0 + s) for s in range(3)
           for m, t in (("splitfrozen", 10.0 + s), ("fedlora", 20.0))}
    rows = sections.measured_time_lines(rec, facts := {})
    assert any("| fedlora | 3 | 20.0 ± 0.0 | 20.0 ± 0.0 | 2.0-4.0 | 45.0% ± 5.0 (3) |" in r for r in rows)
    assert facts["time_measured"][("mixed-links", "fedlora")] == pytest.approx([0.5, 0.45, 0.4])
    assert sections.time_verdict_lines(rec, 0.502) == [
        "- `bench/runtime_4dev.yaml`, SplitFrozen against fedlora: **inconclusive at this scale** (the interval "
        "spans 50.2%): measured saving 45.0%, 95% CI 32.6% to 57.4%, 3 repeats; the simulator on the same fleet: 45.0%."]
    from trainer.claims import plots

    tg = sections.time_groups(rec)
    assert plots.time_figure(tg, {"mixed-links": "x.yaml"}, ("splitfrozen", "fedlora"), tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert not plots.time_figure(tg, {"fast-links": "y.yaml"}, ("splitfrozen",), tmp_path / "none.png")


def test_dev_scored_only_after_improving_epochs_changes_no_reported_figure(tiny_gpt2, tmp_path, one_torch_thread):
    from trainer.claims.converge import Protocol, converge
    from trainer.run.runner import RunConfig

    runs = []
    for every in (True, False):
        cfg = RunConfig(devices=str(FIXTURES / "runtime_tiny.yaml"), model=tiny_gpt2, task="sst2",
                        method="splitfrozen", partition="iid", out=str(tmp_path / str(every)), split=1,
                        train_samples=24, lr=5e-2, seed=0, max_len=32, data_dir=str(FIXTURES / "data"),
                        count_flops=False, progress=False)
        runs.append(converge(cfg, Protocol(8, patience=1, max_epochs=4, dev_every_epoch=every), log=lambda s: None))
    every, improving = runs
    keys = ("accuracy", "macro_f1", "best_epoch", "epochs_run", "val_best", "loss_curve")
    assert {k: every[k] for k in keys} == {k: improving[k] for k in keys}
    assert [r["val"] for r in every["curve"]] == [r["val"] for r in improving["curve"]]
    top = float("-inf")
    for a, b in zip(every["curve"], improving["curve"], strict=True):
        assert b["dev"] == (a["dev"] if a["val"]["accuracy"] > top else None)
        top = max(top, a["val"]["accuracy"])


def test_the_speed_probe_times_every_method_and_records_its_command(tiny_gpt2, tmp_path, monkeypatch,
                                                                     one_torch_thread):
    from trainer.claims import speed

    monkeypatch.setitem(scale.SCALE, (tiny_gpt2, "sst2"), scale.TaskScale(24, 8, 32, split=1))
    monkeypatch.setattr(speed, "SCALE", scale.SCALE)
    monkeypatch.setattr(speed, "provenance", lambda allow_dirty=False: {"commit": "abc1234"})
    fixture = str(FIXTURES / "runtime_tiny.yaml")
    monkeypatch.setitem(scale.FLEETS, tiny_gpt2, (fixture, fixture))
    monkeypatch.setattr(speed, "parser", lambda: _parser(speed, tiny_gpt2))
    argv = ["--model", tiny_gpt2, "--task", "sst2", "--samples", "16", "--score-rows", "8", "--methods",
            "splitfrozen,fedlora", "--data-dir", str(FIXTURES / "data"), "--results", str(tmp_path)]
    assert speed.main(argv) == 0
    got = speed.load_speeds(tmp_path)
    assert set(got) == {(tiny_gpt2, "sst2", "splitfrozen"), (tiny_gpt2, "sst2", "fedlora")}
    sp = got[(tiny_gpt2, "sst2", "fedlora")]
    assert sp["train_samples"] == 16 and sp["score_rows"] == 8 and sp["commit"] == "abc1234"
    assert min(sp["train_sps"] + sp["train_sps_cpu"]) > 0 and sp["score_rps_cpu"] > 0 and len(sp["load"]["before"]) == 3
    rec = json.loads((tmp_path / "speeds" / f"{Path(tiny_gpt2).name}_sst2.json").read_text())
    assert "--data-dir DATA --results RESULTS" in rec["command"]


def _parser(speed, model):
    """The probe's options with the tiny model allowed (its choices come from the grid's scale)."""
    p = speed.argparse.ArgumentParser()
    for name in ("--model", "--task", "--methods", "--data-dir", "--results"):
        p.add_argument(name)
    p.add_argument("--samples", type=int)
    p.add_argument("--score-rows", type=int)
    return p


def test_the_grids_lengths_truncate_no_sst2_or_mrpc_row_for_either_tokenizer():
    for (model, task), sc in scale.SCALE.items():
        measured = scale.TRUNCATION[(model, task)]
        assert sc.max_len in measured["over"], (model, task)
        if task in ("sst2", "mrpc"):
            assert max(measured["max_tokens"]) <= sc.max_len and measured["over"][sc.max_len] == (0.0, 0.0)
