"""Where roles compute: the stated default, the one-line refusals, and a bf16 server run on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.errors import SfsimError
from trainer.methods.common import placement_for


def test_auto_is_the_cpu_for_a_server_that_trains_nothing():
    placement, line = placement_for("fedlora", None, "cpu", "fp32")
    assert placement.server == torch.device("cpu")
    assert line == "server on cpu (auto), fp32; devices on cpu"


@pytest.mark.parametrize("server,device,precision,match", [
    ("cuda:7", "cpu", "fp32", "--server-device cuda:7"),
    ("tpu", "cpu", "fp32", "use cpu, cuda, cuda:N, mps or auto"),
    ("cpu", "cuda", "fp32", "--device-device cuda: device roles compute on the CPU"),
    ("cpu", "cpu", "fp16", "--precision fp16 needs a CUDA server"),
    ("cpu", "cpu", "int3", "--precision 'int3'"),
])
def test_values_this_machine_cannot_honour_are_one_line_errors(server, device, precision, match):
    if server == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    with pytest.raises(SfsimError, match=match.replace("(", r"\(").replace("[", r"\[")):
        placement_for("splitfrozen", server, device, precision)


def _run(tiny_gpt2, out, *extra):
    fixtures = "tests/fixtures"
    return CliRunner().invoke(main, ["run", "--quiet", "--devices", f"{fixtures}/run_tiny.yaml", "--model", tiny_gpt2,
                                     "--task", "sst2", "--method", "splitfrozen", "--partition", "iid", "--split", "1",
                                     "--train-samples", "12", "--eval-samples", "8", "--max-len", "32",
                                     "--data-dir", f"{fixtures}/data", "--launch", "inprocess", "--out", str(out),
                                     *extra])


@pytest.mark.usefixtures("one_torch_thread")
def test_run_refuses_a_gpu_device_role_before_anything_runs(tiny_gpt2, tmp_path):
    out = tmp_path / "run"
    r = _run(tiny_gpt2, out, "--device-device", "cuda")
    assert r.exit_code == 2, r.output
    assert "--device-device cuda" in r.output and "Traceback" not in r.output
    assert not out.exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_bf16_server_trains_on_the_cpu(tiny_gpt2, tmp_path):
    r = _run(tiny_gpt2, tmp_path / "run", "--precision", "bf16")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["config"]["precision"] == "bf16" and m["config"]["server_device"] is None
    assert m["train_loss_history"] and all(0 < x < 10 for x in m["train_loss_history"])
