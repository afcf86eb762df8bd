"""Stage times: what a schedule hands the engine per device and per server (plain durations and sizes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sfsim.errors import SfsimError

_TIMES = ("f", "b", "w", "step", "up_s", "up_l", "down_s", "down_l", "sync_up_s", "sync_down_s", "srv_f", "srv_b",
          "srv_w", "warmup")
"""DeviceTimes' stage times (seconds), each finite and >= 0."""


@dataclass(frozen=True)
class DeviceTimes:
    """Per-device stage durations (s) and sizes (bytes) that a schedule hands to the engine.

    Attributes:
        name: device name (its lane).
        server: index of its server in the schedule's server list.
        n: micro-batches it contributes in total (all epochs).
        sent: micro-batches it computes and sends itself (``n``, or one epoch with activation caching).
        f, b, w: device forward, backward-B and backward-W seconds per micro-batch.
        step: device optimizer step seconds (schedules that train on the device).
        up_s, up_l: uplink serialisation and propagation seconds per micro-batch transfer.
        down_s, down_l: downlink serialisation and propagation seconds per micro-batch transfer.
        sync_up_s, sync_down_s: adapter upload and download serialisation seconds (FedAvg).
        srv_f, srv_b, srv_w: server seconds per micro-batch of this device.
        up_bytes, down_bytes, sync_bytes: bytes per micro-batch up, down, and per adapter transfer.
        act_bytes: bytes of one micro-batch's activations at the device's cut (the mixing pool's memory).
        per_epoch, last: micro-batches per epoch and the size of each epoch's last one relative to a
            full one (``samples % micro_batch / micro_batch``, 1 when it divides). Every per-micro-batch
            time and byte count above is for a full micro-batch; the last of each epoch takes ``last``
            of it (FLOPs, bytes and so times are linear in the batch; latencies and steps are not).
        warmup: extra seconds on the device's first forward (micro-batch 0): first-call overhead.
    """

    name: str
    server: int = 0
    n: int = 1
    sent: int = -1
    f: float = 0.0
    b: float = 0.0
    w: float = 0.0
    step: float = 0.0
    up_s: float = 0.0
    up_l: float = 0.0
    down_s: float = 0.0
    down_l: float = 0.0
    sync_up_s: float = 0.0
    sync_down_s: float = 0.0
    srv_f: float = 0.0
    srv_b: float = 0.0
    srv_w: float = 0.0
    up_bytes: float = 0.0
    down_bytes: float = 0.0
    sync_bytes: float = 0.0
    act_bytes: float = 0.0
    per_epoch: int = 0
    last: float = 1.0
    warmup: float = 0.0

    def __post_init__(self):
        if self.n < 0:
            raise SfsimError(f"device {self.name!r}: micro-batch count must be >= 0, got {self.n}")
        if not 0 < self.last <= 1 or (self.last < 1 and self.per_epoch < 1):
            raise SfsimError(f"device {self.name!r}: last micro-batch size {self.last} must be in (0, 1] "
                             "and needs per_epoch >= 1")
        if self.sent < 0:
            object.__setattr__(self, "sent", self.n)
        times = (self.f, self.b, self.w, self.step, self.up_s, self.up_l, self.down_s, self.down_l, self.sync_up_s,
                 self.sync_down_s, self.srv_f, self.srv_b, self.srv_w, self.warmup)
        if min(times) >= 0 and math.isfinite(sum(times)):  # the common case, checked at once (100,000s of devices)
            return
        for key in _TIMES:
            val = getattr(self, key)
            if not (val >= 0 and math.isfinite(val)):
                raise SfsimError(f"device {self.name!r}: stage time {key} must be finite and >= 0, got {val}")

    def size(self, n: int) -> float:
        """Size of micro-batch ``n`` relative to a full one: ``last`` for each epoch's last, else 1."""
        return self.last if self.last < 1.0 and (n + 1) % self.per_epoch == 0 else 1.0

    def fwd(self, n: int) -> float:
        """Seconds of the device forward of micro-batch ``n``: its size's share of ``f``, plus ``warmup`` on the first."""
        return self.f * self.size(n) + (self.warmup if n == 0 else 0.0)

    def first_extra(self, m: int) -> float:
        """Warm-up seconds among the first ``m`` forwards (what busy time adds to ``units(m) * f``)."""
        return self.warmup if m > 0 else 0.0

    def units(self, m: int) -> float:
        """Full-micro-batch equivalents in the first ``m`` micro-batches (what FLOPs and bytes scale by)."""
        return m - (m // self.per_epoch) * (1.0 - self.last) if self.last < 1.0 else float(m)


@dataclass(frozen=True)
class ServerTimes:
    """One server as the engine sees it.

    Attributes:
        name: server name (lane prefix).
        count: parallel workers (accelerators).
        step: optimizer step seconds on one worker.
        aggregate: FedAvg seconds per participating device (fedlora, splitlora).
        warmup: extra seconds on the first forward each worker runs in the run (a fresh process's first training
            micro-batch: lazy initialisation, allocator growth, optimizer state; the latency profile's
            ``first_step``, :meth:`sfsim.cost.model.CostModel.server_warmup`); paid once, not again each epoch.
            Schedules whose server trains (SplitFrozen, SplitLoRA, CenLoRA) apply it; FedLoRA's server only averages.
    """

    name: str
    count: int = 1
    step: float = 0.0
    aggregate: float = 0.0
    warmup: float = 0.0

    def __post_init__(self):
        for key in ("step", "aggregate", "warmup"):
            val = getattr(self, key)
            if not (val >= 0 and math.isfinite(val)):
                raise SfsimError(f"server {self.name!r}: stage time {key} must be finite and >= 0, got {val}")

    def lane(self, w: int = 0) -> str:
        """Lane name of worker ``w``: the server name when it has one worker, else ``name/w``."""
        return self.name if self.count == 1 else f"{self.name}/{w}"

    def warm_lanes(self) -> dict[str, float]:
        """Lane -> its first forward's warm-up seconds, for each worker (empty without a warm-up)."""
        return {self.lane(w): self.warmup for w in range(self.count)} if self.warmup > 0 else {}
