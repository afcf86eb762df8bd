"""What every schedule shares: its knobs (:class:`ReplayConfig`), inputs (:class:`ReplaySetup`), output (:class:`Job`),
link and FedAvg arithmetic, and the synchronous FedAvg :class:`Barrier`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy

from sfsim.cost.model import CostModel
from sfsim.engine.pool import DeviceTimes, Engine, FifoLane, ServerTimes
from sfsim.scenario.config import Scenario


@dataclass(frozen=True)
class ReplayConfig:
    """Schedule knobs the engine needs (from ``training`` and the caller)."""

    buffer: int = 4
    accumulate: int = 1
    decompose: bool = True
    policy: str = "fifo"
    local_steps: int = 10
    fedavg_every: int = 100
    credits: str = "server"
    pool_memory: float | None = None
    seed: int = 0
    client_order: str = "interleaved"

    @classmethod
    def from_training(cls, tr, policy: str | None = None) -> ReplayConfig:
        """The knobs of a scenario's ``training`` section (``policy`` overrides its server_policy)."""
        return cls(tr.buffer, tr.accumulate, tr.decompose_backward, policy or tr.server_policy,
                   tr.local_steps, tr.fedavg_every, tr.credits, tr.pool_memory, tr.seed, tr.client_order)


@dataclass
class ReplaySetup:
    """What a schedule builds from: the scenario, its cost model, the cuts and the assignment.

    Attributes:
        scenario, cm: the scenario and its :class:`~sfsim.cost.model.CostModel`.
        splits: device -> cut (SplitFrozen prefix blocks; SplitLoRA client blocks).
        lora_start: first server block with LoRA (SplitFrozen).
        assignment: device -> server name.
    """

    scenario: Scenario
    cm: CostModel
    splits: dict[str, int]
    lora_start: int
    assignment: dict[str, str]

    @property
    def server_index(self) -> dict[str, int]:
        """Server name -> index in ``scenario.servers``."""
        return {s.name: k for k, s in enumerate(self.scenario.servers)}

    def micro_batches(self, device) -> tuple[int, int]:
        """(micro-batches per epoch, micro-batches over all epochs) of ``device``."""
        per_epoch = self.scenario.micro_batches(device)
        return per_epoch, per_epoch * self.scenario.training.epochs

    def partial(self, device) -> dict:
        """``per_epoch``, ``last`` (size of each epoch's last micro-batch, 1 when full) and the device's
        first-forward ``warmup`` for DeviceTimes."""
        mb = self.scenario.training.micro_batch
        per_epoch = self.scenario.micro_batches(device)
        return {"per_epoch": per_epoch, "last": (device.samples - (per_epoch - 1) * mb) / mb,
                "warmup": device.warmup}


@dataclass
class Job:
    """A schedule's input to the engine plus the FLOPs it implies.

    Attributes:
        devices, servers: engine inputs (stage seconds and bytes).
        device_flops: device -> FLOP over the run; server_flops: server -> FLOP.
        network: the dynamic network (:mod:`sfsim.schedules.network`) when the scenario has one.
    """

    devices: list[DeviceTimes]
    servers: list[ServerTimes]
    device_flops: dict[str, float] = field(default_factory=dict)
    server_flops: dict[str, float] = field(default_factory=dict)
    network: object | None = None  # the dynamic network (sfsim.schedules.network), when the scenario has one
    sync: object | None = None  # a baseline's backhaul rounds (sfsim.network.backhaul.SyncSpec), when modelled


def link_seconds(nbytes: float, link) -> float:
    """Serialisation time of ``nbytes`` on a link of ``link.bandwidth`` bit/s."""
    return nbytes * 8.0 / link.bandwidth


def aggregate_seconds(params: int, server, cm=None) -> float:
    """FedAvg cost per participating device: one multiply-add (2 FLOP) per adapter parameter.

    With the cost model ``cm`` the rate is the server's effective FLOP/s (a server with a latency
    profile has no nominal ``flops``).
    """
    return 2.0 * params / (cm.effective_flops(server) if cm is not None else server.flops)


def groups(devices: list[DeviceTimes]) -> dict[int, list[int]]:
    """Server index -> indices of the devices that talk to it (in device order)."""
    out: dict[int, list[int]] = {}
    for i, d in enumerate(devices):
        out.setdefault(d.server, []).append(i)
    return out


def rounds(n: int, per_round: int) -> int:
    """Rounds needed to process ``n`` micro-batches ``per_round`` at a time."""
    return math.ceil(n / per_round)


class Barrier:
    """A synchronous FedAvg round on one server: wait for every participant's upload, aggregate.

    ``arrive()`` is called by each participant at its upload's arrival time and returns an event
    that fires when the aggregate ends (``aggregate`` runs on ``lane`` at ``max(last arrival, lane
    free)`` for ``per_device * participants`` seconds). The caller then downloads on its own link.
    """

    def __init__(self, engine: Engine, lane: FifoLane, per_device: float, participants: int):
        self.engine, self.lane, self.per_device = engine, lane, per_device
        self.left, self.n = participants, participants
        self.done = engine.env.event()

    def arrive(self) -> simpy.Event:
        """Register one upload that arrived now; the returned event fires when aggregation ends."""
        self.left -= 1
        if self.left == 0:
            (end,) = self.lane.serve([("aggregate", self.per_device * self.n)])
            self.engine.succeed_at(self.done, end)
        return self.done


def fedavg_groups(engine: Engine, job: Job, period: int):
    """Per server: its FIFO lane and one FedAvg :class:`Barrier` per round of ``period`` micro-batches.

    Yields ``(server times, device indices, lane, barriers)``; each lane reports its busy time as the
    server's when the run ends, and servers without devices report 0.
    """
    for k, members in groups(job.devices).items():
        srv = job.servers[k]
        lane = FifoLane(engine, srv.lane(0))
        engine.on_finish(lambda lane=lane, name=srv.name: engine.server_busy.__setitem__(name, lane.busy))
        n_rounds = max(rounds(job.devices[i].n, period) for i in members)
        barriers = [Barrier(engine, lane, srv.aggregate,
                            sum(1 for i in members if rounds(job.devices[i].n, period) > r))
                    for r in range(n_rounds)]
        yield srv, members, lane, barriers
    for srv in job.servers:
        engine.server_busy.setdefault(srv.name, 0.0)
