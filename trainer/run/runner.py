"""Run one fine-tuning job end to end: config, data and partition, the method, eval, checkpoints, metrics.

``run(RunConfig(...))`` is what ``sfsim run`` calls; ``evaluate_saved(out_dir)`` is ``sfsim eval``.
Outputs in ``out``: ``metrics.json``, ``trace.json`` (Chrome/Perfetto), ``gantt.png`` (when
``sfsim.outputs.gantt`` is available), ``adapter/`` (LoRA in peft's safetensors layout, the head, and
``adapter_config.json``) and ``run_config.json`` (what ``sfsim eval`` needs to rebuild the model).
All files are written atomically; the adapter is checkpointed at the end of every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfsim.errors import SfsimError
from sfsim.methods import CLIENT_ORDERS, canonical
from sfsim.outputs.trace import TraceEvent, write_chrome_trace
from sfsim.scenario.config import load_scenario
from sfsim.scenario.schema import write_atomic
from sfsim.units import parse_quantity
from trainer.data import tasks as tdata
from trainer.data.partition import missing_classes, parse_partition, partition, partition_table
from trainer.methods import Setup, build_method
from trainer.methods.checkpoint import save_adapter
from trainer.methods.common import placement_for
from trainer.methods.evaluate import majority_baseline, score
from trainer.model.heads import ClassificationHead, default_pooling
from trainer.model.loading import load_model
from trainer.run.estimate import for_run as estimate_run
from trainer.run.estimate import launch_started, say
from trainer.run.honour import wire_settings
from trainer.run.measure import Meter
from trainer.run.resolve import Split, periods, resolve_split
from trainer.run.resolve import lora_targets as _lora_targets
from trainer.run.resume import (  # noqa: F401 (check_device_checkpoint: the launcher's server uses it)
    CHECKPOINT_S,
    CheckpointClock,
    _checkpoint,
    _restore,
    add_totals,
    carried,
    check_device_checkpoint,
    checkpoint_totals,
    is_finished,
    mark_finished,
    recorded_metrics,
    restore_devices_inprocess,
    whole_trace,
)
from trainer.run.steplog import StepLog, parse_log_to
from trainer.transport.rendezvous import parse_ports
from trainer.transport.runtime import (
    SERVER_ORDERS,
    DeviceRole,
    InProcessTransport,
    RoleRNG,
    role_seed,
    stream_mixing,
)

#: How ``sfsim run`` places its roles.
LAUNCHES = {
    "local": "one OS process per device and one per server on this machine (torch.distributed, gloo)",
    "inprocess": "every role in this process, one after the other (debugging; the equivalence reference)",
}
#: What a distributed run emulates from the scenario.
#: Every mode but ``none`` also emulates availability (trainer.transport.dynamics); ``none`` keeps every device online.
EMULATE = {"none": "nothing: real speed, real loopback", "compute": "device compute stretched to the scenario's FLOP/s",
           "links": "links shaped to the scenario's bandwidth (or time-varying rate) and latency",
           "all": "compute and links"}


@dataclass
class RunConfig:
    """Settings of one ``sfsim run`` (``None`` means: take it from the scenario or the default)."""

    devices: str
    model: str
    task: str
    method: str
    partition: str
    out: str
    plan: str | None = None
    split: int | None = None
    lora_start: int | None = None
    epochs: int | None = None
    train_samples: int | None = None
    eval_samples: int | None = None
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    max_len: int = 128
    data_dir: str | None = None
    server_order: str = "proportional"
    micro_batch: int | None = None
    accumulate: int | None = None
    local_steps: int | None = None
    fedavg_every: int | None = None
    gen_tokens: int = 128
    count_flops: bool = True
    progress: bool = True
    model_cache: str | None = None
    launch: str = "inprocess"
    threads: int = 1
    emulate: str = "none"
    peer_timeout: float = 30.0
    checkpoint_every: int = 0
    checkpoint_s: float = CHECKPOINT_S  # also checkpoint at least this often (0: only by steps and epochs)
    buffer: int | None = None
    pool_memory: str | None = None
    client_order: str | None = None
    bucket: int = 0  # length bucketing over windows of this many micro-batches (0: off)
    eval_before: bool = False  # also score the pretrained (untrained) model, as metrics' eval_before
    log_to: str = "csv"  # per-step metrics: csv (OUT/steps.csv), tensorboard, or none (trainer.run.steplog)
    wire_dtype: str | None = None  # activation codec (trainer.transport.codecs); None: the scenario's
    cache_memory: str = "1 GiB"  # training.cache_activations: activations kept in memory, the rest memory-mapped
    server_device: str | None = None  # cpu, cuda[:N], mps or auto/None (trainer.methods.common.placement_for)
    device_device: str = "cpu"  # device roles compute on the CPU in this version
    precision: str = "fp32"  # the server's training precision: fp32, bf16 (autocast) or fp16 (CUDA, grad scaler)
    server_ports: str | None = None  # "29600,29601": where servers 1.. admit devices (trainer.transport.rendezvous)

    def __post_init__(self):
        self.method = canonical(self.method)
        self._check_client_order()
        if self.launch not in LAUNCHES:
            raise SfsimError(f"unknown --launch {self.launch!r}: use one of {', '.join(LAUNCHES)}")
        if self.emulate not in EMULATE:
            raise SfsimError(f"unknown --emulate {self.emulate!r}: use one of {', '.join(EMULATE)}")
        if self.emulate != "none" and self.launch == "inprocess":
            raise SfsimError("--emulate needs separate processes (--launch local, or --role with torchrun/by hand): "
                             "in one process device and server work cannot overlap")
        if self.server_order == "pool" and not self.method.startswith("splitfrozen"):
            raise SfsimError(f"--server-order pool is SplitFrozen's mixing buffer; {self.method} has no activation "
                             "stream to pool: use proportional, round-robin or fifo")
        if self.pool_memory is not None:
            if self.server_order != "pool":
                raise SfsimError("--pool-memory sizes the mixing pool: it needs --server-order pool")
            from sfsim.units import parse_quantity

            try:
                if parse_quantity(self.pool_memory, "size") <= 0:
                    raise ValueError(f"{self.pool_memory!r} must be > 0")
            except ValueError as err:
                raise SfsimError(f"--pool-memory: {err}") from None
        if self.threads < 1:
            raise SfsimError(f"--threads must be >= 1 (got {self.threads})")
        if not self.peer_timeout > 0 or self.checkpoint_every < 0 or (self.buffer is not None and self.buffer < 1):
            raise SfsimError("--peer-timeout must be > 0, --checkpoint-every >= 0 and --buffer >= 1")
        if not self.checkpoint_s >= 0:
            raise SfsimError(f"--checkpoint-interval must be >= 0 seconds (0: off), got {self.checkpoint_s}")
        parse_log_to(self.log_to)
        parse_ports(self.server_ports)
        parse_partition(self.partition)
        if self.task not in tdata.TASKS:
            raise SfsimError(f"unknown task {self.task!r}: use one of {', '.join(tdata.TASKS)}")
        if self.server_order not in SERVER_ORDERS:
            raise SfsimError(f"unknown server order {self.server_order!r}: use one of {', '.join(SERVER_ORDERS)}")
        if self.plan is not None and self.split is not None:
            raise SfsimError("give either --plan or --split, not both")
        if self.bucket < 0:
            raise SfsimError(f"--bucket must be >= 0 micro-batches (0: off; got {self.bucket})")
        for key in ("epochs", "train_samples", "eval_samples", "micro_batch", "accumulate", "local_steps",
                    "fedavg_every"):
            val = getattr(self, key)
            if val is not None and val < 1:
                raise SfsimError(f"--{key.replace('_', '-')} must be >= 1 (got {val})")
        if not self.lr > 0 or self.max_len < 2:
            raise SfsimError(f"--lr must be > 0 and --max-len >= 2 (got {self.lr}, {self.max_len})")
        self.data_dir = str(Path(self.data_dir or tdata.default_data_dir()).resolve())  # eval works from anywhere
        if self.task == "gsm8k" and self.partition.split(":")[0] != "iid":
            raise SfsimError(f"--partition {self.partition}: gsm8k has no class labels to skew; use iid")


    def _check_client_order(self) -> None:
        """SplitLoRA's client order: default interleaved; refused for other methods and with options it ignores."""
        if self.client_order is None:  # splitlora: the scenario's training.client_order, resolved in build()
            return
        if self.client_order not in CLIENT_ORDERS:
            raise SfsimError(f"unknown --client-order {self.client_order!r}: use one of {', '.join(CLIENT_ORDERS)}")
        if self.method != "splitlora":
            raise SfsimError(f"--client-order orders SplitLoRA's clients; {self.method} has no such order: leave it out")
        if self.client_order == "sequential":
            if self.server_order != "proportional":
                raise SfsimError(f"--server-order {self.server_order} interleaves clients; --client-order sequential "
                                 "serves each client's whole epoch in turn: leave --server-order out")
            if self.fedavg_every is not None:
                raise SfsimError("--fedavg-every sets the FedAvg period of interleaved clients; --client-order "
                                 "sequential hands the adapters from client to client instead: leave it out")


