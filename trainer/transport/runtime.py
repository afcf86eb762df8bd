"""Device and server roles, the messages between them and the transport that carries (and counts) them.

A :class:`DeviceRole` owns its data shard and its device-side model part and turns micro-batches into
:class:`Message` objects; the server side consumes messages. Roles never call each other: every
tensor crosses a :class:`Transport`, which counts its bytes on the device's uplink or downlink. Today
:class:`InProcessTransport` copies tensors between queues in one process; a torch.distributed
transport (one process per role) implements the same four methods.

Devices are *reactive*: a method's device side is a handler called with each message the server sends
down (start an epoch, a credit, a command, an adapter). :class:`InProcessTransport` calls it at once
(under the device's own RNG state), ``trainer.transport.distributed.DistTransport`` delivers it to the device's
process. The server side is the same code for both transports.

Link trace events in the in-process run: ``start`` is when the message was handed to the transport
and ``dur`` the measured time of copying its tensors (the in-process "wire"), not a network time;
the network time a real link would take is reported separately from the scenario's bandwidth.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from sfsim.engine.pacing import SERVER_ORDERS, server_order  # noqa: F401 (re-exported: one source of truth)
from sfsim.errors import SfsimError
from trainer.data.tasks import micro_batches
from trainer.run.measure import Meter, tensor_bytes
from trainer.transport import codecs


def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the columns that are padding in every row (left or right padding), keeping (B, T') shapes."""
    keep = batch["attention_mask"].bool().any(0)  # (T,)
    if bool(keep.all()):
        return batch
    return {k: (v[:, keep] if v.dim() == 2 and v.shape[1] == keep.shape[0] else v) for k, v in batch.items()}


def wire_mask(mask: torch.Tensor) -> torch.Tensor:
    """The attention mask as it travels: one byte per token (uint8) instead of int64's eight."""
    return mask.to(torch.uint8)


def device_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Extra inputs of a device part besides ids and mask (BERT token types for sentence pairs)."""
    return {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}


class PeerLost(Exception):
    """A peer died, hung past the timeout, or broke the protocol (``device``: its name)."""

    def __init__(self, device: str, reason: str = ""):
        super().__init__(f"{device}: {reason}")
        self.device, self.reason = device, reason


class DeviceLeft(Exception):
    """This device is gone (churn ``drop``, or never online again): its method tells the server (``leave``)."""

    def __init__(self, device: str, reason: str = ""):
        super().__init__(f"{device}: {reason}")
        self.device, self.reason = device, reason


@dataclass
class Message:
    """One message between roles: a kind, header integers and named tensors.

    Attributes:
        device: the device the message belongs to (sender up, receiver down).
        mb: micro-batch index on that device (``-1`` when none).
        tensors: name -> tensor (e.g. ``hidden`` (B, T, d), ``attention_mask`` (B, T), ``labels``).
        kind: a :class:`trainer.transport.wire.Kind` name in lower case (``act``, ``credit``, ``adapter``...).
        aux: a small integer whose meaning depends on the kind (see :mod:`trainer.transport.wire`).
        epoch: the epoch the message belongs to.
        at: the sender's clock (s, the run's) when it sent the message, or None: a handover's ``join`` and ``moved``
            carry it (:data:`trainer.transport.wire.STAMPED`), the instant the simulator delivers them.
    """

    device: str
    mb: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    kind: str = "act"
    aux: int = 0
    epoch: int = 0
    at: float | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors in the message (what crosses the link)."""
        return tensor_bytes(self.tensors)


class Transport(Protocol):
    """Carries messages between devices and the server and counts their bytes per link.

    ``arrival_order`` is True when ``recv_up(None)`` returns messages in real arrival order
    (the ``fifo`` server order); ``lost`` maps devices that are gone to the reason.
    """

    arrival_order: bool
    lost: dict[str, str]

    def send_up(self, msg: Message) -> None:
        """Device -> server."""

    def recv_up(self, device: str | None, kinds: set[str] | None = None) -> Message:
        """The oldest message from ``device`` (``None``: any) waiting at the server; PeerLost if gone."""

    def send_down(self, msg: Message) -> None:
        """Server -> device ``msg.device``."""

    def recv_down(self, device: str) -> Message:
        """The oldest message waiting for ``device``."""


