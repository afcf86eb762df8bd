"""``sfsim run`` (real split fine-tuning) and ``sfsim eval`` (score a saved run).

torch and transformers are imported inside the commands so that ``sfsim simulate``/``plan`` stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sfsim.cli import main
from sfsim.cost.wire import CODECS
from sfsim.errors import SfsimError
from sfsim.methods import METHODS
from sfsim.outputs.outdir import output_folder
from sfsim.units import format_amount

_ORDERS = ("proportional", "round-robin", "fifo", "pool")  # sfsim.engine.pacing.SERVER_ORDERS


def _threads(n: int | None) -> None:
    """Set torch's CPU threads and silence transformers' weight-loading bars (our bar shows training)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if n:
        torch.set_num_threads(n)


def _quiet(quiet: bool):
    """``--quiet``: the run's output is swallowed except sfsim's error and warning lines (:mod:`trainer.run.quiet`)."""
    import contextlib

    from trainer.run.quiet import quiet_output

    return quiet_output() if quiet else contextlib.nullcontext()


_LAUNCH_HELP = ("local: one process per device and one for the server on this machine (default: device and "
                "server work overlap, so measured times mean something); inprocess: every role in this process, "
                "one after the other (debugging, and the reference a distributed run must equal)")


@main.command()
@click.option("--devices", "devices", type=click.Path(dir_okay=False),
              help="scenario YAML: devices, their relative sample counts, training settings")
@click.option("--model", help="smollm2-135m, minilm-l6, gpt2 (local) or a local HF folder")
@click.option("--task", help="sst2, mrpc, mnli or gsm8k")
@click.option("--method", help=f"one of {', '.join(METHODS)} (alias centralized)")
@click.option("--partition", "partition_spec", help="iid, dirichlet:ALPHA or label-skew:C")
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
@click.option("--buffer", type=int, help="splitfrozen: micro-batches in flight per device (default: the scenario's)")
@click.option("--local-steps", type=int, help="fedlora: local micro-batches per round (a step every --accumulate)")
@click.option("--fedavg-every", type=int, help="splitlora: client FedAvg period in steps")
@click.option("--client-order", type=click.Choice(["interleaved", "sequential"]),
              help="splitlora only: interleaved (default; the clients' micro-batches mixed in the server order, "
                   "FedAvg every --fedavg-every steps, as SplitLoRA's code) or sequential (client after client, "
                   "adapters handed on to the next: classic split learning)")
@click.option("--data-dir", help="data folder (default: $SFSIM_DATA or ../shared/data)")
@click.option("--server-order", default="proportional", show_default=True,
              help=f"order in which the server trains on the devices' micro-batches: {', '.join(_ORDERS)}")
@click.option("--pool-memory", help="server-order pool: memory of the mixing pool, e.g. '64 MiB' "
              "(default: every device's credits)")
@click.option("--bucket", type=int, default=0, show_default=True,
              help="length bucketing: sort each window of N micro-batches by length, so little of a micro-batch is "
                   "padding (faster on long, uneven rows such as GSM8K; changes which samples train together); 0: off")
@click.option("--wire-dtype", type=click.Choice(list(CODECS)),
              help="how activations travel (default: the scenario's training.wire_dtype): fp32, fp16, bf16, int8 "
                   "or int4 with per-token absmax scales (docs/codecs.md)")
@click.option("--cache-memory", default="1 GiB", show_default=True,
              help="training.cache_activations: activations the server keeps in memory; the rest go to a memory-mapped file")
@click.option("--gen-tokens", type=int, default=128, show_default=True, help="gsm8k: tokens generated at eval")
@click.option("--launch", default="local", show_default=True, type=click.Choice(["local", "inprocess"]),
              help=_LAUNCH_HELP)
@click.option("--emulate", default="none", show_default=True, type=click.Choice(["none", "compute", "links", "all"]),
              help="distributed runs: stretch device compute to the scenario's FLOP/s (sleeping), shape links to "
                   "its bandwidth (or time-varying rate) and latency, or both; any but none also pauses or drops "
                   "devices by their availability")
@click.option("--role", type=click.Choice(["server", "device", "auto"]),
              help="run one role of a distributed run (with --rank, --world-size, --master, or under torchrun; "
                   "auto: server on rank 0, device elsewhere); see the README")
@click.option("--rank", type=int, help="with --role: 0 for the server, i+1 for the scenario's device i")
@click.option("--world-size", type=int, help="with --role: 1 + the number of devices")
@click.option("--master", help="with --role: HOST:PORT of the server (rank 0)")
@click.option("--peer-timeout", type=float, default=30.0, show_default=True,
              help="seconds without a message or heartbeat after which a peer counts as lost")
@click.option("--checkpoint-every", type=int, default=0, show_default=True,
              help="checkpoint every N optimizer steps (0: at the end of each epoch only)")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="continue the run in this folder from its last checkpoint (other options come from it)")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads per process")
