"""Measure a real model's per-layer latencies on this machine: the tables of a grid latency profile.

For every (micro_batch, seq_len) of the grid, ``warmup`` untimed then ``repeats`` timed rounds (after
each shape's first, the shapes take their rounds in turns, so that a changing load falls on all alike); each
round times, one layer at a time and on the real activations of the previous layer:

- ``forward``: embeddings (+ the attention mask / rotary set-up), each block, the final norm and the
  head, frozen and under ``torch.inference_mode`` (what a SplitFrozen device runs);
- ``forward_train``: the same with LoRA on every block (the family's default targets), train mode
  and autograd recording, the head followed by its loss (what the server runs before backward);
- ``input_grad`` (B) and ``weight_grad`` (W) of each LoRA block with an input gradient, of the final
  norm and of the head, separated by :class:`trainer.model.backward.DeferredGrads` exactly as the trainer's
  server separates them (B in ``backward()``, W in ``flush()``);
- ``step``: one AdamW step over the LoRA parameters of one block, of the head, and of all blocks + head.

The attention-mask (and Llama rotary) set-up, done once per micro-batch by whichever part runs
blocks, is timed with the embeddings in ``forward`` (where a SplitFrozen device does it) and with
the final norm in ``forward_train`` (where the server does it).

Medians and interquartile ranges go into a dict in the :mod:`sfsim.cost.latency` format, with the peak
resident memory while measuring each entry, the activation bytes at every cut, the seconds to encode
and decode those activations in each wire codec (``codec``) and the machine. Before the grid, a fresh process's
first calls against steady ones (:mod:`trainer.validate.firstcall`): a server's first training micro-batch
(``first_step``, its warm-up in the cost model; role server) and the first frozen forward (``first_call``); then a
server loop's own work per micro-batch and per step outside its ops (``bookkeeping``: :mod:`trainer.validate.loopcost`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from sfsim.cost.wire import CODECS
from sfsim.errors import SfsimError
from sfsim.model.arch import BUILTIN
from trainer.methods.checkpoint import save_adapter, save_checkpoint
from trainer.methods.common import PRECISIONS, full_state, resolve_device, task_loss, training_mode
from trainer.model.backward import DeferredGrads
from trainer.model.heads import ClassificationHead, default_pooling
from trainer.model.loading import LoadedModel
from trainer.model.lora import add_lora, default_targets
from trainer.model.split import split_model
from trainer.transport import codecs
from trainer.validate.evalcost import eval_costs
from trainer.validate.firstcall import first_call, first_step
from trainer.validate.loopcost import bookkeeping

MAX_GRID_VALUE = 1 << 16  # micro-batch sizes and sequence lengths above this are typos, not plans
TASKS = ("classification", "causal-lm")
ROLES = ("device", "server")


@dataclass
class ProfileSpec:
    """What to measure.

    Attributes:
        micro_batches, seq_lens: the grid (every pair is measured).
        task: ``classification`` (pooled linear head + cross-entropy) or ``causal-lm`` (LM head + loss).
        num_labels: classes of the classification head.
        lora_rank, lora_alpha: LoRA on the family's default targets of every block.
        warmup, repeats: untimed and timed rounds per grid entry.
        role: ``device`` or ``server`` (recorded; both roles measure the same tables, a server also ``save``: what it
            writes at an epoch's end, :func:`save_seconds`; and ``eval``: its evaluation beyond the forward,
            :mod:`trainer.validate.evalcost`; and ``first_step``: its first training micro-batch's warm-up,
            :func:`trainer.validate.firstcall.first_step`; and ``bookkeeping``: its loop's own work outside the ops,
            :func:`trainer.validate.loopcost.bookkeeping`).
        name: what was measured (the profile's ``device`` field).
        device: torch device measured on: ``cpu``, ``cuda[:N]``, ``mps`` or ``auto``; on a GPU every timed
            call is bracketed by ``torch.cuda.synchronize`` (kernels run asynchronously).
        precision: ``fp32``, or ``bf16``/``fp16`` autocast around every timed round, as ``sfsim run
            --precision`` trains the server (fp16: CUDA only); recorded as the profile's ``dtype``.
    """

    micro_batches: list[int]
    seq_lens: list[int]
    task: str = "classification"
    num_labels: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    warmup: int = 2
    repeats: int = 5
    role: str = "device"
    name: str = field(default_factory=lambda: f"{platform.machine()}-{os.cpu_count()}core")
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self):
        for what, values in (("--micro-batch", self.micro_batches), ("--seq-len", self.seq_lens)):
            if not values or any(not 0 < v <= MAX_GRID_VALUE for v in values) or len(set(values)) != len(values):
                raise SfsimError(f"{what} {','.join(map(str, values))}: give distinct sizes in 1..{MAX_GRID_VALUE}, "
                                 "e.g. 4,8,16")
        self.micro_batches, self.seq_lens = sorted(self.micro_batches), sorted(self.seq_lens)
        if self.task not in TASKS:
            raise SfsimError(f"task {self.task!r} is unknown: use {' or '.join(TASKS)}")
        if self.role not in ROLES:
            raise SfsimError(f"role {self.role!r} is unknown: use {' or '.join(ROLES)}")
        if self.repeats < 1 or self.warmup < 0:
            raise SfsimError(f"need --repeats >= 1 and --warmup >= 0 (got {self.repeats}, {self.warmup})")
        if self.task == "classification" and self.num_labels < 2:
            raise SfsimError(f"a classification head needs --num-labels >= 2 (got {self.num_labels})")
        if self.lora_rank < 1:
            raise SfsimError(f"--lora-rank must be >= 1 (got {self.lora_rank})")
        where = resolve_device(self.device, "--device")  # a device this machine lacks: one line, before any loading
        if self.precision not in PRECISIONS:
            raise SfsimError(f"--precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and where.type != "cuda":
            raise SfsimError(f"--precision fp16 needs a CUDA device (--device is {where}); use bf16 or fp32")


def parse_sizes(text: str, what: str) -> list[int]:
    """``"4,8,16" -> [4, 8, 16]``; a one-line ``SfsimError`` naming ``what`` otherwise."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SfsimError(f"{what} {text!r}: give whole numbers separated by commas, e.g. 4,8,16") from None


def max_positions(lm: LoadedModel) -> int | None:
    """Longest sequence the model's position embeddings allow (None: no limit, e.g. rotary)."""
    cfg = lm.model.config
    if lm.family not in ("gpt2", "bert"):  # rotary decoders
        return None
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


class _Parts:
    """The two copies of the model a profile times: frozen (no LoRA) and training (LoRA, head, DeferredGrads)."""

    def __init__(self, lm: LoadedModel, spec: ProfileSpec, device: torch.device):
        if spec.task == "causal-lm" and lm.family == "bert":
            raise SfsimError(f"{lm.name} is an encoder: causal-lm needs a decoder (GPT-2, Llama, Qwen, Gemma...); "
                             "use --task classification")
        self.is_lm = spec.task == "causal-lm"
        head = None if self.is_lm else ClassificationHead(lm.hidden, spec.num_labels, default_pooling(lm.family))
        frozen = lm.model.eval().requires_grad_(False)
        self.dev, self.fsrv = split_model(frozen, 0, head=copy.deepcopy(head))
        self.fsrv.eval()
        train = copy.deepcopy(lm.model)
        self.targets = default_targets(lm.family)
        add_lora(train, blocks=range(lm.n_layers), targets=self.targets, rank=spec.lora_rank, alpha=spec.lora_alpha)
        if head is not None:
            head.requires_grad_(True)
        _, self.tsrv = split_model(train, 0, head=head)
        for part in (self.dev, self.fsrv, self.tsrv):
            part.to(device)  # before the optimizers are made: they hold the parameters
        # as the trainer's server trains (trainer.methods.common.training_mode): the network's own dropout off,
        # only LoRA's input dropout on; timing BERT's attention and hidden dropout overstated its forward by ~20%
        training_mode(self.tsrv)
        self.deferred = DeferredGrads(self.tsrv)
        self.blocks_f = list(self.fsrv.body.blocks.values())
        self.blocks_t = list(self.tsrv.body.blocks.values())
        self.opt_block = [_adamw(b) for b in self.blocks_t]
        self.opt_head = _adamw(head) if head is not None else None
        self.opt_all = _adamw(self.tsrv)
        self.n_block_params = sum(p.numel() for p in self.blocks_t[0].parameters() if p.requires_grad)
        self.device = device

    def head_out(self, srv, h, mask):
        return srv.head(h, mask) if srv.head is not None else srv.lm_head(h)


def _adamw(module: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-3)


def _sync(device: torch.device) -> Callable[[], None]:
    """Wait for the device's queued kernels (CUDA, MPS run asynchronously); nothing on CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


class _Clock:
    """Seconds per key over the timed rounds (synchronised with the device before and after each call)."""

    def __init__(self, device: torch.device):
        self.times: dict[tuple, list[float]] = defaultdict(list)
        self.on = False
        self.sync = _sync(device)

    def run(self, key: tuple, fn: Callable):
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        if self.on:
            self.times[key].append(time.perf_counter() - t0)
        return out


def _round(parts: _Parts, clock: _Clock, ids, mask, labels, grads) -> list[torch.Tensor]:
    """One round over every layer (see the module docstring); returns the activations at cuts 0..L."""
    dev, fs, ts = parts.dev, parts.fsrv, parts.tsrv
    with torch.inference_mode():
        def embed():
            x = dev.embed(ids)
            return x, fs.body.context(x, mask)

        x, ctx = clock.run(("forward", "embed"), embed)  # (B, T, d)
        for i, blk in enumerate(parts.blocks_f):
            kw = fs.body.kwargs(ctx, i)
            x = clock.run(("forward", "blocks", i), lambda blk=blk, x=x, kw=kw: blk(x, **kw))
        h = clock.run(("forward", "norm"), lambda: fs.final_norm(x))
        clock.run(("forward", "head"), lambda: parts.head_out(fs, h, mask))
    # training state: a fresh, normal (non-inference) copy of each block's input, with an input gradient
    acts = [clock.run(("forward_train", "embed"), lambda: dev.embed(ids)).clone()]
    ctx = ts.body.context(acts[0], mask)
    for i, blk in enumerate(parts.blocks_t):
        xin, kw = acts[i].detach().requires_grad_(True), ts.body.kwargs(ctx, i)
        y = clock.run(("forward_train", "blocks", i), lambda blk=blk, xin=xin, kw=kw: blk(xin, **kw))  # (B, T, d)
        g = grads if grads.dtype == y.dtype else grads.to(y.dtype)  # a block's output under autocast: bf16/fp16
        clock.run(("input_grad", "blocks", i), lambda y=y, g=g: y.backward(g))
        clock.run(("weight_grad", "blocks", i), parts.deferred.flush)
        clock.run(("step", "block", i), parts.opt_block[i].step)
        parts.opt_block[i].zero_grad(set_to_none=True)
        acts.append(y.detach())

    def norm_fwd():  # the server's per-micro-batch mask / rotary set-up is counted with its final norm
        ts.body.context(acts[-1], mask)
        return ts.final_norm(hin)

    hin = acts[-1].requires_grad_(True)
    h = clock.run(("forward_train", "norm"), norm_fwd)
    hh = h.detach().requires_grad_(True)
    loss = clock.run(("forward_train", "head"), lambda: task_loss(parts.head_out(ts, hh, mask), labels, parts.is_lm))
    clock.run(("input_grad", "head"), loss.backward)
    clock.run(("weight_grad", "head"), parts.deferred.flush)
    if parts.opt_head is not None:
        clock.run(("step", "head"), parts.opt_head.step)
        parts.opt_head.zero_grad(set_to_none=True)
    if not isinstance(ts.final_norm, nn.Identity):  # BERT has no final norm: nothing to differentiate
        clock.run(("input_grad", "norm"), lambda: h.backward(hh.grad))
    trainable = [p for p in ts.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.full_like(p, 1e-3)
    clock.run(("step", "all"), parts.opt_all.step)
    parts.opt_all.zero_grad(set_to_none=True)
    return acts


class _Entry:
    """One grid shape's inputs and timed rounds; built with its warm-up rounds and first timed round (and the
    peak memory while measuring them), then timed again by :meth:`round` between the other shapes' rounds."""

    def __init__(self, parts: _Parts, lm: LoadedModel, spec: ProfileSpec, mb: int, seq: int):
        g = torch.Generator().manual_seed(mb * 100003 + seq)
        vocab = lm.model.config.vocab_size
        ids = torch.randint(0, vocab, (mb, seq), generator=g)  # (B, T)
        mask = torch.ones(mb, seq, dtype=torch.long)  # (B, T): no padding
        labels = ids.clone() if parts.is_lm else torch.randint(0, spec.num_labels, (mb,), generator=g)
        grads = torch.randn(mb, seq, lm.hidden, generator=g)  # (B, T, d) upstream gradient of each block
        self.inputs = tuple(t.to(parts.device) for t in (ids, mask, labels, grads))
        self.parts, self.lm, self.spec, self.mb, self.seq = parts, lm, spec, mb, seq
        self.clock = _Clock(parts.device)
        reset = _reset_peak_rss()
        for r in range(spec.warmup + 1):
            self.clock.on = r >= spec.warmup
            self.round()
        self.peak = _peak_rss() if reset else None

    def round(self) -> None:
        """One more timed round (under autocast at the spec's precision)."""
        dtype = PRECISIONS[self.spec.precision]
        with torch.autocast(self.parts.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            self.acts = [a.float() for a in _round(self.parts, self.clock, *self.inputs)]  # the wire's fp32

    def result(self) -> dict:
        """Medians, IQRs, peak memory, activation bytes and codec times of this shape."""
        spec, n_layers, acts = self.spec, self.lm.n_layers, self.acts
        entry = {"micro_batch": self.mb, "seq_len": self.seq}
        entry.update(_summaries(self.clock.times, n_layers, statistics.median))
        entry["iqr"] = _summaries(self.clock.times, n_layers, _iqr)
        entry["peak_memory"] = f"{self.peak / 2**20:.1f} MiB" if self.peak is not None else None
        entry["activation_bytes"] = [int(a.numel() * a.element_size()) for a in acts]  # (B, T, d) at cut 0..L
        # the transports encode and decode on the host (gloo carries CPU tensors), whatever the server computes on;
        # timed on a GPU tensor they would be asynchronous kernels, unsynchronised, and not what runs
        entry["codec"] = codec_times(acts[len(acts) // 2].cpu(), spec.warmup, spec.repeats)
        return {k: v for k, v in entry.items() if v is not None}


def _measure_grid(parts: _Parts, lm: LoadedModel, spec: ProfileSpec,
                  progress: Callable[[int, int], None] | None) -> list[dict]:
    """Every grid shape, its timed rounds after the first taken in turns with the other shapes' (round-robin):
    on a machine whose load changes within seconds every shape then sees the same mix of it, instead of one
    shape measured in a busy minute and its neighbour in a quiet one (the simulator interpolates between
    them, so a shape measured at another load bends every shape between)."""
    entries = []
    for mb in spec.micro_batches:
        for seq in spec.seq_lens:
            if progress:
                progress(mb, seq)
            entries.append(_Entry(parts, lm, spec, mb, seq))
    for _ in range(spec.repeats - 1):
        for e in entries:
            e.round()
    return [e.result() for e in entries]


def codec_times(x: torch.Tensor, warmup: int, repeats: int) -> dict:
    """Median seconds to encode the (B, T, d) activations ``x`` in each wire codec but fp32 (sent as computed)
    and to decode them back (``trainer.transport.codecs``, what the transports run)."""
    out = {}
    for c in CODECS:
        if c == "fp32":
            continue
        times: dict[str, list[float]] = {"encode": [], "decode": []}
        for r in range(warmup + repeats):
            t0 = time.perf_counter()
            enc = codecs.encode(x, c)
            t1 = time.perf_counter()
            codecs.decode(enc, c, x.shape[-1])
            t2 = time.perf_counter()
            if r >= warmup:
                times["encode"].append(t1 - t0)
                times["decode"].append(t2 - t1)
        out[c] = {op: _ms(statistics.median(v)) for op, v in times.items()}
    return out


def save_seconds(parts: _Parts, repeats: int = 5) -> float:
    """Median seconds to write what ``sfsim run``'s server writes at an epoch's end: the adapter (LoRA of every block
    and the head) and the checkpoint (those weights with their AdamW state), into a temporary folder
    (:func:`trainer.methods.checkpoint.save_adapter`, :func:`~trainer.methods.checkpoint.save_checkpoint`)."""
    head = parts.tsrv.head
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            save_adapter(Path(tmp) / "adapter", parts.tsrv, head, {"sfsim": "profile"})
            save_checkpoint(tmp, full_state(parts.tsrv, head), {"all": parts.opt_all}, {"epoch": 0})
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _epoch_end(parts: _Parts, lm: LoadedModel, spec: ProfileSpec) -> dict:
    """A server's epoch end (:mod:`sfsim.cost.epochend`): ``save`` (:func:`save_seconds`) and ``eval``, the
    evaluation beyond its forward (:func:`trainer.validate.evalcost.eval_costs`), in ms; None for a device."""
    if spec.role != "server":
        return {"save": None, "eval": None}
    costs = eval_costs(lm, parts.fsrv.head, spec.seq_lens[-1], max(spec.repeats, 3))
    return {"save": _ms(save_seconds(parts)), "eval": None if costs is None else {k: _ms(v) for k, v in costs.items()}}


def _iqr(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


def _summaries(times: dict[tuple, list[float]], n_layers: int, stat) -> dict:
    """Layer tables (``forward``, ``forward_train``, ``input_grad``, ``weight_grad``, ``step``) of one statistic."""
    out: dict = {}
    for table in ("forward", "forward_train", "input_grad", "weight_grad"):
        lt = {"embed": None, "blocks": [], "norm": None, "head": None}
        for kind in ("embed", "norm", "head"):
            if (table, kind) in times:
                lt[kind] = _ms(stat(times[(table, kind)]))
        lt["blocks"] = [_ms(stat(times[(table, "blocks", i)])) for i in range(n_layers)]
        out[table] = {k: v for k, v in lt.items() if v is not None}
    pooled = [t for i in range(n_layers) for t in times[("step", "block", i)]]  # every block's step alike
    steps = {"block": _ms(stat(pooled))}
    if ("step", "head") in times:
        steps["head"] = _ms(stat(times[("step", "head")]))
    steps["all"] = _ms(stat(times[("step", "all")]))
    out["step"] = steps
    return out


def _ms(s: float) -> str:
    return f"{s * 1e3:.4g} ms"


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux ``clear_refs`` 5); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak resident bytes since the last reset (``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_info() -> dict:
    """CPU model, cores, torch threads and versions, date and 1-minute load average of this machine."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": str(torch.__version__),
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


PROBE_SHAPE = (64, 384, 1536)  # tokens x width x MLP width: a MiniLM-sized block's MLP on 64 tokens (~0.1 GFLOP)


_SAMPLER = """
import select, sys, time
import torch
torch.set_num_threads(1)
n, d, f, every, burst = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
g = torch.Generator().manual_seed(0)
x, w1, w2 = torch.randn(n, d, generator=g), torch.randn(f, d, generator=g), torch.randn(d, f, generator=g)
def sample():
    count, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while count == 0 or time.perf_counter() - t0 < burst:
            torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, w1)), w2)
            count += 1
    return (time.perf_counter() - t0) / count
sample()
print("ready", flush=True)
out = []
while not select.select([sys.stdin], [], [], every)[0]:
    out.append(sample())
out = out or [sample()]
print(" ".join(repr(t) for t in out), flush=True)
"""


class LoadSampler:
    """How fast this machine computes over a period, sampled while something else runs.

    A process of its own (one torch thread; so neither the GIL nor the measured work's threads touch it)
    runs a fixed workload (:data:`PROBE_SHAPE`) for ``burst`` seconds every ``every`` seconds (about 5% of
    one core) and reports each burst's mean seconds per round; :attr:`mean` averages them. The same
    workload sampled while a profile is measured (``machine.probe_s``) and while a validate run runs says
    how much slower the machine computed during the run (other processes' load on a shared machine):
    :func:`load_factor`. Bursts spread over the whole period follow a load that changes within seconds,
    which a probe before and after cannot.
    """

    def __init__(self, every: float = 0.5, burst: float = 0.025):
        self.every, self.burst = every, burst
        self.samples: list[float] = []
        self._proc = None

    def __enter__(self) -> LoadSampler:
        import subprocess
        import sys

        args = [*map(str, PROBE_SHAPE), str(self.every), str(self.burst)]
        self._proc = subprocess.Popen([sys.executable, "-c", _SAMPLER, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        self._proc.stdout.readline()  # "ready": torch imported, the first round done
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self._proc.communicate("stop\n", timeout=60)  # its last line: every burst's mean
        self.samples = [float(t) for t in out.split()]

    @property
    def mean(self) -> float | None:
        """Mean seconds per probe round over the period (None before any sample)."""
        return sum(self.samples) / len(self.samples) if self.samples else None


def load_factor(profile: dict, mean_s: float | None) -> float | None:
    """How much slower this machine computed during a run than while ``profile`` was measured: the run's
    :class:`LoadSampler` mean over the profile's ``machine.probe_s.mean``; None when either is missing (a
    profile from before the sampler, or of a GPU)."""
    then = ((profile.get("machine") or {}).get("probe_s") or {}).get("mean")
    return None if not then or not mean_s else mean_s / then


def profile_model(lm: LoadedModel, spec: ProfileSpec, *, model: str, source: str = "",
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Measure ``lm`` over ``spec``'s grid on this machine; return the profile (the :mod:`sfsim.cost.latency` format).

    Args:
        lm: the loaded model (:func:`trainer.model.loading.load_model` or :func:`~trainer.model.loading.tiny_model`).
        spec: grid, task, LoRA, repeats.
        model: what the profile's ``model`` field says: a built-in name (its shape is known to the
            simulator) or anything else (the shape is then written inline under ``arch``).
        source: free text, e.g. the command that made it.
        progress: called with (micro_batch, seq_len) before each grid entry.

    Returns:
        A plain dict ready for ``yaml.safe_dump``.

    Example:
        >>> from trainer.model.loading import tiny_model
        >>> prof = profile_model(tiny_model("bert", n_layers=2), ProfileSpec([2], [8], repeats=1, warmup=0),
        ...                      model="tiny")
        >>> len(prof["grid"]), len(prof["grid"][0]["forward"]["blocks"])
        (1, 2)
    """
    limit = max_positions(lm)
    if limit is not None and spec.seq_lens[-1] > limit:
        raise SfsimError(f"--seq-len {spec.seq_lens[-1]} is longer than {lm.name}'s {limit} positions")
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    device = resolve_device(spec.device, "--device")
    torch.manual_seed(0)
    parts = _Parts(lm, spec, device)
    sync = _sync(device)
    # each first call is honest only as the process's first use of its path: a server's first training micro-batch
    # (its warm-up, the cost model's), then the frozen forward; a device profile's frozen forward only
    step = first_step(parts, lm, spec, sync, PRECISIONS[spec.precision]) if spec.role == "server" else None
    first = first_call(parts, lm, spec, sync)
    # a server loop's own work around its ops (after the first calls: it trains and embeds)
    kept = bookkeeping(parts, lm, spec, sync, PRECISIONS[spec.precision]) if spec.role == "server" else None
    # the machine's speed while measuring (a CPU's: other processes' load; validate compares it with the run's)
    with LoadSampler() if device.type == "cpu" else contextlib.nullcontext() as sampler:
        grid = _measure_grid(parts, lm, spec, progress)
    info = machine_info()
    if device.type != "cpu":
        info["accelerator"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    after = os.getloadavg()
    # 1-minute load before and after, and the 5-minute load after (which spans a few minutes of measuring)
    info["load_average"] = {"before": round(load0, 2), "after": round(after[0], 2), "after_5min": round(after[1], 2)}
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    if sampler is not None:
        info["probe_s"] = {"mean": round(sampler.mean, 6), "samples": len(sampler.samples)}
    prof = {"device": spec.name, "role": spec.role, "model": model}
    if model not in BUILTIN:
        cfg = lm.model.config
        prof["arch"] = {"family": lm.family, "n_layers": lm.n_layers, "hidden": lm.hidden,
                        "heads": cfg.num_attention_heads,
                        "kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
                        "intermediate": getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
                        or 4 * lm.hidden, "vocab": cfg.vocab_size,
                        "tie_embeddings": bool(getattr(cfg, "tie_word_embeddings", lm.family != "bert"))}
        head_dim = getattr(cfg, "head_dim", None)
        if head_dim and head_dim != lm.hidden // cfg.num_attention_heads:
            prof["arch"]["head_dim"] = int(head_dim)
    prof.update({"task": spec.task, "num_labels": spec.num_labels if spec.task == "classification" else None,
                 "lora": {"rank": spec.lora_rank, "alpha": spec.lora_alpha, "targets": parts.targets},
                 "dtype": spec.precision, "warmup": spec.warmup, "repeats": spec.repeats, "machine": info,
                 "first_call": first, "first_step": step, "bookkeeping": kept, "grid": grid, "source": source, **_epoch_end(parts, lm, spec)})
    return {k: v for k, v in prof.items() if v is not None}


def write_profile(prof: dict, path: str | os.PathLike) -> None:
    """Write a profile from :func:`profile_model` as YAML (atomically: a crash leaves no half file)."""
    import yaml

    from sfsim.scenario.schema import write_atomic

    write_atomic(path, yaml.safe_dump(prof, sort_keys=False, width=200))
