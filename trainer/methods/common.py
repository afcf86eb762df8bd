"""What every method shares: the run setup, the loss, evaluation, adapter swapping and the method base."""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sfsim.errors import SfsimError
from trainer.methods.modes import trainable_params, training_mode  # noqa: F401  (the methods import them from here)
from trainer.model.lora import add_lora, load_lora_state_dict, lora_state_dict
from trainer.run.measure import Meter
from trainer.transport.runtime import DeviceRole, Message, PeerLost, Transport

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Server precisions: autocast dtype (None: plain fp32)."""


def best_device() -> str:
    """The default for a role whose device is ``auto``: ``cuda`` where CUDA is present, else ``mps`` on Apple
    silicon, else ``cpu``."""
    mps = getattr(torch.backends, "mps", None)
    return "cuda" if torch.cuda.is_available() else "mps" if mps is not None and mps.is_available() else "cpu"


def resolve_device(spec: str | None, what: str = "--server-device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``/None (:func:`best_device`) as a torch device.

    Raises:
        SfsimError: one line when the value is unknown or this machine cannot honour it.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    spec = best_device() if spec in (None, "auto") else spec
    kind, _, index = spec.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise SfsimError(f"{what} {spec!r}: use cpu, cuda, cuda:N, mps or auto")
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SfsimError(f"{what} {spec}: this machine has no CUDA device (torch {torch.__version__}); "
                             "use cpu or auto")
        if index and int(index) >= n:
            raise SfsimError(f"{what} {spec}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    if kind == "mps" and best_device() != "mps":
        raise SfsimError(f"{what} mps: this machine has no Apple MPS device; use cpu or auto")
    return torch.device(spec)


@dataclass
class Placement:
    """Where each role computes and in which precision the server trains.

    Attributes:
        server, device: torch devices of the server and of the devices (default: cpu, fp32).
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast and a gradient scaler; CUDA only).
        apart: keep the server's parts as copies apart from the model even on the CPU, as a GPU server
            always does (:meth:`Method.place_server`); tests run the GPU path's bookkeeping with it.
    """

    server: torch.device = field(default_factory=lambda: torch.device("cpu"))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    apart: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise SfsimError(f"--precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and self.server.type != "cuda":
            raise SfsimError(f"--precision fp16 needs a CUDA server (--server-device is {self.server}); "
                             "use bf16 or fp32")

    @property
    def separate(self) -> bool:
        """True when the server trains copies of its parts (off the CPU, or :attr:`apart`)."""
        return self.apart or self.server.type != "cpu"

    @classmethod
    def of(cls, server: str | None = None, device: str | None = "cpu", precision: str = "fp32",
           source: str = "--server-device") -> Placement:
        """From CLI or scenario values (``auto``/None: :func:`best_device`); ``source`` names the server's in errors."""
        return cls(resolve_device(server, source), resolve_device(device, "--device-device"), precision)


#: Methods whose server trains, so moves onto ``--server-device`` (FedLoRA's only averages, on the CPU).
GPU_SERVER_METHODS = ("splitfrozen", "splitfrozen-sequential", "splitlora", "cenlora")


def placement_for(method: str, server: str | None, device: str | None, precision: str,
                  source: str = "--server-device") -> tuple[Placement, str]:
    """The roles' placement for ``method`` from the CLI or scenario values, and the one line that states it.

    ``auto`` (or None) for the server picks :func:`best_device` where the method's server trains, else
    the CPU; an explicit GPU for FedLoRA's server (it only averages), or a device role off the CPU, is refused;
    ``source`` names where ``server`` came from (``--server-device``, ``FILE: servers[NAME].device``).

    Raises:
        SfsimError: one line naming the value and what this version supports.
    """
    if device not in (None, "auto", "cpu"):
        raise SfsimError(f"--device-device {device}: device roles compute on the CPU in this version "
                         "(emulate slower devices with --emulate compute)")
    how = "auto" if server in (None, "auto") else source
    if how == "auto":
        server = best_device() if method in GPU_SERVER_METHODS else "cpu"
    placement = Placement.of(server, "cpu", precision, source)
    if placement.server.type != "cpu" and method not in GPU_SERVER_METHODS:
        raise SfsimError(f"{source} {server}: {method}'s server trains nothing (the devices train; it "
                         "averages their adapters on the CPU): use --server-device cpu")
    line = f"server on {placement.server} ({how}), {precision}; devices on cpu"
    if method not in GPU_SERVER_METHODS and precision != "fp32":
        line += f" ({method}'s server trains nothing: the devices train in fp32)"
    return placement, line


