"""The planner's analytic stage model: per device type, cut and server, how long each stage takes.

For one ``lora_start`` the :class:`StageTable` holds, for every device type t, cut k and server j,
the numbers the SplitFrozen pipeline is made of (seconds per micro-batch):

- ``f[t, k]``: the device's frozen prefix forward;
- ``s[t, k]``: the uplink transfer of the cut activations (bytes * 8 / bandwidth);
  (with handovers, time-varying uplinks or availability, ``f`` and ``s`` are the effective times of
  :mod:`sfsim.planner.dynamics`)
- ``a[t, k] = f + s + latency``: when the first micro-batch reaches the server;
- ``p[t, k]``: the device's period (pipelined: ``max(f, s)``; sequential: the whole round trip);
- ``w[k, j]``: the server's F + B + W for one micro-batch whose device cut is k;
- ``fin[t, k, j] = a + (N - 1) p + w``: the earliest the device's last micro-batch can be done;
- ``hold = s + latency``: how long each micro-batch keeps one of its server's ``buffer`` credits.

and the constraints that make an entry unusable (memory, minimum layers). Pure: it only calls the
cost model; no SimPy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sfsim.cost.memory import shortfall
from sfsim.errors import InfeasibleError
from sfsim.planner.dynamics import describe, effective_stages
from sfsim.units import format_quantity

PIPELINED = ("splitfrozen",)
SEQUENTIAL = ("splitfrozen-sequential",)


@dataclass(frozen=True)
class TypeInfo:
    """One device type of the fleet as the planner sees it (its devices are identical)."""

    name: str
    devices: tuple[str, ...]  # device names in file order
    pinned: str | None  # the server the scenario pins it to, or None
    micro_batches: int  # per device, all epochs (what the server trains on)
    sent: int  # micro-batches the device computes and sends (one epoch when activations are cached)
    memory: float  # bytes available on one device
    latency: float  # uplink latency (s)
    bandwidth: float  # uplink bit/s
    rep: object  # a representative sfsim.scenario.config.Device
    units: float = 0.0  # micro_batches in full-micro-batch equivalents (each epoch's last may be partial)
    sent_units: float = 0.0  # sent in full-micro-batch equivalents

    @property
    def count(self) -> int:
        """How many devices have this type."""
        return len(self.devices)


def fleet_types(scenario) -> list[TypeInfo]:
    """Group the scenario's devices by type (they share every property)."""
    by_type: dict[str, list] = {}
    for d in scenario.devices:
        by_type.setdefault(d.type, []).append(d)
    out = []
    for name, devs in by_type.items():
        d = devs[0]
        per_epoch = scenario.micro_batches(d)
        n = per_epoch * scenario.training.epochs
        sent = per_epoch if scenario.training.cache_activations else n
        epoch_units = d.samples / scenario.training.micro_batch  # a partial last micro-batch costs its share
        units = epoch_units * scenario.training.epochs
        out.append(TypeInfo(name, tuple(x.name for x in devs), d.server if d.server_pinned else None,
                            n, sent, float(d.memory), float(d.uplink.latency), float(d.uplink.bandwidth), d,
                            units, epoch_units if scenario.training.cache_activations else units))
    return out


def gib(x: float) -> str:
    """Bytes as a short GiB string."""
    return format_quantity(x, "size")