def budget(sizes: list[int], total: int | None, available: int) -> list[int]:
    """Per-device sample counts: scenario sizes scaled to ``total`` (largest remainder), within ``available``.

    Example:
        >>> budget([1600, 800], 300, 10_000)
        [200, 100]
    """
    cap = min(total if total is not None else sum(sizes), available)
    if sum(sizes) <= cap and total is None:
        return list(sizes)
    raw = np.array(sizes, dtype=float) * cap / sum(sizes)
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: cap - out.sum()]:
        out[i] += 1
    return out.tolist()


def _shards(cfg, scenario, train, lm, n_total: int | None):
    """Partition the training set over the scenario's devices; encode each shard."""
    names = [d.name for d in scenario.devices]
    sizes = budget([d.samples for d in scenario.devices], n_total, len(train))
    labels = train.labels if train.labels is not None else np.zeros(len(train), dtype=np.int64)
    parts = partition(labels, len(names), cfg.partition, seed=cfg.seed, sizes=sizes)
    shards = {n: tdata.encode(train, lm.tokenizer, cfg.max_len, indices=p) for n, p in zip(names, parts, strict=True)}
    table = partition_table(parts, labels, names)
    counts = {n: {str(int(c)): int(np.sum(labels[p] == c)) for c in np.unique(labels)}
              for n, p in zip(names, parts, strict=True)}
    absent = missing_classes(parts, labels, train.num_labels) if train.labels is not None else []
    warnings = []
    if absent:
        which = ", ".join(f"{c} ({train.label_names[c]})" if c < len(train.label_names) else str(c) for c in absent)
        warnings.append(f"no training sample of class {which} on any device (partition {cfg.partition}, seed "
                        f"{cfg.seed}, {sum(sizes)} samples): the model cannot learn it")
        print(f"warning: {warnings[-1]}", file=sys.stderr, flush=True)
    return shards, table, counts, {"absent_classes": absent, "warnings": warnings}


