"""Issue 22's new-user audit: what ``sfsim validate`` and ``sfsim run`` got wrong on scenarios written for it,
each a one-line error with exit status 2, given before anything slow (a self-profile, the run's processes)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from sfsim.cli import main
from trainer.run.fleet import root_error

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fleet(tmp_path, big: dict) -> str:
    """runtime_tiny's fleet with its ``big`` device changed by ``big``."""
    data = yaml.safe_load((FIXTURES / "runtime_tiny.yaml").read_text())
    data["devices"][0].update(big)
    data["devices"][0] = {k: v for k, v in data["devices"][0].items() if v is not None}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _validate(tmp_path, model, fleet, *extra):
    return CliRunner().invoke(main, ["validate", "--devices", fleet, "--model", model, "--method", "splitfrozen",
                                     "--max-len", "24", "--train-samples", "16", "--data-dir", str(FIXTURES / "data"),
                                     "--out", str(tmp_path / "val"), *extra])


def _one_line(res, start: str, end: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "server profile" not in res.output  # nothing was profiled
    err = res.output.strip().splitlines()[-1]
    assert err.startswith(start) and err.endswith(end), err
    return err


LATENCY = str(ROOT / "profiles" / "latency" / "ci-x86-2core-gpt2.yaml")


def test_validate_refuses_a_device_without_flops_to_emulate_before_profiling(tiny_gpt2, tmp_path, monkeypatch):
    """It failed after the self-profile with 'rendezvous: rank 1 (big) did not join within 30 s'."""
    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    fleet = _fleet(tmp_path, {"flops": None, "latency_profile": LATENCY})
    _one_line(_validate(tmp_path, tiny_gpt2, fleet), f"error: {fleet}: devices[big] has a latency profile and no "
              "'flops': --emulate all slows each device down", "validate with --emulate links and --device-profile "
              "(devices at this machine's speed)")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("extra", "start", "end"), [
    (("--split", "9"), "error: --split 9 is outside 0..3 (", "has 4 blocks); pick a cut in that range"),  # a traceback
    (("--method", "splitfozen"), "error: unknown schedule/method 'splitfozen'", "cenlora"),  # after profiling
    (("--train-samples", "0"), "error: --train-samples must be >= 1 (got 0)", "(got 0)"),
    (("--micro-batch", "0"), "error: --micro-batch must be >= 1 (got 0)", "(got 0)"),
])
def test_validate_option_mistakes_are_one_line_before_profiling(tiny_gpt2, tmp_path, monkeypatch, extra, start, end):
    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    _one_line(_validate(tmp_path, tiny_gpt2, str(FIXTURES / "runtime_tiny.yaml"), *extra), start, end)


