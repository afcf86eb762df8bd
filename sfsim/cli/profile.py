"""``sfsim profile``: measure a real model's per-layer latencies on this machine into a latency profile.

torch and transformers are imported inside the command so that the other commands stay fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from sfsim.cli.group import main
from sfsim.errors import SfsimError
from sfsim.model.arch import MODEL_HELP


@main.command()
@click.option("--model", required=True, help=MODEL_HELP)
@click.option("--seq-len", "seq_lens", default="32,64,128", show_default=True, help="sequence lengths of the grid")
@click.option("--micro-batch", "micro_batches", default="4,8,16", show_default=True,
              help="micro-batch sizes of the grid")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads (sfsim run gives every role 1 unless told otherwise)")
@click.option("--role", type=click.Choice(["device", "server"]), default="device", show_default=True,
              help="which side of the split this machine plays (recorded in the file)")
@click.option("--device", "torch_device", default="cpu", show_default=True,
              help="cpu, cuda, cuda:N, mps or auto (cuda where present, else mps, else cpu); GPU timings are "
                   "synchronised")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="autocast every timed round, as sfsim run --precision trains the server (fp16: CUDA only); "
                   "profile a server in the precision it will train in")
@click.option("--task", type=click.Choice(["classification", "causal-lm"]), default="classification",
              show_default=True, help="head measured: pooled linear + cross-entropy, or LM head + loss")
@click.option("--num-labels", type=int, default=2, show_default=True, help="classes of the classification head")
@click.option("--lora-rank", type=int, default=8, show_default=True, help="LoRA rank on the family's default targets")
@click.option("--warmup", type=int, default=2, show_default=True, help="untimed rounds per grid entry")
@click.option("--repeats", type=int, default=5, show_default=True, help="timed rounds per grid entry (median, IQR)")
@click.option("--name", required=True, help="what was measured, e.g. ci-x86-2core (the profile's 'device')")
@click.option("-o", "--output", required=True, help="profile YAML to write (its folder must exist)")
@click.option("--quiet", is_flag=True, help="no progress lines")
def profile(model, seq_lens, micro_batches, threads, role, torch_device, precision, task, num_labels, lora_rank, warmup, repeats, name,
            output, quiet):
    """Measure forward, B, W and optimizer-step times per block of a real model over a micro-batch x seq-len grid.

    Writes the latency table that a device's or a server's latency_profile takes in a scenario.
    """
    out = Path(output)
    if not out.parent.is_dir():
        raise SfsimError(f"-o {output}: folder '{out.parent}' does not exist; create it first")
    if threads < 1:
        raise SfsimError(f"--threads must be >= 1 (got {threads})")
    from trainer.validate.profile import ProfileSpec, parse_sizes

    spec = ProfileSpec(parse_sizes(micro_batches, "--micro-batch"), parse_sizes(seq_lens, "--seq-len"), task=task,
                       num_labels=num_labels, lora_rank=lora_rank, warmup=warmup, repeats=repeats, role=role,
                       name=name, device=torch_device, precision=precision)
    import torch
    from transformers.utils import logging as hf_logging

    from trainer.model.loading import load_model
    from trainer.validate.profile import profile_model, write_profile

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    lm = load_model(model)
    command = (f"sfsim profile --model {model} --seq-len {seq_lens} --micro-batch {micro_batches} --threads {threads} "
               f"--role {role}" + (f" --device {torch_device}" if torch_device != "cpu" else "")
               + (f" --precision {precision}" if precision != "fp32" else "") + f" --task {task}" + (f" --num-labels {num_labels}" if task == "classification" else "")
               + f" --lora-rank {lora_rank} --warmup {warmup} --repeats {repeats} --name {name} -o {output}")

    def progress(mb, seq):
        if not quiet:
            click.echo(f"measuring micro_batch {mb} x seq_len {seq}", err=True)

    prof = profile_model(lm, spec, model=model, source=command, progress=progress)
    write_profile(prof, out)
    m = prof["machine"]
    load = m["load_average"]
    click.echo(f"wrote {output}: {len(prof['grid'])} shapes x {lm.n_layers} blocks of {model} in {m['wall_s']} s, "
               f"{threads} thread(s), 1-min load average {load['before']} before, {load['after']} after")
    step = prof.get("first_step")
    if step is not None:  # role server: what its first micro-batch of a run adds (sfsim.cost.model.server_warmup)
        click.echo(f"server warm-up (first_step): {step['extra_s'] * 1e3:.2f} ms on its first training micro-batch "
                   f"({step['cold_s'] * 1e3:.2f} ms cold, {step['steady_s'] * 1e3:.2f} ms steady)")
    kept = prof.get("bookkeeping")
    if kept is not None:  # role server: its loop's own work (sfsim.cost.latency.Bookkeeping)
        click.echo(f"server bookkeeping: {kept['micro_batch'] * 1e3:.3f} ms a training micro-batch, "
                   f"{kept['step'] * 1e3:.3f} ms an optimizer step (outside the timed ops)")
