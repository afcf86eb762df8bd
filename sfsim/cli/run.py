"""``sfsim run`` (real split fine-tuning) and ``sfsim eval`` (score a saved run).

torch and transformers are imported inside the commands so that ``sfsim simulate``/``plan`` stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
from pathlib import Path

import click
from click.core import ParameterSource

from sfsim.cli.group import example, main
from sfsim.cost.wire import CODECS
from sfsim.errors import SfsimError
from sfsim.methods import METHODS
from sfsim.model.arch import MODEL_HELP
from sfsim.outputs.outdir import output_folder
from sfsim.units import format_amount, parse_quantity

_ORDERS = ("proportional", "round-robin", "fifo", "pool")  # sfsim.engine.pacing.SERVER_ORDERS


def _threads(n: int | None) -> None:
    """Set torch's CPU threads and silence transformers' weight-loading bars (our bar shows training)."""
    import torch  # ~3.5 s with transformers: only run and eval load them
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if n:
        torch.set_num_threads(n)


def _quiet(quiet: bool):
    """``--quiet``: the run's output is swallowed except sfsim's error and warning lines (:mod:`trainer.run.quiet`)."""
    # the trainer package imports torch (~3.5 s): only run and eval pay for it
    from trainer.run.quiet import quiet_output

    return quiet_output() if quiet else contextlib.nullcontext()


_LAUNCH_HELP = ("local: one process per device and one for the server on this machine (default: device and "
                "server work overlap, so measured times mean something); inprocess: every role in this process, "
                "one after the other (debugging, and the reference a distributed run must equal)")


@main.command(epilog=example(
    "sfsim run --devices profiles/edge.yaml --model minilm-l6 --task sst2 --method splitfrozen --partition iid "
    "--split 2 --train-samples 400 --out runs/sf",
    "sfsim run --resume runs/sf"))
@click.option("--devices", "devices", type=click.Path(dir_okay=False),
              help="scenario YAML: devices, their relative sample counts, training settings [required unless --resume]")
@click.option("--model", help=MODEL_HELP + " [required unless --resume]")
@click.option("--task", help="sst2, mrpc, mnli or gsm8k [required unless --resume]")
@click.option("--method", help=f"one of {', '.join(METHODS)} (alias centralized) [required unless --resume]")
@click.option("--partition", "partition_spec", help="iid, dirichlet:ALPHA or label-skew:C [required unless --resume]")
@click.option("--plan", type=click.Path(dir_okay=False), help="plan file with per-device cuts (sfsim plan)")
@click.option("--split", type=int, help="cut for every device (blocks on the device)")
@click.option("--lora-start", type=int, help="first block with LoRA (default: the largest cut; cenlora: 0)")
@click.option("--epochs", type=int, help="epochs (default: the scenario's training.epochs)")
@click.option("--train-samples", type=int, help="cap on the total training samples (split as in the scenario)")
@click.option("--eval-samples", type=int, help="evaluate on the first M dev rows (default: the scenario's training.eval_samples, else all)")
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
@click.option("--server-device", help="where the server trains: cpu, cuda, cuda:N, mps or auto (default: each "
              "server's servers[*].device in the scenario, else auto: CUDA, else MPS, else cpu, for a method that "
              "can use it; the run prints what it chose)")
@click.option("--device-device", default="cpu", show_default=True, help="where device roles compute (cpu in this version)")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="the server's training precision: bf16 autocast, fp16 autocast with a gradient scaler (CUDA only)")
@click.option("--cache-memory", default="1 GiB", show_default=True,
              help="training.cache_activations: activations the server keeps in memory; the rest go to a memory-mapped file")
@click.option("--gen-tokens", type=int, default=128, show_default=True, help="gsm8k: tokens generated at eval")
@click.option("--launch", default="local", show_default=True, type=click.Choice(["local", "inprocess"]),
              help=_LAUNCH_HELP)
@click.option("--emulate", default="none", show_default=True, type=click.Choice(["none", "compute", "links", "all"]),
              help="distributed runs: stretch device compute to the scenario's FLOP/s (sleeping), shape links to "
                   "its bandwidth (or time-varying rate) and latency, or both; any but none also pauses or drops "
                   "devices by their availability")
@click.option("--strict-emulation", is_flag=True,
              help="exit with status 3 (outputs kept) when the run fell behind its emulation: devices or links "
                   "slower than the scenario's (default: a warning line; metrics.json emulation)")
@click.option("--role", type=click.Choice(["server", "device", "auto"]),
              help="run one role of a distributed run (with --rank, --world-size, --master, or under torchrun; "
                   "auto: server on rank 0, device elsewhere); see docs/guide/runs.md")
@click.option("--rank", type=int, help="with --role: 0 for the server, i+1 for the scenario's device i")
@click.option("--world-size", type=int, help="with --role: 1 + the number of devices")
@click.option("--master", help="with --role: HOST:PORT of the server (rank 0)")
@click.option("--server-ports", metavar="PORTS",
              help="several servers: the port each server after the first admits its devices on, in scenario order "
                   "(e.g. 29600,29601; default: a free port each, which the devices learn from server 0)")
@click.option("--peer-timeout", type=float, default=30.0, show_default=True,
              help="seconds without a message or heartbeat after which a peer counts as lost")
@click.option("--checkpoint-every", type=int, default=0, show_default=True,
              help="also checkpoint every N optimizer steps (0: by time and at the end of each epoch only)")
@click.option("--checkpoint-interval", default="2min", show_default=True, metavar="TIME",
              help="checkpoint at least this often (at the next optimizer step), so a stopped run can be resumed; "
                   "0: off")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="continue the run in this folder from its last checkpoint; its other settings come from the "
                   "folder (an option that contradicts them is an error); a finished run has nothing to do")
@click.option("--log-to", default="csv", show_default=True,
              help="per-step metrics: csv (OUT/steps.csv), tensorboard (OUT/tensorboard, needs the tensorboard "
                   "package), a comma list, or none")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads per process")
@click.option("--eval-before", is_flag=True, help="also score the model before training (metrics.json eval_before)")
@click.option("--no-flops", is_flag=True, help="skip FLOP counting (faster)")
@click.option("--quiet", is_flag=True, help="no output but errors and warnings (no progress bar, estimate, notes or library logs)")
@click.option("--out", type=click.Path(file_okay=False), help="output folder (new or empty) [required unless --resume]")
@click.option("--overwrite", is_flag=True, help="replace an earlier run in --out")
def run(devices, model, task, method, partition_spec, plan, split, lora_start, epochs, train_samples,
        eval_samples, lr, seed, max_len, micro_batch, accumulate, buffer, local_steps, fedavg_every, client_order,
        data_dir, server_order, pool_memory, bucket, wire_dtype, server_device, device_device, precision, cache_memory,
        gen_tokens, launch, emulate, strict_emulation, role, rank, world_size, master, server_ports,
        peer_timeout, checkpoint_every, checkpoint_interval, resume_dir, log_to, threads, eval_before, no_flops, quiet,
        out, overwrite):
    """Fine-tune for real with a method; write metrics.json, steps.csv, trace.json, gantt.png and the adapter to OUT.

    Exit status: 0 done (or a finished run given to --resume: nothing to do), 2 bad input, 1 a run that
    trained nothing (every device lost, or no sample trained), 3 with --strict-emulation a run that fell
    behind its emulation (trainer.run.emulation).
    """
    # the trainer imports torch and transformers (~3.5 s): only run and eval load it, not simulate or plan
    from trainer.methods.common import placement_for
    from trainer.run.launch import run as run_job
    from trainer.run.resume import check_trained, is_finished, recorded_metrics
    from trainer.run.runner import server_devices

    if threads is not None and threads < 1:
        raise SfsimError(f"--threads must be >= 1 (got {threads})")
    ctx = click.get_current_context()
    typed = {k for k in ctx.params
             if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    given = _settings(ctx.params, typed)
    if resume_dir is not None and is_finished(resume_dir):
        m = recorded_metrics(resume_dir)
        click.echo(f"{resume_dir}: the run finished ({_scores(m)}); nothing to resume, nothing changed")
        return
    cfg = _resumed(resume_dir, given, role) if resume_dir is not None else _new_config(_settings(ctx.params, set(ctx.params)))
    _threads(threads)
    if role in (None, "server") and resume_dir is None and not quiet:
        from sfsim.scenario.config import load_scenario
        from trainer.transport.dynamics import unemulated

        if (line := unemulated(load_scenario(cfg.devices), cfg.method, cfg.emulate)) is not None:
            click.echo(f"note: {line}", err=True)
    if role in (None, "server"):  # a GPU this machine lacks: one line now, not after the processes started
        for server_device, source in server_devices(cfg):
            placement_for(cfg.method, server_device, cfg.device_device, cfg.precision, source)
    resume = resume_dir is not None
    with _one_line_os_errors(cfg.out):
        if role is not None and role != "server":  # devices (and torchrun's auto) may share the server's --out
            _one_role(cfg, role, rank, world_size, master, resume, strict_emulation)
        with output_folder(cfg.out, overwrite=overwrite, resume=resume):
            if role == "server":
                _one_role(cfg, role, rank, world_size, master, resume, strict_emulation)
            with _quiet(quiet):
                m = run_job(cfg, resume=resume)
    check_trained(m, cfg.out)
    if not quiet:  # with --quiet, metrics.json holds the summary
        click.echo(summary_line(m, cfg.launch, cfg.out))
    emulation_check(m, strict_emulation)


def emulation_check(m: dict, strict: bool) -> None:
    """The run's last line when it fell behind its emulation: a warning, or with ``strict`` an error (exit 3)."""
    from trainer.run.emulation import EmulationBehind, verdict

    line = verdict(m.get("emulation"))
    if line is not None and strict:
        raise EmulationBehind(f"{line} (--strict-emulation; the run's outputs are kept)")
    if line is not None:
        click.echo(f"warning: {line}", err=True)


