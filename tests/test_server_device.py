"""The server's part on its own device: every method at bf16 on the CPU, the copies a GPU server trains
(run here on the CPU with ``Placement.apart``: bit-exact with the shared model, through a checkpoint and a
resume), and the same split with the server on CUDA or MPS where this machine has one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sfsim.cli import main
from trainer.methods import common
from trainer.methods.common import Placement

FIXTURES = Path(__file__).resolve().parent / "fixtures"
METHODS = ("splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora", "cenlora")
CUDA = torch.cuda.is_available()
MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(model, out, method, *extra, split="1"):
    args = ["run", "--quiet", "--devices", str(FIXTURES / "run_tiny.yaml"), "--model", model, "--task", "sst2",
            "--method", method, "--partition", "iid", "--train-samples", "16", "--eval-samples", "8",
            "--max-len", "32", "--lr", "0.01", "--data-dir", str(FIXTURES / "data"), "--launch", "inprocess",
            "--out", str(out), "--no-flops", *extra]
    if method not in ("fedlora", "cenlora") and "--plan" not in extra:
        args += ["--split", split]
    if "--server-device" not in extra:  # the CPU, also where auto would take a GPU
        args += ["--server-device", "cpu"]
    return args


def _run(model, out, method, *extra):
    res = CliRunner().invoke(main, _args(model, out, method, *extra))
    assert res.exit_code == 0, res.output
    return json.loads((Path(out) / "metrics.json").read_text())


def _apart(monkeypatch):
    """Every run from here trains the server's copies, as a GPU server does, on the CPU."""
    real = common.placement_for

    def apart(*args):
        placement, line = real(*args)
        placement.apart = True
        return placement, line
    monkeypatch.setattr("trainer.run.runner.placement_for", apart)


def _adapter(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {**load_file(str(Path(out) / "adapter" / "adapter_model.safetensors")),
            **{f"head.{k}": v for k, v in load_file(str(Path(out) / "adapter" / "head.safetensors")).items()}}


@pytest.fixture(scope="module")
def fp32(tiny_gpt2, tmp_path_factory):
    """Each method's fp32 run on the CPU (the model's own modules): metrics and trained adapter."""
    root = tmp_path_factory.mktemp("fp32")
    return {m: (_run(tiny_gpt2, root / m, m), _adapter(root / m)) for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_bf16_server_on_the_cpu_matches_fp32_within_bf16(tiny_gpt2, fp32, tmp_path, method):
    m = _run(tiny_gpt2, tmp_path / "bf16", method, "--server-device", "cpu", "--precision", "bf16")
    ref, ref_adapter = fp32[method]
    assert m["config"]["precision"] == "bf16" and len(m["train_loss_history"]) == len(ref["train_loss_history"])
    got, want = torch.tensor(m["train_loss_history"]), torch.tensor(ref["train_loss_history"])
    adapter = _adapter(tmp_path / "bf16")
    if method == "fedlora":  # its server trains nothing: the devices' fp32 training, bit for bit
        assert torch.equal(got, want) and all(torch.equal(adapter[k], v) for k, v in ref_adapter.items())
        return
    assert not torch.equal(got, want)  # bf16 did run: the losses moved
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4%); 4 steps moved the losses by 0.15% here
    torch.testing.assert_close(got, want, rtol=0.01, atol=0.005)
    # AdamW moves every weight by about lr per step whatever its gradient's size, so where a gradient is near
    # zero bf16 may flip a step's sign: the adapters agree to lr x steps (0.04), not to a relative bound
    for k, v in ref_adapter.items():
        torch.testing.assert_close(adapter[k], v, rtol=0, atol=0.01 * len(want), msg=k)


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "cenlora"])
def test_server_copies_train_bit_exactly_as_the_shared_model(tiny_gpt2, fp32, tmp_path, monkeypatch, method):
    _apart(monkeypatch)
    m = _run(tiny_gpt2, tmp_path / "apart", method)
    ref, ref_adapter = fp32[method]
    assert m["train_loss_history"] == ref["train_loss_history"] and m["eval_history"] == ref["eval_history"]
    adapter = _adapter(tmp_path / "apart")
    assert adapter.keys() == ref_adapter.keys() and all(torch.equal(adapter[k], v) for k, v in ref_adapter.items())