def role_seed(seed: int, role: str) -> int:
    """The RNG seed of one role (device name or ``"server"``) in a run seeded with ``seed``."""
    return (seed * 1000003 + zlib.crc32(role.encode())) % (2**63)


class RoleRNG:
    """Per-role torch RNG states in one process, so that every role draws what its own process would."""

    def __init__(self, seed: int):
        self.seed = seed
        self.states: dict[str, torch.Tensor] = {}

    @contextmanager
    def role(self, name: str) -> Iterator[None]:
        """Run the enclosed code under ``name``'s RNG state (seeded from :func:`role_seed` at first use)."""
        outer = torch.get_rng_state()
        if name in self.states:
            torch.set_rng_state(self.states[name])
        else:
            torch.manual_seed(role_seed(self.seed, name))
        try:
            yield
        finally:
            self.states[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


class InProcessTransport:
    """A transport between roles in one process: per-device queues, tensors copied on send.

    Copying (``detach().clone()``) makes the receiver's tensors independent of the sender's graph and
    of ``torch.inference_mode`` (inference tensors cannot be saved for backward), as a real wire would.
    A message sent down is handed at once to ``handler`` (the method's device side), under the
    device's own RNG state (``rng``). Messages without tensors (credits, commands) are not counted on
    a link, as in the simulator.
    """

    arrival_order = False

    def __init__(self, meter: Meter, handler: Callable[[Message], None] | None = None, rng: RoleRNG | None = None,
                 codec: str = "fp32", hidden: int | None = None):
        self.meter, self.handler, self.rng = meter, handler, rng
        self.codec, self.hidden = codec, hidden  # activations up and gradients down (trainer.transport.codecs)
        self.lost: dict[str, str] = {}
        self._up: dict[str, deque[Message]] = defaultdict(deque)
        self._down: dict[str, deque[Message]] = defaultdict(deque)

    def _send(self, msg: Message, down: bool) -> Message:
        start = self.meter.now()
        wire = Message(msg.device, msg.mb, {k: v.detach().clone() for k, v in msg.tensors.items()},
                       kind=msg.kind, aux=msg.aux, epoch=msg.epoch, at=msg.at)
        if wire.tensors:
            self.meter.transfer(msg.device, wire.nbytes, start, self.meter.now() - start, msg.mb, down=down)
        return wire

    def send_up(self, msg: Message) -> None:
        """Device -> server: encode (the run's codec), copy the tensors and count their bytes on the device's uplink."""
        msg = codecs.encode_message(msg, self.codec, self.meter, msg.device)
        self._up[msg.device].append(self._send(msg, down=False))

    def send_down(self, msg: Message) -> None:
        """Server -> device: encode, copy, count, decode, and run the device's handler on it (or queue it)."""
        wire = self._send(codecs.encode_message(msg, self.codec, self.meter, self.meter.server_lane), down=True)
        wire = codecs.decode_message(wire, self.codec, self.hidden, self.meter, msg.device)
        if self.handler is None:
            self._down[msg.device].append(wire)
        elif self.rng is None:
            self.handler(wire)
        else:
            with self.rng.role(msg.device):
                self.handler(wire)

    def recv_up(self, device: str | None, kinds: set[str] | None = None) -> Message:
        """The oldest message from ``device`` (in-process the server always names the device)."""
        if device is None:
            raise SfsimError("the in-process transport has no arrival order: name the device")
        q = self._up[device]
        for msg in q:
            if kinds is None or msg.kind in kinds:
                q.remove(msg)
                return codecs.decode_message(msg, self.codec, self.hidden, self.meter, self.meter.server_lane)
        raise SfsimError(f"in-process: no {sorted(kinds or ['any'])} message from {device} is waiting")

    def recv_down(self, device: str) -> Message:
        """The oldest message for ``device``."""
        return self._down[device].popleft()


class DeviceRole:
    """One device: its data shard, its device-side model part, and its micro-batch order.

    Args:
        name: device name (its trace lane).
        shard: encoded samples of this device: ``input_ids`` (N, T), ``attention_mask`` (N, T), ``labels``.
        micro_batch: samples per micro-batch.
        seed: seed of the per-epoch shuffle.
        part: the device-side model part (``DevicePart``), or ``None`` when the device computes nothing.
        bucket: length bucketing over windows of this many micro-batches (0: off; see ``trainer.data.tasks.micro_batches``).
    """

    def __init__(self, name: str, shard: dict[str, torch.Tensor], micro_batch: int, seed: int, part=None,
                 bucket: int = 0):
        if micro_batch <= 0:
            raise SfsimError(f"device {name}: micro_batch must be > 0")
        self.name, self.shard, self.micro_batch, self.seed, self.part = name, shard, micro_batch, seed, part
        self.bucket = bucket

    @property
    def n_samples(self) -> int:
        """Samples in the shard."""
        return int(self.shard["input_ids"].shape[0])

    @property
    def n_batches(self) -> int:
        """Micro-batches per epoch (the last one may be smaller)."""
        return math.ceil(self.n_samples / self.micro_batch)

    def batches(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        """The epoch's micro-batches, shuffled reproducibly (seed, epoch), all-padding columns dropped."""
        gen = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        perm = torch.randperm(self.n_samples, generator=gen)
        rows = micro_batches(perm, self.micro_batch, self.shard["attention_mask"].sum(1), self.bucket, gen)
        return [trim({k: v[r] for k, v in self.shard.items()}) for r in rows]

    def forward_frozen(self, batch: dict[str, torch.Tensor], mb: int, meter: Meter) -> Message:
        """Forward the frozen prefix under ``inference_mode``; the message holds hidden, mask and labels."""
        key = (self.part.cut, *batch["input_ids"].shape)
        with meter.compute(self.name, "F", "device_forward", mb=mb, device=self.name, key=key), torch.inference_mode():
            hidden = self.part(batch["input_ids"], batch["attention_mask"], **device_kwargs(batch))  # (B, T, d)
        return Message(self.name, mb, {"hidden": hidden, "attention_mask": wire_mask(batch["attention_mask"]),
                                       "labels": batch["labels"]})


def _entropy(counter: Counter, k: int) -> float:
    n = sum(counter.values())
    if k <= 1 or n == 0:
        return 1.0
    p = np.array([c / n for c in counter.values() if c])
    return float(-(p * np.log(p)).sum() / math.log(k)) + 0.0  # + 0.0: a single class gives 0.0, not -0.0


def stream_mixing(devices: list[str], labels: list[list[int]], window: int) -> dict:
    """How mixed the server's training stream was over time.

    Args:
        devices: device of each micro-batch, in the order the server trained on them.
        labels: the class labels of each micro-batch (same order).
        window: micro-batches per window.

    Returns:
        ``window``; mean and min normalised entropy of devices and of labels over consecutive windows
        (1 = perfectly mixed, 0 = one device / one class); ``longest_device_run`` (consecutive
        micro-batches from one device); ``single_device_tail`` (fraction of the stream at its end
        that comes from one device only).
    """
    n_dev = len(set(devices))
    n_cls = len({c for mb in labels for c in mb})
    dev_h, lab_h = [], []
    for s in range(0, len(devices), window):
        dev_h.append(_entropy(Counter(devices[s:s + window]), n_dev))
        lab_h.append(_entropy(Counter(c for mb in labels[s:s + window] for c in mb), n_cls))
    run = best = 0
    for i, d in enumerate(devices):
        run = run + 1 if i and devices[i - 1] == d else 1
        best = max(best, run)
    tail = 0
    while tail < len(devices) and devices[-1 - tail] == devices[-1]:
        tail += 1
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {"window": window, "device_entropy_mean": r(np.mean(dev_h)) if dev_h else 1.0,
            "device_entropy_min": r(min(dev_h, default=1.0)), "label_entropy_mean": r(np.mean(lab_h)) if lab_h else 1.0,
            "label_entropy_min": r(min(lab_h, default=1.0)), "longest_device_run": best,
            "single_device_tail": r(tail / len(devices)) if devices else 0.0}
