"""Scenario files: the model, the training settings, the servers and the device fleet.

A scenario YAML is only how these dataclasses are stored; :func:`load_scenario` validates it and
expands device types (``count: N``) into individual :class:`Device` entries. The simulator, the
planner and the trainer all read this one schema.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import field
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from sfsim.cost.energy import Power
from sfsim.engine.policies import POLICIES
from sfsim.errors import ConfigError
from sfsim.model.arch import Arch, resolve_arch
from sfsim.model.loratargets import resolve_targets
from sfsim.network.availability import Availability, availability_for
from sfsim.network.linkrate import Link, read_trace, trace_mean
from sfsim.network.mobility import Handover, check_handovers
from sfsim.scenario.plausible import warnings_for
from sfsim.scenario.schema import STRICT, Bytes, Flops, Name, Seconds, read_yaml, validate

# Bounds on what a scenario may ask for, so that no file can exhaust the machine (memory or time):
MAX_DEVICES = 100_000  # devices in the fleet (the planner bench runs 1,000; the engine bench 10,000)
MAX_MICRO_BATCHES = 10_000_000  # micro-batches in a run, all devices and epochs (~1 min to simulate)
MAX_WORKERS = 1024  # accelerators per server (one SimPy process each)
MAX_SEQ_LEN = 2**20  # tokens per sample
MAX_MICRO_BATCH = 2**20  # samples per micro-batch
MAX_RANK = 2**16  # LoRA rank
MAX_LABELS = 2**20  # classes

WIRE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
"""Bytes per element on the wire or in memory for each dtype name."""


@dataclass(config=STRICT, kw_only=True)
class ModelSpec:
    """Which model is fine-tuned, on what sequence length and task."""

    name: str = Field(description="built-in architecture (gpt2, llama-3.2-1b, ...) or path to a HF config.json")
    seq_len: int = Field(gt=0, le=MAX_SEQ_LEN, description="tokens per sample")
    task: Literal["classification", "causal-lm"] = "classification"
    num_labels: int | None = Field(default=None, ge=2, le=MAX_LABELS, description="classes (classification only)")

    @model_validator(mode="after")
    def _labels_match_task(self):
        if self.task == "classification" and self.num_labels is None:
            raise ValueError("task 'classification' needs num_labels (e.g. num_labels: 2)")
        if self.task == "causal-lm" and self.num_labels is not None:
            raise ValueError("num_labels only applies to task 'classification'; remove it")
        return self


@dataclass(config=STRICT, kw_only=True)
class LoraSpec:
    """LoRA adapters on the server-side (trainable) blocks."""

    rank: int = Field(default=8, gt=0, le=MAX_RANK)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    targets: list[str] | None = Field(default=None, description="module names, in-block paths or aliases (q, k, v, "
                                      "o, qkv, attn, mlp, all-linear; sfsim/model/loratargets.py); default: the family's q/v")


@dataclass(config=STRICT, kw_only=True)
class Sync:
    """How several SplitFrozen servers average their adapters over the backhaul (see sfsim.network.backhaul)."""

    every: int = Field(gt=0, description="optimizer steps of a server between averages")
    mode: Literal["sync", "async"] = Field(default="sync", description="sync: wait for the average; "
                                           "async: keep training while it travels")


@dataclass(config=STRICT, kw_only=True)
class Training:
    """How the job trains: batch sizes, epochs, LoRA, buffering and schedule knobs."""

    micro_batch: int = Field(gt=0, le=MAX_MICRO_BATCH, description="samples per micro-batch")
    epochs: int = Field(default=1, gt=0)
    lora: LoraSpec = field(default_factory=LoraSpec)
    accumulate: int = Field(default=1, gt=0, description="micro-batches per optimizer step")
    # A credit comes back the instant a server worker starts a micro-batch; the acknowledgement's
    # downlink latency is not modelled. It would hold each credit one downlink latency longer, i.e.
    # shrink the buffer by (credits returned per second x latency): on profiles/edge.yaml about 0.1 of
    # 16 credits (each device's micro-batches / 378 s x its downlink latency, summed), and the makespan
    # there is the same at buffer 14, 15 or 16 (sixg.yaml at cut 2: 22, 23 or 24). With a buffer of a
    # few credits and long downlinks, lower it.
    buffer: int = Field(default=4, gt=0, description="micro-batches in flight to or waiting at a server, or "
                        "per device with credits: device (credits; returned when a worker starts one, "
                        "acknowledgement latency not modelled)")
    decompose_backward: bool = Field(default=True, description="defer W (weight grads) into idle time")
    split: int | None = Field(default=None, ge=0, description="default cut for every device")
    lora_start: int | None = Field(default=None, ge=0, description="first LoRA block; default max cut")
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    wire_dtype: Literal["fp32", "fp16", "bf16", "int8", "int4"] = Field(
        default="fp32", description="how activations travel: fp32, fp16, bf16, int8 or int4 with per-token absmax "
        "scales (sfsim.cost.wire; docs/codecs.md)")
    server_policy: str = Field(default="fifo", description="which waiting micro-batch a server takes next: "
                               "fifo, round-robin, proportional, paced-proportional, paced-round-robin, pool")
    credits: Literal["server", "device"] = Field(default="server", description="who holds the buffer's credits: "
                                                 "server (one pool each) or device (buffer each, as the trainer)")
    pool_memory: Bytes | None = Field(default=None, description="server_policy pool: memory of the mixing pool "
                                      "(default: room for every credit)")
    seed: int = Field(default=0, ge=0, description="seed of the simulator's random draws (server_policy pool)")
    cache_activations: bool = Field(default=False, description="send frozen activations once, reuse later epochs")
    local_steps: int = Field(default=10, gt=0, description="fedlora: local micro-batches per round")
    fedavg_every: int = Field(default=100, gt=0, description="splitlora: client FedAvg period in server steps")
    client_order: Literal["interleaved", "sequential"] = Field(
        default="interleaved", description="splitlora: interleaved (clients' micro-batches in the server order, "
        "FedAvg every fedavg_every steps: its reference code) or sequential (client after client, adapters handed "
        "on: classic split learning); the other schedules have no clients taking turns and ignore it. sfsim run "
        "--method splitlora uses it unless --client-order is given")
    splitlora_cut: int = Field(default=3, gt=0, description="splitlora: client blocks (reference code: 3)")
    sync: Sync | None = Field(default=None, description="average the servers' adapters over the backhaul")
    eval_samples: int | None = Field(default=None, gt=0, description="dev rows evaluated after every epoch (sfsim "
                                     "run's default when --eval-samples is not given); with several epochs the "
                                     "simulator waits for it, the adapter and the checkpoint between them "
                                     "(sfsim.cost.epochend). Unset: sfsim run evaluates every dev row, which the "
                                     "simulator cannot size, so it leaves the wait out (sfsim simulate notes it)")

    @field_validator("server_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown server policy {value!r}; choose one of: {', '.join(POLICIES)}")
        return value


@dataclass(config=STRICT, kw_only=True)
class Server:
    """A server (or a node of identical accelerators) that trains the LoRA suffix."""

    name: Name = Field(description="letters, digits, '.', '_', '-' (it names files)")
    flops: Flops | None = None
    memory: Bytes
    count: int = Field(default=1, gt=0, le=MAX_WORKERS,
                       description="accelerators working on micro-batches in parallel: independent "
                       "replicas, each stepping its own accumulation window; the one free longest takes "
                       "the next micro-batch (sfsim.engine.pool)")
    power: Power | None = Field(default=None, description="watts per accelerator (see sfsim.cost.energy)")
    backhaul: Link | None = Field(default=None, description="the server's link to the others (training.sync)")
    latency_profile: str | None = Field(default=None, description="path to a measured per-layer latency table "
                                        "(one accelerator; sfsim profile --role server)")
    device: str | None = Field(default=None, description="where `sfsim run` trains this server's part: cpu, cuda, cuda:N, mps or "
                               "auto (the default: a GPU where there is one); --server-device overrides it. "
                               "The simulator takes the speed from flops or latency_profile, not from this")

    @field_validator("device")
    @classmethod
    def _torch_device(cls, v):
        if v is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v):
            raise ValueError(f"{v!r} is not a torch device here: use cpu, cuda, cuda:N, mps or auto")
        return v

    @model_validator(mode="after")
    def _one_speed(self):
        if (self.flops is None) == (self.latency_profile is None):
            raise ValueError("give exactly one of 'flops' (e.g. '12 TFLOPS') or 'latency_profile' (a file)")
        return self


@dataclass(config=STRICT, kw_only=True)
class DeviceType:
    """A kind of edge device; ``count`` of them join the job."""

    name: Name = Field(description="letters, digits, '.', '_', '-' (it names files: logs, device state)")
    memory: Bytes
    samples: int = Field(gt=0, description="local training samples per device")
    uplink: Link
    downlink: Link
    count: int = Field(default=1, gt=0, le=MAX_DEVICES)
    flops: Flops | None = None
    latency_profile: str | None = Field(default=None, description="path to a measured per-layer latency table")
    warmup: Seconds = Field(default=0.0, description="extra seconds on the device's first forward of a run "
                            "(first-call overhead: lazy initialisation, allocator, kernel selection); "
                            "sfsim profile measures it (warmup_s)")
    server: str | None = Field(default=None, description="pin to this server; default: planner's choice "
                               "(without a plan: the least-loaded server, see sfsim.scenario.assign)")
    power: Power | None = Field(default=None, description="watts computing, idle, on the radio (sfsim.cost.energy)")
    handover: list[Handover] = Field(default_factory=list, description="moves to other servers during the run "
                                     "(sfsim.network.mobility)")
    availability: Availability | None = Field(default=None, description="online windows or an on/off process, "
                                              "and churn: pause or drop (sfsim.network.availability)")

    @model_validator(mode="after")
    def _one_speed(self):
        if (self.flops is None) == (self.latency_profile is None):
            raise ValueError("give exactly one of 'flops' (e.g. '1.3 TFLOPS') or 'latency_profile' (a file)")
        return self


@dataclass(frozen=True)
class Device:
    """One device of the fleet, after expanding ``DeviceType.count``."""

    name: str
    type: str
    memory: float
    samples: int
    uplink: Link
    downlink: Link
    server: str
    flops: float | None
    latency_profile: str | None
    server_pinned: bool = False  # True when the file names the server; the planner may not move it
    power: Power | None = None
    handover: tuple[Handover, ...] = ()
    availability: Availability | None = None
    warmup: float = 0.0


@dataclass(config=STRICT, kw_only=True)
class ScenarioFile:
    """The top-level YAML layout (see ``profiles/edge.yaml``)."""

    model: ModelSpec
    training: Training
    servers: list[Server] = Field(min_length=1)
    devices: list[DeviceType] = Field(min_length=1)
    description: str = ""


class Scenario:
    """A validated scenario with its device types expanded into devices.

    Attributes:
        model, training, servers, device_types: the validated sections.
        devices: every device, in file order (``{name}-{i}`` when a type has count > 1).
        arch: the model's :class:`~sfsim.model.arch.Arch`.
        source: the file it was read from (or ``None``).
        warnings: values that loaded but look off by orders of magnitude (:mod:`sfsim.scenario.plausible`).
    """

    def __init__(self, spec: ScenarioFile, source: str | None = None):
        self.spec = spec
        self.source = source
        self.warnings: list[str] = []
        self.model, self.training = spec.model, spec.training
        self.servers, self.device_types = list(spec.servers), list(spec.devices)
        base = Path(source).parent if source else None
        self.arch: Arch = resolve_arch(spec.model.name, base_dir=base, file=source)
        _check_size(spec, source)
        self.devices: list[Device] = _expand(spec, source)
        self._check(source)

    @cached_property
    def server_by_name(self) -> dict[str, Server]:
        """Servers keyed by name."""
        return {s.name: s for s in self.servers}

    def micro_batches(self, device: Device) -> int:
        """Micro-batches one device contributes per epoch: ceil(samples / micro_batch)."""
        return math.ceil(device.samples / self.training.micro_batch)

    def resolve_path(self, path: str) -> Path:
        """A path from the scenario, relative to the scenario file's folder when not found as given."""
        p = Path(path)
        if not p.is_absolute() and not p.exists() and self.source:
            p = Path(self.source).parent / p
        return p

    def _check(self, file: str | None) -> None:
        names = [s.name for s in self.servers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(file, "servers", f"duplicate server name {sorted(dup)[0]!r}; names must be unique")
        if self.training.sync is not None and len(self.servers) > 1:
            for i, srv in enumerate(self.servers):
                if srv.backhaul is None:
                    raise ConfigError(file, f"servers[{i}].backhaul", "training.sync averages the servers over "
                                      "their backhaul links; add e.g. backhaul: {bandwidth: 10 Gbps, latency: 2 ms}")
        for i, srv in enumerate(self.servers):
            if srv.latency_profile is not None and not self.resolve_path(srv.latency_profile).is_file():
                raise ConfigError(file, f"servers[{i}].latency_profile",
                                  f"no such file {srv.latency_profile!r} (paths are relative to the scenario file)")
        dev_names = [d.name for d in self.devices]
        dup = {n for n, c in Counter(dev_names).items() if c > 1}  # O(devices): fleets of 100,000
        if dup:
            raise ConfigError(file, "devices", f"duplicate device name {sorted(dup)[0]!r}; rename a device type")
        for i, t in enumerate(self.device_types):
            if t.server is not None and t.server not in names:
                raise ConfigError(file, f"devices[{i}].server",
                                  f"no server named {t.server!r}; servers are: {', '.join(names)}")
            if t.latency_profile is not None and not self.resolve_path(t.latency_profile).is_file():
                raise ConfigError(file, f"devices[{i}].latency_profile",
                                  f"no such file {t.latency_profile!r} (paths are relative to the scenario file)")
        L, tr = self.arch.n_layers, self.training
        for key, val in (("training.split", tr.split), ("training.lora_start", tr.lora_start)):
            if val is not None and val >= L:
                raise ConfigError(file, key, f"{val} is beyond the model's depth; {self.arch.name} has "
                                  f"{L} blocks, so use 0..{L - 1}")
        if tr.split is not None and tr.lora_start is not None and tr.lora_start < tr.split:
            raise ConfigError(file, "training.lora_start", f"{tr.lora_start} is below the cut {tr.split}: "
                              "LoRA must start at or above every device's cut")
        if tr.lora.targets is not None:
            try:
                resolve_targets(self.arch, tr.lora.targets)
            except ValueError as err:
                raise ConfigError(file, "training.lora.targets", str(err)) from None
        if tr.splitlora_cut >= L:
            raise ConfigError(file, "training.splitlora_cut", f"{tr.splitlora_cut} >= {L} blocks")
        self._check_dynamics(file)

    def _check_dynamics(self, file: str | None) -> None:
        """Handovers, time-varying links and availability: check them and fill nominal bandwidths."""
        names = [s.name for s in self.servers]
        for i, srv in enumerate(self.servers):
            if srv.backhaul is not None and srv.backhaul.varies:
                raise ConfigError(file, f"servers[{i}].backhaul", "a time-varying backhaul is not simulated; "
                                  "give a constant bandwidth")
        for i, t in enumerate(self.device_types):
            key = f"devices[{i}]"
            check_handovers(t.handover, names, file, f"{key}.handover")
            links = [(f"{key}.uplink", t.uplink), (f"{key}.downlink", t.downlink)]
            links += [(f"{key}.handover[{j}].{side}", link) for j, h in enumerate(t.handover)
                      for side, link in (("uplink", h.uplink), ("downlink", h.downlink)) if link]
            for where, link in links:
                _fill_bandwidth(link, self.resolve_path, file, where)
            if t.availability is not None:  # read the windows now, so a bad file fails at load
                for d in self.devices:
                    if d.type == t.name:
                        availability_for(t.availability, d.name, t.name, self.resolve_path, self.training.seed,
                                         file, f"{key}.availability")


def _fill_bandwidth(link: Link, resolve, file: str | None, key: str) -> None:
    """Read a link's trace (a bad one fails at load); a link given without bandwidth gets its time-average."""
    if link.trace is not None:
        mean = trace_mean(read_trace(resolve(link.trace), file, f"{key}.trace"))
    elif link.gilbert_elliott is not None:
        mean = link.gilbert_elliott.mean_rate
    else:
        return
    if link.bandwidth is None:
        link.bandwidth = mean


def _check_size(spec: ScenarioFile, file: str | None) -> None:
    """Refuse fleets and runs past :data:`MAX_DEVICES` devices or :data:`MAX_MICRO_BATCHES` micro-batches."""
    total = sum(t.count for t in spec.devices)
    if total > MAX_DEVICES:
        raise ConfigError(file, "devices", f"{total:,} devices in all; sfsim handles at most {MAX_DEVICES:,}, "
                          "so lower the counts")
    mb, epochs = spec.training.micro_batch, spec.training.epochs
    run = sum(t.count * -(-t.samples // mb) for t in spec.devices) * epochs
    if run > MAX_MICRO_BATCHES:
        raise ConfigError(file, "devices", f"{run:,} micro-batches over {epochs} epoch(s); sfsim simulates at "
                          f"most {MAX_MICRO_BATCHES:,}, so lower samples or epochs or raise training.micro_batch")


def expanded_names(name: str, count: int) -> list[str]:
    """Names of the devices of one type: the type's name alone for ``count: 1``, else ``{name}-{i}``."""
    return [name] if count == 1 else [f"{name}-{i}" for i in range(count)]


def _expand(spec: ScenarioFile, file: str | None) -> list[Device]:
    default_server = spec.servers[0].name
    out = []
    for t in spec.devices:
        names = expanded_names(t.name, t.count)
        for name in names:
            out.append(Device(name, t.name, t.memory, t.samples, t.uplink, t.downlink,
                              t.server or default_server, t.flops, t.latency_profile,
                              t.server is not None, t.power, tuple(t.handover), t.availability, t.warmup))
    return out


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file.

    Raises:
        ConfigError: one line naming the file, the key path and the problem.

    Example:
        >>> sc = load_scenario("profiles/edge.yaml")
        >>> len(sc.devices) > 0
        True
    """
    return scenario_from_dict(read_yaml(path), source=str(path))


def scenario_from_dict(data: dict, source: str | None = None) -> Scenario:
    """Build a scenario from a plain dict (as YAML would give), e.g. in tests and notebooks.

    Its ``warnings`` list the values that look off by orders of magnitude (a unit left out).
    """
    sc = Scenario(validate(ScenarioFile, data, file=source), source=source)
    sc.warnings = warnings_for(data, source)
    return sc