_FIELDS = {"partition_spec": "partition", "resume_dir": "resume"}
"""CLI parameter -> RunConfig field where the names differ (--no-flops, --quiet and --checkpoint-interval:
see :func:`_settings`)."""
_NOT_CONFIG = ("role", "rank", "world_size", "master", "resume", "overwrite", "checkpoint_interval", "strict_emulation")


def _settings(params: dict, names: set[str]) -> dict:
    """RunConfig fields from the CLI parameters in ``names`` (all, or only those the user typed)."""
    out = {_FIELDS.get(k, k): v for k, v in params.items()
           if k in names and k not in ("no_flops", "quiet", "checkpoint_interval")}
    if "checkpoint_interval" in names:
        out["checkpoint_s"] = _seconds(params["checkpoint_interval"], "--checkpoint-interval")
    if "no_flops" in names:
        out["count_flops"] = not params["no_flops"]
    out["progress"] = not params["quiet"]  # this invocation's choice, resumed or not
    return out


def _seconds(text: str, option: str) -> float:
    try:
        return parse_quantity(text, "time")
    except ValueError as err:
        raise SfsimError(f"{option}: {err}") from None


def _new_config(values: dict):
    """The RunConfig of a new run from every option (defaults included); the six that say what to run are required."""
    from trainer.run.runner import RunConfig  # torch, as above

    need = {"--devices": "devices", "--model": "model", "--task": "task", "--method": "method",
            "--partition": "partition", "--out": "out"}
    missing = [k for k, f in need.items() if values.get(f) is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SfsimError(f"missing option {missing[0]}{more}; or give --resume OUT")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in values.items() if k in fields and k not in _NOT_CONFIG})