class ServerMath:
    """The server's mixed precision: autocast around forwards, a GradScaler for fp16, plain fp32 otherwise."""

    def __init__(self, placement: Placement):
        self.placement = placement
        self.dtype = PRECISIONS[placement.precision]
        self.scaler = torch.amp.GradScaler(placement.server.type) if placement.precision == "fp16" else None

    def autocast(self):
        """Context for a server forward (and its loss)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.placement.server.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled under fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscaled(self, g: torch.Tensor) -> torch.Tensor:
        """A gradient to send down, over the fp16 scale; zeros if it overflowed (the scaler skips that step)."""
        g = g if self.scaler is None else g / self.scaler.get_scale()
        return g if self.scaler is None or torch.isfinite(g).all() else torch.zeros_like(g)

    def sync(self) -> None:
        """Wait for the server device's queued work (a no-op on the CPU): timed phases end when the work does."""
        kind = self.placement.server.type
        if kind == "cuda":
            torch.cuda.synchronize(self.placement.server)
        elif kind == "mps":
            torch.mps.synchronize()

    def step(self, opt: torch.optim.Optimizer) -> None:
        """``opt.step()`` (unscaled, skipped on inf/nan, under fp16) then zero the gradients."""
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)


def to_wire(t: torch.Tensor) -> torch.Tensor:
    """A tensor ready for the wire: on the host (gloo carries CPU tensors), in pinned memory when it comes
    from a GPU so the copy back there is asynchronous."""
    if t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
    host.copy_(t, non_blocking=False)
    return host


