"""``sfsim profile --precision``: a server that trains in bf16 (or fp16 on CUDA) is profiled in that precision
(it was always profiled in fp32, so a bf16 GPU server's table was the fp32 one)."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from sfsim.cli import main
from trainer.validate import profile as prof_mod

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _profile(tiny_gpt2, out, *extra):
    return CliRunner().invoke(main, ["profile", "--model", tiny_gpt2, "--role", "server", "--micro-batch", "2",
                                     "--seq-len", "8", "--warmup", "0", "--repeats", "2", "--name", "t", "--quiet",
                                     "-o", str(out), *extra])


def test_bf16_profile_times_every_round_under_autocast(tiny_gpt2, tmp_path, monkeypatch):
    seen = []
    real = prof_mod._round

    def spy(*args):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args)

    monkeypatch.setattr(prof_mod, "_round", spy)
    res = _profile(tiny_gpt2, tmp_path / "bf16.yaml", "--precision", "bf16")
    assert res.exit_code == 0, res.output
    assert seen == [(True, torch.bfloat16)] * 2  # warm-up 0 + 2 timed rounds, the first with the entry
    p = yaml.safe_load((tmp_path / "bf16.yaml").read_text())
    assert p["dtype"] == "bf16" and "--precision bf16" in p["source"]
    e = p["grid"][0]
    assert e["activation_bytes"] == [2 * 8 * 32 * 4] * 5  # (B, T, d) fp32 on the wire at every cut, as sent
    seen.clear()
    assert _profile(tiny_gpt2, tmp_path / "fp32.yaml").exit_code == 0
    assert seen == [(False, torch.get_autocast_dtype("cpu"))] * 2
    assert yaml.safe_load((tmp_path / "fp32.yaml").read_text())["dtype"] == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp16_profile_needs_cuda_in_one_line(tiny_gpt2, tmp_path):
    res = _profile(tiny_gpt2, tmp_path / "fp16.yaml", "--precision", "fp16")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1] == ("error: --precision fp16 needs a CUDA device (--device is cpu); "
                                                   "use bf16 or fp32")
