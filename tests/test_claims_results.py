"""docs/results.md is a function of the recorded cells: every table row that rests on a run is recomputed here.

The fast test rebuilds each cell-derived row (verdicts, tuned settings, trials, pilot epochs, the earlier
grid's tables, measured compute and time, GSM8K) from ``bench/results/claims`` and finds it verbatim in
the document; the slow one regenerates the whole document (simulator and cost model included) and
compares it byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.claims import decisive, glance, render, sections
from trainer.claims.grid import load_cells
from trainer.claims.report import full_grid
from trainer.claims.scale import groups as scale_groups
from trainer.claims.scale import load_partials

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "claims"
DOC = ROOT / "docs" / "results.md"


def _rows_from_cells() -> list[str]:
    recorded, partials = load_cells(RESULTS), load_partials(RESULTS)
    groups = render.seeds_of(recorded)
    rows = decisive.protocol_lines(recorded) + decisive.verdict_lines(recorded) + glance.accuracy_rows(recorded, groups)
    for model, task, part in scale_groups():
        if any((r["cell"]["model"], r["cell"]["task"], r["cell"]["partition"]) == (model, task, part)
               for r in [*recorded.values(), *partials.values()] if r["cell"]["kind"] in ("tune", "converge")):
            rows += decisive.results_lines(recorded, model, task, part) + decisive.trial_lines(recorded, model, task, part)
            rows += decisive.partial_lines(partials, model, task, part)
    cells = full_grid()
    for (model, task) in {(k[0], k[1]) for k in groups}:
        parts = render.grid_partitions(cells, groups, model, task)
        rows += render.accuracy_table(groups, model, task, partitions=parts)
        rows += render.seed_table(groups, model, task, parts)
    for model in ("minilm-l6", "smollm2-135m"):
        rows += render.claim_lines(render.claim_rows(groups, model))
    rows += render.compute_lines(groups) + sections.measured_time_lines(recorded, {}) + render.gsm8k_lines(recorded)
    return [r for r in rows if r.startswith("|")]


def test_every_row_that_rests_on_a_run_is_recomputed_from_the_cells():
    doc = DOC.read_text().splitlines()
    rows = _rows_from_cells()
    assert len(rows) > 150
    missing = [r for r in rows if r not in doc]
    assert not missing, f"{len(missing)} rows differ from the cells, e.g. {missing[:3]}"


def test_the_header_names_the_commits_of_the_recorded_runs():
    recorded = load_cells(RESULTS)
    text = DOC.read_text()
    for commit in {r.get("commit") for r in recorded.values() if r.get("commit")}:
        assert commit in text


@pytest.mark.slow
def test_the_whole_document_regenerates_byte_for_byte(tmp_path):
    from trainer.claims.report import make_report

    make_report(RESULTS, tmp_path, "DATA", 0, log=lambda s: None)
    assert (tmp_path / "results.md").read_text() == DOC.read_text()


def test_the_codec_and_multiserver_tables_are_recomputed_from_the_recorded_runs():
    import json

    from trainer.claims import codecs

    doc = DOC.read_text().splitlines()
    rows = [r for r in codecs.codec_rows(codecs.codec_runs(ROOT / "bench" / "results" / "codecs"))
            + codecs.server_rows(codecs.server_runs(ROOT / "bench" / "results" / "multiserver")) if r.startswith("| ")]
    assert len(rows) == 2 + 20 + 8 and all(r in doc for r in rows)  # 5 codecs x 2 partitions x 2 tasks
    # one row by hand from the raw files: MNLI, label-skew:1, int4 against fp32, paired by seed
    base = ROOT / "bench" / "results" / "codecs" / "mnli"
    acc = {c: [100 * json.loads((base / f"{c}-label-skew1-s{s}" / "metrics.json").read_text())["eval_accuracy"]
               for s in range(3)] for c in ("fp32", "int4")}
    up = {c: sum(json.loads((base / f"{c}-label-skew1-s{s}" / "metrics.json").read_text())["uplink_bytes"]
                 for s in range(3)) / 3 for c in ("fp32", "int4")}
    diffs = [b - a for a, b in zip(acc["fp32"], acc["int4"], strict=True)]
    row = (f"| MNLI (balanced 9k subset) | label-skew:1 | int4 | 0,1,2 | {sum(acc['int4']) / 3:.2f} | "
           f"{sum(diffs) / 3:+.2f} ({min(diffs):+.2f}..{max(diffs):+.2f}) | {up['int4'] / 1e6:.2f} | "
           f"{up['fp32'] / up['int4']:.2f} |")
    assert row == "| MNLI (balanced 9k subset) | label-skew:1 | int4 | 0,1,2 | 42.30 | -0.23 (-0.40..+0.00) | 12.33 | 7.80 |"
    assert row in doc
