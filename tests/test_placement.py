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


def _two_servers(tmp_path, a_device: str | None) -> str:
    a = f", device: {a_device}" if a_device else ""
    p = tmp_path / "s.yaml"
    p.write_text(
        "model: {name: minilm-l6, seq_len: 64, task: classification, num_labels: 2}\n"
        "training: {micro_batch: 4, epochs: 1, lora: {rank: 8, alpha: 16, targets: [query, value]}}\n"
        "servers:\n"
        f"  - {{name: a, flops: 10 TFLOPS, memory: 16 GB{a}}}\n"
        "  - {name: b, flops: 10 TFLOPS, memory: 16 GB, device: cpu}\n"
        "devices:\n"
        "  - {name: p, count: 2, flops: 1 GFLOPS, memory: 4 GB, samples: 16,\n"
        "     uplink: {bandwidth: 50 Mbps, latency: 5 ms}, downlink: {bandwidth: 50 Mbps, latency: 5 ms}}\n")
    return str(p)


def test_the_scenario_places_each_server_and_the_cli_overrides_it(tmp_path):
    from types import SimpleNamespace

    from trainer.run.runner import server_devices

    path = _two_servers(tmp_path, "cuda:1")
    assert server_devices(SimpleNamespace(devices=path, server_device=None)) == [
        ("cuda:1", f"{path}: servers[a].device"), ("cpu", f"{path}: servers[b].device")]
    assert server_devices(SimpleNamespace(devices=path, server_device="cpu")) == [
        ("cpu", "--server-device"), ("cpu", "--server-device")]
    path = _two_servers(tmp_path, None)
    assert server_devices(SimpleNamespace(devices=path, server_device=None))[0] == (None, "auto")


def test_a_scenario_device_this_machine_lacks_is_one_line_naming_the_key(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SfsimError, match=r"s\.yaml: servers\[a\]\.device cuda: this machine has no CUDA device"):
        placement_for("splitfrozen", "cuda", "cpu", "fp32", f"{tmp_path}/s.yaml: servers[a].device")
    _, line = placement_for("splitfrozen", "cpu", "cpu", "fp32", "s.yaml: servers[b].device")
    assert line == "server on cpu (s.yaml: servers[b].device), fp32; devices on cpu"


def test_a_server_device_that_is_no_torch_device_is_refused_in_the_scenario(tmp_path):
    from sfsim.errors import ConfigError
    from sfsim.scenario.config import load_scenario

    with pytest.raises(ConfigError, match=r"servers\[0\]\.device: 'gpu0' is not a torch device here: use cpu, cuda"):
        load_scenario(_two_servers(tmp_path, "gpu0"))