def from_wire(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Received (host) tensors on ``device``: pinned first, then copied without blocking, on CUDA."""
    if device.type == "cpu":
        return tensors
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin and not v.is_pinned() else v).to(device, non_blocking=pin)
            for k, v in tensors.items()}


@dataclass
class Setup:
    """Everything a method needs, built once by the runner.

    Attributes:
        lm: the loaded model (``trainer.model.loading.LoadedModel``); methods add LoRA to ``lm.model``.
        head: the task head (``ClassificationHead``) or ``None`` for causal-LM tasks (GSM8K).
        devices: one :class:`DeviceRole` per device (data shard; no model part yet).
        cuts: device name -> cut k (blocks on the device).
        lora_start: first block with LoRA on the server (splitfrozen; others use their own rule).
        lora: dict with ``rank``, ``alpha``, ``dropout``, ``targets``.
        micro_batch, accumulate: samples per micro-batch, micro-batches per optimizer step (every
            method: the server's steps, SplitLoRA's client steps and FedLoRA's local steps).
        lr, weight_decay: AdamW settings.
        server_order: pacing policy name (see ``trainer.transport.runtime.SERVER_ORDERS``).
        periods: device -> relative seconds between its micro-batches (for the ``fifo`` order).
        decompose_backward: split backward into B and deferred W on the server.
        local_steps: fedlora local micro-batches per round.
        fedavg_every: splitlora client FedAvg period (server optimizer steps; interleaved order).
        client_order: splitlora: ``interleaved`` (micro-batches of all clients mixed in the server
            order, FedAvg every ``fedavg_every`` steps) or ``sequential`` (client after client, the
            client adapters handed from each client to the next).
        meter, transport: measurement and the role-to-role transport.
        server: the server's name (its trace lane).
        seed: run seed.
        buffer: splitfrozen credits per device (micro-batches sent but not yet started by the server).
        samples: device -> training samples (what each device reported when it joined).
        pool_memory: bytes of the server's mixing pool (``server_order="pool"``; ``None``: all credits).
        max_len: tokens per sample at most (sizes the pool).
        out: the run's output folder (devices write their checkpoint state under ``out/state``).
        bucket: length bucketing over windows of this many micro-batches (0: off; ``trainer.data.tasks.micro_batches``).
        placement: the roles' torch devices and the server's precision (:class:`Placement`; default cpu, fp32).
        codec: how activations (and SplitLoRA's gradients) travel (``trainer.transport.codecs``).
        cache_memory: splitfrozen activation cache: bytes kept in memory before it spills to a memory-mapped
            file (``None``: no cache; ``training.cache_activations``).
    """

    lm: object
    head: nn.Module | None
    devices: list[DeviceRole]
    cuts: dict[str, int]
    lora_start: int
    lora: dict
    micro_batch: int
    accumulate: int
    lr: float
    meter: Meter
    transport: Transport
    server: str = "server"
    weight_decay: float = 0.0
    server_order: str = "proportional"
    periods: dict[str, float] = field(default_factory=dict)
    decompose_backward: bool = True
    local_steps: int = 10
    fedavg_every: int = 100
    client_order: str = "interleaved"
    seed: int = 0
    buffer: int = 4
    samples: dict[str, int] = field(default_factory=dict)
    pool_memory: float | None = None
    max_len: int = 128
    out: str = "."
    bucket: int = 0
    placement: Placement = field(default_factory=Placement)
    codec: str = "fp32"
    cache_memory: float | None = None

    @property
    def is_lm(self) -> bool:
        """True for causal-LM tasks (no classification head)."""
        return self.head is None


def task_loss(output: torch.Tensor, labels: torch.Tensor, is_lm: bool) -> torch.Tensor:
    """Cross-entropy: (B, C) logits vs (B,) labels, or (B, T, V) LM logits vs (B, T) next-token labels.

    For causal LM, ``labels[:, t]`` is the target of position t (``-100`` ignored); logits at t predict
    token t+1, hence the shift.
    """
    if not is_lm:
        return nn.functional.cross_entropy(output, labels)
    logits = output[:, :-1].reshape(-1, output.shape[-1])  # (B*(T-1), V)
    target = labels[:, 1:].reshape(-1)  # (B*(T-1),)
    total = nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    # mean over answer tokens; a micro-batch whose answers were all truncated away gives 0, not NaN
    return total / (target != -100).sum().clamp(min=1)


def inject_lora(setup: Setup, blocks) -> None:
    """Freeze the model, add LoRA to ``blocks`` of ``setup.lm.model`` and make the head trainable."""
    lo = setup.lora
    add_lora(setup.lm.model, blocks=list(blocks), targets=lo["targets"], rank=lo["rank"],
             alpha=lo["alpha"], dropout=lo["dropout"])
    if setup.head is not None:
        setup.head.requires_grad_(True)


def adamw(params: list[nn.Parameter], setup: Setup) -> torch.optim.AdamW:
    """The optimizer every method uses."""
    return torch.optim.AdamW(params, lr=setup.lr, weight_decay=setup.weight_decay)


def lora_blocks(state: dict[str, torch.Tensor], blocks: set[int]) -> dict[str, torch.Tensor]:
    """The LoRA entries of ``state`` that belong to the given block indices (name ``...layer.<i>....``)."""
    return {k: v for k, v in state.items() if block_of(k) in blocks}


def block_of(name: str) -> int:
    """Block index in a parameter name (``encoder.layer.3.attention...`` -> 3); -1 if none."""
    parts = name.split(".")
    for a, b in zip(parts, parts[1:], strict=False):
        if a in ("h", "layers", "layer", "blocks") and b.isdigit():
            return int(b)
    return -1


def get_state(model: nn.Module, head: nn.Module | None, blocks: set[int] | None = None) -> dict[str, torch.Tensor]:
    """Copies of the LoRA weights (of ``blocks``, or all) and of the head (keys ``head.*``)."""
    sd = lora_state_dict(model)
    if blocks is not None:
        sd = lora_blocks(sd, blocks)
    if head is not None:
        sd.update({f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    return sd


@torch.no_grad()
def set_state(model: nn.Module, head: nn.Module | None, sd: dict[str, torch.Tensor]) -> None:
    """Load a :func:`get_state` dict (possibly a subset of blocks) into the model and head, in place."""
    params = dict(model.named_parameters())
    for k, v in sd.items():
        if k.startswith("head."):
            continue
        params[k].copy_(v)
    if head is not None and any(k.startswith("head.") for k in sd):
        head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})


def full_state(model: nn.Module, head: nn.Module | None) -> dict[str, torch.Tensor]:
    """All LoRA weights and the head: what a run saves and ``sfsim eval`` reloads."""
    return get_state(model, head)


def load_full_state(model: nn.Module, head: nn.Module | None, sd: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`full_state` (LoRA key sets must match exactly)."""
    load_lora_state_dict(model, {k: v for k, v in sd.items() if not k.startswith("head.")})
    if head is not None:
        head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})


StepCallback = Callable[[float, int], None]
"""Called after each optimizer step with (loss, samples in the step)."""


class Method:
    """Base of the four methods: trains ``setup.lm.model`` (+ head) in place, one epoch at a time.

    A method has two sides that talk only through ``setup.transport``: :meth:`server_epoch` (the
    server's loop for one epoch) and :meth:`device_handle` (what a device does with each message
    the server sends down). Subclasses set :attr:`name`, inject LoRA in ``__init__`` and implement
    both. After every epoch the server's model holds the global adapters that evaluation and
    checkpoints use.
    """

    name = ""
    resumable = False  # True when all training state lives on the server (checkpoint + --resume)

    def __init__(self, setup: Setup):
        self.setup = setup
        self.server_stream: list[tuple[str, list[int]]] = []  # (device, labels) in server training order
        self.lost: dict[str, dict] = {}  # device -> {"reason", "untrained_samples"}
        self.not_trained: dict[str, int] = {}  # device -> samples it left untrained (availability), over epochs
        self.cursor: dict[str, int] = {}  # device -> micro-batches trained this epoch
        self.resume_from: dict | None = None  # {"epoch", "cursor"} of a checkpoint to continue from
        self.on_step_done: Callable[[int], None] | None = None  # called with the epoch after each step
        self.sync = None  # several servers: this server's trainer.transport.backhaul.ServerSync
        self._placed: tuple[nn.ModuleList, nn.ModuleList] | None = None  # (model's parts, server's copies)

    def train_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """Train for one epoch over this server's devices; with several servers, end with the last sync round.
        The model then holds what the server trained (:meth:`pull_server`) for evaluation and checkpoints."""
        self.server_epoch(epoch, on_step)
        if self.sync is not None:
            self.finish_sync()
        self.pull_server()

    # -- the server's device (Placement) ---------------------------------------------------------------
    def place_server(self, *parts: nn.Module) -> tuple[nn.Module, ...]:
        """The server's ``parts`` where the server computes, before any optimizer or backward wrapper sees them.

        On the CPU (the default) they are the model's own modules, shared with the devices of an in-process
        run. Elsewhere (or with ``Placement.apart``) one deep copy of all of them together, so modules they
        share stay shared (SplitFrozen's server parts per cut, the head), moved to the server's device: the
        devices keep the CPU model, whose blocks, rotary tables and head a GPU copy must not take away.
        The model's trainable tensors follow the copies at :meth:`pull_server`; a resumed run's checkpoint,
        loaded into the model, goes to the copies at :meth:`push_server`.
        """
        pl = self.setup.placement
        if not pl.separate:
            return parts
        model = nn.ModuleList(parts)
        placed = copy.deepcopy(model).to(pl.server)
        self._placed = (model, placed)
        return tuple(placed)

    @torch.no_grad()
    def pull_server(self) -> None:
        """Copy the server's trained tensors (LoRA, head) from its device into the model (a no-op when shared)."""
        if self._placed is not None:
            for p, q in self._trainable_pairs():
                p.copy_(q)

    @torch.no_grad()
    def push_server(self) -> None:
        """Copy the model's trainable tensors onto the server's copies (after a checkpoint was loaded into it)."""
        if self._placed is not None:
            for p, q in self._trainable_pairs():
                q.copy_(p)

    def _trainable_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        model, placed = self._placed
        # a deep copy keeps the module tree and its sharing, so both walks meet the parameters in one order
        return [(p, q) for p, q in zip(model.parameters(), placed.parameters(), strict=True) if q.requires_grad]

    # -- several servers (trainer.transport.backhaul) ---------------------------------------------------
    def optimizer_step(self, opt: torch.optim.Optimizer, phase: str = "server_step", last: bool = False) -> None:
        """The server's optimizer step, inside the backhaul sync when there are several servers (``last``: the
        server's last step of the epoch, which lets the servers skip a closing round when all end together)."""
        s = self.setup
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.sync is not None:
            self.sync.before_step(params, last)
        with s.meter.compute(s.server, "step", phase, count=False):
            math = getattr(self, "math", None)  # ServerMath where the method has one (fp16: the grad scaler)
            if math is not None:
                math.step(opt)
                math.sync()
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
        if self.sync is not None:
            self.sync.after_step(params, last)

    def sync_state(self) -> list[torch.Tensor]:
        """Every tensor the servers must agree on at the end of an epoch: the server optimizer's parameters."""
        return [p for opt in self.optimizers().values() for g in opt.param_groups for p in g["params"]]

    def finish_sync(self) -> None:
        """Answer the other servers' rounds until none trains, then the last round (all servers identical)."""
        opt = self.optimizers().get("server")
        params = [p for g in opt.param_groups for p in g["params"]] if opt is not None else None

        def step() -> None:  # as every step: under fp16 through the grad scaler, and traced (as the simulator's)
            with self.setup.meter.compute(self.setup.server, "step", "server_step", count=False):
                (getattr(self, "math", None) or ServerMath(Placement())).step(opt)

        self.sync.finish(self.sync_state(), params, step)

    def server_epoch(self, epoch: int, on_step: StepCallback) -> None:
        """The server's loop for one epoch."""
        raise NotImplementedError

    def device_handle(self, role: DeviceRole, msg: Message) -> None:
        """What device ``role`` does with a message from the server."""
        raise NotImplementedError

    def hello(self, role: DeviceRole, checkpoint: int) -> None:
        """A distributed device's first message to its server (its checkpoint number and samples), at start-up."""
        self.setup.transport.send_up(Message(role.name, checkpoint, kind="hello", aux=role.n_samples))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The server-side optimizers a checkpoint saves (name -> optimizer)."""
        return {}

    # -- checkpoints of training state that lives on the devices (splitlora, fedlora) -------------------
    device_stateful = False  # devices hold training state: a checkpoint asks each to save its own
    checkpoint_report = None  # a distributed device's report so far (a uint8 blob), its answer to ``save``

    def handle(self, role: DeviceRole, msg: Message) -> None:
        """A device's entry for every message: ``save`` is handled here, the rest by :meth:`device_handle`."""
        if msg.kind == "save":
            from trainer.methods.checkpoint import save_device_state

            if self.device_stateful:
                tensors, opts = self.device_state(role)
                save_device_state(self.setup.out, role.name, tensors, opts, msg.aux)
            if self.checkpoint_report is not None:  # distributed: the counters so far (trainer.run.resume)
                self.setup.transport.send_up(Message(role.name, -1, {"blob": self.checkpoint_report()}, kind="report"))
            else:
                self.setup.transport.send_up(Message(role.name, -1, kind="done", aux=msg.aux))
        else:
            self.device_handle(role, msg)

    def device_state(self, role: DeviceRole) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, optimizers) of ``role``'s training state."""
        return {}, {}

    def load_device_state(self, role: DeviceRole, want: int | None = None) -> int:
        """Load ``role``'s saved state (``--resume``), of checkpoint ``want`` where that generation is kept (None:
        as the server's checkpoint in the run's folder says, where readable; else the latest); return the
        checkpoint id it is from (-1: none)."""
        from trainer.methods.checkpoint import load_device_state, wanted_device_checkpoint

        if not self.device_stateful:
            return -1
        like, opts = self.device_state(role)
        want = want if want is not None else wanted_device_checkpoint(self.setup.out, role.name)
        ckpt, tensors = load_device_state(self.setup.out, role.name, opts, want)
        with torch.no_grad():
            for k, v in tensors.items():
                like[k].copy_(v)
        return ckpt

    def server_extra(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Server-side state beyond the model and optimizers: (tensors, JSON-able counters)."""
        return {}, {}

    def load_server_extra(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Inverse of :meth:`server_extra`."""

    def save_devices(self, ckpt: int) -> None:
        """Ask every live device to save its state for checkpoint ``ckpt`` and wait for all of them."""
        if not self.device_stateful:
            return
        tr = self.setup.transport
        names = self.live()
        for n in names:
            tr.send_down(Message(n, -1, kind="save", aux=ckpt))
        for n in names:
            try:
                tr.recv_up(n, {"done"})
            except PeerLost as err:
                self.lose(err.device, err.reason)

    # -- bookkeeping shared by the server loops -----------------------------------------------------
    def batch_counts(self) -> dict[str, int]:
        """Micro-batches per epoch of every device, from the sample counts the devices reported."""
        mb = self.setup.micro_batch
        return {n: math.ceil(k / mb) for n, k in self.setup.samples.items()}

    def resume_cursor(self, epoch: int) -> dict[str, int]:
        """Micro-batches per device already trained in ``epoch`` (from a checkpoint), and reset the cursor."""
        done = {}
        if self.resume_from is not None and self.resume_from["epoch"] == epoch:
            done = {k: int(v) for k, v in self.resume_from["cursor"].items()}
            self.resume_from = None
            self.push_server()  # the checkpoint went into the model; the server trains its copies
        self.cursor = dict(done)
        return done

    def advance(self, name: str) -> None:
        """One more micro-batch of ``name`` trained this epoch."""
        self.cursor[name] = self.cursor.get(name, 0) + 1

    def step_done(self, epoch: int) -> None:
        """An optimizer step ended (a consistent point: checkpoints are taken here, from the model)."""
        if self.on_step_done is not None:
            self.pull_server()
            self.on_step_done(epoch)

    def lose(self, name: str, reason: str, left: dict[str, int] | None = None) -> None:
        """Go on without device ``name``: note why and how many of its samples were not trained."""
        if left is not None:
            left.pop(name, None)
        if name in self.lost:
            return
        trained = min(self.cursor.get(name, 0) * self.setup.micro_batch, self.setup.samples.get(name, 0))
        self.lost[name] = {"reason": reason, "untrained_samples": self.setup.samples.get(name, 0) - trained}
        print(f"warning: lost device {name} ({reason}); going on without it, "
              f"{self.lost[name]['untrained_samples']} of its samples untrained", file=sys.stderr, flush=True)

    def live(self) -> list[str]:
        """Devices not lost, in scenario order."""
        return [d.name for d in self.setup.devices if d.name not in self.lost]

    def lora_block_indices(self) -> list[int]:
        """Blocks that carry LoRA in this method."""
        return list(range(self.setup.lm.n_layers))

    def finish_epoch(self) -> None:
        """Bring the shared model to the global state (e.g. a final FedAvg); default: nothing."""

    def eval_cut(self) -> int:
        """Cut used to evaluate the global model (any cut gives the same function)."""
        return min(self.setup.cuts.values(), default=0)

    def record(self, device: str, labels: torch.Tensor) -> None:
        """Note that the server (or the global model) trained on one micro-batch of ``device``."""
        self.server_stream.append((device, labels.flatten().tolist() if not self.setup.is_lm else []))