DEVICE_ELSEWHERE = (
    "{out}/run_config.json is missing: a device resumed on another machine needs server 0's OUT/run_config.json "
    "copied to {out} (beside {out}/state/, where a SplitLoRA or FedLoRA device kept its own checkpoint state), and "
    "the scenario file, model and data folder it names readable at the same paths (or give --data-dir); the run's "
    "clock and the device's leg come from server 0")
"""``sfsim run --resume OUT --role device`` without ``OUT/run_config.json`` (a device on another machine)."""


def _resumed(folder: str, given: dict, role: str | None = None):
    """The recorded RunConfig of ``folder``, writing to ``folder`` itself; options that contradict it are refused.

    Server 0 writes ``run_config.json``: a device (``--role device``) resumed on another machine has its own
    ``folder`` without it, and is told in one line what to copy there."""
    from trainer.run.resume import contradictions  # torch, as above
    from trainer.run.runner import load_run_config

    if role == "device" and not (Path(folder) / "run_config.json").is_file():
        raise SfsimError(DEVICE_ELSEWHERE.format(out=folder))
    cfg = load_run_config(folder)
    if given.get("out") is not None and Path(given["out"]).resolve() != Path(folder).resolve():
        raise SfsimError(f"--resume {folder} continues that folder; --out {given['out']} names another: leave it out")
    bad = contradictions(dataclasses.asdict(cfg), {k: v for k, v in given.items() if k not in _NOT_CONFIG})
    if bad:
        raise SfsimError(f"--resume {folder}: {bad[0]} contradicts the recorded run; leave it out to resume, "
                         "or start a new run with another --out")
    for key in ("threads", "peer_timeout", "checkpoint_every", "checkpoint_s", "log_to", "data_dir", "count_flops",
                "progress", "server_ports"):
        if given.get(key) is not None:
            setattr(cfg, key, given[key])
    cfg.out = str(folder)  # the folder given, not the one recorded: resuming a copy leaves the original alone
    cfg.__post_init__()  # the changed settings are checked like new ones
    return cfg


