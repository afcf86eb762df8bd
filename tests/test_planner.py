"""Planner tests: optimal against exhaustive simulation, consistent with the simulator, bad input."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError, InfeasibleError
from sfsim.planner import expand, plan, search
from sfsim.planner.fluid import Group, estimate, makespan_below
from sfsim.planner.model import build_table, gib
from sfsim.planner.refine import wide_neighbours
from sfsim.planner.search import (
    assign,
    best_cuts,
    candidates,
    lower_bound,
    rank_uniform_cuts,
    rounded_load,
    thresholds,
)
from sfsim.scenario.planfile import Plan, load_plan

MiB = 2**20


def _dev(name, count, flops, memory_mib, bw, samples=4, server=None, latency="10 ms"):
    d = {"name": name, "count": count, "flops": flops, "memory": memory_mib * MiB, "samples": samples,
         "uplink": {"bandwidth": bw, "latency": latency}, "downlink": {"bandwidth": "10 Mbps"}}
    if server:
        d["server"] = server
    return d


def _scenario(devices, servers, **training):
    """GPT-2 (12 blocks) on 16 tokens, one sample per micro-batch: each simulate call is cheap.

    Device memory: 150.7 MiB + 27.0 MiB per block (a 205 MiB device holds at most 2 blocks).
    """
    tr = {"micro_batch": 1, "accumulate": 2, "buffer": 2}
    tr.update(training)
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 16, "task": "classification", "num_labels": 2},
        "training": tr, "servers": servers, "devices": devices})


ONE_SERVER = dict(
    devices=[_dev("slow", 2, "1 GFLOPS", 260, "4 Mbps"),        # cuts 1..3
             _dev("fast", 1, "4 GFLOPS", 320, "2 Mbps", 6),     # cuts 1..6
             _dev("thin", 1, "2 GFLOPS", 340, "1 Mbps", 3)],    # cuts 1..7; slow link
    servers=[{"name": "gpu", "flops": "6 GFLOPS", "memory": "1 GiB"}])

TWO_SERVERS = dict(
    devices=[_dev("slow", 2, "1 GFLOPS", 235, "4 Mbps"),                 # cuts 1..3
             _dev("fast", 1, "3 GFLOPS", 290, "8 Mbps", 6),              # cuts 1..5
             _dev("pinned", 1, "2 GFLOPS", 290, "3 Mbps", 3, server="big")],  # cuts 1..5
    servers=[{"name": "small", "flops": "3 GFLOPS", "memory": 250 * MiB},  # needs every cut >= 3
             {"name": "big", "flops": "4 GFLOPS", "memory": "1 GiB", "count": 2}])

SERVER_BOUND = dict(
    devices=[_dev("a", 2, "3 GFLOPS", 340, "20 Mbps", 5), _dev("b", 1, "1 GFLOPS", 1000, "20 Mbps", 5)],
    servers=[{"name": "gpu", "flops": "2 GFLOPS", "memory": "1 GiB"}])


def _feasible(sc, cm, splits, lora_start, assignment, min_dev, min_lora):
    """Every constraint, checked device by device (independently of the planner's table)."""
    L = sc.arch.n_layers
    if L - lora_start < min_lora or any(k < min_dev or k > lora_start for k in splits.values()):
        return False
    if any(cm.device_memory(splits[d.name]) > d.memory for d in sc.devices):
        return False
    for srv in sc.servers:
        cuts = [splits[d] for d, s in assignment.items() if s == srv.name]
        if cuts and cm.server_memory(min(cuts), lora_start, sc.training.buffer + srv.count) > srv.memory:
            return False
    return True


def _exhaustive(sc, min_dev=1, min_lora=1, schedule="splitfrozen", top_lora_only=False):
    """The best simulated makespan over every feasible cut vector, LoRA start and assignment.

    Devices of one type are identical, so each type's devices take a multiset of (cut, server)
    choices (swapping two identical devices' choices only renames them).
    """
    cm = CostModel(sc)
    L = sc.arch.n_layers
    by_type = {}
    for d in sc.devices:
        by_type.setdefault(d.type, []).append(d)
    per_type = []
    for devs in by_type.values():
        d = devs[0]
        servers = [d.server] if d.server_pinned else [s.name for s in sc.servers]
        opts = [(k, s) for k in range(min_dev, L) for s in servers if cm.device_memory(k) <= d.memory]
        per_type.append([list(zip([x.name for x in devs], combo, strict=True))
                         for combo in itertools.combinations_with_replacement(opts, len(devs))])
    best, count = np.inf, 0
    for parts in itertools.product(*per_type):
        pairs = [p for part in parts for p in part]
        splits = {name: k for name, (k, _) in pairs}
        assignment = {name: s for name, (_, s) in pairs}
        for ls in ([L - min_lora] if top_lora_only else range(max(splits.values()), L)):
            if not _feasible(sc, cm, splits, ls, assignment, min_dev, min_lora):
                continue
            p = Plan(splits=splits, lora_start=ls, assignment=assignment)
            best = min(best, sfsim.simulate(sc, schedule=schedule, plan=p).makespan_s)
            count += 1
    return best, count


@pytest.mark.parametrize("case,min_dev,min_lora,schedule", [
    (ONE_SERVER, 1, 1, "splitfrozen"),
    (ONE_SERVER, 2, 5, "splitfrozen"),
    (TWO_SERVERS, 1, 1, "splitfrozen"),
    (SERVER_BOUND, 1, 1, "splitfrozen"),
    (ONE_SERVER, 1, 4, "splitfrozen-sequential"),
])
def test_plan_is_within_one_percent_of_exhaustive_search(case, min_dev, min_lora, schedule):
    sc = _scenario(**copy.deepcopy(case))
    res = plan(sc, schedule=schedule, min_device_layers=min_dev, min_lora_layers=min_lora)
    best, count = _exhaustive(sc, min_dev, min_lora, schedule)
    assert count > 50  # the search space is not trivial
    assert res.makespan_s <= best * 1.01, (res.makespan_s, best)
    assert res.lower_bound_s <= best * (1 + 1e-9)
    cm = CostModel(sc)
    assert _feasible(sc, cm, res.splits, res.lora_start, res.assignment, min_dev, min_lora)


def _random_fleet(seed: int, max_sims: int = 20_000) -> sfsim.Scenario:
    """A random small fleet whose exhaustive search needs at most about ``max_sims`` simulations.

    1-4 devices in 1-4 types (random FLOP/s, uplink, latency, 2-6 micro-batches, memory for 2-6
    blocks, sometimes pinned), GPT-2 or MiniLM-L6 on 16 tokens, 1-2 servers of 1-2 workers,
    buffer 1-8, accumulate 1-4; drawn again until the search space is small enough.
    """
    rng = random.Random(seed)
    while True:
        model, n_srv, left, counts = rng.choice(["gpt2", "minilm-l6"]), rng.choice([1, 2]), rng.randint(1, 4), []
        while left:
            counts.append(rng.randint(1, left))
            left -= counts[-1]
        servers = [{"name": f"s{j}", "flops": f"{rng.uniform(2, 12):.2f} GFLOPS", "memory": "2 GiB",
                    "count": rng.choice([1, 1, 2])} for j in range(n_srv)]
        devices = [_dev(f"d{i}", c, f"{rng.uniform(0.5, 6):.2f} GFLOPS", 8192, f"{rng.uniform(0.5, 20):.2f} Mbps",
                        rng.randint(2, 6), rng.choice(["s0", "s1"]) if n_srv == 2 and rng.random() < 0.3 else None,
                        f"{rng.uniform(1, 50):.1f} ms") for i, c in enumerate(counts)]
        training = {"micro_batch": 1, "accumulate": rng.choice([1, 2, 4]), "buffer": rng.randint(1, 8)}
        data = {"model": {"name": model, "seq_len": 16, "task": "classification", "num_labels": 2},
                "training": training, "servers": servers, "devices": devices}
        sc = sfsim.scenario_from_dict(copy.deepcopy(data))
        cm, L = CostModel(sc), sc.arch.n_layers
        blocks = [min(rng.randint(2, 6), L - 1) for _ in devices]
        for d, k in zip(devices, blocks, strict=True):
            d["memory"] = int(cm.device_memory(k)) + 1  # holds exactly k blocks
        # (cut, server) choices per device, devices of one type being interchangeable; times LoRA starts
        plans = math.prod(math.comb(k * (1 if "server" in d else n_srv) + d["count"] - 1, d["count"])
                          for d, k in zip(devices, blocks, strict=True))
        if plans * (L - 1) <= max_sims:
            return sfsim.scenario_from_dict(data)


def _mid_fleet(seed: int, max_plans: int = 3000) -> sfsim.Scenario:
    """A random mid-sized fleet: 5-8 GPT-2 devices of 3-4 types (each holding 2-4 blocks) on 2 servers
    of 1-2 workers, buffer 1-8, accumulate 1-4, 2-6 micro-batches per device; at most ``max_plans``
    (cut, server) plans up to renaming identical devices."""
    rng = random.Random(seed)
    while True:
        n_types = rng.randint(3, 4)
        counts = [1] * n_types
        for _ in range(rng.randint(max(n_types, 5), 8) - n_types):
            counts[rng.randrange(n_types)] += 1
        servers = [{"name": f"s{j}", "flops": f"{rng.uniform(2, 12):.2f} GFLOPS", "memory": "2 GiB",
                    "count": rng.choice([1, 1, 2])} for j in range(2)]
        devices = [_dev(f"d{i}", c, f"{rng.uniform(0.5, 6):.2f} GFLOPS", 8192, f"{rng.uniform(0.5, 20):.2f} Mbps",
                        rng.randint(2, 6), None, f"{rng.uniform(1, 50):.1f} ms") for i, c in enumerate(counts)]
        training = {"micro_batch": 1, "accumulate": rng.choice([1, 2, 4]), "buffer": rng.randint(1, 8)}
        data = {"model": {"name": "gpt2", "seq_len": 16, "task": "classification", "num_labels": 2},
                "training": training, "servers": servers, "devices": devices}
        cm = CostModel(sfsim.scenario_from_dict(copy.deepcopy(data)))
        blocks = [rng.randint(2, 4) for _ in devices]
        for d, k in zip(devices, blocks, strict=True):
            d["memory"] = int(cm.device_memory(k)) + 1  # holds exactly k blocks
        if math.prod(math.comb(2 * k + d["count"] - 1, d["count"]) for d, k in zip(devices, blocks, strict=True)) \
                <= max_plans:
            return sfsim.scenario_from_dict(data)


def test_mid_sized_fleet_re_centres_the_nearby_replays():
    """5 devices, 3 types, 2 servers, 840 plans: a single neighbourhood of the best candidate missed the
    optimum by 1.56 %; re-centring on each better plan finds it (2.71803 s, the exhaustive optimum
    that test_mid_sized_fleets_are_within_one_percent_of_exhaustive_search computes)."""
    sc = _mid_fleet(0)
    assert (len(sc.devices), len({d.type for d in sc.devices}), len(sc.servers)) == (5, 3, 2)
    assert plan(sc).makespan_s == pytest.approx(2.7180265305787064, rel=1e-9)


@pytest.mark.slow
def test_mid_sized_fleets_are_within_one_percent_of_exhaustive_search():
    """12 seeded random fleets of 5-8 devices, 3-4 types, 2 servers against every feasible cut and
    assignment at the planner's LoRA start (a higher LoRA start never slows a plan), each simulated."""
    misses = []
    for seed in range(12):
        sc = _mid_fleet(seed)
        best, _ = _exhaustive(sc, top_lora_only=True)
        res = plan(sc)
        if res.makespan_s > best * 1.01:
            misses.append((seed, res.makespan_s / best - 1))
    assert not misses, misses


@pytest.mark.parametrize("seed", [35, 63])
def test_random_fleets_the_fluid_model_ranks_coarsely(seed):
    """Buffer 1, 2-6 micro-batches per device: the fluid ranking was 1.0-1.1 % off; replaying every
    plan near the best candidate finds the exhaustive optimum."""
    sc = _random_fleet(seed)
    assert sc.training.buffer == 1
    res = plan(sc)
    best, count = _exhaustive(sc)
    assert count > 50
    assert res.makespan_s <= best * 1.01, (res.makespan_s, best)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["splitfrozen", "splitfrozen-sequential"])
