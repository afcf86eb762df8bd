"""A server loop's own work outside its ops (issue 21): the latency profile's ``bookkeeping``, measured by ``sfsim
profile --role server`` and folded into the stage times every engine reads (a server's forward of each training
micro-batch, its optimizer step), so SimPy and the fast path charge it alike; nothing at all without it."""

from __future__ import annotations

import collections
import copy
import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.cost.latency import load_latency_profile
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError
from sfsim.scenario.overrides import load_scenario_with
from sfsim.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "profiles" / "measured-minilm.yaml"
MB, STEP = 0.125, 0.0625  # seconds, exact in binary and far above any rounding: a charged op stands out
SCHEDULES = ("splitfrozen", "splitlora", "cenlora")

#: makespans of profiles/measured-minilm.yaml at cd5a73b (engine simpy), epochs 1 and 2: a profile without
#: bookkeeping must give exactly these
OLD = {(1, "splitfrozen"): 49.201548265882415, (1, "splitlora"): 39.21937133615574, (1, "cenlora"): 73.32246258823518,
       (1, "fedlora"): 17.241938032946607}


def _scenario(tmp_path: Path, kept: dict | None, device_too: bool = False) -> Path:
    """measured-minilm.yaml in ``tmp_path`` with its server profile given ``bookkeeping`` (None: none);
    ``device_too``: the devices' profile as well (a device is never charged it)."""
    (tmp_path / "latency").mkdir(parents=True, exist_ok=True)
    for role, give in (("server", True), ("device", device_too)):
        prof = yaml.safe_load((ROOT / "profiles" / "latency" / f"minilm-l6-{role}.yaml").read_text())
        if give and kept is not None:
            prof["bookkeeping"] = kept
        (tmp_path / "latency" / f"minilm-l6-{role}.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    shutil.copy(SCENARIO, tmp_path / "scenario.yaml")
    return tmp_path / "scenario.yaml"


def _ops(res) -> dict[tuple, list[float]]:
    """(lane, op) -> the durations of its events in time order."""
    out = collections.defaultdict(list)
    for e in sorted(res.events, key=lambda e: (e.start, e.lane)):
        out[(e.lane, e.op)].append(e.dur)
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_server_micro_batch_and_step_pays_it_exactly(tmp_path, schedule):
    kept = load_scenario_with(str(_scenario(tmp_path / "k", {"micro_batch": MB, "step": STEP}, device_too=True)), [])
    base = load_scenario_with(str(_scenario(tmp_path / "b", None)), [])
    got, ref = _ops(simulate(kept, schedule, trace=True)), _ops(simulate(base, schedule, trace=True))
    assert got.keys() == ref.keys()
    for (lane, op), durs in ref.items():
        if lane == "ci-server" and op == "F":
            assert got[(lane, op)] == [d + MB for d in durs] and len(durs) == 40  # every training micro-batch
        elif lane == "ci-server" and op == "step":
            assert got[(lane, op)] == [d + STEP for d in durs] and len(durs) == 40  # every optimizer step
        elif op != "wait":  # the server's B and W, every device op (devices with the field too): unchanged
            assert got[(lane, op)] == durs, (lane, op)


def test_cenlora_all_server_work_moves_by_exactly_its_micro_batches_and_steps(tmp_path):
    """CenLoRA's run is all server work, one after another: the makespan grows by exactly n x micro_batch +
    steps x step (the epoch end's evaluation is no training micro-batch: not charged)."""
    for epochs in (1, 2):
        sets = [("training.epochs", epochs)]
        kept = load_scenario_with(str(_scenario(tmp_path / f"k{epochs}", {"micro_batch": MB, "step": STEP})), sets)
        base = load_scenario_with(str(_scenario(tmp_path / f"b{epochs}", None)), sets)
        got, ref = simulate(kept, "cenlora", engine="simpy"), simulate(base, "cenlora", engine="simpy")
        assert got.makespan_s == pytest.approx(ref.makespan_s + 40 * epochs * (MB + STEP), rel=1e-12, abs=0)


@pytest.mark.parametrize("schedule", (*SCHEDULES, "fedlora"))
def test_the_fast_path_gives_simpys_figures_with_it(tmp_path, schedule):
    sc = load_scenario_with(str(_scenario(tmp_path, {"micro_batch": MB, "step": STEP})), [("training.epochs", 2)])
    fast, ref = simulate(sc, schedule), simulate(sc, schedule, engine="simpy")
    assert fast.engine == "fast"  # no new kernel code: the engines read the same stage times
    assert fast.makespan_s == pytest.approx(ref.makespan_s, rel=1e-9, abs=0)
    assert fast.server_busy_s == pytest.approx(ref.server_busy_s, rel=1e-9, abs=0)


@pytest.mark.parametrize("schedule", (*SCHEDULES, "fedlora"))
def test_a_profile_without_it_keeps_the_old_figures(tmp_path, schedule):
    sc = load_scenario_with(str(SCENARIO), [])
    assert simulate(sc, schedule, engine="simpy").makespan_s == OLD[(1, schedule)]
    zero = load_scenario_with(str(_scenario(tmp_path, {"micro_batch": 0.0, "step": 0.0})), [])
    assert simulate(zero, schedule, engine="simpy").makespan_s == OLD[(1, schedule)]
    cm = CostModel(sc)
    assert cm._profile(sc.servers[0].latency_profile).loop_mb == 0.0


def test_fedlora_and_the_devices_are_never_charged(tmp_path):
    sc = load_scenario_with(str(_scenario(tmp_path, {"micro_batch": MB, "step": STEP}, device_too=True)), [])
    assert simulate(sc, "fedlora", engine="simpy").makespan_s == OLD[(1, "fedlora")]  # the server only averages
    cm, srv = CostModel(sc), sc.servers[0]
    dev = dataclasses.replace(sc.devices[0], latency_profile=srv.latency_profile)  # a device on the server's tables
    work = cm.full_model()
    assert cm.seconds(work, srv)[0] == cm.seconds(work, dev)[0] + MB  # the same profile tables, the server's loop
    assert cm.seconds(cm.eval_forward(), srv) == cm.seconds(cm.eval_forward(), dev)  # no training: not charged
    assert cm.optimizer_seconds(1000, srv) == cm.optimizer_seconds(1000, dev) + STEP


@pytest.mark.parametrize(("value", "problem"), [
    (-0.001, "bookkeeping.micro_batch: Input should be greater than or equal to 0 (got -0.001)"),
    (float("nan"), "bookkeeping.micro_batch: Input should be greater than or equal to 0 (got nan)"),
    ("abc", "bookkeeping.micro_batch: 'abc' is not a time; write e.g. '20 ms' or a number in seconds"),
    (float("inf"), "bookkeeping: micro_batch must be a finite time, got inf"),
])
def test_a_bad_value_is_one_line_naming_file_and_key(tmp_path, value, problem):
    path = _scenario(tmp_path, {"micro_batch": value, "step": STEP})
    prof = tmp_path / "latency" / "minilm-l6-server.yaml"
    with pytest.raises(ConfigError) as err:
        load_latency_profile(prof)
    assert str(err.value) == f"{prof}: {problem}"
    res = CliRunner().invoke(main, ["simulate", "--devices", str(path), "--schedule", "cenlora"])
    assert res.exit_code != 0 and res.output.count("\n") == 1 and f"{prof}: {problem}" in res.output, res.output


def test_a_missing_key_is_one_line(tmp_path):
    _scenario(tmp_path, {"micro_batch": MB})
    prof = tmp_path / "latency" / "minilm-l6-server.yaml"
    with pytest.raises(ConfigError) as err:
        load_latency_profile(prof)
    assert str(err.value) == f"{prof}: bookkeeping.step: required key is missing"


def test_a_server_profile_measures_it(tmp_path, tiny_profiles):
    from trainer.validate.machine import is_stale
    from trainer.validate.profile import write_profile

    server, device = copy.deepcopy(tiny_profiles)
    kept = server["bookkeeping"]
    assert set(kept) == {"micro_batch", "step"} and kept["micro_batch"] > 0 and kept["step"] > 0
    assert kept["micro_batch"] < 0.05 and kept["step"] < 0.05  # bookkeeping, not a micro-batch's compute
    assert "bookkeeping" not in device
    write_profile(server, tmp_path / "s.yaml")
    assert load_latency_profile(tmp_path / "s.yaml").bookkeeping.micro_batch == kept["micro_batch"]
    assert is_stale(tmp_path / "s.yaml", 3600) is None
    del server["bookkeeping"]
    write_profile(server, tmp_path / "old.yaml")  # a machine profile cached before it: measured again
    assert is_stale(tmp_path / "old.yaml", 3600) == ("the cached one has no server loop bookkeeping (bookkeeping, "
                                                     "sfsim.cost.latency.Bookkeeping)")
