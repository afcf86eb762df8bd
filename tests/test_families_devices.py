"""Devices and precision: roles on cpu / cuda[:N] / mps, the server's autocast and grad scaler, the wire.

Everything here runs on CPU; the tests marked ``gpu`` run wherever CUDA is present (and are skipped
elsewhere: ``bench/gpu_check.sh`` runs them on a GPU machine).
"""

from __future__ import annotations

import pytest
import torch

from sfsim.errors import SfsimError
from trainer import split_model, tiny_model
from trainer.methods.common import (
    Placement,
    ServerMath,
    best_device,
    from_wire,
    resolve_device,
    task_loss,
    to_wire,
)
from trainer.model.lora import add_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def test_cpu_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == torch.device(best_device())
    assert Placement().precision == "fp32" and Placement().server.type == "cpu"


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(SfsimError, match=r"^--server-device cuda:1: this machine has no CUDA device \(torch .*\); "
                                         r"use cpu or auto$"):
        resolve_device("cuda:1")
    with pytest.raises(SfsimError, match="^--precision fp16 needs a CUDA server"):
        Placement.of("cpu", "cpu", "fp16")


def test_bad_values_are_one_line():
    with pytest.raises(SfsimError, match=r"^--device-device 'tpu': use cpu, cuda, cuda:N, mps or auto$"):
        resolve_device("tpu", "--device-device")
    with pytest.raises(SfsimError, match=r"^--server-device 'cuda:x': use"):
        resolve_device("cuda:x")
    with pytest.raises(SfsimError, match=r"^--precision 'fp8': use fp32, bf16, fp16$"):
        Placement(precision="fp8")


def _step(lm, placement: Placement, steps: int = 3) -> list[float]:
    """A few LoRA training steps of the server part of ``lm`` under ``placement``; the losses."""
    torch.manual_seed(0)
    dev, srv = split_model(lm.model, 1)
    add_lora(srv, blocks=[1, 2], targets=["q_proj", "v_proj"], rank=2, alpha=4)
    srv.to(placement.server)
    math = ServerMath(placement)
    opt = torch.optim.AdamW([p for p in srv.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 60, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    losses = []
    for _ in range(steps):
        wire = {"hidden": to_wire(dev(ids, mask)), "attention_mask": mask, "labels": ids}
        t = from_wire(wire, placement.server)
        with math.autocast():
            loss = task_loss(srv(t["hidden"], t["attention_mask"]), t["labels"], True)
        math.backward(loss)
        math.step(opt)
        losses.append(loss.item())
    return losses


def test_fp32_placement_is_the_plain_loop_and_bf16_autocast_trains_on_cpu():
    fp32 = _step(tiny_model("llama", n_layers=3), Placement())
    bf16 = _step(tiny_model("llama", n_layers=3), Placement(precision="bf16"))
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]
    assert fp32 != bf16 and abs(fp32[0] - bf16[0]) < 0.05  # same model, bf16 rounding only


def test_wire_keeps_cpu_tensors_as_they_are():
    t = torch.arange(6.0)
    assert to_wire(t) is t and from_wire({"x": t}, torch.device("cpu"))["x"] is t


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_server_trains_in_each_precision(precision):
    placement = Placement.of("cuda", "cpu", precision)
    losses = _step(tiny_model("gemma3", n_layers=3), placement, steps=5)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@gpu
@pytest.mark.gpu
def test_cuda_split_matches_cpu_and_the_wire_is_pinned():
    lm = tiny_model("qwen3", n_layers=4)
    ids = torch.randint(5, 60, (2, 10))
    mask = torch.ones_like(ids)
    dev, srv = split_model(lm.model, 2)
    with torch.no_grad():
        ref = srv(dev(ids, mask), mask)
        h = dev(ids, mask)
        srv.to("cuda")
        out = srv(from_wire({"h": h}, torch.device("cuda"))["h"], mask.cuda())
    assert torch.allclose(out.cpu(), ref, atol=1e-4)
    back = to_wire(out)
    assert back.device.type == "cpu" and back.is_pinned()


@gpu
@pytest.mark.gpu
def test_profile_measures_a_gpu_server_like_a_cpu(tmp_path):
    from sfsim.cost.latency import load_latency_profile
    from trainer.validate.profile import ProfileSpec, profile_model, write_profile

    prof = profile_model(tiny_model("gemma3", n_layers=2), ProfileSpec([2], [8], repeats=2, warmup=1, role="server",
                                                                        device="cuda"), model="tiny")
    assert prof["machine"]["accelerator"] and len(prof["grid"][0]["forward_train"]["blocks"]) == 2
    write_profile(prof, tmp_path / "gpu.yaml")
    assert load_latency_profile(tmp_path / "gpu.yaml").role == "server"  # the simulator takes it unchanged


def test_profile_on_a_missing_device_is_one_line():
    from trainer.validate.profile import ProfileSpec

    if CUDA:
        pytest.skip("this machine has CUDA")
    with pytest.raises(SfsimError, match=r"^--device cuda: this machine has no CUDA device"):
        ProfileSpec([2], [8], device="cuda")