@pytest.mark.slow  # ~20 s: the server waits out the rendezvous (at least 10 s) before it reports
def test_a_device_that_dies_before_the_rendezvous_names_itself(tiny_gpt2, tmp_path):
    """``sfsim run --launch local``: the server reported only 'rank 1 (big) did not join within 30 s'
    (:func:`test_root_error_names_the_first_failed_device` runs its logic in the default suite)."""
    fleet = _fleet(tmp_path, {"flops": None, "latency_profile": LATENCY})
    data = yaml.safe_load(Path(fleet).read_text())
    data["devices"][1] = {k: v for k, v in data["devices"][1].items() if k != "flops"} | {"latency_profile": LATENCY}
    Path(fleet).write_text(yaml.safe_dump(data))  # every device dies at once: no grace period to wait out
    res = CliRunner().invoke(main, ["run", "--devices", fleet, "--model", tiny_gpt2, "--task", "sst2", "--method",
                                    "splitfrozen", "--partition", "iid", "--split", "1", "--train-samples", "16",
                                    "--max-len", "24", "--data-dir", str(FIXTURES / "data"), "--emulate", "compute",
                                    "--quiet", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1] == (f"error: big: {fleet}: device big has a latency profile; "
                                                   "--emulate compute needs a 'flops' rate for every device")


def test_root_error_names_the_first_failed_device(tmp_path):
    (tmp_path / "a.log").write_text("loading\nerror: first\n")
    (tmp_path / "b.log").write_text("note: x\nerror: old\nerror: why b failed\n")
    (tmp_path / "c.log").write_text("error: c is still running\n")
    lost = "error: rendezvous: rank 2 (b) did not join within 30 s (--peer-timeout); check ..."
    assert root_error(lost, tmp_path, ["a", "c", "b"], [0, None, 1]) == "error: b: why b failed"
    assert root_error(lost, tmp_path, ["a", "missing"], [0, 1]) == lost
    assert root_error("error: the server's own", tmp_path, ["b"], [1]) == "error: the server's own"
    assert root_error(None, tmp_path, ["b"], [1]) is None


def test_several_servers_share_the_cores_with_each_other(tiny_gpt2, tmp_path, monkeypatch):
    """Two servers and four devices are 6 processes (the header said 5), and each server's stretch counts the other
    server's busy share besides the devices' (it counted the devices only)."""
    from sfsim.cost.hostshare import slowdown

    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    res = _validate(tmp_path, tiny_gpt2, str(FIXTURES / "runtime_two_servers.yaml"), "--split", "1")
    assert res.exit_code == 0, res.output
    rep = yaml.safe_load((tmp_path / "val" / "report.json").read_text())
    host = rep["header"]["host"]
    assert host["processes"] == 6 and set(host["server_slowdowns"]) == set(host["server_cpu_shares"]) == {"mec-a",
                                                                                                         "mec-b"}
    devices = [(p, 1) for p in host["device_cpu_shares"].values()]
    for s, other in (("mec-a", "mec-b"), ("mec-b", "mec-a")):
        assert 0 < host["server_cpu_shares"][s] <= 1
        want = slowdown(host["cores"], [*devices, (host["server_cpu_shares"][other], 1)])
        assert host["server_slowdowns"][s] == pytest.approx(want, abs=2e-4)
        assert (tmp_path / "val" / f"server-profile-shared-{s}.yaml").is_file()
    assert host["server_slowdown"] == max(host["server_slowdowns"].values())
    assert "servers stretched mec-a x" in res.output


def test_validate_prints_no_weight_loading_bar(tiny_gpt2, tmp_path, monkeypatch):
    """The self-profile loaded the model with transformers' 'Loading weights' bar among validate's notes."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("SFSIM_CACHE", str(tmp_path / "cache"))
    hf_logging.enable_progress_bar()
    try:
        res = _validate(tmp_path, tiny_gpt2, _fleet(tmp_path, {"flops": "1 PFLOPS"}))
    finally:
        hf_logging.disable_progress_bar()
    assert res.exit_code == 2 and "server profile: measuring" in res.output, res.output
    assert "Loading weights" not in res.output


def test_a_drained_servers_last_sync_steps_through_the_grad_scaler():
    """fp16 with several servers: a server that has drained steps on the others' mean gradient in the last sync
    rounds; that gradient is scaled like every other, so the step must go through the scaler (it was a plain
    ``opt.step()``: a step 1024 times too large here, and the servers' scalers out of step)."""
    import torch

    from trainer.methods.common import Method, Placement, ServerMath

    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=1.0)

    class Sync:
        def finish(self, state, params, step):
            for q in params:
                q.grad = torch.full_like(q, 1024.0)  # the mean of gradients scaled by 1024
            step()

    class Server(Method):
        def optimizers(self):
            return {"server": opt}

    m = Server(None)
    steps = []  # the drained server's step is traced as every step (trainer.methods.common.Method.finish_sync)
    m.setup = SimpleNamespace(server="s", meter=SimpleNamespace(
        compute=lambda *a, **k: steps.append(a) or contextlib.nullcontext()))
    m.sync, m.math = Sync(), ServerMath(Placement())
    m.math.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    m.math.scaler.scale(torch.ones(1))  # its earlier steps of the epoch scaled their losses
    m.finish_sync()
    assert p.tolist() == [-1.0, -1.0, -1.0] and p.grad is None
    assert steps == [("s", "step", "server_step")]


def test_a_profile_of_another_model_is_refused_before_the_run(tiny_gpt2, tmp_path):
    """A server profile measured on GPT-2 (12 blocks of 768) was taken for a 4-block tiny GPT-2 run without a word."""
    res = _validate(tmp_path, tiny_gpt2, str(FIXTURES / "runtime_tiny.yaml"), "--server-profile", LATENCY)
    err = _one_line(res, f"error: --server-profile {LATENCY}: it was measured on gpt2 (gpt2, 12 blocks of width 768), "
                    "this run's is ", "(gpt2, 4 blocks of width 32): measure it with sfsim profile --model "
                    f"{tiny_gpt2} or leave --server-profile out (validate then profiles this machine)")
    assert not (tmp_path / "val" / "run").exists(), err


def test_profile_mismatch_names_the_model_or_the_head():
    from sfsim.model.arch import BUILTIN
    from trainer.validate.machine import profile_mismatch

    gpt2, minilm = BUILTIN["gpt2"], BUILTIN["minilm-l6"]
    assert profile_mismatch({"model": "gpt2", "task": "classification"}, gpt2, "classification") is None
    assert profile_mismatch({"model": "gpt2", "task": "causal-lm"}, gpt2, "classification") == (
        "it was measured with a causal-lm head (gpt2)")
    assert profile_mismatch({"model": "gpt2"}, minilm, "classification") == (
        "it was measured on gpt2 (gpt2, 12 blocks of width 768)")
    arch = {"family": "bert", "n_layers": 6, "hidden": 384}
    assert profile_mismatch({"model": "/x/config.json", "arch": arch}, minilm, "classification") is None
    assert profile_mismatch({"model": "unknown-name"}, minilm, "classification") is None  # cannot tell


def test_an_overflowed_fp16_gradient_goes_down_as_zeros():
    """SplitLoRA under fp16: the cut-layer gradient sent to a client was divided by the scale even when it had
    overflowed (the server's scaler then skips its step), so the client stepped on inf or nan."""
    import torch

    from trainer.methods.common import Placement, ServerMath

    math = ServerMath(Placement())
    g = torch.tensor([512.0, -1024.0])
    assert math.unscaled(g) is g  # no scaler: as it is
    math.scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    math.scaler.scale(torch.ones(1))
    assert math.unscaled(g).tolist() == [1.0, -2.0]
    assert math.unscaled(torch.tensor([1.0, float("inf")])).tolist() == [0.0, 0.0]
    assert math.unscaled(torch.tensor([float("nan"), 1.0])).tolist() == [0.0, 0.0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_run_refuses_a_missing_gpu_before_any_process_starts(tiny_gpt2, tmp_path):
    """``--server-device cuda`` on a machine without CUDA was refused by the server process after every role
    had started and loaded the model (24 s for MiniLM here)."""
    res = CliRunner().invoke(main, ["run", "--devices", str(FIXTURES / "runtime_tiny.yaml"), "--model", tiny_gpt2,
                                    "--task", "sst2", "--method", "splitfrozen", "--partition", "iid", "--split", "1",
                                    "--train-samples", "16", "--data-dir", str(FIXTURES / "data"), "--server-device",
                                    "cuda", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("error: --server-device cuda: this machine has no CUDA")
    assert "starting the servers" not in res.output and not (tmp_path / "run" / "logs").exists()
