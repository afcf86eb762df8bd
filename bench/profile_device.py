"""Measure per-layer forward (and LoRA backward) wall time on this machine; write a latency profile.

The model is built from its config with random weights (timing does not depend on weight values):
embeddings, every block, the final norm and the head are timed one at a time on the same
micro-batch, ``--repeats`` times after ``--warmup`` untimed runs; the median of each layer goes into
a YAML file in the :mod:`sfsim.latency` format. Forward runs under ``torch.inference_mode()`` (a
frozen device prefix needs no autograd). Backward (B + W of a block with LoRA on the family's
default targets and an input gradient: the state a fedlora/splitlora device trains in) is timed
per block and for the head, unless ``--no-backward``.

The head is the scenario task's head: ``--task classification`` (pooled (B, d) -> (B, C) linear,
default) or ``--task causal-lm`` (the (B, T, d) -> (B, T, V) LM head); the cost model reads the
head time as that task's head.

Example:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_device.py --model gpt2 \\
        -o profiles/latency/ci-x86-2core-gpt2.yaml
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from sfsim.arch import Arch, resolve_arch  # noqa: E402
from sfsim.schema import write_atomic  # noqa: E402


def build_layers(arch: Arch, batch: int, seq: int, task: str, num_labels: int):
    """Random-weight modules of ``arch``: (embed(ids) -> x, [block(x) -> x], norm, head, block modules)."""
    import transformers as tf

    pos = torch.arange(seq)[None].expand(batch, seq)
    if arch.family == "gpt2":
        cfg = tf.GPT2Config(n_layer=arch.n_layers, n_embd=arch.hidden, n_head=arch.heads,
                            n_inner=arch.intermediate, vocab_size=arch.vocab, n_positions=max(1024, seq))
        model = tf.GPT2Model(cfg).eval()
        embed = lambda ids: model.wte(ids) + model.wpe(pos)  # noqa: E731
        mods, norm = list(model.h), model.ln_f
        blocks = [lambda x, m=m: _first(m(x)) for m in mods]
    elif arch.family == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=arch.n_layers, hidden_size=arch.hidden,
                             num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
                             intermediate_size=arch.intermediate, vocab_size=arch.vocab)
        model = tf.LlamaModel(cfg).eval()
        rope = {}

        def embed(ids):
            x = model.embed_tokens(ids)
            rope["pe"] = model.rotary_emb(x, pos)  # (cos, sin): part of the embedding stage
            return x

        mods, norm = list(model.layers), model.norm
        blocks = [lambda x, m=m: _first(m(x, position_embeddings=rope["pe"])) for m in mods]
    else:
        cfg = tf.BertConfig(num_hidden_layers=arch.n_layers, hidden_size=arch.hidden,
                            num_attention_heads=arch.heads, intermediate_size=arch.intermediate,
                            vocab_size=arch.vocab)
        model = tf.BertModel(cfg, add_pooling_layer=False).eval()
        embed = model.embeddings
        mods, norm = list(model.encoder.layer), nn.Identity()
        blocks = [lambda x, m=m: _first(m(x)) for m in mods]
    if task == "classification":
        lin = nn.Linear(arch.hidden, num_labels)
        head = lambda x: lin(x[:, -1])  # noqa: E731  pooled (B, d) -> (B, C)
    else:
        lin = nn.Linear(arch.hidden, arch.vocab, bias=False)
        head = lin  # (B, T, d) -> (B, T, V); frozen (tied) LM head
    for p in lin.parameters():
        p.requires_grad_(task == "classification")
    return embed, blocks, norm, head, mods


def _first(y):
    return y[0] if isinstance(y, tuple) else y


def _median_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(arch: Arch, *, batch: int, seq: int, task: str, num_labels: int, repeats: int, warmup: int,
            backward: bool, lora_rank: int, max_blocks: int | None) -> dict:
    """Per-layer median seconds: {"forward": {...}, "backward": {...} or None}."""
    torch.manual_seed(0)
    embed, blocks, norm, head, mods = build_layers(arch, batch, seq, task, num_labels)
    n = len(blocks) if max_blocks is None else min(max_blocks, len(blocks))
    ids = torch.randint(0, arch.vocab, (batch, seq))
    fwd: dict = {}
    with torch.inference_mode():
        fwd["embed"] = _median_time(lambda: embed(ids), repeats, warmup)
        x = embed(ids)  # (B, T, d)
        fwd["blocks"] = [_median_time(lambda b=b: b(x), repeats, warmup) for b in blocks[:n]]
        fwd["norm"] = _median_time(lambda: norm(x), repeats, warmup)
        fwd["head"] = _median_time(lambda: head(x), repeats, warmup)
    if not backward:
        return {"forward": fwd, "backward": None}
    import peft

    for m in mods[:n]:
        peft.inject_adapter_in_model(peft.LoraConfig(r=lora_rank, target_modules=list(arch.default_lora_targets)), m)
        for name, p in m.named_parameters():
            p.requires_grad_("lora_" in name)
    with torch.no_grad():  # normal tensors (inference-mode ones cannot be saved for backward)
        x = embed(ids)  # (B, T, d); also recomputes Llama's RoPE tables
    bwd = {"blocks": [_backward_time(b, x, repeats, warmup) for b in blocks[:n]],
           "head": _backward_time(head, x, repeats, warmup)}  # B (+ W of a classification head)
    return {"forward": fwd, "backward": bwd}


def _backward_time(fn, x, repeats: int, warmup: int) -> float:
    """Median seconds of backward only (B + W) through ``fn`` with an input gradient."""
    times = []
    for i in range(warmup + repeats):
        xi = x.detach().requires_grad_(True)
        y = fn(xi)
        g = torch.ones_like(y)
        t0 = time.perf_counter()
        y.backward(g)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ms(s: float) -> str:
    return f"{s * 1e3:.4g} ms"


def to_profile(arch_name: str, res: dict, *, batch: int, seq: int, n_layers: int, source: str, device: str) -> dict:
    """The latency-profile dict (sfsim.latency format); fewer measured blocks than L give one median value."""
    def layer_times(lt: dict) -> dict:
        out = {k: _ms(v) for k, v in lt.items() if k != "blocks"}
        blocks = lt["blocks"]
        out["blocks"] = [_ms(v) for v in blocks] if len(blocks) == n_layers else _ms(statistics.median(blocks))
        return out

    prof = {"device": device, "model": arch_name, "micro_batch": batch, "seq_len": seq, "dtype": "fp32",
            "forward": layer_times(res["forward"])}
    if res["backward"] is not None:
        prof["backward"] = layer_times(res["backward"])
    prof["source"] = source
    return prof


def main() -> None:
    """Parse arguments, measure, write the profile."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2", help="built-in architecture or HF config.json path")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--task", choices=["classification", "causal-lm"], default="classification")
    ap.add_argument("--num-labels", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-blocks", type=int, default=None, help="time only the first N blocks (all identical)")
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--device-name", default=f"{platform.machine()}-{os.cpu_count()}core")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    arch = resolve_arch(args.model)
    load0 = os.getloadavg()[0]
    res = measure(arch, batch=args.micro_batch, seq=args.seq_len, task=args.task, num_labels=args.num_labels,
                  repeats=args.repeats, warmup=args.warmup, backward=not args.no_backward,
                  lora_rank=args.lora_rank, max_blocks=args.max_blocks)
    load1 = os.getloadavg()[0]
    source = (f"bench/profile_device.py --model {args.model} --task {args.task} (head: {args.task}) on "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__} with {torch.get_num_threads()} threads, fp32, random weights, median of "
              f"{args.repeats} after {args.warmup} warm-up; backward = B + W of a LoRA r={args.lora_rank} block "
              f"with input grad; 1-min load average {load0:.2f} before, {load1:.2f} after; {date.today()}")
    prof = to_profile(args.model, res, batch=args.micro_batch, seq=args.seq_len, n_layers=arch.n_layers,
                      source=source, device=args.device_name)
    write_atomic(args.output, yaml.safe_dump(prof, sort_keys=False, width=200))
    print(f"wrote {args.output}: block forward median {_ms(statistics.median(res['forward']['blocks']))}")


if __name__ == "__main__":
    main()
