#!/usr/bin/env bash
# One command for a GPU machine: the CUDA tests, then a short SST-2 fine-tuning with the server part on
# CUDA in each precision (fp32, bf16, fp16), printing accuracy and samples/s per precision.
#
#   bash bench/gpu_check.sh            # from the repository root; SFSIM_DATA or ../shared/data for SST-2
#   MODEL=gemma3-270m bash bench/gpu_check.sh   # default: a tiny random Llama when no model is installed
#
# Exits non-zero when CUDA is absent (the tests would only skip) or any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
$PY - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s): run this on a GPU machine" % torch.__version__)
print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
$PY -m pytest -q -p no:cacheprovider -m "gpu or not gpu" tests/test_families_devices.py
$PY - <<'PY'
"""Short SST-2 run: frozen device part (cut 4) on CPU, server part with LoRA on CUDA, per precision."""
import os, time
import torch
from trainer import ClassificationHead, split_model
from trainer.data import tasks
from trainer.methods.common import Placement, ServerMath, from_wire, task_loss, to_wire
from trainer.model.loading import load_model, tiny_model
from trainer.model.lora import add_lora, default_targets

data = os.environ.get("SFSIM_DATA", os.path.join("..", "shared", "data"))
name = os.environ.get("MODEL", "")
train, dev = tasks.load_task("sst2", data, "train"), tasks.load_task("sst2", data, "dev")
N, EVAL, MB = int(os.environ.get("SAMPLES", 512)), 256, 16
for precision in ("fp32", "bf16", "fp16"):
    torch.manual_seed(0)
    lm = load_model(name) if name else tiny_model("llama", n_layers=6, hidden=64)
    head = ClassificationHead(lm.hidden, 2, "last")
    devp, srv = split_model(lm.model, min(4, lm.n_layers - 1), head=head)
    add_lora(srv, blocks=range(devp.cut, lm.n_layers), targets=default_targets(lm.family), rank=8, alpha=16)
    head.requires_grad_(True)
    pl = Placement.of("cuda", "cpu", precision)
    srv.to(pl.server)
    math = ServerMath(pl)
    opt = torch.optim.AdamW([p for p in srv.parameters() if p.requires_grad], lr=1e-3)
    enc = tasks.encode(train, lm.tokenizer, 64, list(range(N)))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, N, MB):
        b = {k: v[i:i + MB] for k, v in enc.items()}
        h = to_wire(devp(b["input_ids"], b["attention_mask"]))
        t = from_wire({"h": h, "m": b["attention_mask"], "y": b["labels"]}, pl.server)
        with math.autocast():
            loss = task_loss(srv(t["h"], t["m"]), t["y"], False)
        math.backward(loss)
        math.step(opt)
    torch.cuda.synchronize()
    sps = N / (time.perf_counter() - t0)
    ev = tasks.encode(dev, lm.tokenizer, 64, list(range(EVAL)))
    right = 0
    with torch.no_grad(), math.autocast():
        for i in range(0, EVAL, MB):
            b = {k: v[i:i + MB] for k, v in ev.items()}
            t = from_wire({"h": devp(b["input_ids"], b["attention_mask"]), "m": b["attention_mask"]}, pl.server)
            right += int((srv(t["h"], t["m"]).argmax(-1).cpu() == b["labels"]).sum())
    print(f"gpu_check sst2 {lm.name} {precision}: {N} samples at {sps:.1f} samples/s, "
          f"accuracy {right / EVAL:.3f} on {EVAL} dev rows, final loss {loss.item():.3f}")
PY