@dataclass
class Built:
    """What :func:`build` makes for a run (every role of it builds the same).

    Attributes:
        scenario: the loaded scenario.
        lm: the loaded model (``trainer.model.loading.LoadedModel``).
        setup: the methods' :class:`~trainer.methods.Setup`.
        method: the method object.
        dev: the evaluation split (``trainer.data.tasks``).
        info: partition table and counts, epochs, eval size, warnings, scores so far, majority baseline.
        split: cuts, LoRA start, assignment and where each came from (:class:`trainer.run.resolve.Split`).
    """

    scenario: object
    lm: object
    setup: Setup
    method: object
    dev: object
    info: dict
    split: Split


def _scenario_client_order(cfg: RunConfig, scenario) -> None:
    """SplitLoRA without ``--client-order`` takes the scenario's order, checked against the run's options."""
    if cfg.method == "splitlora" and cfg.client_order is None:
        cfg.client_order = scenario.training.client_order
        try:
            cfg._check_client_order()
        except SfsimError as err:
            raise SfsimError(f"{cfg.devices}: training.client_order {cfg.client_order} (no --client-order given): "
                             f"{err}") from None


def _say_model_mismatch(cfg: RunConfig, scenario, lm) -> None:
    """Say in one line when the loaded model is not the scenario's (family or depth): the scenario's model is
    what the simulator costs, so emulated device and link times and the cut check follow it, not the run's."""
    arch = scenario.arch
    if (arch.family, arch.n_layers) != (lm.family, lm.n_layers):
        print(f"note: {cfg.devices} describes {arch.name} ({arch.family}, {arch.n_layers} blocks) but this run loads "
              f"{cfg.model} ({lm.family}, {lm.n_layers} blocks): emulated times and the cut check follow the "
              f"scenario's model; set its model: to {cfg.model} to cost this one", file=sys.stderr)


