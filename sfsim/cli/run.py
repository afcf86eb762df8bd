"""``sfsim run`` (real split fine-tuning) and ``sfsim eval`` (score a saved run).

torch and transformers are imported inside the commands so that ``sfsim simulate``/``plan`` stay fast.
"""

from __future__ import annotations

import json

import click

from sfsim.cli import main
from sfsim.methods import METHODS

_ORDERS = ("proportional", "round-robin", "fifo")  # trainer.runtime.SERVER_ORDERS, without importing torch


def _threads(n: int | None) -> None:
    """Set torch's CPU threads and silence transformers' weight-loading bars (our bar shows training)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if n:
        torch.set_num_threads(n)


@main.command()
@click.option("--devices", "devices", required=True, type=click.Path(dir_okay=False),
              help="scenario YAML: devices, their relative sample counts, training settings")
@click.option("--model", required=True, help="smollm2-135m, minilm-l6, gpt2 (local) or a local HF folder")
@click.option("--task", required=True, help="sst2, mrpc, mnli or gsm8k")
@click.option("--method", required=True, help=f"one of {', '.join(METHODS)} (alias centralized)")
@click.option("--partition", "partition_spec", required=True, help="iid, dirichlet:ALPHA or label-skew:C")
@click.option("--plan", type=click.Path(dir_okay=False), help="plan file with per-device cuts (sfsim plan)")
@click.option("--split", type=int, help="cut for every device (blocks on the device)")
@click.option("--lora-start", type=int, help="first block with LoRA (default: the largest cut; cenlora: 0)")
@click.option("--epochs", type=int, help="epochs (default: the scenario's training.epochs)")
@click.option("--train-samples", type=int, help="cap on the total training samples (split as in the scenario)")
@click.option("--eval-samples", type=int, help="evaluate on the first M dev rows (default: all)")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="AdamW learning rate")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-len", type=int, default=128, show_default=True, help="tokens per sample at most")
@click.option("--micro-batch", type=int, help="samples per micro-batch (default: the scenario's)")
@click.option("--accumulate", type=int, help="micro-batches per optimizer step (default: the scenario's)")
@click.option("--local-steps", type=int, help="fedlora: local micro-batches per round")
@click.option("--fedavg-every", type=int, help="splitlora: client FedAvg period in steps")
@click.option("--data-dir", help="data folder (default: $SFSIM_DATA or ../shared/data)")
@click.option("--server-order", default="proportional", show_default=True,
              help=f"order in which the server trains on the devices' micro-batches: {', '.join(_ORDERS)}")
@click.option("--gen-tokens", type=int, default=128, show_default=True, help="gsm8k: tokens generated at eval")
@click.option("--threads", type=int, help="torch CPU threads")
@click.option("--no-flops", is_flag=True, help="skip FLOP counting (faster)")
@click.option("--quiet", is_flag=True, help="no partition table or progress bar")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
def run(devices, model, task, method, partition_spec, plan, split, lora_start, epochs, train_samples,
        eval_samples, lr, seed, max_len, micro_batch, accumulate, local_steps, fedavg_every, data_dir, server_order,
        gen_tokens, threads, no_flops, quiet, out):
    """Fine-tune for real with a method; write metrics.json, trace.json, gantt.png and the adapter to OUT."""
    from trainer.runner import RunConfig
    from trainer.runner import run as run_job

    _threads(threads)
    cfg = RunConfig(devices=devices, model=model, task=task, method=method, partition=partition_spec, out=out,
                    plan=plan, split=split, lora_start=lora_start, epochs=epochs, train_samples=train_samples,
                    eval_samples=eval_samples, lr=lr, seed=seed, max_len=max_len, data_dir=data_dir,
                    server_order=server_order, micro_batch=micro_batch, accumulate=accumulate,
                    local_steps=local_steps,
                    fedavg_every=fedavg_every, gen_tokens=gen_tokens, count_flops=not no_flops, progress=not quiet)
    m = run_job(cfg)
    click.echo(f"{m['method']} on {m['task']}: eval accuracy {m['eval_accuracy']:.4f}, "
               f"device FLOPs {m['device_flops_total']:.3e}, server FLOPs {m['server_flops_total']:.3e}, "
               f"uplink {m['uplink_bytes']} B, downlink {m['downlink_bytes']} B, {m['wall_s']:.1f} s -> {out}")


@main.command(name="eval")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder written by sfsim run")
@click.option("--data-dir", help="data folder (default: the one the run used)")
@click.option("--eval-samples", type=int, help="evaluate on the first M dev rows (default: as in the run)")
@click.option("--threads", type=int, help="torch CPU threads")
def eval_cmd(out, data_dir, eval_samples, threads):
    """Reload the adapter and head saved by ``sfsim run --out OUT`` and score them on the dev set."""
    from trainer.runner import evaluate_saved

    _threads(threads)
    click.echo(json.dumps(evaluate_saved(out, data_dir=data_dir, eval_samples=eval_samples)))
