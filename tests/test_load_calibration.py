"""Validate's load calibration: a speed probe recorded with the server's profile and timed again around the
run; the server's profile is scaled by the ratio (other processes' load on a shared machine)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from sfsim.cost.latency import load_latency_profile
from trainer.validate import profile as prof_mod
from trainer.validate.profile import LoadSampler, load_factor

FIXTURES = Path(__file__).parent / "fixtures"


def test_load_factor_is_the_runs_mean_over_the_profiles():
    profile = {"machine": {"probe_s": {"mean": 0.012, "samples": 40}}}
    assert load_factor(profile, 0.018) == pytest.approx(1.5)
    assert load_factor({"machine": {}}, 0.01) is None and load_factor(profile, None) is None


def test_the_sampler_samples_in_bursts_through_the_period():
    with LoadSampler(every=0.02, burst=0.005) as s:
        time.sleep(0.3)
    assert len(s.samples) >= 3 and all(x > 0 for x in s.samples)
    assert s.mean == pytest.approx(sum(s.samples) / len(s.samples))
    with LoadSampler(every=100) as quick:  # shorter than one interval: one burst at the end
        pass
    assert len(quick.samples) == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_validate_scales_the_servers_profile_by_the_load_factor(tiny_gpt2, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sfsim.cli import main

    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    means = iter([0.010, 0.025])  # while the server is profiled, then during the run
    monkeypatch.setattr(prof_mod.LoadSampler, "mean", property(lambda self: self.__dict__.setdefault("m", next(means))))
    res = CliRunner().invoke(main, ["validate", "--devices", str(FIXTURES / "runtime_tiny.yaml"), "--model", tiny_gpt2,
                                    "--method", "splitfrozen", "--split", "1", "--max-len", "24", "--train-samples",
                                    "16", "--data-dir", str(FIXTURES / "data"), "--out", str(tmp_path / "val"),
                                    "--no-host-sharing", "--load-calibration"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "val" / "report.json").read_text())
    host = rep["header"]["host"]
    assert host["load_factor"] == 2.5 and host["probe_s"] == 0.025 and host["server_slowdown"] == 1.0
    assert host["load_ratio"] == 2.5
    assert ("load: a sampled probe ran x2.500 as slow during the run as while the server was profiled; the server's "
            "profile is scaled by it") in res.output
    cached = next((tmp_path / "cache" / "profiles").glob("*.yaml"))
    assert yaml.safe_load(cached.read_text())["machine"]["probe_s"]["mean"] == 0.01
    base = load_latency_profile(str(cached))
    scaled = load_latency_profile(str(tmp_path / "val" / "server-profile-shared.yaml"))
    for a, b in zip(base.grid, scaled.grid, strict=True):
        assert b.forward_train.blocks == pytest.approx([2.5 * x for x in a.forward_train.blocks], rel=1e-9)