def build(cfg: RunConfig, train=None, dev=None, server: str | None = None) -> Built:
    """Load the scenario, model and data; resolve the split; set up the method (a :class:`Built`).

    ``train``/``dev``: task data to use instead of the data folder's files (``trainer.methods.convergence``
    passes the training set less its held-out validation rows, and the validation rows as ``dev``).
    ``server``: the server this process plays (its scenario ``device`` places the server part; default the
    first device's server, or the first server).
    """
    scenario = load_scenario(cfg.devices)
    _scenario_client_order(cfg, scenario)
    if not Path(cfg.data_dir).is_dir():
        raise SfsimError(f"data folder {cfg.data_dir} does not exist: pass --data-dir or set SFSIM_DATA")
    train = train if train is not None else tdata.load_task(cfg.task, cfg.data_dir, "train")
    dev = dev if dev is not None else tdata.load_task(cfg.task, cfg.data_dir, "dev")
    lm = load_model(cfg.model, cache_dir=cfg.model_cache)
    if cfg.task == "gsm8k" and lm.family == "bert":
        raise SfsimError("gsm8k is a generation task: use a decoder model (smollm2-135m or a GPT-2 folder)")
    if cfg.method in ("fedlora", "cenlora") and (cfg.split is not None or cfg.plan is not None):
        where = "on every device" if cfg.method == "fedlora" else "at the server"
        print(f"note: {cfg.method} trains the whole model {where}: --split/--plan do not apply and are ignored",
              file=sys.stderr)
    _say_model_mismatch(cfg, scenario, lm)
    split = resolve_split(scenario, cfg.method, lm.n_layers, cfg.split, cfg.plan, cfg.lora_start, f"{cfg.devices}: ")
    cuts, lora_start = split.cuts, split.lora_start
    _say_split(cfg, split)
    torch.manual_seed(cfg.seed)
    head = None if dev.is_generation else ClassificationHead(lm.hidden, dev.num_labels, default_pooling(lm.family))
    shards, table, counts, checks = _shards(cfg, scenario, train, lm, cfg.train_samples)
    tr, lo = scenario.training, scenario.training.lora
    codec, cache = wire_settings(cfg, scenario)
    mb = cfg.micro_batch or tr.micro_batch
    roles = [DeviceRole(n, shards[n], mb, cfg.seed + i, bucket=cfg.bucket) for i, n in enumerate(shards)]
    meter = Meter(server_lane=scenario.devices[0].server, count_flops=cfg.count_flops)
    rng = RoleRNG(cfg.seed)
    transport = InProcessTransport(meter, rng=rng, codec=codec, hidden=lm.hidden)
    setup = Setup(lm=lm, head=head, devices=roles, cuts=cuts, lora_start=lora_start,
                  lora={"rank": lo.rank, "alpha": lo.alpha, "dropout": lo.dropout,
                        "targets": _lora_targets(scenario, lm)},
                  micro_batch=mb, accumulate=cfg.accumulate or tr.accumulate, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  meter=meter, transport=transport, server=scenario.devices[0].server,
                  server_order=cfg.server_order, periods=periods(scenario, cuts),
                  decompose_backward=tr.decompose_backward, local_steps=cfg.local_steps or tr.local_steps,
                  fedavg_every=cfg.fedavg_every or tr.fedavg_every, client_order=cfg.client_order or "interleaved",
                  seed=cfg.seed, buffer=cfg.buffer or tr.buffer,
                  samples={r.name: r.n_samples for r in roles}, max_len=cfg.max_len, out=cfg.out,
                  pool_memory=None if cfg.pool_memory is None else parse_quantity(cfg.pool_memory, "size"),
                  bucket=cfg.bucket, codec=codec, cache_memory=cache)
    server_device, source = _server_device(cfg, scenario, server)
    setup.placement, where = placement_for(cfg.method, server_device, cfg.device_device, cfg.precision, source)
    if cfg.progress:
        say(f"placement: {where}")
    method = build_method(cfg.method, setup)
    by_name = {r.name: r for r in roles}
    transport.handler = lambda msg: method.handle(by_name[msg.device], msg)
    n_eval = min(cfg.eval_samples or tr.eval_samples or len(dev), len(dev))  # the simulator's training.eval_samples
    info = {"partition_table": table, "partition_counts": counts, "epochs": cfg.epochs or tr.epochs,
            "n_eval": n_eval, **checks, "scores": [], "split_sources": split.sources, "assignment": split.assignment,
            "majority": None if dev.is_generation else majority_baseline(dev.labels[:n_eval], dev.num_labels)}
    return Built(scenario, lm, setup, method, dev, info, split)


