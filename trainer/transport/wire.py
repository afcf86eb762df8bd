"""The wire format of the distributed runtime: a fixed-size integer header, then raw tensor payloads.

Nothing received from a peer is unpickled. A message is one ``int64`` header of :data:`HEADER_LEN`
entries (one frame) followed, when it carries tensors, by their bytes back to back (a second frame;
framing and encryption: :mod:`trainer.transport.secure`). The header says everything the receiver
needs to allocate the payloads before receiving them, and is checked before anything is allocated:
first its structure (:func:`decode_header`), then per kind its integers and announced tensors against
the run (:func:`check_specs`: :data:`HEADER_CHECKS`, :data:`SPEC_CHECKS`), and after the payload the
values (:func:`check_content`: :data:`CONTENT_CHECKS`: finite numbers, labels within the classes).
A new kind or field adds its entry to these tables:

====  ==========================================================================================
slot  meaning
====  ==========================================================================================
0     :data:`MAGIC`
1     :data:`VERSION`
2     message kind (:class:`Kind`)
3     device index (the sender's own index on the uplink; the receiver's on the downlink)
4     micro-batch id (``-1`` when none)
5     epoch
6     aux: a small integer whose meaning depends on the kind (credits, rounds, sample count)
7     number of tensors ``n`` (at most :data:`MAX_TENSORS`)
8     at: the sender's clock in microseconds when it sent the message (a handover's ``join`` and ``moved``: the
      instant the simulator delivers it, which a waiting server compares with a round's invitation; ``gone``: the
      device's departure, which a server compares with each replay's start), else ``-1``
9+    ``n`` tensor descriptors of :data:`DESC_LEN` slots: name code, dtype code, ndim, 4 dims
====  ==========================================================================================

Tensor names and dtypes are small fixed vocabularies (:data:`NAMES`, :data:`DTYPES`); adapters travel
as one flat ``float32`` vector in an order both ends derive from the same model (see
:func:`pack_state`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trainer.transport import codecs

MAGIC = 0x5F51  # "SFSIM" wire
VERSION = 2  # 2: the ``at`` slot
MAX_TENSORS = 4
MAX_DIMS = 4
DESC_LEN = 3 + MAX_DIMS  # name, dtype, ndim, dims
FIXED = 9  # the slots before the tensor descriptors
HEADER_LEN = FIXED + MAX_TENSORS * DESC_LEN  # 37 int64 slots = 296 bytes
MAX_AT_US = 1 << 50  # an ``at`` stamp at most (about 36 years of run clock, in microseconds)
MAX_MESSAGE_BYTES = 2 << 30  # 2 GiB: no single message may ask the receiver for more
MAX_LEGS = 1 << 16  # handovers of one device in a run at most (a ``moved`` names the leg it moves to)


class Kind(enum.IntEnum):
    """Message kinds. ``UP`` kinds travel device -> server, ``DOWN`` kinds server -> device."""

    HELLO = 1  # up: a device joins; aux = its sample count, mb = the checkpoint its saved state is from (-1)
    ACT = 2  # up: activations of one micro-batch (hidden, attention_mask, labels)
    ADAPTER = 3  # both: a flat adapter (+ head) state; aux = round
    SHARD = 4  # up: a device's raw samples (cenlora)
    DONE = 5  # up: the device finished what it was asked to do this epoch
    HEARTBEAT = 6  # both: liveness, no tensors
    START = 7  # down: begin an epoch; aux = initial credits (or rounds to sync before the first forward)
    CREDIT = 8  # down: one more micro-batch may be sent
    GRAD = 9  # down: cut-layer gradient of one micro-batch; aux = fedavg rounds before the next forward
    FWD = 10  # down: compute and send micro-batch ``mb`` (server-driven methods)
    END = 11  # down: the run is over; exit
    SYNC = 12  # down: send your adapter for fedavg round ``aux``
    ROUND = 13  # down: fedlora round ``aux``: train on the enclosed global state
    REPORT = 14  # up: the device's measurements as UTF-8 JSON bytes (parsed with ``json``, never unpickled)
    SAVE = 15  # down: write your training state for checkpoint ``aux``, then answer DONE with the same aux
    LEAVE = 16  # up: the device has left (availability); aux = samples of this epoch it will not send
    MOVED = 17  # up, to the old server: the device hands over; mb = micro-batches it sent this epoch, aux = its new leg
    JOIN = 18  # up, to the new server: aux = micro-batches of this epoch it will send there (0: not this epoch)
    RELEASE = 19  # down, from the server a device leaves (a handover, trainer.transport.handover): mb = its next micro-batch
    GONE = 20  # up, to every server it sent to and its own: the device left for good; at = its departure (departure.py)


#: Kinds whose header may carry the ``at`` stamp (slot 8).
STAMPED = frozenset({Kind.JOIN, Kind.MOVED, Kind.GONE})

UP = {Kind.HELLO, Kind.ACT, Kind.ADAPTER, Kind.SHARD, Kind.DONE, Kind.HEARTBEAT, Kind.REPORT, Kind.LEAVE,
      Kind.MOVED, Kind.JOIN, Kind.GONE}
DOWN = {Kind.START, Kind.CREDIT, Kind.GRAD, Kind.FWD, Kind.END, Kind.SYNC, Kind.ROUND, Kind.ADAPTER,
        Kind.HEARTBEAT, Kind.SAVE, Kind.RELEASE}

#: Tensor names that may appear in a message (code = position + 1).
NAMES = ("hidden", "attention_mask", "labels", "grad", "state", "input_ids", "token_type_ids", "losses", "blob",
         "scales")
#: Dtypes that may appear in a message (code = position + 1).
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool, torch.uint8, torch.float64,
          torch.int8)

#: Which tensors each kind carries: (required, optional); kinds not listed carry none.
KIND_TENSORS: dict[Kind, tuple[frozenset[str], frozenset[str]]] = {
    Kind.ACT: (frozenset({"hidden", "attention_mask", "labels"}), frozenset({"scales"})),  # scales: int8/int4 codecs
    Kind.ADAPTER: (frozenset({"state"}), frozenset({"losses"})),
    Kind.ROUND: (frozenset({"state"}), frozenset()),
    Kind.GRAD: (frozenset({"grad"}), frozenset({"scales"})),
    Kind.SHARD: (frozenset({"input_ids", "attention_mask", "labels"}), frozenset({"token_type_ids"})),
    Kind.REPORT: (frozenset({"blob"}), frozenset()),
}


class WireError(ValueError):
    """A header or payload that breaks the protocol (the sender is dropped)."""


@dataclass
class Packet:
    """A decoded message: header fields plus named tensors."""

    kind: Kind
    device: int
    mb: int = -1
    epoch: int = 0
    aux: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    at: int = -1  # the sender's clock (microseconds) when it sent the message; -1: not stamped

    @property
    def nbytes(self) -> int:
        """Payload bytes (what a link carries besides the fixed header)."""
        return sum(t.nbytes for t in self.tensors.values())


def encode_header(p: Packet) -> torch.Tensor:
    """The (HEADER_LEN,) int64 header of ``p``; tensors must be contiguous with a known name and dtype."""
    if len(p.tensors) > MAX_TENSORS:
        raise WireError(f"{len(p.tensors)} tensors in one message; at most {MAX_TENSORS}")
    h = torch.zeros(HEADER_LEN, dtype=torch.int64)
    h[:FIXED] = torch.tensor([MAGIC, VERSION, int(p.kind), p.device, p.mb, p.epoch, p.aux, len(p.tensors), p.at])
    for i, (name, t) in enumerate(p.tensors.items()):
        if name not in NAMES or t.dtype not in DTYPES or t.dim() > MAX_DIMS:
            raise WireError(f"cannot send tensor {name!r} ({t.dtype}, {t.dim()}-d)")
        dims = list(t.shape) + [0] * (MAX_DIMS - t.dim())
        o = FIXED + i * DESC_LEN
        h[o:o + DESC_LEN] = torch.tensor([NAMES.index(name) + 1, DTYPES.index(t.dtype) + 1, t.dim(), *dims])
    return h


def decode_header(h: torch.Tensor, allowed: set[Kind]) -> tuple[Packet, list[tuple[str, torch.dtype, tuple]]]:
    """Check a received header; return the packet (no tensors yet) and the payloads to receive.

    Raises:
        WireError: bad magic or version, a kind not ``allowed`` in this direction, an unknown name
            or dtype, too many tensors or dimensions, negative dims, a tensor set that does not match
            the kind, or a total size above :data:`MAX_MESSAGE_BYTES`.
    """
    v = h.tolist()
    if len(v) != HEADER_LEN or v[0] != MAGIC:
        raise WireError("bad magic: not an sfsim message")
    if v[1] != VERSION:
        raise WireError(f"wire version {v[1]}, expected {VERSION}")
    try:
        kind = Kind(v[2])
    except ValueError:
        raise WireError(f"unknown message kind {v[2]}") from None
    if kind not in allowed:
        raise WireError(f"message kind {kind.name} is not allowed in this direction")
    n = v[7]
    if not 0 <= n <= MAX_TENSORS:
        raise WireError(f"{n} tensors in one message; at most {MAX_TENSORS}")
    if v[8] != -1 and not (kind in STAMPED and 0 <= v[8] <= MAX_AT_US):
        raise WireError(f"{kind.name} stamped at {v[8]} us (only {'/'.join(k.name for k in sorted(STAMPED))} carry a "
                        f"stamp, 0..{MAX_AT_US} us, or -1)")
    specs, total = [], 0
    for i in range(n):
        name_c, dtype_c, ndim, *dims = v[FIXED + i * DESC_LEN: FIXED + (i + 1) * DESC_LEN]
        if not (1 <= name_c <= len(NAMES) and 1 <= dtype_c <= len(DTYPES) and 0 <= ndim <= MAX_DIMS):
            raise WireError(f"tensor {i}: unknown name, dtype or rank ({name_c}, {dtype_c}, {ndim})")
        shape = tuple(dims[:ndim])
        if any(d < 0 for d in shape) or any(d != 0 for d in dims[ndim:]):
            raise WireError(f"tensor {i}: bad shape {dims}")
        dtype = DTYPES[dtype_c - 1]
        total += math.prod(shape) * dtype.itemsize
        specs.append((NAMES[name_c - 1], dtype, shape))
    if total > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {total} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        raise WireError(f"duplicate tensor names {names}")
    need, may = KIND_TENSORS.get(kind, (frozenset(), frozenset()))
    if not need <= set(names) <= need | may:
        raise WireError(f"{kind.name} must carry {sorted(need)} (optional {sorted(may)}), got {sorted(names)}")
    return Packet(kind, v[3], v[4], v[5], v[6], at=v[8]), specs


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts from its peers (checked after the header, before and after the payloads).

    Attributes:
        hidden: model width d.
        max_batch: samples per micro-batch at most.
        max_len: tokens per sample at most.
        state_numel: elements of a flat adapter state (``ADAPTER``/``ROUND``); ``-1``: any.
        lm: causal-LM task (labels are (B, T)) instead of classification (labels (B,)).
        num_classes: classes of a classification task (labels in 0..C-1); 0: unchecked.
        vocab: token ids in 0..vocab-1 (shards; LM labels, ``-100`` also allowed); 0: unchecked.
        budget: samples each device index may hold at most (its share of the scenario's budget);
            empty: unchecked.
        kinds: the kinds this role accepts (e.g. a SplitFrozen server takes no adapters or shards);
            ``None``: every kind of the direction.
        report_bytes: size of a device's end-of-run report at most.
        epochs: epochs of the run (a handover's ``join`` names one of them); 0: unchecked.
        codec: how ``hidden`` (ACT) and ``grad`` (GRAD) travel (``trainer.transport.codecs``); an ACT
            header names its codec's number in its aux slot.
    """

    hidden: int
    max_batch: int
    max_len: int
    state_numel: int = -1
    lm: bool = False
    num_classes: int = 0
    vocab: int = 0
    budget: tuple[int, ...] = ()
    kinds: frozenset[Kind] | None = None
    report_bytes: int = 64 << 20
    epochs: int = 0
    codec: str = "fp32"


