"""A server's first-forward warm-up (issue 21): the latency profile's ``first_step`` measured by ``sfsim profile
--role server``, added once per server worker of a run by SplitFrozen, SplitLoRA and CenLoRA on the SimPy engine
(the fast path sends such a run there, with its note), and nothing at all without it."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.cost.latency import load_latency_profile
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError, SfsimError
from sfsim.scenario.overrides import load_scenario_with
from sfsim.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "profiles" / "measured-minilm.yaml"
WARM = 0.25  # seconds: far above any rounding, so an op that pays it stands out
SCHEDULES = ("splitfrozen", "splitlora", "cenlora")

#: makespans of profiles/measured-minilm.yaml at 8c231f8 (before the warm-up; engine simpy), epochs 1 and 2:
#: a server profile without first_step must give exactly these; SplitFrozen's 2 epochs since session 12 (epoch21,
#: 97.89608097176475 before): one server opens epoch 2 after epoch 1 is trained out and its ``start`` is down
OLD = {(1, "splitfrozen"): 49.201548265882415, (1, "splitlora"): 39.21937133615574, (1, "cenlora"): 73.32246258823518,
       (2, "splitfrozen"): 98.40809653176474, (2, "splitlora"): 78.4337426723112, (2, "cenlora"): 146.64492517647008}


def _warm_scenario(tmp_path: Path, first_step: dict | None) -> Path:
    """measured-minilm.yaml in ``tmp_path`` with its server profile given ``first_step`` (None: none)."""
    (tmp_path / "latency").mkdir(parents=True, exist_ok=True)
    prof = yaml.safe_load((ROOT / "profiles" / "latency" / "minilm-l6-server.yaml").read_text())
    if first_step is not None:
        prof["first_step"] = first_step
    (tmp_path / "latency" / "minilm-l6-server.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    shutil.copy(ROOT / "profiles" / "latency" / "minilm-l6-device.yaml", tmp_path / "latency")
    shutil.copy(SCENARIO, tmp_path / "scenario.yaml")
    return tmp_path / "scenario.yaml"


def _step(extra) -> dict:
    return {"micro_batch": 16, "seq_len": 128, "cold_s": 0.5, "steady_s": 0.25, "extra_s": extra}


def _server_forwards(res) -> list[tuple[str, int, float, float]]:
    """(device, micro-batch, start, seconds) of every F on the server's lane, in time order."""
    return sorted(((e.device, e.mb, e.start, e.dur) for e in res.events if e.lane == "ci-server" and e.op == "F"),
                  key=lambda x: x[2])


@pytest.mark.parametrize("epochs", [1, 2])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_warm_up_is_paid_once_per_server_on_its_first_forward(tmp_path, schedule, epochs):
    sets = [("training.epochs", epochs)]
    warm = load_scenario_with(str(_warm_scenario(tmp_path / "w", _step(WARM))), sets)
    base = load_scenario_with(str(_warm_scenario(tmp_path / "b", None)), sets)
    assert CostModel(warm).server_warmup(warm.servers[0]) == WARM and CostModel(base).server_warmup(base.servers[0]) == 0
    got, ref = simulate(warm, schedule, trace=True), simulate(base, schedule, trace=True)
    f_got, f_ref = _server_forwards(got), _server_forwards(ref)
    assert len(f_got) == len(f_ref) > 2 * epochs
    dur_ref = {(d, mb): s for d, mb, _, s in f_ref}
    paid = [(d, mb, s) for d, mb, _, s in f_got if s != dur_ref[(d, mb)]]
    assert len(paid) == 1  # once in the run, not again each epoch
    d, mb, s = paid[0]
    assert s == dur_ref[(d, mb)] + WARM  # exactly the profile's extra_s, on top of the steady forward
    assert (d, mb) == f_got[0][:2]  # on the server's first forward
    assert got.makespan_s > ref.makespan_s
    assert ref.makespan_s == OLD[(epochs, schedule)]
    untraced = simulate(warm, schedule, engine="simpy")  # SplitFrozen's hot path (no trace) holds its first forward
    assert untraced.makespan_s == got.makespan_s and untraced.server_busy_s == got.server_busy_s


@pytest.mark.parametrize("epochs", [1, 2])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_profile_without_first_step_keeps_the_old_figures(schedule, epochs):
    sc = load_scenario_with(str(SCENARIO), [("training.epochs", epochs)])
    assert CostModel(sc).server_warmup(sc.servers[0]) == 0.0
    assert simulate(sc, schedule, engine="simpy").makespan_s == OLD[(epochs, schedule)]


