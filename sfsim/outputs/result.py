"""SimResult: what one simulated schedule produced (times, FLOPs, busy time, bytes, stream mixing)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sfsim.outputs.trace import TraceEvent, write_chrome_trace
from sfsim.scenario.schema import write_atomic


@dataclass
class SimResult:
    """The outcome of :func:`sfsim.simulate.simulate`.

    Attributes:
        schedule: canonical schedule name.
        makespan_s: time of the last event (s): the end of the last op or the last arrival.
        micro_batches: micro-batches processed in total (every device, every epoch).
        device_flops: device -> FLOP computed on the device.
        server_flops: server -> FLOP computed on the server (FedAvg not counted).
        device_busy_s: device -> seconds of compute on the device.
        server_busy_s: server -> seconds of compute over all its accelerators.
        server_utilization: server -> busy / (accelerators * makespan).
        uplink_bytes_by_device, downlink_bytes_by_device: device -> bytes on its uplink / downlink.
        splits: device -> cut; lora_start: first LoRA block on the server (SplitFrozen only).
        assignment: device -> server.
        policy: server policy used (SplitFrozen; SplitLoRA with interleaved clients: the order its server
            follows, ``paced-proportional``, ``paced-round-robin`` or ``fifo``).
        client_order: SplitLoRA's client order (``interleaved`` or ``sequential``; None elsewhere).
        stream_mixing: mean total-variation distance between each tenth of a server's micro-batch
            stream and the stream's overall device shares, weighted by server stream length
            (0 = perfectly mixed; None where there is no server stream, i.e. fedlora).
        stream_mixing_by_server: the same per server.
        server_wait_s: SplitFrozen server -> worker-seconds its workers sat idle while micro-batches had
            arrived that its policy held back (the paced orders and the mixing pool; 0 otherwise).
        pool_peak_bytes: server -> the most activation bytes its mixing pool held (policy ``pool``).
        server_end_s: SplitFrozen server -> when its last op ends (the end of its last trace event on
            any worker's lane, without keeping a trace; 0 when it ran nothing).
        assignment_source: where ``assignment`` came from: ``plan``, ``scenario`` (pins, or one
            server) or ``least-loaded`` (see :mod:`sfsim.scenario.assign`).
        energy: joules per device and server where the scenario gives ``power`` (see
            :func:`sfsim.cost.energy.run_energy`), else None.
        backhaul_bytes_by_server: server -> bytes on its backhaul (sent + received) for
            ``training.sync``; sync_rounds: averaging rounds completed (see :mod:`sfsim.network.backhaul`).
        events: trace events when asked for (``trace=True``), else None.
        device_types: device -> its device type (groups big fleets in the Gantt chart).
        server_workers: server -> accelerators (``count``), so idle workers show in the Gantt chart.
        handovers: one dict per handover of the scenario (:mod:`sfsim.network.mobility`): ``device``, ``at_s``,
            ``from``, ``to``, ``sent_before`` and ``sent_after`` (micro-batches whose send started
            before / at or after ``at_s``; the latter went to ``to`` or a later server).
        samples_not_trained: device -> samples (summed over epochs) it never trained, for devices
            with ``availability`` (:mod:`sfsim.network.availability`); 0 when all were trained.
        uplink_send_s: device -> seconds its uplink spent sending, for devices of the dynamic network
            (the radio's energy uses it instead of bytes over the nominal bandwidth).
        downlink_recv_s: the same for the downlink (SplitLoRA gradients, FedAvg downloads).
        dynamic_network: what became of the scenario's handovers, time-varying links and availability:
            None (it has none), ``"simulated"``, or ``"not applicable: <why>"`` (cenlora, which has no
            device links; see :func:`sfsim.schedules.network.applies`).
        engine: what replayed the run: ``fast`` (:mod:`sfsim.fast`) or ``simpy``; engine_note: why the
            fast path did not (``engine="auto"`` on a run it does not cover), else None.
        epoch_end_s: server -> its wait at each epoch's end (evaluation, adapter, checkpoint:
            :mod:`sfsim.cost.epochend`) as replayed between the epochs (lane ``epoch-end:<server>``); empty when
            none was: one epoch, no ``training.eval_samples``, or a schedule that runs its epochs back to back.
    """

    schedule: str
    makespan_s: float
    micro_batches: int
    device_flops: dict[str, float]
    server_flops: dict[str, float]
    device_busy_s: dict[str, float]
    server_busy_s: dict[str, float]
    server_utilization: dict[str, float]
    uplink_bytes_by_device: dict[str, float]
    downlink_bytes_by_device: dict[str, float]
    splits: dict[str, int]
    lora_start: int | None
    assignment: dict[str, str]
    policy: str | None = None
    stream_mixing: float | None = None
    stream_mixing_by_server: dict[str, float] = field(default_factory=dict)
    server_wait_s: dict[str, float] = field(default_factory=dict)
    pool_peak_bytes: dict[str, float] = field(default_factory=dict)
    server_end_s: dict[str, float] = field(default_factory=dict)
    assignment_source: str = "scenario"
    energy: dict | None = None
    backhaul_bytes_by_server: dict[str, float] = field(default_factory=dict)
    sync_rounds: int = 0
    events: list[TraceEvent] | None = None
    device_types: dict[str, str] = field(default_factory=dict)
    server_workers: dict[str, int] = field(default_factory=dict)
    handovers: list[dict] = field(default_factory=list)
    samples_not_trained: dict[str, int] = field(default_factory=dict)
    uplink_send_s: dict[str, float] = field(default_factory=dict)
    downlink_recv_s: dict[str, float] = field(default_factory=dict)
    dynamic_network: str | None = None
    client_order: str | None = None
    engine: str = "simpy"
    engine_note: str | None = None
    epoch_end_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # SimPy's clock starts at int 0: a run that does nothing would read 0 in JSON where the fast path writes 0.0
        self.makespan_s = float(self.makespan_s)

    @property
    def uplink_bytes(self) -> float:
        """Total bytes on all uplinks."""
        return float(sum(self.uplink_bytes_by_device.values()))

    @property
    def downlink_bytes(self) -> float:
        """Total bytes on all downlinks."""
        return float(sum(self.downlink_bytes_by_device.values()))

    @property
    def device_flops_total(self) -> float:
        """FLOP over all devices."""
        return float(sum(self.device_flops.values()))

    @property
    def device_flops_max(self) -> float:
        """FLOP of the busiest device (by FLOPs)."""
        return float(max(self.device_flops.values(), default=0.0))

    @property
    def device_busy_total_s(self) -> float:
        """Seconds of compute over all devices."""
        return float(sum(self.device_busy_s.values()))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (without the trace events)."""
        keys = ("schedule", "makespan_s", "micro_batches", "device_flops", "server_flops", "device_busy_s",
                "server_busy_s", "server_utilization", "uplink_bytes", "downlink_bytes",
                "uplink_bytes_by_device", "downlink_bytes_by_device", "device_flops_total",
                "device_flops_max", "splits", "lora_start", "assignment", "policy", "stream_mixing",
                "stream_mixing_by_server", "server_wait_s", "pool_peak_bytes", "assignment_source", "energy",
                "backhaul_bytes_by_server", "sync_rounds", "handovers", "samples_not_trained",
                "dynamic_network", "client_order")
        out = {k: getattr(self, k) for k in keys}
        if self.epoch_end_s:  # only where the wait was replayed: other results keep their keys
            out["epoch_end_s"] = self.epoch_end_s
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """The :meth:`to_dict` JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_atomic(path, text + "\n")
        return text

    def _need_events(self) -> list[TraceEvent]:
        if self.events is None:
            from sfsim.errors import SfsimError

            raise SfsimError("this result has no trace events; simulate with trace=True (CLI: --trace/--gantt)")
        return self.events

    def write_trace(self, path: str | Path) -> None:
        """Write the Chrome/Perfetto trace of the run (needs ``trace=True``)."""
        write_chrome_trace(self._need_events(), path, {"schedule": self.schedule, "makespan_s": self.makespan_s},
                           devices=self.device_flops)

    def gantt_panel(self, title: str | None = None):
        """This run as a :class:`sfsim.outputs.gantt.Panel` (needs ``trace=True``); device lanes carry their cut."""
        from sfsim.outputs.gantt import Panel

        cut_schedules = ("splitfrozen", "splitfrozen-sequential", "splitlora")
        labels = {d: f"cut {k}" for d, k in self.splits.items()} if self.schedule in cut_schedules else {}
        servers = [s if n == 1 else f"{s}/{w}" for s, n in self.server_workers.items() for w in range(n)]
        return Panel(self._need_events(), title or f"{self.schedule}: {self.makespan_s:.1f} s",
                     list(self.device_flops), labels, dict(self.device_types), servers)

    def write_gantt(self, path: str | Path, title: str | None = None) -> None:
        """Write a Gantt chart of the run (``.png``, ``.pdf`` or ``.svg``; needs ``trace=True``)."""
        from sfsim.outputs.gantt import write_panels

        write_panels([self.gantt_panel(title)], path)
