"""Planner objectives: time ties go to less device compute; least device energy under a deadline.

Exact against exhaustive simulation on tiny fleets: every cut vector at the planner's LoRA start
(a higher LoRA start never slows a plan and leaves device costs unchanged) is simulated, and its
makespan, device FLOPs and device joules (:func:`sfsim.cost.energy.run_energy`) are what the planner
must match.
"""

from __future__ import annotations

import itertools

import pytest
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.errors import ConfigError, InfeasibleError
from sfsim.planner import plan
from sfsim.scenario.planfile import Plan
from sfsim.units import format_quantity
from tests.test_planner import _dev, _scenario, _write

PI = {"compute": "5 W", "idle": "1 W", "transmit": "2 W", "receive": "0.5 W"}
NANO = {"compute": "2 W", "idle": "0.5 W", "energy_per_bit": "50 nJ/bit"}


def _powered(name, count, flops, bw, samples, power):
    d = _dev(name, count, flops, 1000, bw, samples)
    d["power"] = dict(power)
    return d


def _server_bound():
    """Two device types on a slow server: cutting lower saves device energy but slows the run."""
    return _scenario([_powered("a", 2, "3 GFLOPS", "20 Mbps", 5, PI), _powered("b", 1, "1 GFLOPS", "20 Mbps", 5, NANO)],
                     [{"name": "gpu", "flops": "2 GFLOPS", "memory": "1 GiB"}])


def _link_bound():
    """Slow uplinks, a fast server: many cut vectors tie on time, device compute differs."""
    return _scenario([_powered("a", 2, "3 GFLOPS", "0.5 Mbps", 4, PI), _powered("b", 1, "2 GFLOPS", "0.8 Mbps", 4, NANO)],
                     [{"name": "gpu", "flops": "50 GFLOPS", "memory": "1 GiB"}])


def _every_plan(sc):
    """``(makespan, device joules, device FLOPs)`` of every cut vector (one server, LoRA on the last block)."""
    L = sc.arch.n_layers
    out = []
    for ka in itertools.combinations_with_replacement(range(1, L), 2):  # the two a devices are interchangeable
        for kb in range(1, L):
            splits = {"a-0": ka[0], "a-1": ka[1], "b": kb}
            r = sfsim.simulate(sc, plan=Plan(splits=splits, lora_start=L - 1,
                                             assignment=dict.fromkeys(splits, "gpu")))
            out.append((r.makespan_s, r.energy["device_total_j"], r.device_flops_total))
    return out


@pytest.fixture(scope="module")
def server_bound():
    sc = _server_bound()
    return sc, _every_plan(sc)


@pytest.mark.parametrize("where", [0.05, 0.5])
def test_energy_plan_is_the_exhaustive_minimum_under_the_deadline(server_bound, where):
    sc, rows = server_bound
    fastest = min(r[0] for r in rows)
    frugal = min(rows, key=lambda r: r[1])
    assert frugal[0] > fastest * 2  # the least-energy plan overall is far slower than the fastest
    deadline = fastest + where * (frugal[0] - fastest)  # binding: the overall least-energy plan misses it
    best = min(r[1] for r in rows if r[0] <= deadline)
    res = plan(sc, objective="energy", deadline=deadline)
    assert res.device_j == pytest.approx(best, rel=1e-12)
    assert res.makespan_s <= deadline
    assert best > frugal[1]
    replay = sfsim.simulate(sc, plan=res.to_plan())  # the figures are the simulator's
    assert replay.makespan_s == res.makespan_s and replay.energy["device_total_j"] == res.device_j
    assert res.fastest.makespan_s == pytest.approx(fastest, rel=1e-12)


def test_time_ties_go_to_the_least_device_compute():
    sc = _link_bound()
    rows = _every_plan(sc)
    res = plan(sc)
    fastest = min(r[0] for r in rows)
    assert res.fastest.makespan_s == pytest.approx(fastest, rel=1e-12)
    ties = [r for r in rows if r[0] <= res.fastest.makespan_s * 1.005]
    assert len(ties) >= 10  # the link sets the pace: many cut vectors tie
    assert res.device_flop == min(r[2] for r in ties)
    assert res.device_flop < res.fastest.device_flop
    assert res.makespan_s <= res.fastest.makespan_s * 1.005
    line = next(x for x in res.table().splitlines() if x.startswith("time ties"))
    assert line.startswith(f"time ties (plans within 0.5% of the fastest, {format_quantity(res.fastest.makespan_s, 'time')})"
                           " go to less device compute: ")
    strict = plan(sc, tie_tolerance=0)  # no tolerance: the fastest plan, whatever it computes
    assert (strict.makespan_s, strict.device_flop) == (res.fastest.makespan_s, res.fastest.device_flop)


