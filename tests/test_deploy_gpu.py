"""A CUDA server end to end: each precision through the split backward and the grad scaler, a mid-epoch
checkpoint and resume, optimizer state on each parameter's device, a distributed run (gloo carries the
host tensors), and ``sfsim profile`` of a GPU in each precision. Skipped where CUDA is absent (``gpu``
marker; ``bench/gpu_check.sh`` runs them); the device-independence of optimizer state also runs on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from sfsim.cli import main
from trainer.methods.checkpoint import load_checkpoint, save_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(model, out, method, *extra, lora_dropout=None, tmp=None):
    devices = FIXTURES / "run_tiny.yaml"
    if lora_dropout is not None:  # the server's LoRA dropout draws from the server device's RNG
        data = yaml.safe_load(devices.read_text())
        data["training"]["lora"]["dropout"] = lora_dropout
        devices = Path(tmp) / "fleet.yaml"
        devices.write_text(yaml.safe_dump(data))
    args = ["run", "--quiet", "--devices", str(devices), "--model", model, "--task", "sst2", "--method", method,
            "--partition", "iid", "--train-samples", "16", "--eval-samples", "8", "--max-len", "32", "--lr", "0.01",
            "--data-dir", str(FIXTURES / "data"), "--out", str(out), "--no-flops", *extra]
    if "--launch" not in extra:
        args += ["--launch", "inprocess"]
    if method not in ("fedlora", "cenlora"):
        args += ["--split", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads((Path(out) / "metrics.json").read_text())


def _adapter(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("device", DEVICES)
def test_optimizer_state_is_restored_onto_each_parameters_device(tmp_path, device):
    """A checkpoint written from one device loads onto another: the moments go to the parameter's device, the
    step count stays on the CPU (AdamW's non-capturable layout)."""
    p = torch.nn.Parameter(torch.arange(4.0, device=device))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    save_checkpoint(tmp_path, {"p": p}, {"server": opt}, {"epoch": 0})
    for target in DEVICES:
        q = torch.nn.Parameter(torch.zeros(4, device=target))
        opt2 = torch.optim.AdamW([q], lr=0.1)
        weights, progress = load_checkpoint(tmp_path, {"server": opt2})
        st = opt2.state[q]
        assert progress == {"epoch": 0} and weights["p"].device.type == "cpu"
        assert st["exp_avg"].device == q.device and st["exp_avg_sq"].device == q.device
        assert st["step"].device.type == "cpu" and float(st["step"]) == 1.0
        torch.testing.assert_close(st["exp_avg"].cpu(), opt.state[p]["exp_avg"].cpu(), rtol=0, atol=0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["splitfrozen", "splitfrozen-sequential", "cenlora"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_with_the_split_backward_tracks_fp32(tiny_gpt2, tmp_path, method, precision):
    """SplitFrozen's decomposed backward (B now, W at the step) under autocast and, in fp16, the grad scaler
    (unscaled before the step): the losses follow the fp32 CUDA run's."""
    ref = _run(tiny_gpt2, tmp_path / "fp32", method, "--server-device", "cuda")
    m = _run(tiny_gpt2, tmp_path / precision, method, "--server-device", "cuda", "--precision", precision)
    assert m["config"]["precision"] == precision and m["config"]["server_device"] == "cuda"
    got, want = torch.tensor(m["train_loss_history"]), torch.tensor(ref["train_loss_history"])
    assert torch.isfinite(got).all() and len(got) == len(want)
    torch.testing.assert_close(got, want, rtol=0.02, atol=0.01)  # 8 (bf16) or 11 (fp16) mantissa bits, 4 steps


@pytest.mark.gpu
@needs_cuda
def test_cuda_checkpoint_mid_epoch_resumes_where_the_uninterrupted_run_ends(tiny_gpt2, tmp_path, monkeypatch):
    """With LoRA dropout on, the resumed run needs the CUDA RNG from the checkpoint (it kept only the CPU's)."""
    extra = ("--server-device", "cuda", "--epochs", "2", "--checkpoint-every", "3")
    ref = _run(tiny_gpt2, tmp_path / "ref", "splitfrozen", *extra, lora_dropout=0.2, tmp=tmp_path)

    def crash(self, step, *a):
        if step == 4:
            raise KeyboardInterrupt
    monkeypatch.setattr("trainer.run.steplog.StepLog.step", crash)
    with pytest.raises(AssertionError):  # killed after the checkpoint of step 3
        _run(tiny_gpt2, tmp_path / "cut", "splitfrozen", *extra, lora_dropout=0.2, tmp=tmp_path)
    monkeypatch.undo()
    res = CliRunner().invoke(main, ["run", "--quiet", "--resume", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    torch.testing.assert_close(torch.tensor(m["train_loss_history"]), torch.tensor(ref["train_loss_history"]),
                               rtol=1e-5, atol=1e-6)
    got, want = _adapter(tmp_path / "cut"), _adapter(tmp_path / "ref")
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["splitfrozen", "splitlora"])
def test_a_distributed_run_with_a_cuda_server(tiny_gpt2, tmp_path, method):
    """One process per role: the devices' CPU tensors cross gloo, the server moves them to its GPU and back."""
    m = _run(tiny_gpt2, tmp_path / method, method, "--server-device", "cuda", "--launch", "local",
             "--emulate", "none")
    assert m["config"]["server_device"] == "cuda" and m["train_samples"] == 16
    assert m["train_loss_history"] and all(0 < x < 10 for x in m["train_loss_history"])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_profile_of_a_cuda_server_in_each_precision(tiny_gpt2, tmp_path, precision):
    out = tmp_path / f"{precision}.yaml"
    res = CliRunner().invoke(main, ["profile", "--model", tiny_gpt2, "--role", "server", "--device", "cuda",
                                    "--precision", precision, "--micro-batch", "2", "--seq-len", "8", "--warmup", "1",
                                    "--repeats", "2", "--name", "gpu", "--quiet", "-o", str(out)])
    assert res.exit_code == 0, res.output
    p = yaml.safe_load(out.read_text())
    assert p["dtype"] == precision and p["machine"]["accelerator"] == torch.cuda.get_device_name(0)
    e = p["grid"][0]
    assert len(e["forward_train"]["blocks"]) == 4 and e["activation_bytes"] == [2 * 8 * 32 * 4] * 5
    assert set(e["codec"]) == {"fp16", "bf16", "int8", "int4"}