Specs = list[tuple[str, torch.dtype, tuple]]


def _samples(p: Packet, lim: Limits, what: str) -> None:
    """``p.aux`` is a sample count within the sender's budget."""
    cap = lim.budget[p.device] if 0 <= p.device < len(lim.budget) else None
    if p.aux < 0 or (cap is not None and p.aux > cap):
        raise WireError(f"{what} of {p.aux} samples; this device holds 0..{cap if cap is not None else 'N'}")


def _coded(s: dict, name: str, lim: Limits) -> tuple[int, int]:
    """(B, T) of the codec-encoded tensor ``name`` (+ ``scales``) announced in ``s``; raise WireError."""
    got = {"values": s[name], **({"scales": s["scales"]} if "scales" in s else {})}
    try:
        B, T = codecs.check_spec(lim.codec, got, lim.hidden)
    except codecs.CodecError as err:
        what = "floating point" if lim.codec in ("fp32", "fp16", "bf16") else f"{lim.codec}-encoded"
        raise WireError(f"{name} must be (B, T, {lim.hidden}) {what}: {err}") from None
    if not (1 <= B <= lim.max_batch and 1 <= T <= lim.max_len):
        raise WireError(f"{name} {s[name][1]}: batch must be 1..{lim.max_batch}, length 1..{lim.max_len}")
    return B, T


