#!/usr/bin/env bash
# The GPU checks in one command, offline (docs/guide/deploy.md):
#   1. the CUDA tests (tests/test_families_devices.py, tests/test_server_device.py, tests/test_deploy_gpu.py,
#      tests/test_profile_precision.py, marker `gpu` included);
#   2. `sfsim profile --role server --device cuda` of the model (a one-entry grid) in fp32 and bf16;
#   3. a short SST-2 fine-tuning with the server on CUDA for SplitFrozen and CenLoRA in fp32, SplitFrozen in
#      bf16 and fp16 (devices on the CPU, one process), and SplitFrozen with one process per role
#      (--launch local: the activations cross gloo), printing samples/s and dev accuracy of each.
# About 2-4 minutes on one H100 with MiniLM (budget: 8). Exits non-zero when any check fails; on a machine
# without CUDA it says so in one line and exits 0.
#
#   bash bench/gpu_check.sh                      # from anywhere; SST-2 from $SFSIM_DATA, ../shared/data or shared/data
#   MODEL=gemma3-270m SAMPLES=640 bash bench/gpu_check.sh   # another offline model (default minilm-l6)
#   DEVICE=cpu SAMPLES=64 bash bench/gpu_check.sh           # the same checks with the server on the CPU (tests the script)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python}; fi
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-minilm-l6}
SAMPLES=${SAMPLES:-2000}   # training samples per run (one epoch)
EVAL=${EVAL:-872}          # dev rows scored (SST-2's whole dev set)
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

if ! TORCH=$($PY -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "gpu_check: $PY cannot import torch: set PYTHON to the project's environment (e.g. .venv/bin/python)" >&2
    exit 1
fi
if [ "$DEVICE" = cuda ] && ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device on this machine (torch $TORCH): nothing to check"
    exit 0
fi
DATA=${SFSIM_DATA:-}
for d in ../shared/data shared/data; do
    if [ -z "$DATA" ] && [ -f "$d/sst2/dev.tsv" ]; then DATA=$d; fi
done
if [ -z "$DATA" ]; then
    echo "gpu_check: no SST-2 data (set SFSIM_DATA to a folder holding sst2/train.tsv and sst2/dev.tsv)" >&2
    exit 1
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
t0=$SECONDS
$PY -c 'import torch; d = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"; print("gpu_check:", d, "torch", torch.__version__)'

echo "gpu_check: [1/3] tests"
$PY -m pytest -q -p no:cacheprovider -m "not slow and not data" tests/test_families_devices.py tests/test_server_device.py \
    tests/test_deploy_gpu.py tests/test_profile_precision.py

echo "gpu_check: [2/3] sfsim profile --role server --device $DEVICE --model $MODEL (fp32, bf16)"
for precision in fp32 bf16; do
    $PY -m sfsim profile --model "$MODEL" --role server --device "$DEVICE" --precision "$precision" --micro-batch 16 \
        --seq-len 64 --warmup 2 --repeats 5 --threads 4 --name "gpu-check-$DEVICE" -o "$OUT/server-$precision.yaml" --quiet
    $PY - "$OUT/server-$precision.yaml" <<'PY'
import sys
import yaml
p = yaml.safe_load(open(sys.argv[1]))
g = p["grid"][0]
blocks = [float(x.split()[0]) for x in g["forward_train"]["blocks"]]
print(f"gpu_check: server profile on {p['device']} ({p['dtype']}): micro-batch {g['micro_batch']} x {g['seq_len']} "
      f"tokens, {len(blocks)} blocks, forward (train) {sum(blocks):.3f} ms")
PY
done

echo "gpu_check: [3/3] SST-2, $SAMPLES samples, server on $DEVICE"
fail=0
RUNS="splitfrozen:fp32:inprocess cenlora:fp32:inprocess splitfrozen:bf16:inprocess splitfrozen:fp32:local"
if [ "$DEVICE" != cpu ]; then RUNS="$RUNS splitfrozen:fp16:inprocess"; fi  # fp16 (grad scaler) is CUDA only
for spec in $RUNS; do
    IFS=: read -r method precision launch <<< "$spec"
    name="$method-$precision-$launch"
    if ! $PY -m sfsim run --devices bench/sst2_minilm_4dev.yaml --model "$MODEL" --task sst2 --method "$method" \
            --partition iid --split 2 --train-samples "$SAMPLES" --eval-samples "$EVAL" --max-len 64 --lr 2e-3 \
            --server-device "$DEVICE" --precision "$precision" --launch "$launch" --emulate none --no-flops --quiet \
            --threads 4 --data-dir "$DATA" --out "$OUT/$name" 2> "$OUT/$name.err"; then
        echo "gpu_check: $name FAILED:" >&2
        tail -5 "$OUT/$name.err" >&2
        fail=1
        continue
    fi
    $PY - "$OUT/$name/metrics.json" "$method ($launch)" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
c, train_s = m["config"], sum(m["train_s_by_epoch"])
print(f"gpu_check: {sys.argv[2]:<24} server on {c['server_device']} ({c['precision']}): {m['train_samples']} samples "
      f"in {train_s:.1f} s = {m['train_samples'] / train_s:.1f} samples/s; dev accuracy {m['eval_accuracy']:.3f} on "
      f"{m['eval_samples']} rows (majority {m['majority_accuracy']:.3f})")
PY
done
echo "gpu_check: done in $((SECONDS - t0)) s"
exit $fail
