"""Sweeps and overrides: key paths, value lists and ranges, the crossover a bandwidth sweep must show,
error rows, resuming, parallel runs, the CLI and the plot."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.cost.model import CostModel
from sfsim.errors import ConfigError, SfsimError
from sfsim.scenario.overrides import apply, load_scenario_with, parse_key, set_value
from sfsim.sweeps.sweep import Settings, Vary, grid, parse_values, parse_vary, read_rows, run_sweep

# one phone, cut 4, LoRA from block 6, fused backward, one optimizer step at the end: the closed form
# of tests/test_schedules.py holds, makespan = f + s + l + srv + (n - 1) max(f, s, srv) + step
ONE = """
model: {name: gpt2, seq_len: 32, task: classification, num_labels: 2}
training: {micro_batch: 4, epochs: 1, accumulate: 1000, buffer: 4, decompose_backward: false, lora_start: 6}
servers: [{name: gpu, flops: 5 TFLOPS, memory: 24 GiB}]
devices:
  - {name: phone, flops: 300 GFLOPS, memory: 4 GiB, samples: 12,
     uplink: {bandwidth: 100 Mbps, latency: 10 ms}, downlink: {bandwidth: 200 Mbps, latency: 10 ms}}
"""

TWO_SERVERS = """
model: {name: gpt2, seq_len: 32, task: classification, num_labels: 2}
training: {micro_batch: 4, epochs: 1, accumulate: 2, buffer: 2}
servers: [{name: a, flops: 5 TFLOPS, memory: 24 GiB}, {name: b, flops: 5 TFLOPS, memory: 24 GiB}]
devices:
  - {name: pi, count: 2, flops: 40 GFLOPS, memory: 4 GiB, samples: 8,
     uplink: {bandwidth: 100 Mbps, latency: 10 ms}, downlink: {bandwidth: 200 Mbps, latency: 10 ms}}
  - {name: phone, flops: 300 GFLOPS, memory: 4 GiB, samples: 8,
     uplink: {bandwidth: 50 Mbps, latency: 20 ms}, downlink: {bandwidth: 100 Mbps, latency: 20 ms}}
