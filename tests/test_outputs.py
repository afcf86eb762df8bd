"""Outputs: SimResult JSON, Chrome trace, Gantt PNG, the comparison table and the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import sfsim
from sfsim.cli import main
from sfsim.cli.simulate import parse_split
from sfsim.errors import SfsimError
from sfsim.report import comparison_table, saving, si

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


def test_parse_split():
    assert parse_split("3") == 3 and parse_split(None) is None
    assert parse_split("pi-0=2, phone=4") == {"pi-0": 2, "phone": 4}
    for bad in ("pi-0", "=3", "a=b", ","):
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


def test_gantt_widens_only_isolated_short_ops():
    from sfsim.gantt import _bars
    from sfsim.trace import TraceEvent as E

    bars = _bars([E("a", "send", 0, 0.01), E("a", "send", 5, 0.01), E("b", "F", 0, 0.01), E("b", "B", 1.5, 0.01),
                  E("b", "F", 1.9, 2)], min_w=1.0)
    assert bars[("a", "send")] == [(0, 1.0), (5, 1.0)]          # isolated: one pixel wide
    assert bars[("b", "F")] == [(0, 0.01), (1.9, 2)] and bars[("b", "B")] == [(1.5, 0.01)]  # dense: true width
