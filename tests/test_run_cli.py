"""End-to-end tests of ``sfsim run`` and ``sfsim eval`` on a tiny random model and fixture data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.cli.run import summary_line
from sfsim.outputs.trace import read_chrome_trace

FIXTURES = Path(__file__).parent / "fixtures"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(model, out, **over):
    opts = {"--devices": str(FIXTURES / "run_tiny.yaml"), "--model": model, "--task": "sst2",
            "--method": "splitfrozen", "--partition": "label-skew:1", "--split": "1", "--epochs": "2",
            "--train-samples": "24", "--eval-samples": "20", "--max-len": "48", "--lr": "0.01",
            "--data-dir": str(FIXTURES / "data"), "--out": str(out)}
    opts.update(over)
    args = ["run", "--quiet"]
    for k, v in opts.items():
        if v is not None:
            args += [k, v]
    return args


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora"])
def test_run_writes_outputs_and_eval_reproduces_accuracy(tiny_gpt2, tmp_path, method):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, _args(tiny_gpt2, out, **{"--method": method}))
    assert res.exit_code == 0, res.output
    for name in ("metrics.json", "trace.json", "gantt.png", "run_config.json", "adapter/adapter_model.safetensors",
                 "adapter/head.safetensors", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    for key in ("method", "task", "eval_accuracy", "eval_history", "train_loss_history", "device_flops",
                "server_flops", "uplink_bytes", "downlink_bytes", "wall_s", "partition", "stream_mixing",
                "phase_s", "peak_rss_bytes", "config"):
        assert key in m, key
    assert m["method"] == method and len(m["eval_history"]) == 2
    assert len(m["train_loss_history"]) == 2 * (3 + 2 + 2)  # 12, 6, 6 samples; micro-batch 4
    assert m["partition"]["counts"] == {"big": {"0": 12, "1": 0}, "small-0": {"0": 0, "1": 6},
                                        "small-1": {"0": 6, "1": 0}}
    assert m["device_flops_total"] > 0 and m["server_flops_total"] > 0
    assert m["device_flops_total"] == sum(m["device_flops"].values())
    assert (m["downlink_bytes"] == 0) == (method == "splitfrozen")
    lanes = {e.lane for e in read_chrome_trace(out / "trace.json")}
    assert {"big", "link:big", "srv"} <= lanes
    res = CliRunner().invoke(main, ["eval", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["eval_accuracy"] == m["eval_accuracy"]
    res = CliRunner().invoke(main, ["eval", "--out", str(out), "--quiet"])  # the same summary as sfsim run's
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == summary_line(m, "eval of 20 dev rows", str(out))


@pytest.mark.parametrize("over, message", [
    ({"--model": "no-such-model"}, "unknown model 'no-such-model'"),
    ({"--data-dir": "/nonexistent/data"}, "data folder /nonexistent/data does not exist"),
    ({"--split": "9"}, "beyond the model's depth"),
    ({"--partition": "label-skew:x"}, "partition 'label-skew:x' is not valid"),
    ({"--method": "fedsgd"}, "unknown schedule/method 'fedsgd'"),
    ({"--task": "squad"}, "unknown task 'squad'"),
    ({"--server-order": "lifo"}, "unknown server order 'lifo'"),
    ({"--devices": "/nonexistent.yaml"}, "nonexistent.yaml"),
])
def test_bad_input_is_one_line_exit_2(tiny_gpt2, tmp_path, over, message):
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "o", **over))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "o").exists()  # a run that failed before producing anything leaves no folder


def test_eval_of_missing_run_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["eval", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "run_config.json is missing" in res.stderr
    (tmp_path / "run_config.json").write_text("{not json")
    res = CliRunner().invoke(main, ["eval", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a valid run configuration" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_eval_works_from_another_folder(tiny_gpt2, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(FIXTURES.parent.parent)  # relative --data-dir, as a user in the checkout types it
    args = _args(tiny_gpt2, out, **{"--data-dir": "tests/fixtures/data", "--epochs": "1", "--launch": "inprocess"})
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["eval", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["eval_accuracy"] == \
        json.loads((out / "metrics.json").read_text())["eval_accuracy"]


def test_options_that_do_not_apply(tiny_gpt2, tmp_path):
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "g", **{"--task": "gsm8k"}))
    assert res.exit_code == 2 and "gsm8k has no class labels to skew; use iid" in res.stderr
    args = _args(tiny_gpt2, tmp_path / "f", **{"--method": "fedlora", "--epochs": "1", "--launch": "inprocess"})
    args.remove("--quiet")  # notes are not errors: --quiet drops them
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "note: fedlora trains the whole model on every device" in res.stderr


def test_run_with_plan_uses_per_device_cuts(tiny_gpt2, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("lora_start: 2\nsplits: {big: 1, small-0: 2, small-1: 2}\n"
                    "assignment: {big: srv, small-0: srv, small-1: srv}\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, _args(tiny_gpt2, out, **{"--split": None, "--plan": str(plan), "--epochs": "1",
                                                            "--partition": "iid"}))
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["cuts"] == {"big": 1, "small-0": 2, "small-1": 2} and m["lora_blocks"] == [2, 3]
    assert m["downlink_bytes"] == 0 and set(m["device_flops"]) == {"big", "small-0", "small-1"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_start: 1\nsplits: {big: 1, small-0: 2, small-1: 2}\nassignment: {}\n")
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "b", **{"--split": None, "--plan": str(bad)}))
    assert res.exit_code == 2 and "below the largest cut 2" in res.stderr
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "c", **{"--plan": str(plan)}))
    assert res.exit_code == 2 and "either --plan or --split" in res.stderr


def test_a_malformed_data_file_is_one_line_and_leaves_no_folder(tiny_gpt2, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "data", data)
    (data / "sst2" / "train.tsv").write_bytes(b"sentence\tlabel\nfine\t1\n\xff\xfe broken\t\x00\n")
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "o", **{"--data-dir": str(data),
                                                                      "--launch": "inprocess"}))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.tsv: cannot read it as sst2 data" in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_an_unwritable_out_is_one_line(tiny_gpt2, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(main, _args(tiny_gpt2, blocker / "out", **{"--launch": "inprocess"}))
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "cannot write" in res.stderr, res.stderr


def test_a_port_in_use_is_one_line(tiny_gpt2, tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("SFSIM_SECRET", "0123456789abcdef0123456789abcdef")  # a started role must hold the run's secret
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "o", **{"--launch": "local"}) + [
            "--role", "server", "--rank", "0", "--world-size", "4", "--master", f"127.0.0.1:{port}"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1 and "port in use" in lines[0], res.stderr


@pytest.mark.parametrize("command", ["run", "eval", "simulate", "plan", "sweep", "validate", "profile", "report"])
def test_every_help_has_an_example_and_marks_required_options(command):
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0
    assert "Example:" in res.output and f"sfsim {command} " in res.output.split("Example:")[1]
    if command in ("run", "simulate", "plan", "sweep", "eval"):
        assert "required" in res.output


def test_a_device_resumed_elsewhere_without_the_run_config_is_told_in_one_line_what_it_needs(tmp_path):
    """A device on another machine has its own OUT (its state/ for SplitLoRA or FedLoRA) but not server 0's
    run_config.json: one line says what to copy and what must be readable, exit 2, before any connection."""
    from sfsim.cli.run import DEVICE_ELSEWHERE

    (tmp_path / "state").mkdir()
    args = ["run", "--resume", str(tmp_path), "--role", "device", "--rank", "2", "--world-size", "4",
            "--master", "127.0.0.1:9"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {DEVICE_ELSEWHERE.format(out=tmp_path)}"
    assert "copied to" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["run", "--resume", str(tmp_path)])  # not a device: the usual line
    assert res.exit_code == 2 and "point --resume at a folder written by sfsim run" in res.stderr