@dataclass
class StageTable:
    """Stage times and feasibility for every (type, cut, server) at one ``lora_start``.

    Attributes:
        lora_start: the first LoRA block on the servers.
        cuts: the cut values of the k axis (``cuts[i]`` blocks on the device).
        f, s, a, p: arrays of shape (types, cuts).
        w: array (cuts, servers): server seconds per micro-batch (F + B + W).
        step: array (servers,): one optimizer step's seconds on each server.
        allowed: bool array (types, cuts, servers): memory, minimum-layer and pinning rules hold.
        fin: array (types, cuts, servers): ``a + (N - 1) p + w`` (inf where not allowed).
        workers: array (servers,): accelerators per server.
    """

    lora_start: int
    types: list
    servers: list
    cuts: np.ndarray
    f: np.ndarray
    s: np.ndarray
    a: np.ndarray
    p: np.ndarray
    w: np.ndarray
    step: np.ndarray
    allowed: np.ndarray
    fin: np.ndarray
    workers: np.ndarray
    accumulate: int
    dev_mem: np.ndarray  # (cuts,) bytes a device needs at each cut
    srv_mem: np.ndarray  # (cuts, servers) bytes a server needs when its smallest cut is k
    buffer: int  # credits per server (micro-batches in flight to or waiting at it)
    slow: np.ndarray | None = None  # (servers,) calibration: simulated / fluid completion, or None
    dynamic: str = ""  # the scenario's dynamic network in words ("": none; then f and s are effective)
    bits: np.ndarray | None = None  # (cuts,) uplink bits per full micro-batch
    # (server, its groups) -> fluid completion (the local searches score the same server loads often),
    # and other derived arrays; nothing in it depends on ``slow``, so calibrated copies share it
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def hold(self) -> np.ndarray:
        """Seconds a micro-batch holds a server credit at least (send + latency), shape (types, cuts).

        A credit is taken when the transfer starts and returns when a worker starts the
        micro-batch, so a server's ``buffer`` credits carry at most ``buffer / hold`` per second.
        """
        return self.a - self.f

    @property
    def n_mb(self) -> np.ndarray:
        """Server work per device of each type in full micro-batches (a partial one counts its share), (types,)."""
        return np.array([t.units for t in self.types], dtype=float)

    @property
    def n_sent(self) -> np.ndarray:
        """Micro-batches each device of a type computes and sends, shape (types,), in full ones (at least 1).

        The fluid model sees a device as a stream of equal micro-batches: a partial last one of each
        epoch counts its share, so the device's and the server's totals are right.
        """
        return np.array([max(t.sent_units, 1.0) for t in self.types], dtype=float)

    def k_index(self, cut: int) -> int:
        """Position of ``cut`` on the k axis."""
        return int(cut - self.cuts[0])


def build_table(cm, scenario, lora_start: int, min_device_layers: int, schedule: str,
                types: list[TypeInfo] | None = None) -> StageTable:
    """Tabulate stage times for cuts ``min_device_layers..lora_start`` on every server.

    Args:
        cm: a :class:`sfsim.cost.model.CostModel` for ``scenario``.
        scenario: the scenario.
        lora_start: first LoRA block; every cut must be at or below it.
        min_device_layers: smallest cut allowed.
        schedule: ``splitfrozen`` (pipelined) or ``splitfrozen-sequential``.
        types: the fleet's types (default: :func:`fleet_types`).

    Returns:
        The :class:`StageTable`; entries that break a constraint have ``allowed`` False.

    Example:
        >>> t = build_table(CostModel(sc), sc, lora_start=11, min_device_layers=1, schedule="splitfrozen")
        >>> t.fin.shape  # (types, cuts, servers)
    """
    types = types if types is not None else fleet_types(scenario)
    servers = list(scenario.servers)
    cuts = np.arange(min_device_layers, lora_start + 1)
    nT, nK, nJ = len(types), len(cuts), len(servers)
    f = np.zeros((nT, nK))
    s = np.zeros((nT, nK))
    w = np.zeros((nK, nJ))
    up = np.array([cm.uplink_bytes(int(k)) for k in cuts], dtype=float)
    dev_mem = np.array([cm.device_memory(int(k)) for k in cuts], dtype=float)
    in_flight = scenario.training.buffer
    srv_mem = np.array([[cm.server_memory(int(k), lora_start, in_flight + srv.count) for srv in servers]
                        for k in cuts], dtype=float)
    for ti, t in enumerate(types):
        for ki, k in enumerate(cuts):
            f[ti, ki] = cm.seconds(cm.device_prefix(int(k)), t.rep)[0] + cm.codec_seconds(t.rep, "encode")
        s[ti] = up * 8.0 / t.bandwidth
    eff = effective_stages(scenario, types, f, up)  # handover, varying links, pause: effective times
    if eff is not None:
        f, s = eff
    for ki, k in enumerate(cuts):
        work = cm.server_suffix(int(k), lora_start)
        for j, srv in enumerate(servers):
            w[ki, j] = sum(cm.seconds(work, srv)) + cm.codec_seconds(srv, "decode")
    L = scenario.arch.n_layers
    params = cm.trainable_params(range(lora_start, L), True)
    step = np.array([cm.optimizer_seconds(params, srv) for srv in servers], dtype=float)
    lat = np.array([t.latency for t in types])[:, None]
    a = f + s + lat
    # Pipelined: the device forwards micro-batch n+1 while n is on the wire, so it emits one every
    # max(f, s). Sequential: it waits for the server to finish (F + B) before the next forward.
    p = np.maximum(f, s) if schedule in PIPELINED else a[:, :, None] + w[None, :, :]
    allowed = np.ones((nT, nK, nJ), dtype=bool)
    allowed &= (dev_mem[None, :, None] <= np.array([t.memory for t in types])[:, None, None])
    srv_cap = np.array([srv.memory for srv in servers], dtype=float)
    allowed &= (srv_mem <= srv_cap[None, :])[None, :, :]
    names = [srv.name for srv in servers]
    for ti, t in enumerate(types):
        if t.pinned is not None:
            allowed[ti, :, [j for j in range(nJ) if names[j] != t.pinned]] = False
    nmb = np.array([max(t.sent_units, 1.0) for t in types], dtype=float)
    if p.ndim == 2:
        fin = (a + (nmb[:, None] - 1) * p)[:, :, None] + w[None, :, :]
    else:
        fin = a[:, :, None] + (nmb[:, None, None] - 1) * p + w[None, :, :]
    fin = np.where(allowed, fin, np.inf)
    p3 = p if p.ndim == 3 else np.repeat(p[:, :, None], nJ, axis=2)
    return StageTable(lora_start, types, servers, cuts, f, s, a, p3, w, step, allowed, fin,
                      np.array([srv.count for srv in servers], dtype=float), scenario.training.accumulate,
                      dev_mem, srv_mem, scenario.training.buffer, dynamic=describe(scenario) if eff else "", bits=up * 8.0)