def test_random_small_fleets_are_within_one_percent_of_exhaustive_search(schedule):
    """60 seeded random fleets (1-4 devices, 1-2 servers, buffer 1-8, some pinned) against every
    feasible cut vector, LoRA start and assignment, each simulated."""
    misses = []
    for seed in range(60):
        sc = _random_fleet(seed)
        res = plan(sc, schedule=schedule)
        best, _ = _exhaustive(sc, schedule=schedule)
        if res.makespan_s > best * 1.01:
            misses.append((seed, res.makespan_s / best - 1))
    assert not misses, misses


def test_plan_makespan_is_what_simulate_reports():
    sc = _scenario(**copy.deepcopy(TWO_SERVERS))
    res = plan(sc)
    sim = sfsim.simulate(sc, plan=res.to_plan()).makespan_s
    assert res.makespan_s == pytest.approx(sim, rel=1e-12)
    assert res.estimate_s == pytest.approx(sim, rel=0.05)  # the fluid model is close on its own
    assert res.gap == pytest.approx(res.makespan_s / res.lower_bound_s - 1)


def test_pinned_devices_keep_their_server_and_plan_round_trips(tmp_path):
    sc = _scenario(**copy.deepcopy(TWO_SERVERS))
    res = plan(sc)
    assert res.assignment["pinned"] == "big"
    assert min(k for d, k in res.splits.items() if res.assignment[d] == "small") >= 3  # server memory
    res.save(tmp_path / "plan.yaml")
    back = load_plan(tmp_path / "plan.yaml", sc)
    assert (back.splits, back.lora_start, back.assignment) == (res.splits, res.lora_start, res.assignment)
    assert back.makespan_s == res.makespan_s and back.lower_bound_s == res.lower_bound_s