def test_copies_with_two_cuts_checkpoint_and_resume_bit_exactly(tiny_gpt2, tmp_path, monkeypatch):
    """SplitFrozen with cuts 1 and 2 (the server's parts share blocks and the head), checkpointed mid-epoch
    from its copies and resumed into them, ends where one shared run does."""
    plan = tmp_path / "plan.yaml"
    plan.write_text("lora_start: 2\nsplits: {big: 1, small-0: 2, small-1: 2}\n"
                    "assignment: {big: srv, small-0: srv, small-1: srv}\n")
    extra = ("--epochs", "2", "--checkpoint-every", "3", "--plan", str(plan))
    ref = _run(tiny_gpt2, tmp_path / "ref", "splitfrozen", *extra)
    _apart(monkeypatch)

    def crash(self, step, *a):  # dies at its 4th step (of 4 in epoch 1): the checkpoint of step 3 is mid-epoch
        if step == 4:
            raise KeyboardInterrupt
    monkeypatch.setattr("trainer.run.steplog.StepLog.step", crash)
    res = CliRunner().invoke(main, _args(tiny_gpt2, tmp_path / "cut", "splitfrozen", *extra))
    assert res.exit_code == 130, res.output
    monkeypatch.undo()
    _apart(monkeypatch)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    res = CliRunner().invoke(main, ["run", "--quiet", "--resume", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["train_loss_history"] == ref["train_loss_history"] and m["eval_history"] == ref["eval_history"]
    got, want = _adapter(tmp_path / "cut"), _adapter(tmp_path / "ref")
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_fedlora_server_refuses_a_gpu_in_one_line(monkeypatch):
    placement, line = common.placement_for("fedlora", None, "cpu", "fp32")
    assert placement.server == torch.device("cpu") and line == "server on cpu (auto), fp32; devices on cpu"
    assert common.placement_for("fedlora", "cpu", "cpu", "bf16")[1] == ("server on cpu (--server-device), bf16; devices "
                                                                       "on cpu (fedlora's server trains nothing: the "
                                                                       "devices train in fp32)")
    monkeypatch.setattr(common, "resolve_device", lambda spec, what: torch.device(spec))  # as on a GPU machine
    with pytest.raises(common.SfsimError, match=r"^--server-device cuda: fedlora's server trains nothing .*"
                                                r"use --server-device cpu$"):
        common.placement_for("fedlora", "cuda", "cpu", "fp32")
    for method in ("splitfrozen", "splitlora", "cenlora"):
        placement, line = common.placement_for(method, "cuda", "cpu", "bf16")
        assert placement.server == torch.device("cuda") and line == "server on cuda (--server-device), bf16; devices on cpu"


def _split_on(kind: str, tiny_gpt2, tmp_path, method: str):
    cpu = _run(tiny_gpt2, tmp_path / f"{method}-cpu", method, "--server-device", "cpu")
    dev = _run(tiny_gpt2, tmp_path / f"{method}-{kind}", method, "--server-device", kind)
    assert dev["config"]["server_device"] == kind
    # fp32 on both; the GPU's kernels sum in another order (1e-6 relative per op, a few steps)
    torch.testing.assert_close(torch.tensor(dev["train_loss_history"]), torch.tensor(cpu["train_loss_history"]),
                               rtol=1e-4, atol=1e-4)
    got, want = _adapter(tmp_path / f"{method}-{kind}"), _adapter(tmp_path / f"{method}-cpu")
    for k, v in want.items():  # AdamW divides by sqrt(v): a near-zero gradient's rounding may move a weight more
        torch.testing.assert_close(got[k], v, rtol=1e-3, atol=1e-3, msg=k)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "cenlora"])
def test_a_tiny_split_with_the_server_on_cuda_matches_the_cpu(tiny_gpt2, tmp_path, method):
    _split_on("cuda", tiny_gpt2, tmp_path, method)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_fp16_on_cuda_trains_with_a_grad_scaler(tiny_gpt2, tmp_path):
    m = _run(tiny_gpt2, tmp_path / "fp16", "splitlora", "--server-device", "cuda", "--precision", "fp16")
    assert m["train_loss_history"] and all(0 < x < 10 for x in m["train_loss_history"])


@pytest.mark.skipif(not MPS, reason="needs Apple MPS")
@pytest.mark.parametrize("method", ["splitfrozen", "splitlora"])
def test_a_tiny_split_with_the_server_on_mps_matches_the_cpu(tiny_gpt2, tmp_path, method):
    _split_on("mps", tiny_gpt2, tmp_path, method)


def test_placement_separate_is_off_the_cpu_or_apart():
    assert not Placement().separate and Placement(apart=True).separate
