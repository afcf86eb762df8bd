"""Validate's load calibration: a speed probe recorded with the server's profile and timed again around the
run; the server's profile is scaled by the ratio (other processes' load on a shared machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sfsim.cost.latency import load_latency_profile
from trainer.validate import profile as prof_mod
from trainer.validate.profile import load_factor, speed_probe

FIXTURES = Path(__file__).parent / "fixtures"


def test_load_factor_is_the_probes_mean_over_the_profiles():
    profile = {"machine": {"probe_s": {"before": 0.010, "after": 0.014}}}
    assert load_factor(profile, [0.018, 0.018]) == pytest.approx(1.5)
    assert load_factor(profile, [0.006, 0.018]) == pytest.approx(1.0)
    assert load_factor({"machine": {}}, [0.01]) is None and load_factor(profile, []) is None


def test_speed_probe_times_about_the_seconds_asked():
    t = speed_probe(seconds=0.05)
    assert 0 < t < 0.05  # the mean of at least one round of about 0.1 GFLOP, under 50 ms on any CPU


@pytest.mark.usefixtures("one_torch_thread")
def test_validate_scales_the_servers_profile_by_the_load_factor(tiny_gpt2, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sfsim.cli import main

    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prof_mod, "speed_probe", lambda seconds=1.0: 0.010)  # while the server is profiled
    monkeypatch.setattr("trainer.validate.compare.speed_probe", lambda seconds=1.0: 0.025)  # around the run
    res = CliRunner().invoke(main, ["validate", "--devices", str(FIXTURES / "runtime_tiny.yaml"), "--model", tiny_gpt2,
                                    "--method", "splitfrozen", "--split", "1", "--max-len", "24", "--train-samples",
                                    "16", "--data-dir", str(FIXTURES / "data"), "--out", str(tmp_path / "val"),
                                    "--no-host-sharing"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "val" / "report.json").read_text())
    host = rep["header"]["host"]
    assert host["load_factor"] == 2.5 and host["probe_s"] == [0.025, 0.025] and host["server_slowdown"] == 1.0
    assert "load: this machine computed x2.500 as slow around the run as when the server was profiled" in res.output
    cached = next((tmp_path / "cache" / "profiles").glob("*.yaml"))
    assert yaml.safe_load(cached.read_text())["machine"]["probe_s"] == {"before": 0.01, "after": 0.01}
    base = load_latency_profile(str(cached))
    scaled = load_latency_profile(str(tmp_path / "val" / "server-profile-shared.yaml"))
    for a, b in zip(base.grid, scaled.grid, strict=True):
        assert b.forward_train.blocks == pytest.approx([2.5 * x for x in a.forward_train.blocks], rel=1e-9)
