"""``sfsim validate``: the measured prediction error of the simulator on one scenario (thin CLI)."""

from __future__ import annotations

import click

from sfsim.cli.group import main
from sfsim.cost.wire import CODECS
from sfsim.model.arch import MODEL_HELP
from sfsim.outputs.outdir import output_folder


@main.command()
@click.option("--devices", required=True, type=click.Path(dir_okay=False), help="scenario YAML")
@click.option("--model", required=True, help=MODEL_HELP)
@click.option("--method", required=True, help="splitfrozen, splitfrozen-sequential, splitlora, fedlora or cenlora")
@click.option("--task", default="sst2", show_default=True, help="sst2, mrpc, mnli or gsm8k")
@click.option("--partition", "partition_spec", default="iid", show_default=True)
@click.option("--emulate", default="all", show_default=True, type=click.Choice(["none", "compute", "links", "all"]),
              help="what the real run emulates from the scenario (see sfsim run)")
@click.option("--server-order", default="proportional", show_default=True)
@click.option("--client-order", type=click.Choice(["interleaved", "sequential"]),
              help="splitlora only: its clients' order, run and simulated (default interleaved; see sfsim run)")
@click.option("--accumulate", type=int, help="micro-batches per optimizer step (default: the scenario's)")
@click.option("--split", type=int, help="cut for every device (default: the scenario's)")
@click.option("--train-samples", type=int, help="cap on the training samples")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True,
              help="epochs of the run and the simulation (2 with training.cache_activations: the cached epoch too)")
@click.option("--micro-batch", type=int, help="samples per micro-batch (default: the scenario's)")
@click.option("--max-len", type=int, default=64, show_default=True)
@click.option("--server-profile", type=click.Path(dir_okay=False), help="latency table of this machine as a server "
              "(sfsim profile --role server); without it this machine's server role is profiled first (seconds; "
              "cached per machine, re-measured when stale)")
@click.option("--allow-native", is_flag=True, help="run devices rated faster than this machine can emulate at its "
              "native speed, flagged in the report (default: refuse them before the run)")
@click.option("--no-host-sharing", is_flag=True, help="do not model the CPU sharing of the run's co-located "
              "processes (server and devices on this machine's cores)")
@click.option("--load-calibration", is_flag=True, help="scale the server's profile by how much slower a sampled probe "
              "ran during the run than while the profile was measured (other processes' load; off by default: "
              "on a shared machine it did not follow the server's speed)")
@click.option("--device-profile", type=click.Path(dir_okay=False), help="latency table of this machine as a device "
              "(needed unless --emulate compute/all)")
@click.option("--wire-dtype", type=click.Choice(list(CODECS)),
              help="the activation codec, run and simulated (default: the scenario's training.wire_dtype; docs/codecs.md)")
@click.option("--data-dir", help="data folder (default: $SFSIM_DATA or ../shared/data)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder (new or empty) for report.json, "
              "overlay.png, trace.json and the run")
@click.option("--overwrite", is_flag=True, help="replace an earlier validation in --out")
def validate(devices, model, method, task, partition_spec, emulate, server_order, client_order, accumulate, split,
             train_samples, epochs, micro_batch, max_len, server_profile, allow_native, no_host_sharing, device_profile,
             data_dir, seed, threads, out, overwrite, load_calibration, wire_dtype):
    """Run the scenario for real and in the simulator; print and write the error, stage by stage."""
    from transformers.utils import logging as hf_logging

    from trainer.validate.compare import ValidateConfig, format_validation, run_validation

    hf_logging.disable_progress_bar()  # the self-profile loads the model: no weight-loading bar among the notes

    vc = ValidateConfig(devices=devices, model=model, method=method, out=out, task=task, partition=partition_spec,
                        emulate=emulate, data_dir=data_dir, train_samples=train_samples, epochs=epochs, split=split,
                        server_order=server_order, seed=seed, max_len=max_len, micro_batch=micro_batch,
                        threads=threads, server_profile=server_profile, device_profile=device_profile,
                        accumulate=accumulate, client_order=client_order, allow_native=allow_native,
                        host_sharing=not no_host_sharing, load_calibration=load_calibration,
                        wire_dtype=wire_dtype)
    with output_folder(out, overwrite=overwrite, resume_hint=False):
        report = run_validation(vc, say=lambda line: click.echo(line, err=True))
    click.echo(format_validation(report))
    click.echo(f"-> {out}/report.json, overlay.png, trace.json")