def test_lora_start_is_the_highest_allowed_and_comparisons_are_simulated():
    sc = _scenario(**copy.deepcopy(ONE_SERVER))
    res = plan(sc, min_lora_layers=3)
    assert res.lora_start == 9
    single, fixed3 = res.comparisons
    assert single.makespan_s >= res.makespan_s and fixed3.makespan_s >= res.makespan_s
    p3 = Plan(splits={d.name: 3 for d in sc.devices}, lora_start=9,
              assignment={d.name: "gpu" for d in sc.devices})
    assert fixed3.makespan_s == pytest.approx(sfsim.simulate(sc, plan=p3).makespan_s, rel=1e-12)
    assert fixed3.saved == pytest.approx(1 - res.makespan_s / fixed3.makespan_s)


def test_table_thresholds_and_assignment_by_hand():
    """One device type, one server: fin and the threshold choice follow the closed form."""
    sc = _scenario([_dev("a", 2, "1 GFLOPS", 1000, "8 Mbps")],
                   [{"name": "gpu", "flops": "4 GFLOPS", "memory": "1 GiB"}], accumulate=1)
    cm = CostModel(sc)
    t = build_table(cm, sc, 11, 1, "splitfrozen")
    k = 4
    ki = t.k_index(k)
    f = cm.seconds(cm.device_prefix(k), sc.devices[0])[0]
    s = cm.uplink_bytes(k) * 8 / 8e6
    w = sum(cm.seconds(cm.server_suffix(k, 11), sc.servers[0]))
    assert t.fin[0, ki, 0] == pytest.approx(f + s + 0.01 + 3 * max(f, s) + w)
    kk = best_cuts(t, t.fin[0, ki, 0])
    assert t.cuts[kk[0, 0]] == k  # the largest cut that finishes by T: least server work
    load, n = assign(t, kk)
    step = cm.optimizer_seconds(cm.trainable_params(range(11, 12), True), sc.servers[0])
    assert load == pytest.approx(2 * 4 * (w + step))
    assert n.tolist() == [[2.0]]
    assert list(thresholds(t)) == sorted(thresholds(t))