def explain_infeasible(table: StageTable, min_device_layers: int) -> str:
    """Say which constraint leaves some device type with no usable (cut, server), and by how much."""
    for ti, t in enumerate(table.types):
        if table.allowed[ti].any():
            continue
        need = table.dev_mem[0]
        if need > t.memory:
            return shortfall(f"device {t.devices[0]}", need, t.memory, f"for its {min_device_layers}-block prefix",
                             "lower --min-device-layers, seq_len or micro_batch, or give it more memory")
        kmax = int(table.cuts[table.dev_mem <= t.memory].max())
        ki = table.k_index(kmax)
        js = [j for j, srv in enumerate(table.servers) if t.pinned in (None, srv.name)]
        j = min(js, key=lambda j: table.srv_mem[ki, j] - table.servers[j].memory)
        srv = table.servers[j]
        return shortfall(f"server {srv.name}", table.srv_mem[ki, j], srv.memory,
                         f"when device {t.devices[0]} runs {kmax} blocks (its memory allows no more)",
                         "give the server more memory or lower the buffer or micro_batch")
    raise AssertionError("explain_infeasible called on a feasible table")


def check_layers(L: int, min_device_layers: int, min_lora_layers: int, model: str) -> None:
    """Raise InfeasibleError unless both minimums fit in the model's ``L`` blocks."""
    if min_device_layers < 0:
        raise InfeasibleError(f"--min-device-layers must be >= 0, got {min_device_layers}")
    if min_lora_layers < 1:
        raise InfeasibleError(f"--min-lora-layers must be >= 1, got {min_lora_layers}")
    if min_device_layers + min_lora_layers > L:
        raise InfeasibleError(
            f"--min-device-layers {min_device_layers} plus --min-lora-layers {min_lora_layers} need "
            f"{min_device_layers + min_lora_layers} blocks but {model} has {L} (over by "
            f"{min_device_layers + min_lora_layers - L}); lower one of them")


def micro_batches_total(table: StageTable) -> float:
    """All micro-batches of the fleet (devices times their micro-batches)."""
    return float(sum(t.count * t.micro_batches for t in table.types))


def steps_for(n_micro_batches: float, accumulate: int) -> int:
    """Optimizer steps a server takes for ``n_micro_batches`` (a partial group still steps)."""
    return math.ceil(n_micro_batches / accumulate)