def _spec_act(p: Packet, s: dict, lim: Limits) -> None:
    B, T = _coded(s, "hidden", lim)
    if s["attention_mask"] != (torch.uint8, (B, T)):
        raise WireError(f"attention_mask must be uint8 {(B, T)}, got {s['attention_mask']}")
    lab = (torch.int64, (B, T) if lim.lm else (B,))
    if s["labels"] != lab:
        raise WireError(f"labels must be {lab[0]} {lab[1]}, got {s['labels']}")


def _spec_state(p: Packet, s: dict, lim: Limits) -> None:
    dtype, shape = s["state"]
    if dtype != torch.float32 or len(shape) != 1 or (lim.state_numel >= 0 and shape[0] != lim.state_numel):
        raise WireError(f"state must be float32 ({lim.state_numel},), got {dtype} {shape}")
    if "losses" in s and (s["losses"][0] != torch.float32 or len(s["losses"][1]) != 1
                          or s["losses"][1][0] > (1 << 20)):
        raise WireError(f"losses must be float32 (N,) with N <= 2**20, got {s['losses']}")


def _spec_grad(p: Packet, s: dict, lim: Limits) -> None:
    _coded(s, "grad", lim)


def _spec_report(p: Packet, s: dict, lim: Limits) -> None:
    dtype, shape = s["blob"]
    if dtype != torch.uint8 or len(shape) != 1 or shape[0] > lim.report_bytes:
        raise WireError(f"report must be uint8 (N,) with N <= {lim.report_bytes} bytes, got {dtype} {shape}")


