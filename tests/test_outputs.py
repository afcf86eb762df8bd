"""Outputs: SimResult JSON, Chrome trace, Gantt PNG, the comparison table and the CLI."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.cli.simulate import parse_split
from sfsim.errors import SfsimError
from sfsim.outputs.report import comparison_table, saving, si
from sfsim.units import format_quantity

TINY = """
model: {name: gpt2, seq_len: 32, task: classification, num_labels: 2}
training: {micro_batch: 4, epochs: 1, accumulate: 2, buffer: 2, local_steps: 2, fedavg_every: 2}
servers: [{name: gpu, flops: 5 TFLOPS, memory: 24 GiB}]
devices:
  - {name: pi, count: 2, flops: 40 GFLOPS, memory: 4 GiB, samples: 10,
     uplink: {bandwidth: 100 Mbps, latency: 10 ms}, downlink: {bandwidth: 200 Mbps, latency: 10 ms}}
  - {name: phone, flops: 300 GFLOPS, memory: 4 GiB, samples: 6,
     uplink: {bandwidth: 50 Mbps, latency: 20 ms}, downlink: {bandwidth: 100 Mbps, latency: 20 ms}}
"""

FIELDS = {"schedule", "makespan_s", "micro_batches", "device_flops", "server_flops", "device_busy_s",
          "server_busy_s", "server_utilization", "uplink_bytes", "downlink_bytes", "stream_mixing"}


@pytest.fixture
def scenario_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_json_fields_and_trace(scenario_file, tmp_path):
    res = sfsim.simulate(sfsim.load_scenario(scenario_file), "splitfrozen", trace=True)
    data = json.loads(res.to_json(tmp_path / "r.json"))
    assert FIELDS <= set(data) and data == json.loads((tmp_path / "r.json").read_text())
    assert set(data["device_flops"]) == {"pi-0", "pi-1", "phone"} and data["micro_batches"] == 3 + 3 + 2
    res.write_trace(tmp_path / "t.json")
    trace = json.loads((tmp_path / "t.json").read_text())
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == len(res.events)
    assert all({"ph", "ts", "dur", "pid", "name", "args"} <= set(e) for e in complete)
    sends = [e for e in complete if e["args"]["lane"] == "link:phone"]
    assert [e["args"]["mb"] for e in sends] == [0, 1] and all(e["name"] == "send" for e in sends)
    assert max(e["ts"] + e["dur"] for e in complete) == pytest.approx(res.makespan_s * 1e6)


def test_gantt_png_written(scenario_file, tmp_path):
    res = sfsim.simulate(sfsim.load_scenario(scenario_file), "splitlora", trace=True)
    res.write_gantt(tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_trace_no_events(scenario_file, tmp_path):
    res = sfsim.simulate(sfsim.load_scenario(scenario_file))
    assert res.events is None
    with pytest.raises(SfsimError, match="trace=True"):
        res.write_trace(tmp_path / "t.json")


def test_comparison_table_savings(scenario_file):
    sc = sfsim.load_scenario(scenario_file)
    res = {s: sfsim.simulate(sc, s) for s in ("splitfrozen", "splitlora", "fedlora")}
    table = comparison_table(res).splitlines()
    assert table[0].split()[:2] == ["schedule", "time"] and len(table) == 2 + 3 + 1
    want = saving(res["splitfrozen"].makespan_s, res["fedlora"].makespan_s)
    assert f"{want:+.1f}%" in table[2]
    assert saving(1, 4) == 75.0 and saving(1, 0) is None
    assert si(1.5e12, "FLOP") == "1.5 TFLOP" and si(0, "B") == "0 B"
    assert si(7.55e9, "B") == "7.03 GiB" == format_quantity(7.55e9, "size")  # one formatter for sizes



def test_comparison_table_shows_untrained_samples_only_when_devices_leave(scenario_file):
    import dataclasses

    sc = sfsim.load_scenario(scenario_file)
    res = {s: sfsim.simulate(sc, s) for s in ("splitfrozen", "fedlora")}
    assert "untrained" not in comparison_table(res)
    res["fedlora"] = dataclasses.replace(res["fedlora"], samples_not_trained={"a": 8, "b": 1200})
    table = comparison_table(res).splitlines()
    assert table[0].split()[:3] == ["schedule", "time", "s"] and table[0].split()[3] == "untrained"
    assert table[2].split()[:1] == ["splitfrozen"] and table[2].split()[2] == "0"
    assert table[3].split()[2] == "1,208"
    assert table[-1].startswith("untrained: samples lost to devices leaving")

def test_parse_split():
    assert parse_split("3") == 3 and parse_split(None) is None
    assert parse_split("pi-0=2, phone=4") == {"pi-0": 2, "phone": 4}
    for bad in ("pi-0", "=3", "a=b", ",", "¹", "pi-0=²"):  # '¹'.isdigit() but int('¹') fails: found by fuzzing
        with pytest.raises(SfsimError, match="--split"):
            parse_split(bad)


def test_cli_single_and_all(scenario_file, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["simulate", "--devices", str(scenario_file), "--split", "pi-0=2",
                               "--json", str(tmp_path / "r.json"), "--trace", str(tmp_path / "t.json"),
                               "--gantt", str(tmp_path / "g.png")])
    assert out.exit_code == 0, out.output
    assert "splitfrozen:" in out.output and "micro-batches" in out.output
    assert json.loads((tmp_path / "r.json").read_text())["splits"] == {"pi-0": 2, "pi-1": 1, "phone": 1}
    assert (tmp_path / "t.json").exists() and (tmp_path / "g.png").exists()
    out = runner.invoke(main, ["simulate", "--devices", str(scenario_file), "--schedule", "all",
                               "--json", str(tmp_path / "all.json"), "--trace", str(tmp_path / "t.json")])
    assert out.exit_code == 0, out.output
    assert set(json.loads((tmp_path / "all.json").read_text())) == set(sfsim.methods.METHODS)
    for name in sfsim.methods.METHODS:
        assert name in out.output and (tmp_path / f"t.{name}.json").exists()


@pytest.mark.parametrize("args,match", [
    (["--split", "40"], "outside 0..11"),
    (["--schedule", "nope"], "unknown schedule"),
    (["--policy", "lifo"], "unknown server policy"),
    (["--lora-start", "0", "--split", "2"], "lora_start 0"),
])
def test_cli_bad_input_exit_2_one_line(scenario_file, args, match):
    out = CliRunner().invoke(main, ["simulate", "--devices", str(scenario_file), *args])
    assert out.exit_code == 2
    assert match in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_gantt_strip_is_the_exact_busy_fraction_of_each_column():
    from sfsim.outputs.gantt import Row, strips
    from sfsim.outputs.trace import TraceEvent as E

    # a link sending 0.01 s every 0.1 s over 10 s: 1,000 sends, 10% busy in every one of 100 columns
    sends = [E("link:a", "send", 0.1 * n, 0.01) for n in range(100)]
    busy = strips(sends + [E("a", "F", 2.5, 0.001)], [Row("a", ["a"], "device"), Row("l", ["link:a"], "link")],
                  end=10.0, bins=100)
    assert busy[(1, "send")] == pytest.approx([0.1] * 100)          # no bursts: the same height everywhere
    assert busy[(0, "F")][25] == pytest.approx(0.01)                 # a 1 ms op is in its column ...
    assert (busy[(0, "F")] > 0).sum() == 1                           # ... and only there


def test_gantt_strip_areas_equal_the_trace():
    from sfsim.outputs.gantt import Row, strips

    res = sfsim.simulate(sfsim.load_scenario("profiles/edge.yaml"), "splitfrozen", splits=3, trace=True)
    rows = [Row(lane, [lane], "x") for lane in {e.lane for e in res.events}]
    busy = strips(res.events, rows, res.makespan_s, bins=777)
    width = res.makespan_s / 777
    for r, row in enumerate(rows):
        for op in {e.op for e in res.events if e.lane == row.label}:
            exact = sum(e.dur for e in res.events if e.lane == row.label and e.op == op)
            assert busy[(r, op)].sum() * width == pytest.approx(exact, rel=1e-9)


def test_gantt_gives_every_op_its_own_colour_and_legend_text():
    from sfsim.outputs.gantt import COLORS, FALLBACK, LABELS

    ops = ("F", "B", "W", "BW", "send", "step", "aggregate", "wait", "offline", "handover", "resume",
           "sync-send", "sync-recv", "epoch_end")                   # every op the two halves' traces hold
    colours = [COLORS[op].upper() for op in ops]
    assert len(set(colours)) == len(ops) and FALLBACK.upper() not in colours
    assert all(LABELS[op] != op for op in ops)                       # a legend line says what the op is


def test_gantt_groups_big_fleets_and_shows_idle_servers_sorted():
    from sfsim.outputs.gantt import Panel, rows_for
    from sfsim.outputs.trace import TraceEvent as E

    devs = [f"a-{i}" for i in range(30)] + [f"b-{i}" for i in range(20)]
    events = [E(d, "F", 0, 1) for d in devs] + [E(f"link:{d}", "send", 1, 1) for d in devs]
    events += [E("s/10", "F", 2, 1), E("s/2", "F", 2, 1)]
    panel = Panel(events, devices=devs, labels={d: f"cut {1 + d.startswith('b')}" for d in devs},
                  servers=["t", "s/10", "s/2"])
    rows = rows_for(panel, lane_limit=40)
    assert [r.label for r in rows] == ["a ×30 (cut 1)", "link:a ×30", "b ×20 (cut 2)", "link:b ×20",
                                      "s/2", "s/10", "t"]
    assert rows[0].lanes == devs[:30]
    assert [r.label for r in rows_for(panel, lane_limit=6)][-2:] == ["s ×2 workers", "t"]
    assert len(rows_for(panel, lane_limit=200)) == 100 + 3           # under the limit: every lane


@pytest.mark.parametrize("name,magic", [("g.png", b"\x89PNG"), ("g.pdf", b"%PDF"), ("g.svg", b"<?xml")])
def test_gantt_formats_are_real_files(scenario_file, tmp_path, name, magic):
    res = sfsim.simulate(sfsim.load_scenario(scenario_file), "splitfrozen", splits=2, trace=True)
    path = tmp_path / "missing" / "folder" / name
    res.write_gantt(path)
    assert path.read_bytes()[:len(magic)] == magic
    assert sorted(p.name for p in path.parent.iterdir()) == [name]   # no temporary file left
    if name.endswith(".svg"):
        assert "pi-0 (cut 2)" in path.read_text() and "gpu" in path.read_text()


def test_gantt_bad_suffix_one_line_before_simulating(scenario_file, tmp_path):
    out = CliRunner().invoke(main, ["simulate", "--devices", str(scenario_file), "--gantt", str(tmp_path / "g.jpg")])
    assert out.exit_code == 2 and out.output.count("\n") == 1
    assert "name a .png, .pdf or .svg file" in out.output


def test_gantt_schedule_all_is_one_file_of_small_multiples(scenario_file, tmp_path, monkeypatch):
    import sfsim.outputs.gantt

    drawn = []
    monkeypatch.setattr(sfsim.outputs.gantt, "_draw", lambda ax, panel, rows, end: drawn.append((panel.title, end)) or set())
    out = CliRunner().invoke(main, ["simulate", "--devices", str(scenario_file), "--schedule", "all",
                                    "--split", "2", "--gantt", str(tmp_path / "all.pdf")])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.pdf", "tiny.yaml"]
    assert [t.split(" on ")[0] for t, _ in drawn] == list(sfsim.methods.METHODS)
    assert len({end for _, end in drawn}) == 1                        # one shared time axis


@pytest.mark.parametrize("args,match", [
    (["--split", "2", "--plan", "p.yaml"], "give cuts or a plan, not both"),
    (["--schedule", "fedlora", "--split", "2"], "fedlora takes no splits (--split): fedlora trains the whole model"),
    (["--schedule", "cenlora", "--split", "2"], "cenlora takes no splits (--split): cenlora trains at the server"),
    (["--schedule", "fedlora", "--plan", "p.yaml"], "fedlora takes no plan (--plan)"),
    (["--schedule", "splitlora", "--lora-start", "5"], "splitlora takes no lora_start (--lora-start)"),
    (["--schedule", "fedlora", "--policy", "fifo"], "fedlora takes no policy (--policy)"),
    (["--schedule", "splitlora", "--split", "0"], "splitlora: device pi-0 has cut 0"),
    (["--set", "devices[0].memory=1 MiB"], "device pi-0 needs 181 MiB for its 1-block prefix but has 1 MiB"),
    (["--set", "servers.count=100000000"], "servers.count: 100,000,000 entries; at most 10,000"),
    (["--set", "servers.count=¹"], "servers.count: '¹' is not a whole number >= 1"),
])
def test_cli_conflicting_options_one_line(scenario_file, tmp_path, args, match):
    sc = sfsim.load_scenario(scenario_file)
    sfsim.Plan(splits={d.name: 2 for d in sc.devices}, lora_start=5,
               assignment={d.name: "gpu" for d in sc.devices}).save(tmp_path / "p.yaml")
    args = [str(tmp_path / a) if a == "p.yaml" else a for a in args]
    out = CliRunner().invoke(main, ["simulate", "--devices", str(scenario_file), *args])
    assert out.exit_code == 2, out.output
    assert out.output.startswith("error: ") and match in out.output and out.output.count("\n") == 1


def test_schedule_all_gives_each_schedule_its_own_options(scenario_file):
    out = CliRunner().invoke(main, ["simulate", "--devices", str(scenario_file), "--schedule", "all",
                                    "--split", "2", "--lora-start", "5", "--policy", "round-robin"])
    assert out.exit_code == 0, out.output
    assert all(name in out.output for name in sfsim.methods.METHODS)


def test_simulate_takes_a_plan_result_and_checks_memory_as_plan_does(scenario_file):
    sc = sfsim.load_scenario(scenario_file)
    p = sfsim.plan(sc)
    assert sfsim.simulate(sc, plan=p).makespan_s == p.makespan_s
    data = yaml.safe_load(TINY)
    data["devices"][0]["memory"] = "1 MiB"
    small = sfsim.scenario_from_dict(data)
    from sfsim.errors import InfeasibleError

    with pytest.raises(InfeasibleError, match=r"^device pi-0 needs 181 MiB for its 1-block prefix but has 1 MiB"):
        sfsim.simulate(small)
    with pytest.raises(InfeasibleError, match=r"^device pi-0 needs 181 MiB for its 1-block prefix but has 1 MiB"):
        sfsim.plan(small)


def test_small_multiples_fold_alike(tmp_path, monkeypatch):
    import sfsim.outputs.gantt as g
    from sfsim.outputs.trace import TraceEvent as E

    devs = [f"a-{i}" for i in range(8)]
    busy = g.Panel([E(d, "F", 0, 1) for d in devs] + [E(f"link:{d}", "send", 1, 1) for d in devs], "busy", devs)
    quiet = g.Panel([E("a-0", "F", 0, 1)], "quiet", devs)  # alone it would draw 8 rows, under the limit
    drawn = {}
    monkeypatch.setattr(g, "_draw", lambda ax, panel, rows, end: drawn.setdefault(panel.title, rows) and set())
    g.write_panels([busy, quiet], tmp_path / "m.png", lane_limit=24)  # 12 rows per panel
    assert [r.label for r in drawn["busy"]] == ["a ×8", "link:a ×8"]
    assert [r.label for r in drawn["quiet"]] == ["a ×8"]