@click.option("--eval-before", is_flag=True, help="also score the model before training (metrics.json eval_before)")
@click.option("--no-flops", is_flag=True, help="skip FLOP counting (faster)")
@click.option("--quiet", is_flag=True, help="no output but errors and warnings (no progress bar, estimate, notes or library logs)")
@click.option("--out", type=click.Path(file_okay=False), help="output folder (new or empty)")
@click.option("--overwrite", is_flag=True, help="replace an earlier run in --out")
def run(devices, model, task, method, partition_spec, plan, split, lora_start, epochs, train_samples,
        eval_samples, lr, seed, max_len, micro_batch, accumulate, buffer, local_steps, fedavg_every, client_order,
        data_dir,
        server_order, pool_memory, bucket, wire_dtype, cache_memory, gen_tokens, launch, emulate, role, rank, world_size, master, peer_timeout, checkpoint_every,
        resume_dir, threads, eval_before, no_flops, quiet, out, overwrite):
    """Fine-tune for real with a method; write metrics.json, trace.json, gantt.png and the adapter to OUT."""
    from trainer.run.launch import run as run_job
    from trainer.run.runner import RunConfig, load_run_config

    if threads is not None and threads < 1:
        raise SfsimError(f"--threads must be >= 1 (got {threads})")
    _threads(threads)
    if resume_dir is not None:
        cfg = load_run_config(resume_dir)
        cfg.progress = not quiet  # this invocation's --quiet, not the first run's
    else:
        need = {"--devices": devices, "--model": model, "--task": task, "--method": method,
                "--partition": partition_spec, "--out": out}
        missing = [k for k, v in need.items() if v is None]
        if missing:
            raise SfsimError(f"missing option {missing[0]} (and {len(missing) - 1} more)" if len(missing) > 1
                             else f"missing option {missing[0]}")
        cfg = RunConfig(devices=devices, model=model, task=task, method=method, partition=partition_spec, out=out,
                        plan=plan, split=split, lora_start=lora_start, epochs=epochs, train_samples=train_samples,
                        eval_samples=eval_samples, lr=lr, seed=seed, max_len=max_len, data_dir=data_dir,
                        server_order=server_order, micro_batch=micro_batch, accumulate=accumulate,
                        local_steps=local_steps, fedavg_every=fedavg_every, client_order=client_order,
                        gen_tokens=gen_tokens, bucket=bucket, eval_before=eval_before,
                        count_flops=not no_flops, progress=not quiet, launch=launch, threads=threads,
                        emulate=emulate, peer_timeout=peer_timeout, checkpoint_every=checkpoint_every,
                        buffer=buffer, pool_memory=pool_memory, wire_dtype=wire_dtype, cache_memory=cache_memory)
    resume = resume_dir is not None
    if role is not None and role != "server":  # devices (and torchrun's auto) may share the server's --out
        _one_role(cfg, role, rank, world_size, master, resume)
    with output_folder(cfg.out, overwrite=overwrite, resume=resume):
        if role == "server":
            _one_role(cfg, role, rank, world_size, master, resume)
        with _quiet(quiet):
            m = run_job(cfg, resume=resume)
    if quiet:  # metrics.json holds the summary
        return
    lost = f", lost {', '.join(m['lost_devices'])}" if m.get("lost_devices") else ""
    click.echo(f"{m['method']} on {m['task']} ({cfg.launch}): {_scores(m)}, "
               f"{_amounts(m)}, {m['wall_s']:.1f} s{lost} -> {cfg.out}")


def _amounts(m: dict) -> str:
    """FLOPs and bytes of a run, printed as ``sfsim simulate`` prints them (:func:`sfsim.units.format_amount`)."""
    return (f"device FLOPs {format_amount(m['device_flops_total'], 'FLOP')}, server FLOPs "
            f"{format_amount(m['server_flops_total'], 'FLOP')}, uplink {format_amount(m['uplink_bytes'], 'B')}, "
            f"downlink {format_amount(m['downlink_bytes'], 'B')}")


def _scores(m: dict) -> str:
    """Eval accuracy, F1 (two classes) and macro-F1 beside the dev set's majority-class baseline."""
    text = f"eval accuracy {m['eval_accuracy']:.4f}"
    if m.get("eval_f1") is not None:
        text += f", F1 {m['eval_f1']:.4f}"
    if m.get("eval_macro_f1") is not None:
        text += f", macro-F1 {m['eval_macro_f1']:.4f}"
    base = m.get("majority_baseline")
    if base:
        text += (f" (majority class {base['class']}: accuracy {base['accuracy']:.4f}, "
                 f"macro-F1 {base['macro_f1']:.4f})")
    return text


def _one_role(cfg, role: str, rank: int | None, world_size: int | None, master: str | None, resume: bool) -> None:
    """``--role``: play one role of a distributed run, then leave the process at once."""
    from trainer.run.launch import exit_now, from_env, run_role

    role, rank, world_size, master = from_env(role, rank, world_size, master)
    cfg.launch = "local" if cfg.launch == "inprocess" else cfg.launch
    code = run_role(cfg, role, rank, world_size, master, resume=resume)
    if code == 0 and role == "server":
        m = json.loads((Path(cfg.out) / "metrics.json").read_text())
        click.echo(f"{m['method']} on {m['task']} (server of {world_size - 1} devices): {_scores(m)}, "
                   f"{m['wall_s']:.1f} s -> {cfg.out}")
    exit_now(code)


@main.command(name="eval")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder written by sfsim run")
@click.option("--data-dir", help="data folder (default: the one the run used)")
@click.option("--eval-samples", type=int, help="evaluate on the first M dev rows (default: as in the run)")
@click.option("--threads", type=int, help="torch CPU threads")
def eval_cmd(out, data_dir, eval_samples, threads):
    """Reload the adapter and head saved by ``sfsim run --out OUT`` and score them on the dev set."""
    from trainer.run.runner import evaluate_saved

    _threads(threads)
    click.echo(json.dumps(evaluate_saved(out, data_dir=data_dir, eval_samples=eval_samples)))
