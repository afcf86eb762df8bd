"""``sfsim validate`` on fresh fleets (tests/fixtures/fresh21), as a new user runs it: the simulator's and the real
run's handovers and untrained samples agree exactly, and the total time within 10% (the bound of
tests/test_runtime_dynamics.py; bench/results/fresh21.md has the figures: within 1-4% at load 7-11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.scenario.config import load_scenario

FIXTURES = Path(__file__).parent / "fixtures"
FRESH = FIXTURES / "fresh21"

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # 10-36 s each at load 7 (more with no cached server profile)


def _validate(model: str, out: Path, scenario: str, *extra: str) -> dict:
    samples = sum(d.samples for d in load_scenario(str(FRESH / scenario)).devices)
    res = CliRunner().invoke(main, ["validate", "--devices", str(FRESH / scenario), "--model", model, "--method",
                                    "splitfrozen", "--split", "1", "--max-len", "48", "--train-samples", str(samples),
                                    "--data-dir", str(FIXTURES / "data"), "--server-order", "fifo", "--out", str(out),
                                    *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())


def _moves(rows: list[dict]) -> list[tuple]:
    return [(h["device"], h["from"], h["to"], h["at_s"], h["sent_before"]) for h in rows]


def test_validate_a_handover_mid_send(tiny_gpt2, tmp_path):
    rep = _validate(tiny_gpt2, tmp_path / "val", "handover_midsend.yaml")
    assert _moves(rep["handovers"]["measured"]) == _moves(rep["handovers"]["predicted"]) == \
        [("walker", "north", "south", 0.93, 2)]
    assert abs(rep["total"]["error"]) < 0.1, rep["total"]


def test_validate_pause_on_one_server_and_drop_on_the_other(tiny_gpt2, tmp_path):
    rep = _validate(tiny_gpt2, tmp_path / "val", "churn_split.yaml")
    assert rep["samples_not_trained"] == {"predicted": {"napper": 0, "leaver": 4}, "measured": {"napper": 0, "leaver": 4}}
    assert abs(rep["total"]["error"]) < 0.1, rep["total"]


def test_validate_three_cached_epochs_with_a_server_idle_at_first(tiny_gpt2, tmp_path):
    rep = _validate(tiny_gpt2, tmp_path / "val", "cache_idle_server.yaml", "--epochs", "3")
    assert _moves(rep["handovers"]["measured"]) == _moves(rep["handovers"]["predicted"]) == \
        [("roamer", "busy", "spare", 0.47, 2)]
    assert abs(rep["total"]["error"]) < 0.1, rep["total"]


def test_validate_overrides_the_scenarios_codec(tiny_gpt2, tmp_path):
    """--wire-dtype int8 on a fleet whose scenario says int4: the run sends int8 (each message the simulator's
    bytes) and the simulation costs int8 (the uplink stage within 10%, a codec row)."""
    from tests.test_fresh21_fleets import _message_bytes, _scenario

    rep = _validate(tiny_gpt2, tmp_path / "val", "codec_slowlink.yaml", "--wire-dtype", "int8")
    m = json.loads((tmp_path / "val" / "run" / "metrics.json").read_text())
    assert load_scenario(str(FRESH / "codec_slowlink.yaml")).training.wire_dtype == "int4"
    scen = _scenario(tmp_path, "codec_slowlink.yaml", tiny_gpt2)
    for dev, shapes in m["microbatch_shapes"].items():
        assert m["uplink_bytes_by_device"][dev] == _message_bytes(scen, shapes, "int8") != \
            _message_bytes(scen, shapes), dev
    assert rep["stages"]["codec"]["predicted_s"] > 0
    assert abs(rep["stages"]["uplink"]["error"]) < 0.1, rep["stages"]["uplink"]