def test_every_worker_of_a_server_warms_up_once(tmp_path):
    """A server of two accelerators: each worker lane's first forward pays it (CenLoRA, two epochs)."""
    sc = load_scenario_with(str(_warm_scenario(tmp_path, _step(WARM))), [("training.epochs", 2),
                                                                          ("servers[0].count", 2)])
    base = load_scenario_with(str(_warm_scenario(tmp_path / "b", None)), [("training.epochs", 2),
                                                                           ("servers[0].count", 2)])
    got, ref = simulate(sc, "cenlora", trace=True), simulate(base, "cenlora", trace=True)
    steady = {(e.device, e.mb): e.dur for e in ref.events if e.op == "F"}
    for lane in ("ci-server/0", "ci-server/1"):
        mine = sorted((e for e in got.events if e.lane == lane and e.op == "F"), key=lambda e: e.start)
        assert len(mine) > 2
        assert mine[0].dur == steady[(mine[0].device, mine[0].mb)] + WARM
        assert all(e.dur == steady[(e.device, e.mb)] for e in mine[1:])


def test_the_fast_path_sends_a_warm_server_to_simpy(tmp_path):
    sc = load_scenario_with(str(_warm_scenario(tmp_path, _step(WARM))), [])
    plain = load_scenario_with(str(SCENARIO), [])
    for schedule in SCHEDULES:
        res = simulate(sc, schedule)
        assert res.engine == "simpy" and res.engine_note == (
            "server ci-server's first-forward warm-up (its latency profile's first_step) is replayed by the SimPy "
            "engine only")
        assert res.makespan_s == simulate(sc, schedule, engine="simpy").makespan_s
        assert simulate(plain, schedule).engine == "fast"  # without a warm-up the fast path still replays it
        with pytest.raises(SfsimError, match=r"^engine fast: server ci-server's first-forward warm-up"):
            simulate(sc, schedule, engine="fast")
    assert simulate(sc, "fedlora").engine == "fast"  # FedLoRA's server only averages: nothing to warm up


@pytest.mark.parametrize(("value", "problem"), [
    (-0.001, "first_step.extra_s: Input should be greater than or equal to 0 (got -0.001)"),
    (float("nan"), "first_step.extra_s: Input should be greater than or equal to 0 (got nan)"),
    ("abc", "first_step.extra_s: 'abc' is not a time; write e.g. '20 ms' or a number in seconds"),
    (float("inf"), "first_step: extra_s must be a finite time, got inf"),
])
def test_a_bad_first_step_is_one_line_naming_file_and_key(tmp_path, value, problem):
    path = _warm_scenario(tmp_path, _step(value))
    prof = tmp_path / "latency" / "minilm-l6-server.yaml"
    with pytest.raises(ConfigError) as err:
        load_latency_profile(prof)
    assert str(err.value) == f"{prof}: {problem}"
    res = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--schedule", "cenlora"])
    assert res.exit_code != 0 and res.output.count("\n") == 1 and f"{prof}: {problem}" in res.output, res.output


def test_simulate_says_when_a_server_profile_has_no_warm_up(tmp_path):
    note = ("note: server ci-server: the latency profile has no first_step, so the server's first micro-batch "
            "warm-up is simulated as 0 s; sfsim profile --role server measures it")
    out = CliRunner().invoke(main, ["simulate", "--devices", str(SCENARIO), "--schedule", "cenlora"])
    assert out.exit_code == 0 and note in out.output.splitlines(), out.output
    fed = CliRunner().invoke(main, ["simulate", "--devices", str(SCENARIO), "--schedule", "fedlora"])
    assert fed.exit_code == 0 and "first_step" not in fed.output  # FedLoRA's server does not train
    warm = CliRunner().invoke(main, ["simulate", "--devices", str(_warm_scenario(tmp_path, _step(WARM))),
                                     "--schedule", "cenlora"])
    assert warm.exit_code == 0 and "first_step" not in warm.output.replace("first_step)", ""), warm.output


def test_a_server_profile_measures_its_first_step(tmp_path, tiny_profiles):
    from trainer.validate.machine import is_stale
    from trainer.validate.profile import write_profile

    server, device = copy.deepcopy(tiny_profiles)
    step = server["first_step"]
    assert (step["micro_batch"], step["seq_len"]) == (4, 16)  # the grid's largest shape
    assert step["cold_s"] > 0 and step["steady_s"] > 0
    assert step["extra_s"] == round(max(0.0, step["cold_s"] - step["steady_s"]), 6)
    assert "first_step" not in device and "first_call" in device
    write_profile(server, tmp_path / "s.yaml")
    assert load_latency_profile(tmp_path / "s.yaml").first_step.extra_s == step["extra_s"]
    assert is_stale(tmp_path / "s.yaml", 3600) is None
    del server["first_step"]
    write_profile(server, tmp_path / "old.yaml")  # a machine profile cached before the warm-up: measured again
    assert is_stale(tmp_path / "old.yaml", 3600) == ("the cached one has no server warm-up (first_step, "
                                                     "sfsim.cost.model.server_warmup)")