def _spec_shard(p: Packet, s: dict, lim: Limits) -> None:
    rows = {shape[0] if shape else -1 for _, shape in s.values()}
    cap = lim.budget[p.device] if 0 <= p.device < len(lim.budget) else None
    for name, (dtype, shape) in s.items():
        if dtype != torch.int64 or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] > lim.max_len):
            raise WireError(f"shard tensor {name} must be int64 (N,) or (N, <= {lim.max_len}), got {dtype} {shape}")
    if len(rows) != 1 or (cap is not None and rows.pop() > cap):
        raise WireError(f"shard tensors must share N rows, at most {cap} (this device's samples)")


def _header_hello(p: Packet, lim: Limits) -> None:
    _samples(p, lim, "a hello")


def _header_leave(p: Packet, lim: Limits) -> None:
    _samples(p, lim, "a leave")


def _header_act(p: Packet, lim: Limits) -> None:
    """Activations name the run's codec in aux (trainer.transport.codecs)."""
    want = codecs.layout(lim.codec).code
    if p.aux != want:
        raise WireError(f"activations in codec number {p.aux}; this run sends {lim.codec} (number {want})")


def _header_join(p: Packet, lim: Limits) -> None:
    """A handover's ``join``: aux micro-batches still to come (at most one per sample), in an epoch of the run."""
    _samples(p, lim, "a join announcing micro-batches")
    if lim.epochs and p.epoch >= lim.epochs:
        raise WireError(f"a join for epoch {p.epoch}; the run has epochs 0..{lim.epochs - 1}")