def _server_device(cfg: RunConfig, scenario, server: str | None) -> tuple[str | None, str]:
    """Where the server part trains and what said so: ``--server-device``, else the scenario's ``device`` of
    the server this process plays, else auto."""
    if cfg.server_device is not None:
        return cfg.server_device, "--server-device"
    name = server or scenario.devices[0].server or scenario.servers[0].name
    srv = scenario.server_by_name[name]
    if srv.device is not None:
        return srv.device, f"{cfg.devices}: servers[{name}].device"
    return None, "auto"


def server_devices(cfg: RunConfig) -> list[tuple[str | None, str]]:
    """Each server's placement value and its source (:func:`_server_device`), to check before processes start."""
    scenario = load_scenario(cfg.devices)
    return [_server_device(cfg, scenario, s.name) for s in scenario.servers]


def _say_split(cfg: RunConfig, split: Split) -> None:
    """One line on stderr: the split this run trains and where each part came from (as ``sfsim simulate``)."""
    ks = sorted(set(split.cuts.values()))
    cut = f"cut {ks[0]}" if len(ks) == 1 else f"cuts {split.cuts}"
    servers = sorted(set(split.assignment.values()))
    src = split.sources
    what = {"fedlora": "", "cenlora": ""}.get(cfg.method, f"{cut} ({src['cuts']}), ")
    print(f"note: {cfg.method}: {what}LoRA from block {split.lora_start} ({src['lora_start']}), "
          f"{len(servers)} server{'s' if len(servers) > 1 else ''} ({src['assignment']})", file=sys.stderr, flush=True)


