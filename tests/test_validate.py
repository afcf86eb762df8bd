"""``sfsim validate`` tells the truth: its own server profile, refused or flagged emulation, count: 1 types,
CPU sharing of co-located processes and the rank agreement of a table."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from sfsim.cost.hostshare import runnable_shares, scale_profile, slowdown
from sfsim.errors import SfsimError

FIXTURES = Path(__file__).parent / "fixtures"


def _fleet(tmp_path, fast_flops: str) -> str:
    """runtime_tiny's fleet with a ``count: 1`` type ``fast`` at ``fast_flops`` and two ``slow`` devices."""
    data = yaml.safe_load((FIXTURES / "runtime_tiny.yaml").read_text())
    link = {"bandwidth": "2 Mbps", "latency": "5 ms"}
    data["devices"] = [
        {"name": "fast", "count": 1, "flops": fast_flops, "memory": "4 GiB", "samples": 8, "uplink": link,
         "downlink": link},
        {"name": "slow", "count": 2, "flops": "40 MFLOPS", "memory": "4 GiB", "samples": 8, "uplink": link,
         "downlink": link}]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _validate(tmp_path, tiny_gpt2, fleet, *extra):
    from click.testing import CliRunner

    from sfsim.cli import main

    return CliRunner().invoke(main, ["validate", "--devices", fleet, "--model", tiny_gpt2, "--method", "splitfrozen",
                                     "--split", "1", "--max-len", "24", "--train-samples", "16", "--data-dir",
                                     str(FIXTURES / "data"), "--out", str(tmp_path / "val"), *extra])


def test_a_device_faster_than_this_machine_is_refused_before_the_run(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    res = _validate(tmp_path, tiny_gpt2, _fleet(tmp_path, "1 PFLOPS"))
    assert res.exit_code == 2, res.output
    err = res.output.strip().splitlines()[-1]
    assert "fleet.yaml: devices[fast]: 1 PFLOPS is faster than this machine runs it (at most " in err
    assert err.endswith("or pass --allow-native to run it at native speed (flagged in the report)")
    assert "server profile: measuring this machine's server role (none cached" in res.output
    assert not (tmp_path / "val" / "run").exists()  # refused before anything ran
    cached = list((tmp_path / "cache" / "profiles").glob("*.yaml"))
    assert len(cached) == 1 and yaml.safe_load(cached[0].read_text())["role"] == "server"


def test_count_one_type_and_native_device_flagged(tiny_gpt2, tmp_path, monkeypatch):
    """A ``count: 1`` type is named ``fast`` in both halves; run at native speed it is flagged in the header."""
    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    res = _validate(tmp_path, tiny_gpt2, _fleet(tmp_path, "1 PFLOPS"), "--allow-native")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "val" / "report.json").read_text())
    h = rep["header"]
    assert rep["devices"] == ["fast", "slow-0", "slow-1"]
    assert h["devices_emulated"] == ["slow-0", "slow-1"]
    assert [d["name"] for d in h["devices_native"]] == ["fast"] and h["devices_native"][0]["scenario_flops"] == 1e15
    assert 0 < h["devices_native"][0]["achievable_flops"] < 1e15
    assert h["server"].startswith("native speed of this machine; profile: this machine's, measured now (")
    assert h["host"]["processes"] == 4 and h["host"]["server_slowdown"] >= 1.0
    assert set(h["host"]["device_cpu_shares"]) == {"fast", "slow-0", "slow-1"}
    assert "device at NATIVE speed: fast (scenario 1 PFLOPS, this machine reaches only" in res.output
    assert "server profile: measured in" in res.output
    assert rep["total"]["measured_s"] > 0 and rep["total"]["predicted_s"] > 0