def _header_moved(p: Packet, lim: Limits) -> None:
    """A handover's ``moved``: mb = micro-batches sent this epoch (at most one per sample), aux = the index of
    the leg it moves to (at least 1)."""
    cap = lim.budget[p.device] if 0 <= p.device < len(lim.budget) else None
    if p.mb < 0 or (cap is not None and p.mb > cap):
        raise WireError(f"a moved after {p.mb} micro-batches; this device holds 0..{cap if cap is not None else 'N'}")
    if not 0 <= p.aux <= MAX_LEGS:
        raise WireError(f"a moved to leg {p.aux}; legs are 0..{MAX_LEGS}")


def _header_gone(p: Packet, lim: Limits) -> None:
    """A cached device's ``gone``: stamped (its departure), no micro-batch, no aux, in an epoch of the run."""
    if p.at < 0:
        raise WireError("a GONE must carry its departure instant (at)")
    if p.mb != -1 or p.aux != 0:
        raise WireError(f"a GONE names no micro-batch and no count (mb {p.mb}, aux {p.aux}; -1 and 0)")
    if lim.epochs and p.epoch >= lim.epochs:
        raise WireError(f"a GONE in epoch {p.epoch}; the run has epochs 0..{lim.epochs - 1}")


#: Per kind: checks of the header's integers (before the payloads are read).
HEADER_CHECKS: dict[Kind, Callable[[Packet, Limits], None]] = {Kind.HELLO: _header_hello, Kind.LEAVE: _header_leave,
                                                               Kind.JOIN: _header_join, Kind.MOVED: _header_moved,
                                                               Kind.ACT: _header_act, Kind.GONE: _header_gone}
#: Per kind: checks of the announced tensors against the model's shapes (before anything is allocated).
SPEC_CHECKS: dict[Kind, Callable[[Packet, dict, Limits], None]] = {Kind.ACT: _spec_act, Kind.ADAPTER: _spec_state, Kind.ROUND: _spec_state,
                                     Kind.GRAD: _spec_grad, Kind.REPORT: _spec_report, Kind.SHARD: _spec_shard}


def check_specs(p: Packet, specs: Specs, lim: Limits) -> None:
    """Check a header's integers and the tensors it announces against ``lim``; raise :class:`WireError`."""
    if lim.kinds is not None and p.kind not in lim.kinds:
        raise WireError(f"this role does not accept {p.kind.name} messages")
    if p.epoch < 0 or p.mb < -1:
        raise WireError(f"epoch {p.epoch} / micro-batch {p.mb} out of range")
    if p.kind in HEADER_CHECKS:
        HEADER_CHECKS[p.kind](p, lim)
    if p.kind in SPEC_CHECKS:
        SPEC_CHECKS[p.kind](p, {name: (dtype, shape) for name, dtype, shape in specs}, lim)


def _finite(name: str, t: torch.Tensor) -> None:
    if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
        raise WireError(f"non-finite values (NaN or inf) in {name}")