"""


@pytest.fixture
def one_file(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(ONE)
    return str(path)


@pytest.fixture
def two_file(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_SERVERS)
    return str(path)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("text,values,log,kind", [
    ("10,50,100 Mbps", [1e7, 5e7, 1e8], False, "bandwidth"),
    ("10 Mbps, 1 Gbps", [1e7, 1e9], False, "bandwidth"),
    ("10Mbps..1Gbps:log:3", [1e7, 1e8, 1e9], True, "bandwidth"),
    ("10..1000 Mbps:log:3", [1e7, 1e8, 1e9], True, "bandwidth"),
    ("1..4", [1, 2, 3, 4], False, None),
    ("1..64:log:7", [1, 2, 4, 8, 16, 32, 64], True, None),
    ("1..3:log:5", [1, 2, 3], True, None),  # whole numbers: rounded, repeats dropped
    ("0.5..1.5:lin:3", [0.5, 1.0, 1.5], False, None),
    ("1ms..3ms:lin:3", [0.001, 0.002, 0.003], False, "time"),
    ("2,4,8", [2, 4, 8], False, None),
    ("fifo,proportional", ["fifo", "proportional"], False, None),
    ("true,false", [True, False], False, None),
])
def test_values(text, values, log, kind):
    got, got_log, got_kind = parse_values(text)
    assert got == values and got_log == log and got_kind == kind
    assert all(type(a) is type(b) for a, b in zip(got, values, strict=True))


@pytest.mark.parametrize("text,match", [
    ("1.5..3", "say how many values"),
    ("1..8:log", "say how many values"),
    ("10 Mbps, 2 ms", "mixes units of bandwidth and time"),
    ("0..10:log:3", "log range needs positive ends"),
    ("10Mbps..2ms:lin:3", "cannot read the range"),
    ("8..1", "is empty"),
    ("1..8:lin:1", "at least 2 values"),
    ("1,,2", "empty value"),
])
def test_bad_values_one_line(text, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_values(text, "--vary k")
    assert str(err.value).startswith("--vary k: ") and "\n" not in str(err.value)


def test_grid_first_key_slowest():
    pts = grid([Vary("a", (1, 2)), Vary("b", ("x", "y", "z"))])
    assert pts == [(("a", 1), ("b", "x")), (("a", 1), ("b", "y")), (("a", 1), ("b", "z")),
                   (("a", 2), ("b", "x")), (("a", 2), ("b", "y")), (("a", 2), ("b", "z"))]


# ------------------------------------------------------------------ key paths
def _raw():
    return {"training": {"micro_batch": 4},
            "servers": [{"name": "a", "flops": 1}, {"name": "b", "flops": 2}],
            "devices": [{"name": "pi", "count": 2, "uplink": {"bandwidth": 1}},
                        {"name": "phone", "uplink": {"bandwidth": 1}}]}


def test_key_paths_set_what_they_name():
    d = apply(_raw(), [("devices[*].uplink.bandwidth", 7), ("devices[phone].count", 5), ("servers[1].flops", 9),
                       ("servers[-1].memory", "1 GiB"), ("training.micro_batch", 2), ("training.lora.rank", 4)])
    assert [x["uplink"]["bandwidth"] for x in d["devices"]] == [7, 7]
    assert [x.get("count") for x in d["devices"]] == [2, 5]
    assert d["servers"][1] == {"name": "b", "flops": 9, "memory": "1 GiB"}
    assert d["training"] == {"micro_batch": 2, "lora": {"rank": 4}}
    assert _raw()["devices"][0]["uplink"]["bandwidth"] == 1  # apply copies


def test_list_count_grows_by_renamed_copies_and_shrinks():
    d = _raw()
    set_value(d, "servers.count", 4)
    assert [s["name"] for s in d["servers"]] == ["a", "b", "b-2", "b-3"]
    assert all(s["flops"] == 2 for s in d["servers"][1:])
    set_value(d, "servers.count", 1.0)
    assert d["servers"] == [{"name": "a", "flops": 1}]


@pytest.mark.parametrize("key,value,message", [
    ("devices[tablet].count", 1, "devices[tablet]: no item named 'tablet'; names are: pi, phone"),
    ("servers[2].flops", 1, "servers[2]: there are 2 items; use an index 0..1, a name or *"),
    ("devices.uplink", 1, "devices: is a list; pick items with devices[0], devices[NAME] or devices[*], "
                          "or set how many with devices.count"),
    ("training[0].x", 1, "training: is not a list, so [0] picks nothing; drop the brackets"),
    ("servers[0]", 1, "servers[0]: name a key inside the item, e.g. servers[0].count"),
    ("servers.count", 0, "servers.count: 0 is not a whole number >= 1; write e.g. servers.count=2"),
    ("training.micro_batch.x", 1, "training.micro_batch: is not a section with keys, so it has no 'x'"),
])
def test_bad_key_paths_one_line(key, value, message):
    with pytest.raises(ConfigError) as err:
        set_value(_raw(), key, value, "s.yaml")
    assert str(err.value).startswith(f"s.yaml: {message}")


@pytest.mark.parametrize("key", ["devices[x", "devices..a", "1abc", "a b", ""])
def test_malformed_key(key):
    with pytest.raises(ConfigError, match="is not a key path; write e.g."):
        parse_key(key, "--vary")


def test_bad_override_value_gets_the_loaders_error(one_file):
    with pytest.raises(ConfigError) as err:
        load_scenario_with(one_file, [("devices[*].uplink.bandwidth", "5 Mbs")])
    assert str(err.value) == (f"{one_file}: devices[0].uplink.bandwidth: '5 Mbs' is not a bandwidth; write e.g. "
                              "'50 Mbps' or a number in bit/s (with --set applied)")
    sc = load_scenario_with(one_file, [("devices[phone].uplink.bandwidth", "5 Mbps"), ("servers.count", 3)])
    assert sc.devices[0].uplink.bandwidth == 5e6 and [s.name for s in sc.servers] == ["gpu", "gpu-2", "gpu-3"]


# ------------------------------------------------------------------ sweeps
def test_bandwidth_sweep_crosses_from_link_bound_to_device_bound_where_stage_times_say(one_file, tmp_path):
    sc = sfsim.load_scenario(one_file)
    cm, dev, srv = CostModel(sc), sc.devices[0], sc.servers[0]
    f = cm.seconds(cm.device_prefix(4), dev)[0]
    srv_t = sum(cm.seconds(cm.server_suffix(4, 6), srv))
    step = cm.optimizer_seconds(cm.trainable_params(range(6, 12), head=True), srv)
    bits, n, lat = cm.uplink_bytes(4) * 8, 3, dev.uplink.latency
    cross = bits / f  # the bandwidth at which sending a micro-batch takes as long as computing it
    assert srv_t + step / n < f  # the server is never the bottleneck here
    factors = [0.25, 0.5, 0.9, 1.1, 2.0, 4.0]
    out = tmp_path / "bw.csv"
    res = run_sweep(one_file, [Vary("devices[phone].uplink.bandwidth", tuple(x * cross for x in factors))], out,
                    Settings(split=4), jobs=1, progress=False)
    assert (res.points, res.rows, res.errors) == (6, 6, 0)
    rows = sorted(read_rows(out), key=lambda r: int(r["point"]))
    for x, r in zip(factors, rows, strict=True):
        s = bits / (x * cross)
        closed = (f + s + lat + srv_t) + (n - 1) * max(f, s, srv_t) + step
        assert float(r["makespan_s"]) == pytest.approx(closed, rel=1e-12)
        assert r["bottleneck"] == ("uplink phone" if x < 1 else "device phone")
        assert float(r["bottleneck_utilization"]) == pytest.approx(n * max(f, s) / closed, rel=1e-12)
        assert (r["cuts"], r["lora_start"], r["status"], r["error"]) == ("4", "6", "ok", "")
        assert float(r["uplink_bytes"]) == n * bits / 8


def test_bad_point_is_an_error_row_and_the_sweep_goes_on(one_file, tmp_path):
    out = tmp_path / "e.csv"
    res = run_sweep(one_file, [parse_vary("devices[*].uplink.bandwidth=0,10 Mbps")], out,
                    Settings(schedules=("splitfrozen", "fedlora")), jobs=1, progress=False)
    assert (res.rows, res.errors) == (4, 2)
    rows = read_rows(out)
    assert [(r["point"], r["schedule"], r["status"]) for r in rows] == [
        ("0", "splitfrozen", "error"), ("0", "fedlora", "error"), ("1", "splitfrozen", "ok"), ("1", "fedlora", "ok")]
    assert rows[0]["error"] == f"{one_file}: devices[0].uplink.bandwidth: Input should be greater than 0 (got 0.0)"
    assert rows[0]["makespan_s"] == "" and float(rows[2]["makespan_s"]) > 0


def test_resume_runs_only_what_is_missing_and_survives_a_torn_row(two_file, tmp_path):
    out = tmp_path / "r.csv"
    vary = [parse_vary("devices[*].uplink.bandwidth=20,40,80 Mbps"), parse_vary("servers[a].flops=1,5 TFLOPS")]
    settings = Settings(schedules=("splitfrozen", "splitlora"))
    full = run_sweep(two_file, vary, out, settings, jobs=1, progress=False)
    assert (full.points, full.rows) == (6, 12)
    whole = out.read_text()
    lines = whole.splitlines(keepends=True)
    out.write_text("".join(lines[:6]) + lines[6][:25])  # 5 rows kept, the 6th torn by a crash
    again = run_sweep(two_file, vary, out, settings, resume=True, jobs=1, progress=False)
    assert (again.rows, again.skipped) == (7, 5)
    key = lambda r: (int(r["point"]), r["schedule"])  # noqa: E731
    assert sorted(read_rows(out), key=key) == sorted(csv.DictReader(whole.splitlines()), key=key)
    nothing = run_sweep(two_file, vary, out, settings, resume=True, jobs=1, progress=False)
    assert (nothing.rows, nothing.skipped) == (0, 12)
    with pytest.raises(ConfigError, match="its columns are not this sweep's"):
        run_sweep(two_file, vary[:1], out, settings, resume=True, jobs=1, progress=False)


def test_processes_give_the_same_rows_as_one(two_file, tmp_path):
    vary = [parse_vary("devices[pi].uplink.bandwidth=10,20,40,80 Mbps")]
    run_sweep(two_file, vary, tmp_path / "1.csv", jobs=1, progress=False)
    run_sweep(two_file, vary, tmp_path / "2.csv", jobs=2, progress=False)
    key = lambda r: int(r["point"])  # noqa: E731
    assert sorted(read_rows(tmp_path / "1.csv"), key=key) == sorted(read_rows(tmp_path / "2.csv"), key=key)


def test_a_key_that_names_nothing_stops_before_any_point(two_file, tmp_path):
    with pytest.raises(ConfigError, match=r"devices\[tablet\]: no item named 'tablet'"):
        run_sweep(two_file, [parse_vary("devices[tablet].count=1,2")], tmp_path / "x.csv", progress=False)
    assert not (tmp_path / "x.csv").exists()


def test_plan_each_point(two_file, tmp_path):
    out = tmp_path / "p.csv"
    run_sweep(two_file, [parse_vary("devices[phone].uplink.bandwidth=500 Mbps")], out,
              Settings(schedules=("splitfrozen", "fedlora"), plan=True), jobs=1, progress=False)
    sf, fed = read_rows(out)
    p = sfsim.plan(load_scenario_with(two_file, [("devices[phone].uplink.bandwidth", 500e6)]))
    assert float(sf["makespan_s"]) == p.makespan_s
    assert sf["cuts"] == " ".join(map(str, sorted(set(p.splits.values()))))
    assert fed["status"] == "ok" and float(fed["makespan_s"]) > 0 and fed["cuts"] == ""


# ------------------------------------------------------------------ CLI and plot
def test_cli_sweep_writes_csv_and_plot(two_file, tmp_path):
    out, png = tmp_path / "s.csv", tmp_path / "s.png"
    r = CliRunner().invoke(main, ["sweep", "--devices", two_file, "--vary", "devices[*].uplink.bandwidth=10Mbps..1Gbps:log:3",
                                  "--vary", "servers.count=1,2", "--schedule", "splitfrozen,fedlora", "--split", "2",
                                  "-o", str(out), "--plot", str(png), "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].startswith(f"12 rows written to {out} (6 points x 2 schedules, 0 already there)")
    rows = read_rows(out)
    assert {(r["devices[*].uplink.bandwidth"], r["servers.count"]) for r in rows} == {
        (b, c) for b in ("10000000.0", "100000000.0", "1000000000.0") for c in ("1", "2")}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_ticks_sit_at_the_swept_values_in_their_units(two_file, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from sfsim.sweeps.plot import plot_sweep

    out, png = tmp_path / "s.csv", tmp_path / "s.png"
    vary = parse_vary("devices[*].uplink.latency=0,30ms,2s")  # a list (not a log range) spanning decades
    run_sweep(two_file, [vary], out, Settings(schedules=("splitfrozen",), split=2), jobs=1, progress=False)
    axes = []
    real = Figure.subplots
    monkeypatch.setattr(Figure, "subplots", lambda self, *a, **k: axes.append(real(self, *a, **k)) or axes[-1])
    plot_sweep(out, png, [vary])
    ax = axes[0][0][0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "30 ms", "2 s"]  # not "0 us" and odd steps
    assert ax.get_xscale() == "linear"  # a zero on the axis: no log scale
    vary = parse_vary("devices[*].uplink.latency=1ms,30ms,2s")
    run_sweep(two_file, [vary], tmp_path / "t.csv", Settings(schedules=("splitfrozen",), split=2), jobs=1,
              progress=False)
    plot_sweep(tmp_path / "t.csv", png, [vary])
    assert axes[-1][0][0].get_xscale() == "log"
    assert [t.get_text() for t in axes[-1][0][0].get_xticklabels()] == ["1 ms", "30 ms", "2 s"]


@pytest.mark.parametrize("args,match", [
    (["--vary", "devices[tablet].count=1,2"], "devices[tablet]: no item named 'tablet'"),
    (["--vary", "devices[pi.count=1,2"], "--vary: 'devices[pi.count' is not a key path"),
    (["--vary", "devices[pi].count"], "has no value; write KEY=VALUE"),
    (["--vary", "servers.count=1.5..3"], "say how many values"),
    (["--vary", "servers.count=1,2", "--vary", "servers.count=3"], "--vary: servers.count is varied twice"),
    (["--vary", "servers.count=1,2", "--schedule", "nope"], "unknown schedule"),
    (["--vary", "servers.count=1,2", "--plan", "--split", "2"], "--plan and --split exclude each other"),
    (["--vary", "servers.count=1,2", "--plot", "x.png", "--metric", "speed"], "--metric: unknown column 'speed'"),
])
def test_cli_bad_input_one_line_exit_2(two_file, tmp_path, args, match):
    r = CliRunner().invoke(main, ["sweep", "--devices", two_file, "-o", str(tmp_path / "o.csv"), *args])
    assert r.exit_code == 2, r.output
    assert match in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_readme_sweep_snippet_runs(tmp_path, monkeypatch):
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "guide" / "sweeps.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "sfsim sweep" in b)
    args = shlex.split(block.replace("\\\n", " "), comments=True)
    assert args[:2] == ["sfsim", "sweep"]
    args = [str(root / a) if a.startswith("profiles/") else a for a in args[1:]]
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args + ["--jobs", "1"])
    assert r.exit_code == 0, r.output
    rows = read_rows(tmp_path / "sweep.csv")
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


# ------------------------------------------------------------------ --set on simulate and plan
def test_set_equals_editing_the_file(two_file, tmp_path):
    edited = tmp_path / "edited.yaml"
    edited.write_text(TWO_SERVERS.replace("bandwidth: 50 Mbps", "bandwidth: 7 Mbps").replace(
        "flops: 40 GFLOPS", "flops: 80 GFLOPS"))
    runner = CliRunner()
    a = runner.invoke(main, ["simulate", "--devices", two_file, "--set", "devices[phone].uplink.bandwidth=7 Mbps",
                             "--set", "devices[pi].flops=80e9", "--json", str(tmp_path / "a.json")])
    b = runner.invoke(main, ["simulate", "--devices", str(edited), "--json", str(tmp_path / "b.json")])
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    plain = runner.invoke(main, ["simulate", "--devices", two_file, "--json", str(tmp_path / "c.json")])
    assert plain.exit_code == 0 and (tmp_path / "c.json").read_text() != (tmp_path / "a.json").read_text()


@pytest.mark.parametrize("command", ["simulate", "plan"])
@pytest.mark.parametrize("setting,message", [
    ("devices[phone].uplink.bandwidth=5 Mbs", "{f}: devices[1].uplink.bandwidth: '5 Mbs' is not a bandwidth; "
                                              "write e.g. '50 Mbps' or a number in bit/s (with --set applied)"),
    ("training.micro_batch=0", "{f}: training.micro_batch: Input should be greater than 0 (got 0) (with --set applied)"),
    ("training.nope=1", "{f}: training.nope: unknown key; allowed here: micro_batch, epochs, lora"),
    ("devices[tablet].count=2", "{f}: devices[tablet]: no item named 'tablet'; names are: pi, phone"),
    ("servers[0].flops", "--set: 'servers[0].flops' has no value; write KEY=VALUE"),
])
def test_set_bad_input_one_line_exit_2(two_file, command, setting, message):
    r = CliRunner().invoke(main, [command, "--devices", two_file, "--set", setting])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: " + message.format(f=two_file)), r.output
    assert len(r.output.strip().splitlines()) == 1


def test_plan_with_set(two_file, tmp_path):
    r = CliRunner().invoke(main, ["plan", "--devices", two_file, "--set", "servers.count=1", "-o", str(tmp_path / "p.yaml")])
    assert r.exit_code == 0, r.output
    plan = sfsim.load_plan(tmp_path / "p.yaml")
    assert set(plan.assignment.values()) == {"a"}


# ------------------------------------------------------------------ Dask (optional extra)
def test_dask_cluster_gives_the_same_rows(two_file, tmp_path):
    distributed = pytest.importorskip("distributed")
    vary = [parse_vary("devices[pi].uplink.bandwidth=10,20,40 Mbps")]
    run_sweep(two_file, vary, tmp_path / "1.csv", jobs=1, progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as c:
        res = run_sweep(two_file, vary, tmp_path / "d.csv", executor="dask", address=c.scheduler_address,
                        progress=False)
    assert (res.rows, res.errors) == (3, 0)
    key = lambda r: int(r["point"])  # noqa: E731
    assert sorted(read_rows(tmp_path / "1.csv"), key=key) == sorted(read_rows(tmp_path / "d.csv"), key=key)


def test_ray_cluster_gives_the_same_rows(two_file, tmp_path):
    pytest.importorskip("ray")
    vary = [parse_vary("devices[pi].uplink.bandwidth=10,20,40 Mbps")]
    run_sweep(two_file, vary, tmp_path / "1.csv", jobs=1, progress=False)
    # no address: a local one-CPU Ray cluster started for the sweep and shut down after it
    res = run_sweep(two_file, vary, tmp_path / "r.csv", executor="ray", jobs=1, progress=False)
    assert (res.rows, res.errors) == (3, 0)
    key = lambda r: int(r["point"])  # noqa: E731
    assert sorted(read_rows(tmp_path / "1.csv"), key=key) == sorted(read_rows(tmp_path / "r.csv"), key=key)
    import ray

    assert not ray.is_initialized()


@pytest.mark.parametrize("args,match", [
    (["--executor", "spark"], "--executor: unknown 'spark'; choose one of: process, dask, ray"),
    (["--address", "tcp://127.0.0.1:1"],
     "--address names a Dask scheduler or a Ray cluster; add --executor dask or --executor ray"),
])
def test_cli_executor_errors(two_file, tmp_path, args, match):
    r = CliRunner().invoke(main, ["sweep", "--devices", two_file, "--vary", "servers.count=1,2",
                                  "-o", str(tmp_path / "o.csv"), *args])
    assert r.exit_code == 2 and r.output == f"error: {match}\n"
    assert not (tmp_path / "o.csv").exists()


def test_ray_unreachable_address_is_one_line(two_file, tmp_path):
    pytest.importorskip("ray")
    r = CliRunner().invoke(main, ["sweep", "--devices", two_file, "--vary", "servers.count=1,2",
                                  "-o", str(tmp_path / "o.csv"), "--executor", "ray", "--address", "127.0.0.1:1"])
    assert r.exit_code == 2 and r.output == (
        "error: --address: cannot reach a Ray cluster at 127.0.0.1:1 ([Errno 111] Connection refused); "
        "start one with 'ray start --head', or leave out --address\n")
    assert not (tmp_path / "o.csv").exists()


# ------------------------------------------------------------------ results kept, bad lists, failed points
def test_an_existing_csv_is_never_replaced_without_overwrite(one_file, tmp_path):
    out = tmp_path / "k.csv"
    vary = [parse_vary("training.micro_batch=2,4")]
    run_sweep(one_file, vary, out, jobs=1, progress=False)
    before = out.read_text()
    with pytest.raises(SfsimError, match=r"already exists; pass --resume .* --overwrite to replace it"):
        run_sweep(one_file, [parse_vary("training.micro_batch=3")], out, jobs=1, progress=False)
    assert out.read_text() == before
    res = run_sweep(one_file, [parse_vary("training.micro_batch=3")], out, jobs=1, progress=False, overwrite=True)
    assert res.rows == 1 and len(read_rows(out)) == 1
    with pytest.raises(SfsimError, match="give one"):
        run_sweep(one_file, vary, out, jobs=1, progress=False, overwrite=True, resume=True)
    r = CliRunner().invoke(main, ["sweep", "--devices", one_file, "--vary", "training.micro_batch=2", "-o", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output and len(read_rows(out)) == 1


@pytest.mark.parametrize("text,match", [
    ("10,abc Mbps", "'abc Mbps' in '10,abc Mbps' is a word among numbers"),
    ("10,50 Mbsp", "'50 Mbsp' in '10,50 Mbsp' is not a number with a known unit"),
    ("fifo,8", "'fifo' in 'fifo,8' is a word among numbers"),
    ("1e999,2", "'1e999' in '1e999,2' is not a number with a known unit"),
    ("1..1000000000", "holds 1,000,000,000 whole numbers; a --vary takes at most 10,000"),
    ("1..1e9", "say how many values"),
    ("1..8:lin:99999999999999", "at most 10,000"),
    ("1e999..2:lin:3", "cannot read the range"),
])
def test_bad_lists_and_ranges_are_one_line(text, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_values(text, "--vary k")
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_power_and_compound_durations_still_parse():
    assert parse_values("1,3 W") == ([1.0, 3.0], False, "power")
    assert parse_values("2 h 15 min,30 min") == ([8100.0, 1800.0], False, "time")


def test_a_grid_past_the_bound_is_one_line():
    big = [Vary(f"k{i}", tuple(range(100))) for i in range(3)]
    with pytest.raises(ConfigError, match="1,000,000 points in the grid; a sweep runs at most 100,000"):
        grid(big)


def test_failed_points_exit_2_after_writing_the_others(one_file, tmp_path):
    out, png = tmp_path / "f.csv", tmp_path / "f.png"
    r = CliRunner().invoke(main, ["sweep", "--devices", one_file, "--vary", "training.micro_batch=0,4",
                                  "-o", str(out), "--plot", str(png), "--jobs", "1"])
    assert r.exit_code == 2, r.output
    assert "error: 1 of 2 rows failed" in r.output and png.is_file()
    assert [x["status"] for x in sorted(read_rows(out), key=lambda x: x["point"])] == ["error", "ok"]


def test_a_sweep_where_every_point_failed_draws_no_plot(one_file, tmp_path):
    out, png = tmp_path / "a.csv", tmp_path / "a.png"
    r = CliRunner().invoke(main, ["sweep", "--devices", one_file, "--vary", "training.micro_batch=0,-1",
                                  "-o", str(out), "--plot", str(png), "--jobs", "1"])
    assert r.exit_code == 2 and "error: every row failed" in r.output
    assert not png.exists() and len(read_rows(out)) == 2


def test_sweep_warns_about_a_bandwidth_read_in_bit_per_s(one_file, tmp_path):
    r = CliRunner().invoke(main, ["sweep", "--devices", one_file, "--vary", "devices[*].uplink.bandwidth=10,20",
                                  "-o", str(tmp_path / "w.csv"), "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert "warning: " + one_file + ": devices[0].uplink.bandwidth: 10 reads as 10 bit/s" in r.output


def test_no_import_circle_between_the_sweep_and_its_executors():
    import ast
    from pathlib import Path

    root = Path(sfsim.__file__).parent / "sweeps"
    for name in ("executors", "point", "grid"):
        tree = ast.parse((root / f"{name}.py").read_text())
        found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "sfsim.sweeps.sweep" not in found, name


def test_a_resumed_sweep_with_failed_rows_kept_still_exits_2(one_file, tmp_path):
    out = tmp_path / "r.csv"
    args = ["sweep", "--devices", one_file, "--vary", "training.micro_batch=0,4", "-o", str(out), "--jobs", "1"]
    assert CliRunner().invoke(main, args).exit_code == 2
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 2 and "0 rows written" in r.output and "1 rows kept from before have status error" in r.output