def test_assignment_balances_identical_servers():
    sc = _scenario([_dev("a", 6, "4 GFLOPS", 1000, "100 Mbps")],
                   [{"name": f"s{i}", "flops": "1 GFLOPS", "memory": "1 GiB"} for i in range(3)])
    t = build_table(CostModel(sc), sc, 11, 1, "splitfrozen")
    load, n = assign(t, best_cuts(t, np.inf))
    assert n.tolist() == [[2.0, 2.0, 2.0]]
    res = plan(sc)
    assert sorted(res.assignment.values()) == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert lower_bound(t) <= res.makespan_s


def test_estimate_matches_closed_form_for_one_device():
    sc = _scenario([_dev("a", 1, "1 GFLOPS", 1000, "0.5 Mbps", 5)],
                   [{"name": "gpu", "flops": "100 GFLOPS", "memory": "1 GiB"}], accumulate=1)
    t = build_table(CostModel(sc), sc, 11, 1, "splitfrozen")
    ki = t.k_index(2)
    assert t.s[0, ki] > t.f[0, ki] > t.w[ki, 0]
    est = estimate(t, [Group(0, 2, 0, 1)])
    # the uplink is the slowest stage: first arrival + 4 periods + the server's F, B, W and last step
    closed = t.a[0, ki] + 4 * t.s[0, ki] + t.w[ki, 0] + t.step[0]
    assert est.makespan_s == pytest.approx(closed, rel=1e-12)
    p = Plan(splits={"a": 2}, lora_start=11, assignment={"a": "gpu"})
    assert sfsim.simulate(sc, plan=p).makespan_s == pytest.approx(closed, rel=1e-12)
    assert est.limiting == Group(0, 2, 0, 1)
    assert expand(t, [Group(0, 2, 0, 1)]) == ({"a": 2}, {"a": "gpu"})


