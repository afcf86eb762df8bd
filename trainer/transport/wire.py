"""The wire format of the distributed runtime: a fixed-size integer header, then raw tensor payloads.

Nothing received from a peer is unpickled. A message is one ``int64`` header tensor of
:data:`HEADER_LEN` entries followed by one payload send per tensor. The header says everything the
receiver needs to allocate the payloads before receiving them, and is checked against hard limits
before anything is allocated:

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
8+    ``n`` tensor descriptors of :data:`DESC_LEN` slots: name code, dtype code, ndim, 4 dims
====  ==========================================================================================

Tensor names and dtypes are small fixed vocabularies (:data:`NAMES`, :data:`DTYPES`); adapters travel
as one flat ``float32`` vector in an order both ends derive from the same model (see
:func:`pack_state`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import torch

MAGIC = 0x5F51  # "SFSIM" wire
VERSION = 1
MAX_TENSORS = 4
MAX_DIMS = 4
DESC_LEN = 3 + MAX_DIMS  # name, dtype, ndim, dims
HEADER_LEN = 8 + MAX_TENSORS * DESC_LEN  # 36 int64 slots = 288 bytes
MAX_MESSAGE_BYTES = 2 << 30  # 2 GiB: no single message may ask the receiver for more


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
    MOVED = 17  # up, to the old server: the device hands over; mb = micro-batches it sent there this epoch
    JOIN = 18  # up, to the new server: aux = micro-batches of this epoch it will send there (0: not this epoch)


UP = {Kind.HELLO, Kind.ACT, Kind.ADAPTER, Kind.SHARD, Kind.DONE, Kind.HEARTBEAT, Kind.REPORT, Kind.LEAVE,
      Kind.MOVED, Kind.JOIN}
DOWN = {Kind.START, Kind.CREDIT, Kind.GRAD, Kind.FWD, Kind.END, Kind.SYNC, Kind.ROUND, Kind.ADAPTER,
        Kind.HEARTBEAT, Kind.SAVE}

#: Tensor names that may appear in a message (code = position + 1).
NAMES = ("hidden", "attention_mask", "labels", "grad", "state", "input_ids", "token_type_ids", "losses", "blob")
#: Dtypes that may appear in a message (code = position + 1).
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool, torch.uint8, torch.float64)

#: Which tensors each kind carries: (required, optional); kinds not listed carry none.
KIND_TENSORS: dict[Kind, tuple[frozenset[str], frozenset[str]]] = {
    Kind.ACT: (frozenset({"hidden", "attention_mask", "labels"}), frozenset()),
    Kind.ADAPTER: (frozenset({"state"}), frozenset({"losses"})),
    Kind.ROUND: (frozenset({"state"}), frozenset()),
    Kind.GRAD: (frozenset({"grad"}), frozenset()),
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

    @property
    def nbytes(self) -> int:
        """Payload bytes (what a link carries besides the fixed header)."""
        return sum(t.nbytes for t in self.tensors.values())


def encode_header(p: Packet) -> torch.Tensor:
    """The (HEADER_LEN,) int64 header of ``p``; tensors must be contiguous with a known name and dtype."""
    if len(p.tensors) > MAX_TENSORS:
        raise WireError(f"{len(p.tensors)} tensors in one message; at most {MAX_TENSORS}")
    h = torch.zeros(HEADER_LEN, dtype=torch.int64)
    h[:8] = torch.tensor([MAGIC, VERSION, int(p.kind), p.device, p.mb, p.epoch, p.aux, len(p.tensors)])
    for i, (name, t) in enumerate(p.tensors.items()):
        if name not in NAMES or t.dtype not in DTYPES or t.dim() > MAX_DIMS:
            raise WireError(f"cannot send tensor {name!r} ({t.dtype}, {t.dim()}-d)")
        dims = list(t.shape) + [0] * (MAX_DIMS - t.dim())
        o = 8 + i * DESC_LEN
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
    specs, total = [], 0
    for i in range(n):
        name_c, dtype_c, ndim, *dims = v[8 + i * DESC_LEN: 8 + (i + 1) * DESC_LEN]
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
    return Packet(kind, v[3], v[4], v[5], v[6]), specs


@dataclass(frozen=True)
class Limits:
    """What the receiver accepts in an activation message (checked after the header, before payloads).

    Attributes:
        hidden: model width d.
        max_batch: samples per micro-batch at most.
        max_len: tokens per sample at most.
        state_numel: elements of a flat adapter state (``ADAPTER``/``ROUND``); ``-1``: any.
        lm: causal-LM task (labels are (B, T)) instead of classification (labels (B,)).
    """

    hidden: int
    max_batch: int
    max_len: int
    state_numel: int = -1
    lm: bool = False


def check_specs(p: Packet, specs: list[tuple[str, torch.dtype, tuple]], lim: Limits) -> None:
    """Check the tensors a header announces against the model's shapes; raise :class:`WireError`."""
    s = {name: (dtype, shape) for name, dtype, shape in specs}
    if p.kind == Kind.ACT:
        dtype, shape = s["hidden"]
        if not dtype.is_floating_point or len(shape) != 3 or shape[2] != lim.hidden:
            raise WireError(f"hidden must be (B, T, {lim.hidden}) floating point, got {dtype} {shape}")
        B, T = shape[0], shape[1]
        if not (1 <= B <= lim.max_batch and 1 <= T <= lim.max_len):
            raise WireError(f"hidden {shape}: batch must be 1..{lim.max_batch}, length 1..{lim.max_len}")
        if s["attention_mask"] != (torch.uint8, (B, T)):
            raise WireError(f"attention_mask must be uint8 {(B, T)}, got {s['attention_mask']}")
        lab = (torch.int64, (B, T) if lim.lm else (B,))
        if s["labels"] != lab:
            raise WireError(f"labels must be {lab[0]} {lab[1]}, got {s['labels']}")
    elif p.kind in (Kind.ADAPTER, Kind.ROUND):
        dtype, shape = s["state"]
        if dtype != torch.float32 or len(shape) != 1 or (lim.state_numel >= 0 and shape[0] != lim.state_numel):
            raise WireError(f"state must be float32 ({lim.state_numel},), got {dtype} {shape}")
        if "losses" in s and (s["losses"][0] != torch.float32 or len(s["losses"][1]) != 1):
            raise WireError(f"losses must be float32 (N,), got {s['losses']}")
    elif p.kind == Kind.GRAD:
        dtype, shape = s["grad"]
        if not dtype.is_floating_point or len(shape) != 3 or shape[2] != lim.hidden or not 1 <= shape[0] <= lim.max_batch:
            raise WireError(f"grad must be (B, T, {lim.hidden}) floating point, got {dtype} {shape}")
    elif p.kind == Kind.REPORT:
        dtype, shape = s["blob"]
        if dtype != torch.uint8 or len(shape) != 1 or shape[0] > 256 << 20:
            raise WireError(f"report must be uint8 (N,) with N <= 256 MiB, got {dtype} {shape}")
    elif p.kind == Kind.SHARD:
        for name, (dtype, shape) in s.items():
            if dtype != torch.int64 or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] > lim.max_len):
                raise WireError(f"shard tensor {name} must be int64 (N,) or (N, <= {lim.max_len}), got {dtype} {shape}")


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