def _progress(cfg: RunConfig, total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", disable=not cfg.progress, dynamic_ncols=True, leave=False)


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """Train with ``cfg.method`` with every role in this process (``--launch inprocess``), evaluate after
    every epoch, write all outputs; return the metrics. ``resume``: continue from the checkpoint in ``cfg.out``.

    :func:`trainer.run.launch.run` is the front door for every launch (it calls this one in process).
    """
    if cfg.launch != "inprocess":
        raise SfsimError(f"--launch {cfg.launch} starts processes: call trainer.run.launch.run (sfsim run does)")
    t0 = time.perf_counter()
    device_count(cfg)  # its warnings
    torch.set_num_threads(cfg.threads)  # as every process of a distributed run does
    out = prepare_out(cfg, resume)
    built = _timed(cfg, "loading the scenario, data and model", lambda: build(cfg))
    used = sorted(set(built.split.assignment.values()))
    if len(used) > 1:  # one server here: refuse rather than train every device on the first one
        raise SfsimError(f"{cfg.devices}: devices are assigned to {len(used)} servers ({', '.join(used)}, "
                         f"{built.split.sources['assignment']}); the in-process run has one server: use --launch local")
    torch.manual_seed(role_seed(cfg.seed, "server"))  # the server's RNG, as in a process of its own
    metrics = train_server(cfg, built, out, t0, resume)
    _write_trace(out, whole_trace(built.info, built.setup.meter.events, built.setup.server), metrics)
    return metrics


def device_count(cfg: RunConfig) -> int:
    """Devices of the run's scenario; its plausibility warnings (a unit left out) are printed here, once."""
    scenario = load_scenario(cfg.devices)
    for line in scenario.warnings:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    return len(scenario.devices)


def _timed(cfg: RunConfig, what: str, work):
    """Run ``work()`` with a line before and after it (not with --quiet): no phase is silent."""
    t = time.perf_counter()
    if cfg.progress:
        say(f"{what} ...")
    result = work()
    if cfg.progress:
        say(f"{what}: done in {time.perf_counter() - t:.1f} s")
    return result


def prepare_out(cfg: RunConfig, resume: bool) -> Path:
    """Create the output folder and record the run's settings first (``--resume`` reads them)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_atomic(out / "run_config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    return out


def _score_before(cfg: RunConfig, out: Path, method, lm, setup, dev, info) -> dict:
    """The untrained model's scores (``--eval-before``), kept in ``eval_before.json`` so a resumed run has them."""
    path = out / "eval_before.json"
    if path.is_file():
        return json.loads(path.read_text())
    scores = score(method, lm, setup.head, dev, cfg, info["n_eval"], out / "generations_before.jsonl")
    write_atomic(path, json.dumps(scores))
    return scores


def train_server(cfg: RunConfig, built, out: Path, t0: float, resume: bool = False, check=None) -> dict:
    """The server's side of a run: every epoch, eval, adapter, checkpoints and metrics.json.

    Used by the in-process run and by the server process of a distributed run (the transport in
    ``setup`` decides where the devices are). Checkpoints come every ``cfg.checkpoint_every`` steps and
    at least every ``cfg.checkpoint_s`` seconds (:class:`~trainer.run.resume.CheckpointClock`) and at
    the end of every epoch; each carries the totals so far (:func:`~trainer.run.resume.carried`). With several
    servers only at the end of every epoch (:func:`~trainer.run.resume.agree_across_servers` says why).
    """
    scenario, lm, setup, method, dev, info = built.scenario, built.lm, built.setup, built.method, built.dev, built.info
    losses, evals, first_epoch, train_s = [], [], 0, []
    info["base_totals"] = None
    if resume:
        first_epoch = _restore(out, setup, method, losses, evals, info)
        if isinstance(setup.transport, InProcessTransport):
            restore_devices_inprocess(setup, method)
        elif check is not None and method.device_stateful:
            check(method.resume_from["device_checkpoint"])
    if hasattr(setup.transport, "opening"):  # this attempt's first starts are setup, not link traffic (DistTransport)
        setup.transport.opening = first_epoch
    save = lambda epoch: _checkpoint(out, setup, method, epoch, losses, evals, info,  # noqa: E731
                                     time.perf_counter() - t0)
    clock = CheckpointClock(cfg.checkpoint_every, cfg.checkpoint_s)
    if method.resumable and clock.active and method.sync is None:  # several servers: at epoch ends only
        method.on_step_done = lambda epoch: save(epoch) if clock.due(len(losses)) else None
    # an early estimate of the whole run's duration, printed after its first steps (not with --quiet)
    est = (estimate_run(cfg, setup, dev, info["n_eval"], info["epochs"] - first_epoch, launch_started(out, t0))
           if cfg.progress else None)
    metrics, log = {}, StepLog(out, cfg.log_to)
    info["before"] = _score_before(cfg, out, method, lm, setup, dev, info) if cfg.eval_before else None
    try:
        for epoch in range(first_epoch, info["epochs"]):
            t_train = time.perf_counter()
            _train_epoch(cfg, method, epoch, sum(setup.samples.values()), losses, est, log, t0)
            method.finish_epoch()
            train_s.append(round(time.perf_counter() - t_train, 6))
            t_end = setup.meter.now()  # the epoch's end: eval, adapter, checkpoint (`sfsim validate`'s epoch_end row)
            scores = _timed(cfg, f"epoch {epoch + 1}: evaluating on {info['n_eval']} dev rows",
                            lambda: score(method, lm, setup.head, dev, cfg, info["n_eval"], out / "generations.jsonl"))
            evals.append(round(scores["accuracy"], 6))
            info["scores"].append(scores)
            log.evaluation(len(losses), epoch + 1, sum(setup.samples.values()), evals[-1], time.perf_counter() - t0)
            save_adapter(out / "adapter", lm.model, setup.head, _adapter_config(cfg, lm, setup, method))
            if method.resumable:
                method.cursor = {}
                save(epoch + 1)
            metrics = _metrics(cfg, scenario, setup, method, info, losses, evals, time.perf_counter() - t0)
            metrics["train_s_by_epoch"] = train_s
            write_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
            if epoch + 1 < info["epochs"]:  # a wait inside the run's span (after the last one the trace ends)
                setup.meter.events.append(TraceEvent(f"epoch-end:{setup.server}", "epoch_end", t_end,
                                                     setup.meter.now() - t_end, -1, ""))
    finally:
        log.close()
    if not metrics:  # resumed after the last epoch: nothing left to train
        metrics = _metrics(cfg, scenario, setup, method, info, losses, evals, time.perf_counter() - t0)
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics


def _train_epoch(cfg: RunConfig, method, epoch: int, n_samples: int, losses: list, est, log: StepLog,
                 t0: float) -> None:
    """One epoch of training with its progress bar (rate, ETA), the estimate and the step log fed per step."""
    bar = _progress(cfg, n_samples)
    bar.set_description(f"epoch {epoch + 1}")
    t_ep, done = time.perf_counter(), [0]  # samples this epoch (the bar counts nothing with --quiet)

    def on_step(loss: float, n: int) -> None:
        losses.append(round(loss, 6))
        done[0] += n
        bar.update(n)
        rate = done[0] / max(time.perf_counter() - t_ep, 1e-9)
        bar.set_postfix(step=len(losses), loss=f"{loss:.4f}", sps=f"{rate:.1f}")
        log.step(len(losses), epoch + 1, done[0], loss, rate, time.perf_counter() - t0)
        if est is not None:
            est.step(n)

    try:
        method.train_epoch(epoch, on_step)
    finally:
        bar.close()


def _adapter_config(cfg: RunConfig, lm, setup: Setup, method) -> dict:
    """peft-style adapter_config.json plus what eval needs (blocks, head, eval cut)."""
    lo = setup.lora
    return {"peft_type": "LORA", "base_model_name_or_path": cfg.model, "r": lo["rank"], "lora_alpha": lo["alpha"],
            "lora_dropout": lo["dropout"], "target_modules": lo["targets"], "bias": "none",
            "layers_to_transform": method.lora_block_indices(), "task_type": None,
            "sfsim": {"method": cfg.method, "family": lm.family, "eval_cut": method.eval_cut(),
                      "num_labels": None if setup.head is None else setup.head.classifier.out_features,
                      "pooling": None if setup.head is None else setup.head.pooling}}


def _metrics(cfg, scenario, setup, method, info, losses, evals, wall_s) -> dict:
    m = setup.meter
    devices = [d.name for d in setup.devices]
    stream = method.server_stream
    mixing = stream_mixing([d for d, _ in stream], [lab for _, lab in stream], window=max(4 * len(devices), 1))
    summary = m.summary(devices + [n for n in m.downlink_bytes if n not in devices])  # and those that moved away
    link_s = {d.name: summary["uplink_bytes_by_device"][d.name] * 8 / d.uplink.bandwidth for d in scenario.devices
              if d.name in summary["uplink_bytes_by_device"]}  # this server's devices
    last, major = (info["scores"] or [{}])[-1], info["majority"] or {}
    return {"method": cfg.method, "task": cfg.task, "model": cfg.model, "eval_accuracy": evals[-1] if evals else None,
            "eval_f1": last.get("f1"), "eval_macro_f1": last.get("macro_f1"), "eval_metrics": last,
            "eval_metrics_history": info["scores"], "majority_baseline": info["majority"],
            "eval_before": info.get("before"),
            "majority_accuracy": major.get("accuracy"), "majority_macro_f1": major.get("macro_f1"),
            "absent_classes": info["absent_classes"], "warnings": info["warnings"],
            "eval_history": evals, "train_loss_history": losses, **summary, "wall_s": round(wall_s, 3),
            "uplink_time_modelled_s": {k: round(v, 6) for k, v in link_s.items()},
            "cuts": setup.cuts, "lora_start": setup.lora_start, "split_sources": info["split_sources"],
            "assignment": info["assignment"], "lora_blocks": method.lora_block_indices(),
            "server_order": setup.server_order, "client_order": cfg.client_order, "stream_mixing": mixing,
            "launch": cfg.launch,
            "lost_devices": method.lost, "samples_not_trained": _not_trained(cfg, scenario, method),
            "lora_targets": setup.lora["targets"], "micro_batch": setup.micro_batch,
            "buffer": setup.buffer, "accumulate": setup.accumulate,
            "samples_by_device": {d.name: d.n_samples for d in setup.devices},
            "microbatch_shapes": {d.name: [list(b["input_ids"].shape) for b in d.batches(0)] for d in setup.devices},
            **({"pool_peak_microbatches": method.pool_peak} if cfg.server_order == "pool" else {}),
            **({"activation_cache": method.cache.report()} if getattr(method, "cache", None) is not None else {}),
            "partition": {"spec": cfg.partition, "counts": info["partition_counts"], "table": info["partition_table"]},
            "train_samples": sum(d.n_samples for d in setup.devices), "eval_samples": info["n_eval"],
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("progress",)},
            "notes": {"flops": "torch.utils.flop_counter.FlopCounterMode around each role's compute",
                      "link_events": "in-process: a send's duration is the measured tensor copy, not a network "
                                     "time; uplink_time_modelled_s uses the scenario's bandwidth"}}