def _fleet_of_types(server_gflops=2.0):
    """21 devices of 5 types on 3 servers: enough groups per server to exercise the fluid model."""
    rng = random.Random(3)
    devices = [_dev(f"t{i}", rng.randint(2, 8), f"{rng.uniform(0.5, 6):.2f} GFLOPS", rng.choice([260, 320, 1000]),
                    f"{rng.uniform(1, 20):.2f} Mbps", rng.randint(2, 6)) for i in range(5)]
    servers = [{"name": f"s{j}", "flops": f"{server_gflops * (1 + j)} GFLOPS", "memory": "1 GiB",
                "count": 1 + j % 2} for j in range(3)]
    return _scenario(devices, servers, buffer=4)


def test_remembered_and_bounded_fluid_estimates_equal_a_fresh_one():
    sc = _fleet_of_types()
    cm = CostModel(sc)
    table = build_table(cm, sc, 11, 1, "splitfrozen")
    fresh = build_table(cm, sc, 11, 1, "splitfrozen")
    plans = [g for start in candidates(table) for g in itertools.islice(wide_neighbours(table, start), 100)]
    for g in plans:
        m = estimate(table, g).makespan_s
        fresh.memo.clear()
        assert estimate(fresh, g) == estimate(table, g)  # remembered: the same
        assert makespan_below(table, g, m * (1 + 1e-12)) == m
        assert makespan_below(table, g, m) is None


def test_threshold_search_skips_only_integer_programs_it_can_decide(monkeypatch):
    """A rounded relaxation clearing a threshold decides the binary search step exactly as the program."""
    sc = _fleet_of_types(server_gflops=20.0)  # fast servers: the devices' pipelines bound most thresholds
    table = build_table(CostModel(sc), sc, 11, 1, "splitfrozen")
    for T in thresholds(table)[::7]:
        kk = best_cuts(table, T)
        exact, relaxed = assign(table, kk), assign(table, kk, integral=False)
        if exact is not None:
            assert relaxed[0] * (1 - 1e-9) <= exact[0] <= rounded_load(table, kk) * (1 + search.MIP_GAP) + 1e-9
    calls, real = [], search.assign
    monkeypatch.setattr(search, "assign", lambda t, kk, integral=True: calls.append(integral) or real(t, kk, integral))
    skipped, programs = candidates(table), calls.count(True)
    calls.clear()
    monkeypatch.setattr(search, "SURE_BELOW", math.inf)  # never skip
    assert candidates(table) == skipped and programs < calls.count(True)