@contextlib.contextmanager
def _one_line_os_errors(out: str):
    """A folder that cannot be written or a port in use: one line (exit 2), not a traceback."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EEXIST, errno.EPERM):
            raise SfsimError(f"--out {out}: cannot write {err.filename or out} ({err.strerror}); choose a writable "
                             "folder") from None
        if err.errno == errno.EADDRINUSE:
            raise SfsimError(f"a port is in use ({err.strerror}); choose another --master port") from None
        raise
    except RuntimeError as err:  # torch.distributed's DistNetworkError is a RuntimeError, not an OSError
        if "EADDRINUSE" in str(err) or "address already in use" in str(err):
            raise SfsimError("the --master port is in use (address already in use); choose another port or stop "
                             "the process that holds it") from None
        raise


def summary_line(m: dict, launch: str, out: str) -> str:
    """The one-line summary ``sfsim run`` and ``sfsim eval`` print: scores, amounts, time, lost devices."""
    lost = f", lost {', '.join(m['lost_devices'])}" if m.get("lost_devices") else ""
    amounts = f", {_amounts(m)}" if "device_flops_total" in m else ""
    wall = f", {m['wall_s']:.1f} s" if m.get("wall_s") is not None else ""
    return f"{m['method']} on {m['task']} ({launch}): {_scores(m)}{amounts}{wall}{lost} -> {out}"


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


def _one_role(cfg, role: str, rank: int | None, world_size: int | None, master: str | None, resume: bool,
              strict: bool = False) -> None:
    """``--role``: play one role of a distributed run, then leave the process at once."""
    from trainer.run.launch import exit_now, from_env, run_role  # torch, as above
    from trainer.run.resume import add_totals, checkpoint_totals, mark_finished, trained_nothing

    role, rank, world_size, master = from_env(role, rank, world_size, master)
    cfg.launch = "local" if cfg.launch == "inprocess" else cfg.launch
    lead = role == "server" and rank == 0  # server 0 writes the run's metrics (the others: OUT/servers/<name>)
    base = checkpoint_totals(cfg.out) if resume and lead else None  # before it is overwritten
    code = run_role(cfg, role, rank, world_size, master, resume=resume)
    if code == 0 and lead:
        m = mark_finished(cfg.out, add_totals(json.loads((Path(cfg.out) / "metrics.json").read_text()), base, True))
        click.echo(summary_line(m, f"server of {world_size - 1} devices", cfg.out))
        code = 1 if trained_nothing(m) else 0
        try:
            emulation_check(m, strict)
        except SfsimError as err:
            click.echo(f"error: {err}", err=True)
            code = code or err.exit_code
    exit_now(code)


@main.command(name="eval", epilog=example("sfsim eval --out runs/sf", "sfsim eval --out runs/sf --json"))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder written by sfsim run")
@click.option("--data-dir", help="data folder (default: the one the run used)")
@click.option("--eval-samples", type=int, help="evaluate on the first M dev rows (default: as in the run)")
@click.option("--threads", type=int, help="torch CPU threads")
@click.option("--json", "as_json", is_flag=True, help="print the scores as one JSON object instead of the summary")
@click.option("--quiet", is_flag=True, help="no progress lines")
def eval_cmd(out, data_dir, eval_samples, threads, as_json, quiet):
    """Reload the adapter and head saved by ``sfsim run --out OUT``, score them on the dev set, print the summary."""
    # torch and transformers (~3.5 s): only run and eval load them
    from trainer.run.saved import evaluate_saved

    _threads(threads)
    with _quiet(quiet):
        m = evaluate_saved(out, data_dir=data_dir, eval_samples=eval_samples, progress=not quiet and not as_json)
    if as_json:
        click.echo(json.dumps(m))
    else:
        click.echo(summary_line(m, f"eval of {m['eval_samples']} dev rows", out))