def test_cached_profile_is_reused_until_stale(tmp_path, monkeypatch):
    from trainer.validate import machine

    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path))
    path = tmp_path / "p.yaml"
    assert machine.is_stale(path) == "none cached"
    path.write_text(yaml.safe_dump({"machine": machine.fingerprint(), "grid": [{"micro_batch": 8}]}))
    assert machine.is_stale(path) == "the cached one has no epoch-end save time (sfsim.cost.epochend)"
    path.write_text(yaml.safe_dump({"machine": machine.fingerprint(), "grid": [{"micro_batch": 8}], "save": "9 ms"}))
    assert machine.is_stale(path) == "the cached one has no server warm-up (first_step, sfsim.cost.model.server_warmup)"
    path.write_text(yaml.safe_dump({"machine": machine.fingerprint(), "grid": [{"micro_batch": 8}], "save": "9 ms",
                                    "first_step": {"micro_batch": 8, "seq_len": 16, "cold_s": 0.03, "steady_s": 0.02,
                                                   "extra_s": 0.01}}))
    assert machine.is_stale(path) == ("the cached one has no server loop bookkeeping (bookkeeping, "
                                      "sfsim.cost.latency.Bookkeeping)")
    path.write_text(yaml.safe_dump({"machine": machine.fingerprint(), "grid": [{"micro_batch": 8}], "save": "9 ms",
                                    "first_step": {"micro_batch": 8, "seq_len": 16, "cold_s": 0.03, "steady_s": 0.02,
                                                   "extra_s": 0.01},
                                    "bookkeeping": {"micro_batch": 0.0001, "step": 0.0001}}))
    assert machine.is_stale(path) is None
    old = time.time() - 7 * 3600
    os.utime(path, (old, old))
    assert machine.is_stale(path) == "the cached one is 7.0 h old (> 6 h)"
    path.write_text(yaml.safe_dump({"machine": {**machine.fingerprint(), "cores": 999}, "grid": [{}]}))
    assert machine.is_stale(path) == "the cached one was measured on another machine or library version"
    path.write_text("grid: [unclosed\n")  # a damaged cache was a traceback: it is measured again
    assert machine.is_stale(path) == "the cached one is unreadable (ParserError)"
    path.write_text(yaml.safe_dump({"machine": machine.fingerprint()}))
    assert machine.is_stale(path) == "the cached one is not a latency profile"
    assert machine.seq_grid(64) == [16, 32, 64] and machine.seq_grid(8) == [4, 8]


def test_slowdown_closed_forms():
    assert slowdown(2, []) == 1.0
    assert slowdown(2, [(1.0, 1)]) == 1.0  # two processes, two cores
    assert slowdown(2, [(1.0, 1)] * 4) == 2.5  # five always-runnable on two cores
    # four others each runnable half the time: N ~ Binomial(4, 1/2); E[max(1, (1 + N) / 2)]
    want = sum(c / 16 * max(1.0, (1 + n) / 2) for n, c in enumerate([1, 4, 6, 4, 1]))
    assert slowdown(2, [(0.5, 1)] * 4) == pytest.approx(want, rel=1e-12) and want == 1.53125
    assert slowdown(1, [(0.25, 2)], own_threads=2) == pytest.approx(0.75 * 2 + 0.25 * 4)
    with pytest.raises(ValueError, match="runnable share must be in 0..1"):
        slowdown(2, [(1.5, 1)])
    assert runnable_shares({"a": 1.0, "b": 9.0}, 4.0) == {"a": 0.25, "b": 1.0}


def test_scale_profile_stretches_every_time():
    prof = {"model": "m", "grid": [{"micro_batch": 4, "seq_len": 8, "forward": {"embed": "1 ms", "blocks": ["2 ms", 0.5]},
                                    "step": {"block": "4 ms"}, "iqr": {"forward": {"blocks": ["1 ms"]}},
                                    "peak_memory": "1 MiB"}]}
    out = scale_profile(prof, 1.5)["grid"][0]
    assert out["forward"] == {"embed": pytest.approx(0.0015), "blocks": [pytest.approx(0.003), 0.75]}
    assert out["step"] == {"block": pytest.approx(0.006)} and out["iqr"]["forward"]["blocks"] == [pytest.approx(0.0015)]
    assert out["peak_memory"] == "1 MiB" and prof["grid"][0]["forward"]["embed"] == "1 ms"  # the original is kept


def test_rank_agreement_is_kendall_tau():
    from trainer.validate.compare import rank_agreement

    rows = {k: {"total": {"predicted_s": p, "measured_s": m}} for k, p, m in
            [("a", 1, 1.1), ("b", 2, 2.5), ("c", 3, 2.4), ("d", 4, 4.0)]}
    assert rank_agreement(rows) == {"tau": 0.666667, "p_value": 0.333333, "n": 4}
    assert rank_agreement({"a": rows["a"]})["tau"] is None


def test_refusal_names_the_first_device_and_counts_the_rest():
    from trainer.validate.machine import NativeDevice, refusal

    err = refusal([NativeDevice("a", 4e9, 1.5e9), NativeDevice("b", 4e9, 1e9)], "s.yaml")
    assert isinstance(err, SfsimError)
    assert str(err).startswith("s.yaml: devices[a] (and 1 more): 4 GFLOPS is faster than this machine runs it "
                               "(at most 1.5 GFLOPS)")