def _ids(name: str, t: torch.Tensor, hi: int, allow: int | None = None) -> None:
    """Every entry of ``t`` in 0..hi-1 (or equal to ``allow``)."""
    if hi <= 0 or t.numel() == 0:
        return
    bad = (t < 0) | (t >= hi)
    if allow is not None:
        bad &= t != allow
    if bool(bad.any()):
        v = int(t[bad][0])
        raise WireError(f"{name} holds {v}, outside 0..{hi - 1}" + (f" (or {allow})" if allow is not None else ""))


def _labels(t: torch.Tensor, lim: Limits) -> None:
    if lim.lm:
        _ids("labels", t, lim.vocab, allow=-100)
    else:
        _ids("labels", t, lim.num_classes)


def _coded_values(name: str, t: dict, lim: Limits) -> None:
    """The values of a codec-encoded ``name`` are ones its encoder produces (finite floats, scales >= 0, ...)."""
    enc = {"values": t[name], **({"scales": t["scales"]} if "scales" in t else {})}
    try:
        codecs.check_values(enc, lim.codec, lim.hidden)
    except codecs.CodecError as err:
        raise WireError(f"malformed {lim.codec} {name}: {err}") from None


def _content_act(p: Packet, t: dict, lim: Limits) -> None:
    _finite("hidden", t["hidden"])
    _coded_values("hidden", t, lim)
    _labels(t["labels"], lim)
    if bool((t["attention_mask"] > 1).any()):
        raise WireError("attention_mask holds values other than 0 and 1")


def _content_shard(p: Packet, t: dict, lim: Limits) -> None:
    _ids("input_ids", t["input_ids"], lim.vocab)
    _labels(t["labels"], lim)


#: Per kind: checks of the received values (non-finite numbers, labels, ids) before a role sees them.
CONTENT_CHECKS: dict[Kind, Callable[[Packet, dict, Limits], None]] = {
    Kind.ACT: _content_act, Kind.SHARD: _content_shard,
    Kind.GRAD: lambda p, t, lim: (_finite("grad", t["grad"]), _coded_values("grad", t, lim)),
    Kind.ADAPTER: lambda p, t, lim: [_finite(k, v) for k, v in t.items()],
    Kind.ROUND: lambda p, t, lim: _finite("state", t["state"]),
}


def check_content(p: Packet, tensors: dict[str, torch.Tensor], lim: Limits) -> None:
    """Check received tensors' values (finite, labels within the classes, ids within the vocabulary)."""
    if p.kind in CONTENT_CHECKS:
        CONTENT_CHECKS[p.kind](p, tensors, lim)


def payload_bytes(specs: Specs) -> int:
    """Bytes of the payloads a checked header announces."""
    return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in specs)


def tensor_views(tensors: dict[str, torch.Tensor]) -> list[memoryview]:
    """The raw bytes of each tensor, in order, without copying (tensors must be contiguous CPU tensors)."""
    return [memoryview(t.detach().reshape(-1).view(torch.uint8).numpy()) for t in tensors.values() if t.numel()]


def from_bytes(buf: bytearray, specs: Specs) -> dict[str, torch.Tensor]:
    """Tensors of ``specs`` from their concatenated bytes (``len(buf) == payload_bytes(specs)``)."""
    out, o = {}, 0
    for name, dtype, shape in specs:
        n = math.prod(shape) * dtype.itemsize
        if n == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=n, offset=o).clone()  # aligned, owned
        out[name] = raw.view(dtype).reshape(shape)
        o += n
    return out


def pack_state(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """Flatten ``state[k]`` for ``k`` in ``keys`` into one float32 vector (both ends share ``keys``)."""
    return torch.cat([state[k].detach().reshape(-1).to(torch.float32) for k in keys]) if keys else torch.zeros(0)


def unpack_state(flat: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_state`: shapes and dtypes taken from ``like``."""
    out, o = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = flat[o:o + n].reshape(like[k].shape).to(like[k].dtype).clone()
        o += n
    if o != flat.numel():
        raise WireError(f"state has {flat.numel()} elements, expected {o}")
    return out