def _not_trained(cfg, scenario, method) -> dict[str, int]:
    """Samples (over epochs) each device with availability did not train, as the simulator reports them;
    empty when availability was not emulated (``--emulate none``: every device stays online)."""
    if cfg.emulate == "none":
        return {}
    mine = {r.name for r in method.setup.devices}  # with several servers, each reports its own devices, and those
    # whose cached part it did not replay (a device that departed: trainer.transport.departure); merge sums them
    return {d.name: method.not_trained.get(d.name, 0) for d in scenario.devices
            if d.availability is not None and (d.name in mine or d.name in method.not_trained)}


def _write_trace(out: Path, events, metrics: dict) -> None:
    write_chrome_trace(events, out / "trace.json", {"method": metrics["method"], "task": metrics["task"]},
                       devices=metrics.get("device_flops", {}))
    from sfsim.outputs.gantt import write_gantt

    write_gantt(events, out / "gantt.png", title=f"{metrics['method']} on {metrics['task']} (measured run)",
                devices=metrics.get("device_flops", {}))


def load_run_config(out_dir: str) -> RunConfig:
    """The settings a run recorded in ``out_dir/run_config.json`` (for ``--resume``)."""
    path = Path(out_dir) / "run_config.json"
    if not path.is_file():
        raise SfsimError(f"{path} is missing: point --resume at a folder written by sfsim run")
    try:
        raw = json.loads(path.read_text())
        return RunConfig(**raw)
    except (ValueError, TypeError) as err:
        raise SfsimError(f"{path}: not a valid run configuration ({err}); point at a folder written by sfsim run") from None


os.environ.setdefault("HF_HUB_OFFLINE", "1")
