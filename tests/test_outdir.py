"""Output folders: an earlier run is never overwritten silently, a failed run leaves no empty folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.errors import SfsimError
from sfsim.outputs.outdir import check_out, output_folder
from sfsim.units import format_amount

FIXTURES = Path(__file__).parent / "fixtures"


def test_new_or_empty_folder_is_accepted(tmp_path):
    assert check_out(tmp_path / "new") == tmp_path / "new" and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert check_out(tmp_path / "empty") == tmp_path / "empty"


@pytest.mark.parametrize("files, overwrite, message", [
    (["run_config.json", "metrics.json"], False, "already holds an earlier run; pass --overwrite to replace it, "
                                                 "or choose another --out"),
    (["run_config.json", "checkpoint.safetensors"], False, "already holds an earlier run; pass --resume {out} to "
     "continue it from its checkpoint, --overwrite to replace it, or choose another --out"),
    (["notes.txt"], False, "already holds files; pass --overwrite to replace it, or choose another --out"),
    (["notes.txt"], True, "is not empty and holds no sfsim output (no run_config.json or report.json); "
                          "--overwrite replaces only an earlier run: choose a new or empty folder"),
])
def test_non_empty_folder_is_refused_with_the_fix(tmp_path, files, overwrite, message):
    out = tmp_path / "o"
    out.mkdir()
    for f in files:
        (out / f).write_text("{}")
    with pytest.raises(SfsimError) as err:
        check_out(out, overwrite=overwrite)
    assert str(err.value) == f"--out {out} " + message.format(out=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # nothing touched


def test_overwrite_replaces_an_earlier_run(tmp_path):
    out = tmp_path / "o"
    (out / "adapter").mkdir(parents=True)
    (out / "run_config.json").write_text("{}")
    with output_folder(out, overwrite=True) as o:
        assert not o.exists()
        o.mkdir()
        (o / "metrics.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["metrics.json"] and [p.name for p in tmp_path.iterdir()] == ["o"]


def test_overwrite_that_fails_before_any_output_keeps_the_earlier_run(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run_config.json").write_text("old")
    (out / "metrics.json").write_text("old")
    with pytest.raises(SfsimError, match="boom"), output_folder(out, overwrite=True):
        out.mkdir()
        (out / "run_config.json").write_text("new")
        raise SfsimError("boom")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"run_config.json": "old", "metrics.json": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


@pytest.mark.parametrize("existed", [False, True])
def test_failure_before_any_output_leaves_no_files(tmp_path, existed):
    out = tmp_path / "o"
    if existed:
        out.mkdir()
    with pytest.raises(SfsimError, match="boom"), output_folder(out):
        (out / "logs").mkdir(parents=True)
        (out / "logs" / "server.log").write_text("starting\n")
        (out / "run_config.json").write_text("{}")
        raise SfsimError("boom")
    assert out.exists() == existed and (not existed or not any(out.iterdir()))


def test_failure_keeps_finished_work_and_logs_the_error_names(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(SfsimError), output_folder(out):
        out.mkdir()
        (out / "run_config.json").write_text("{}")
        (out / "checkpoint.safetensors").write_text("")
        raise SfsimError("killed")
    assert (out / "checkpoint.safetensors").is_file()
    with pytest.raises(SfsimError), output_folder(tmp_path / "p"):
        (tmp_path / "p" / "logs").mkdir(parents=True)
        raise SfsimError(f"the server process exited with status 1; logs in {tmp_path / 'p' / 'logs'}")
    assert (tmp_path / "p" / "logs").is_dir()


@pytest.mark.usefixtures("one_torch_thread")
def test_run_into_an_earlier_run(tiny_gpt2, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--devices", str(FIXTURES / "run_tiny.yaml"), "--model", tiny_gpt2, "--task", "sst2",
            "--method", "splitfrozen", "--partition", "iid", "--split", "1", "--epochs", "1", "--train-samples", "12",
            "--eval-samples", "8", "--max-len", "32", "--launch", "inprocess", "--data-dir", str(FIXTURES / "data"),
            "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    first = (out / "metrics.json").read_text()
    m = json.loads(first)  # the summary prints FLOPs and bytes as sfsim simulate does
    assert (f"device FLOPs {format_amount(m['device_flops_total'], 'FLOP')}, server FLOPs "
            f"{format_amount(m['server_flops_total'], 'FLOP')}, uplink {format_amount(m['uplink_bytes'], 'B')}, "
            f"downlink 0 B, {m['wall_s']:.1f} s -> {out}") in res.stdout
    assert m["uplink_bytes"] > 2**10 and format_amount(m["uplink_bytes"], "B").endswith("KiB")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and res.stderr == (f"error: --out {out} already holds an earlier run; pass --resume {out} "
                                                 "to continue it from its checkpoint, --overwrite to replace it, or "
                                                 "choose another --out\n")
    assert (out / "metrics.json").read_text() == first
    res = CliRunner().invoke(main, ["run", "--resume", str(out)])  # --resume is not refused: nothing left to train
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["eval_history"] == m["eval_history"]
    res = CliRunner().invoke(main, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["eval_history"] == json.loads(first)["eval_history"]
