"""The guard on emulation that falls behind (trainer.run.emulation, issue 21): every emulated op records how far it
ended after its emulated end; metrics.json ``emulation``; ``sfsim run``'s last line and ``--strict-emulation``;
``sfsim validate`` leaves a case that fell behind out of the median."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trainer.run import emulation
from trainer.run.emulation import Lag, merge_lanes, section, sleep_until, verdict

FIXTURES = Path(__file__).parent / "fixtures"


class FakeClock:
    """``time`` for a meter: ``perf_counter`` reads the clock, ``sleep`` moves it (exact, and instant)."""

    def __init__(self):
        self.t = 100.0
        self.slept: list[float] = []

    def perf_counter(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.slept.append(dt)
        self.t += dt


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    fake = SimpleNamespace(perf_counter=c.perf_counter, sleep=c.sleep, thread_time=lambda: 0.0)  # no CPU: the meter's server_cpu_s
    monkeypatch.setattr("trainer.run.measure.time", fake)
    monkeypatch.setattr("trainer.run.emulation.time", fake)
    return c


def test_an_emulated_forward_that_overruns_is_recorded_with_its_exact_figures(clock):
    from trainer.run.measure import Meter

    m = Meter(server_lane="server")
    a, b = torch.ones(4, 8), torch.ones(8, 16)  # 2 * 4 * 8 * 16 = 1024 FLOPs
    m.stretch["d1"] = 1024 / 0.25  # emulated: 0.25 s per matmul
    with m.compute("d1", "F", "device_forward", 0, "d1"):
        a @ b
        clock.t += 0.75  # the real compute took 0.75 s: 0.5 s past its emulated end, no sleep
    with m.compute("d1", "F", "device_forward", 1, "d1"):
        a @ b
        clock.t += 0.125  # kept up: slept the other 0.125 s
    assert clock.slept == [0.125]
    assert m.lag.lanes() == {"d1": {"ops": 2, "late": 1, "total_s": 0.5, "worst_s": 0.5}}
    with m.compute("server", "F", "server_F", 0, "d1"):
        a @ b
        clock.t += 3.0
    assert list(m.lag.lanes()) == ["d1"]  # the server's lane is not emulated: nothing recorded


def test_a_sleep_that_wakes_late_records_its_lateness_on_its_lane(clock):
    lag = Lag()
    assert sleep_until(clock.perf_counter, 101.0, lag, "link:d1") == 0.0  # slept exactly to 101 s
    assert sleep_until(clock.perf_counter, 100.25, lag, "link:d1") == 0.75  # already 0.75 s past its end
    sleep_until(clock.perf_counter, 100.0, None, "link:d1")  # no lag: nothing recorded
    assert clock.slept == [1.0]
    assert lag.lanes() == {"link:d1": {"ops": 2, "late": 1, "total_s": 0.75, "worst_s": 0.75}}


def test_a_lane_falls_behind_past_the_larger_of_the_two_tolerances():
    lanes = merge_lanes([{"d1": {"ops": 3, "late": 1, "total_s": 0.04, "worst_s": 0.03},
                          "downlink:d1": {"ops": 2, "late": 0, "total_s": 0.0, "worst_s": 0.0}},
                         {"downlink:d1": {"ops": 5, "late": 2, "total_s": 0.2, "worst_s": 0.15}}])
    assert lanes == {"d1": {"ops": 3, "late": 1, "total_s": 0.04, "worst_s": 0.03},
                     "downlink:d1": {"ops": 7, "late": 2, "total_s": 0.2, "worst_s": 0.15}}
    short = section(lanes, 2.0)  # tolerance: 0.05 s (1% of 2 s is less)
    assert (short["tolerance_s"], short["behind"], short["fell_behind"]) == (0.05, ["downlink:d1"], True)
    long = section(lanes, 30.0)  # tolerance: 1% of 30 s
    assert (long["tolerance_s"], long["behind"], long["fell_behind"]) == (0.3, [], False)
    assert verdict(long) is None and emulation.note(long) is None
    assert verdict(short) == (
        "emulation fell behind by 0.200 s on downlink:d1: 2 of 7 emulated ops ended late, the worst by 0.150 s "
        "(tolerance 0.050 s); this run was slower than the scenario it emulates: run fewer processes on this "
        "machine, give slower emulated speeds, or lower --threads")
    assert emulation.note(short) == "emulation fell behind by 0.200 s on downlink:d1: measured time not comparable"


@pytest.mark.parametrize(("lanes", "why"), [
    ({"d1": {"ops": 1, "late": 2, "total_s": 0.1, "worst_s": 0.1}}, "late <= ops"),
    ({"d1": {"ops": 1, "late": 1, "total_s": -0.1, "worst_s": 0.0}}, "finite seconds"),
    ({"d1": {"ops": 1, "late": 1, "total_s": 0.1, "worst_s": 0.5}}, "worst <= total"),
    ({"d1": {"ops": 1, "late": 1, "total_s": 0.1}}, "is not"),
    ({"d1": {"ops": True, "late": 0, "total_s": 0.1, "worst_s": 0.1}}, "counts"),
    ([], "must be a dict"),
])
def test_a_peers_report_with_bad_emulation_figures_is_refused(lanes, why):
    from trainer.transport.distributed import parse_report, report_blob

    rep = {"device": "d", "flops": 1, "uplink_bytes": 2, "phase_s": {}, "peak_rss_bytes": 3, "cpu_s": 0.5,
           "clock_offset_s": 0.0, "stretched_s": 0.0, "header_bytes": 4, "events": [], "handovers": [],
           "emulation": {"d": {"ops": 2, "late": 1, "total_s": 0.25, "worst_s": 0.25}}}
    assert parse_report(report_blob(rep), "d")["emulation"]["d"]["total_s"] == 0.25
    with pytest.raises(ValueError, match=f"report field 'emulation'.*{why}"):
        parse_report(report_blob({**rep, "emulation": lanes}), "d")


def test_the_servers_emulation_sections_merge_into_the_runs():
    from trainer.run.fleet import Fleet
    from trainer.run.merge import merge_servers

    def part(lanes: dict, span: float) -> dict:
        m = {"method": "splitfrozen", "device_flops": {}, "uplink_bytes_by_device": {}, "downlink_bytes_by_device": {},
             "samples_by_device": {}, "server_flops": {}, "phase_s": {}, "missing_reports": [], "handovers": [],
             "train_loss_history": [0.5], "eval_accuracy": 0.5, "peak_rss_bytes": 1, "notes": {},
             "emulation": section(lanes, span)}
        return {"metrics": m, "events": [], "sync": {"joint": False, "sync_rounds": 1, "backhaul_bytes": 0}}

    fl = Fleet(servers=["a", "b"], devices=[], home={})
    m = merge_servers([part({"backhaul:a": {"ops": 2, "late": 1, "total_s": 0.25, "worst_s": 0.25}}, 8.0),
                       part({"backhaul:b": {"ops": 2, "late": 0, "total_s": 0.0, "worst_s": 0.0}}, 9.0)], fl)
    assert m["emulation"]["lanes"] == {"backhaul:a": {"ops": 2, "late": 1, "total_s": 0.25, "worst_s": 0.25},
                                       "backhaul:b": {"ops": 2, "late": 0, "total_s": 0.0, "worst_s": 0.0}}
    assert (m["emulation"]["span_s"], m["emulation"]["tolerance_s"], m["emulation"]["behind"]) == (9.0, 0.09, ["backhaul:a"])
    bad = part({}, 1.0)
    bad["metrics"]["emulation"]["lanes"] = {"x": {"ops": -1}}
    from sfsim.errors import SfsimError

    with pytest.raises(SfsimError, match="malformed emulation"):
        merge_servers([part({}, 1.0), bad], fl)


def _fake_run(lanes: dict):
    def run(cfg, resume=False):
        m = {"method": cfg.method, "task": cfg.task, "eval_accuracy": 0.5, "train_loss_history": [0.7],
             "samples_by_device": {"d1": 8}, "lost_devices": {}, "emulation": section(lanes, 10.0)}
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "metrics.json").write_text(json.dumps(m))
        return m
    return run


@pytest.mark.parametrize("strict", [False, True])
def test_sfsim_run_ends_with_one_line_when_it_fell_behind_and_strict_makes_it_an_error(monkeypatch, tmp_path, strict):
    from click.testing import CliRunner

    from sfsim.cli import main

    monkeypatch.setattr("trainer.run.launch.run", _fake_run({"d1": {"ops": 4, "late": 2, "total_s": 0.75, "worst_s": 0.5}}))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--devices", str(FIXTURES / "runtime_tiny.yaml"), "--model", "gpt2", "--task",
                                    "sst2", "--method", "splitfrozen", "--partition", "iid", "--out", str(out),
                                    *(["--strict-emulation"] if strict else [])])
    lines = res.output.strip().splitlines()
    assert lines[0] == f"splitfrozen on sst2 (local): eval accuracy 0.5000 -> {out}"
    assert len(lines) == 2 and lines[1].startswith(
        f"{'error' if strict else 'warning'}: emulation fell behind by 0.750 s on d1: 2 of 4 emulated ops ended late")
    assert lines[1].endswith("(--strict-emulation; the run's outputs are kept)") == strict
    assert res.exit_code == (3 if strict else 0)
    assert json.loads((out / "metrics.json").read_text())["emulation"]["fell_behind"]  # the finished work is kept


def test_sfsim_run_says_nothing_more_when_the_emulation_kept_up(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from sfsim.cli import main

    monkeypatch.setattr("trainer.run.launch.run", _fake_run({"d1": {"ops": 4, "late": 1, "total_s": 0.09, "worst_s": 0.09}}))
    res = CliRunner().invoke(main, ["run", "--devices", str(FIXTURES / "runtime_tiny.yaml"), "--model", "gpt2", "--task",
                                    "sst2", "--method", "splitfrozen", "--partition", "iid", "--out",
                                    str(tmp_path / "run"), "--strict-emulation"])
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 1, res.output


def test_validate_leaves_a_case_that_fell_behind_out_of_the_median():
    from trainer.validate.compare import format_validation, median_error

    behind = emulation.note(section({"d1": {"ops": 4, "late": 2, "total_s": 0.75, "worst_s": 0.5}}, 10.0))
    rows = {"a": {"error": -0.01, "emulation_note": None}, "b": {"error": 0.5, "emulation_note": behind},
            "c": {"error": 0.03, "emulation_note": None}, "d": {"error": -0.02}}
    assert median_error(rows) == {"median_abs_error": 0.02, "runs": 3, "left_out": {"b": behind}}
    assert median_error({"b": rows["b"]}) == {"median_abs_error": None, "runs": 0, "left_out": {"b": behind}}
    report = {"header": {}, "total": {"predicted_s": 1.0, "measured_s": 2.0, "error": -0.5}, "stages": {},
              "emulation_note": behind}
    import trainer.validate.compare as compare

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, "format_report", lambda rep: "TABLE")
        assert format_validation(report).splitlines() == [
            "TABLE", "note: emulation fell behind by 0.750 s on d1: measured time not comparable; this case belongs "
            "in no error median"]
        assert format_validation({**report, "emulation_note": None}) == "TABLE"


def test_a_timing_comparison_fails_when_the_emulation_kept_up_and_skips_with_the_cause_when_it_fell_behind():
    from tests.emulation_guard import timed

    kept = section({"d1": {"ops": 4, "late": 1, "total_s": 0.02, "worst_s": 0.02}}, 10.0)
    behind = section({"d1": {"ops": 4, "late": 2, "total_s": 0.75, "worst_s": 0.5}}, 10.0)
    timed(True, behind, "equal")  # a comparison that holds passes, whatever the emulation did
    with pytest.raises(pytest.fail.Exception, match=r"^handovers differ; emulation kept up \(worst lane d1: 0\.020 s "
                                                    r"over 4 ops, tolerance 0\.100 s\)$"):
        timed(False, kept, "handovers differ")
    with pytest.raises(pytest.skip.Exception, match=r"^handovers differ: emulation fell behind by 0\.750 s on d1: "
                                                    r"measured time not comparable$"):
        timed(False, behind, "handovers differ")
    with pytest.raises(pytest.fail.Exception, match="nothing emulated"):
        timed(False, None, "handovers differ")


@pytest.mark.slow
def test_a_real_run_whose_device_is_starved_fails_strict_emulation_naming_it(tiny_gpt2, tmp_path):
    """A distributed run (--emulate all) whose device ``big`` gets no CPU for 0.3 s of every 0.5 s (SIGSTOP, the
    limit of a loaded machine): its forwards and sends end late, and ``--strict-emulation`` says so (exit 3),
    keeping the run's outputs."""
    import contextlib
    import os
    import signal
    import threading
    import time

    from click.testing import CliRunner

    from sfsim.cli import main

    out, done = tmp_path / "run", threading.Event()

    def starve() -> None:
        pids = out / "logs" / "pids.json"
        while not done.is_set() and not pids.is_file():
            time.sleep(0.05)
        if done.is_set():
            return
        pid = json.loads(pids.read_text())["big"]
        try:
            while not done.is_set():
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.3)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.2)
        except ProcessLookupError:
            return
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    t = threading.Thread(target=starve, daemon=True)
    t.start()
    try:
        res = CliRunner().invoke(main, ["run", "--devices", str(FIXTURES / "runtime_tiny.yaml"), "--model", tiny_gpt2,
                                        "--task", "sst2", "--method", "splitfrozen", "--partition", "iid", "--split", "1",
                                        "--max-len", "48", "--train-samples", "32", "--eval-samples", "8", "--data-dir",
                                        str(FIXTURES / "data"), "--emulate", "all", "--out", str(out),
                                        "--strict-emulation", "--quiet"])
    finally:
        done.set()
        t.join()
    em = json.loads((out / "metrics.json").read_text())["emulation"]
    assert res.exit_code == 3, res.output
    assert em["fell_behind"] and {"big", "link:big"} & set(em["behind"]), em
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: emulation fell behind by {em['lanes'][em['behind'][0]]['total_s']:.3f} s on "
                           f"{em['behind'][0]}") and line.endswith("(--strict-emulation; the run's outputs are kept)")


def test_a_warm_up_the_simulation_models_is_not_held_against_the_lane():
    """``sfsim validate --device-profile``: a device's first forward overruns by its modelled ``warmup``."""
    lanes = {"d1": {"ops": 4, "late": 1, "total_s": 0.3, "worst_s": 0.28}, "d2": {"ops": 4, "late": 1, "total_s": 0.3,
                                                                                  "worst_s": 0.28}}
    em = section(lanes, 2.0, {"d1": 0.27, "d2": 0.1, "elsewhere": 1.0})
    assert (em["modelled_s"], em["excess_s"], em["behind"]) == ({"d1": 0.27, "d2": 0.1}, {"d1": 0.03, "d2": 0.2}, ["d2"])
    assert emulation.note(em) == "emulation fell behind by 0.200 s on d2: measured time not comparable"
    assert section(lanes, 2.0, {"d1": 0.0})["behind"] == ["d1", "d2"] and "modelled_s" not in section(lanes, 2.0)