def test_edge_profile_ties_move_blocks_off_the_devices():
    """profiles/edge.yaml is bandwidth-bound: the tie rule cuts device compute (figures not pinned:
    another engineer tunes that file)."""
    res = plan(sfsim.load_scenario("profiles/edge.yaml"))
    assert res.device_flop <= res.fastest.device_flop
    assert res.makespan_s <= res.fastest.makespan_s * 1.005


def test_infeasible_deadline_says_by_how_much(server_bound):
    sc, _ = server_bound
    fast = plan(sc, tie_tolerance=0)
    deadline = fast.makespan_s * 0.5
    with pytest.raises(InfeasibleError) as err:
        plan(sc, objective="energy", deadline=deadline)
    t = lambda x: format_quantity(x, "time")  # noqa: E731
    lb = fast.lower_bound_s
    bound = (f"no plan can finish in under {t(lb)}" if deadline < lb else
             f"the proven lower bound is {t(lb)}, but no plan found beats {t(fast.makespan_s)}")
    assert str(err.value) == (
        f"--deadline {t(deadline)} is shorter than the fastest plan found, {t(fast.makespan_s)} (short by "
        f"{t(fast.makespan_s - deadline)}, 100.0%; {bound}); raise --deadline to at least {t(fast.makespan_s)}")


@pytest.mark.parametrize("kwargs,message", [
    (dict(objective="energy"), "--deadline: --objective energy needs a deadline, the most time the plan may "
                               "take (e.g. --deadline 10min); sfsim plan without --objective shows the fastest"),
    (dict(deadline=10.0), "--deadline: goes with --objective energy (the time objective takes the fastest plan); "
                          "add --objective energy or drop --deadline"),
    (dict(objective="energy", deadline=-1.0), "--deadline: must be > 0, got -1.0"),
    (dict(tie_tolerance=-0.1), "--tie-tolerance: must be >= 0 (a fraction of the fastest time), got -0.1"),
    (dict(objective="money"), "--objective: unknown objective 'money'; choose: time, energy"),
])
def test_objective_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        plan(_server_bound(), **kwargs)
    assert str(err.value) == message


def test_energy_needs_power_on_every_device():
    sc = _scenario([_powered("a", 1, "3 GFLOPS", "20 Mbps", 5, PI), _dev("bare", 1, "1 GFLOPS", 1000, "20 Mbps"),
                    _dev("plain", 1, "1 GFLOPS", 1000, "20 Mbps")],
                   [{"name": "gpu", "flops": "2 GFLOPS", "memory": "1 GiB"}])
    with pytest.raises(ConfigError, match=r"devices: --objective energy needs power figures on every device; "
                                          r"bare, plain have none: add e.g. power: \{compute: 6 W"):
        plan(sc, objective="energy", deadline=100.0)


def _cli_data():
    return {"model": {"name": "gpt2", "seq_len": 16, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 1, "accumulate": 2, "buffer": 2},
            "devices": [_powered("a", 1, "3 GFLOPS", "20 Mbps", 3, PI)],
            "servers": [{"name": "gpu", "flops": "2 GFLOPS", "memory": "1 GiB"}]}


@pytest.mark.parametrize("args,message", [
    (["--objective", "energy"], "error: --deadline: --objective energy needs a deadline"),
    (["--objective", "energy", "--deadline", "5x"],
     "error: --deadline: '5x' is not a time; write e.g. '20 ms' or a number in seconds"),
    (["--objective", "energy", "--deadline", "1 ms"], "error: --deadline 1 ms is shorter than the fastest plan found"),
])
def test_cli_objective_errors_are_one_line(tmp_path, args, message):
    r = CliRunner().invoke(main, ["plan", "--devices", _write(tmp_path, _cli_data()), *args])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(message) and len(r.output.strip().splitlines()) == 1, r.output


def test_cli_energy_objective_prints_what_it_traded(tmp_path):
    r = CliRunner().invoke(main, ["plan", "--devices", _write(tmp_path, _cli_data()), "--objective", "energy",
                                  "--deadline", "10min"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("objective: least device energy within --deadline 10 min: "))
    assert lines[head + 1].startswith("  vs the fastest plan found, ties unbroken (")
    assert "less device energy for +" in lines[head + 1]