@pytest.mark.parametrize("server_gflops", [2.0, 20.0])
def test_the_top_single_cuts_are_those_of_the_full_ranking(server_gflops):
    sc = _fleet_of_types(server_gflops)
    table = build_table(CostModel(sc), sc, 11, 1, "splitfrozen")
    full = rank_uniform_cuts(table)
    assert len(full) >= 4 and all(rank_uniform_cuts(table, top) == full[:top] for top in (1, 2, 3, len(full)))


# ------------------------------------------------------------------------------- bad input
def test_infeasible_device_memory_says_by_how_much():
    sc = _scenario([_dev("nano", 1, "1 GFLOPS", 170, "1 Mbps")],
                   [{"name": "gpu", "flops": "4 GFLOPS", "memory": "1 GiB"}])
    with pytest.raises(InfeasibleError) as err:
        plan(sc)
    msg = str(err.value)
    assert "device nano needs 178 MiB for its 1-block prefix but has 170 MiB (short by 7.7" in msg
    assert "\n" not in msg


def test_infeasible_server_memory_names_the_server():
    sc = _scenario([_dev("a", 1, "1 GFLOPS", 205, "1 Mbps")],  # at most 2 blocks
                   [{"name": "gpu", "flops": "4 GFLOPS", "memory": 180 * MiB}])
    need = CostModel(sc).server_memory(2, 11, 2 + 1)  # smallest cut 2, LoRA on block 11, buffer + 1
    assert need > 180 * MiB
    with pytest.raises(InfeasibleError) as err:
        plan(sc)
    assert str(err.value) == (f"server gpu needs {gib(need)} when device a runs 2 blocks (its memory allows "
                              f"no more) but has 180 MiB (short by {gib(need - 180 * MiB)}); give the "
                              "server more memory or lower the buffer or micro_batch")


def test_layer_minimums_beyond_depth():
    sc = _scenario(**copy.deepcopy(ONE_SERVER))
    with pytest.raises(InfeasibleError, match="need 13 blocks but gpt2 has 12"):
        plan(sc, min_device_layers=8, min_lora_layers=5)
    with pytest.raises(ConfigError, match="cannot plan for 'fedlora'"):
        plan(sc, schedule="fedlora")


def _write(tmp_path, data):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _data(case):
    return {"model": {"name": "gpt2", "seq_len": 16, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 1, "accumulate": 2, "buffer": 2}, **copy.deepcopy(case)}


@pytest.mark.parametrize("edit,expect", [
    (lambda d: d["devices"][0].update(memory=100 * MiB), "short by"),
    (lambda d: d["devices"][0].update(server="nowhere"), "no server named 'nowhere'"),
    (lambda d: d["training"].update(split=12), "beyond the model's depth"),
    (None, "need 13 blocks but gpt2 has 12"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, edit, expect):
    data = _data(ONE_SERVER)
    args = ["plan", "--devices", None]
    if edit is None:
        args += ["--min-device-layers", "12"]
    else:
        edit(data)
    args[2] = _write(tmp_path, data)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and expect in lines[0], r.output
    assert "Traceback" not in r.output


def test_cli_prints_table_and_writes_plan(tmp_path):
    path = _write(tmp_path, _data(TWO_SERVERS))
    out = tmp_path / "plan.yaml"
    r = CliRunner().invoke(main, ["plan", "--devices", path, "-o", str(out)])
    assert r.exit_code == 0, r.output
    for word in ("cut", "server", "total time", "lower bound", "bounded by", "best single cut",
                 "SplitFrozen at SplitLoRA's cut (k=3)", str(out)):
        assert word in r.output
    p = load_plan(out)
    assert p.assignment["pinned"] == "big" and p.makespan_s > 0
    # the consistency bar, end to end: sfsim simulate --plan reports the planner's total time
    js = tmp_path / "sim.json"
    r = CliRunner().invoke(main, ["simulate", "--devices", path, "--plan", str(out), "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert json.loads(js.read_text())["makespan_s"] == pytest.approx(p.makespan_s, rel=0.01)


def test_server_credits_bound_a_fleet_of_slow_links():
    """Six devices on 2 Mbps links share a buffer of 2: credits, not compute, set the pace."""
    sc = _scenario([_dev("a", 6, "4 GFLOPS", 1000, "2 Mbps", 6, latency="20 ms")],
                   [{"name": "gpu", "flops": "50 GFLOPS", "memory": "1 GiB"}], buffer=2)
    res = plan(sc)
    t = build_table(CostModel(sc), sc, 11, 1, "splitfrozen")
    hold = t.hold[0, t.k_index(res.splits["a-0"])]
    assert hold == pytest.approx(CostModel(sc).uplink_bytes(1) * 8 / 2e6 + 0.02)
    assert res.makespan_s >= 6 * 6 * hold / 2  # every micro-batch holds one of 2 credits that long
    assert res.estimate_s == pytest.approx(res.makespan_s, rel=0.03)
    assert "buffer (2 credits" in res.bottleneck
    assert res.lower_bound_s >= 6 * 6 * hold / 2 * (1 - 1e-12)


def test_partial_last_micro_batch_costs_its_share_in_the_planner():
    # 9 samples in micro-batches of 4, 2 epochs: 6 micro-batches, 4.5 micro-batches of work
    sc = _scenario([_dev("a", 2, "1 GFLOPS", 1000, "8 Mbps", samples=9)],
                   [{"name": "gpu", "flops": "4 GFLOPS", "memory": "1 GiB"}], micro_batch=4, epochs=2)
    t = build_table(CostModel(sc), sc, 11, 1, "splitfrozen")
    assert t.types[0].sent == 6 and t.n_sent.tolist() == t.n_mb.tolist() == [4.5]
    res = plan(sc)
    assert res.makespan_s == pytest.approx(sfsim.simulate(sc, plan=res.to_plan()).makespan_s, rel=1e-12)
    assert res.estimate_s == pytest.approx(res.makespan_s, rel=0.1)


def test_long_runs_estimate_the_comparisons_instead_of_replaying_them(monkeypatch):
    import sfsim.planner.flow as planner

    sc = _scenario(**copy.deepcopy(ONE_SERVER))
    full = plan(sc)
    monkeypatch.setattr(planner, "COMPARE_MICRO_BATCHES", 5)  # this fleet's 15 micro-batches count as long
    monkeypatch.setattr(planner, "SIM_MICRO_BATCHES", 15)      # and the budget affords one replay
    monkeypatch.setattr(planner, "FAST_REPLAY_BUDGET", 1)       # on the fast path too
    monkeypatch.setattr(planner.exhaustive, "EXHAUSTIVE_PLANS", 0)  # and no exhaustive search
    quick = plan(sc)
    assert quick.simulated == 1 and full.simulated > 3
    assert full.ties_searched and not quick.ties_searched  # no replay left for time ties: said, not skipped silently
    assert "time ties (within 0.5%): not searched" in quick.table()
    assert [c.label for c in quick.comparisons] == [
        f"SplitFrozen at the best single cut (k={quick.comparisons[0].cut}, fluid estimate)",
        "SplitFrozen at SplitLoRA's cut (k=3, fluid estimate)"]
    est = estimate(build_table(CostModel(sc), sc, quick.lora_start, 1, "splitfrozen"),
                   planner.fixed_cut(build_table(CostModel(sc), sc, quick.lora_start, 1, "splitfrozen"), 3))
    assert quick.comparisons[1].makespan_s == est.makespan_s
    assert quick.makespan_s == pytest.approx(sfsim.simulate(sc, plan=quick).makespan_s, rel=1e-12)


def test_highs_banner_is_not_printed():
    """HiGHS prints a copyright banner on the first instance a process makes (from C++, on file descriptor 1):
    ``sfsim plan``'s output starts with the plan, not with it, and the solution is unchanged."""
    import subprocess
    import sys

    code = ("import numpy as np; from sfsim.planner.program import solve; "
            "print(solve(np.array([1.0, 1.0]), np.array([[1.0, 2.0]]), np.array([2.0]), np.array([np.inf]), "
            "np.array([np.inf, np.inf])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[0. 1.]\n"
