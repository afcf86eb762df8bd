"""The one trace record shared by the simulator and the trainer, and its Chrome/Perfetto export.

A lane is one resource that does one thing at a time: a device (``pi5-0``), its uplink
(``link:pi5-0``), its downlink (``downlink:pi5-0``) or a server (``edge-gpu``; ``edge-gpu/1`` for
its second accelerator). Ops are short names: ``F`` (forward), ``B`` (backward w.r.t. activations),
``W`` (backward w.r.t. trainable weights), ``BW`` (B and W fused), ``send``, ``step``
(optimizer), ``aggregate`` (FedAvg), ``wait``, ``offline`` (a device unavailable), ``handover``
and ``resume`` (instants: ``dur`` 0; a resumed run's restart, :func:`merge_attempts`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from sfsim.scenario.schema import write_atomic

#: Names of the ops a trace may contain, with a one-line meaning (also the Gantt legend order).
OPS = {
    "F": "forward",
    "B": "backward w.r.t. activations",
    "W": "backward w.r.t. trainable weights",
    "BW": "backward, B and W fused",
    "encode": "wire codec: encoding a tensor for the link (training.wire_dtype other than fp32; real runs)",
    "decode": "wire codec: decoding a received tensor (training.wire_dtype other than fp32; real runs)",
    "send": "transfer on a link",
    "step": "optimizer step",
    "aggregate": "FedAvg of adapters",
    "wait": "blocked (backpressure), or a server idle while its policy holds work back",
    "offline": "device unavailable (availability, sfsim.network.availability)",
    "handover": "device moves to another server (an instant, sfsim.network.mobility)",
    "resume": "the run restarted from its checkpoint (an instant: sfsim run --resume)",
}


class TraceEvent(NamedTuple):
    """One busy interval on one lane.

    Attributes:
        lane: resource name (device, ``link:<device>``, ``downlink:<device>``, server).
        op: one of :data:`OPS`.
        start: start time in seconds from the job's start.
        dur: duration in seconds.
        mb: micro-batch index on its device (``-1`` for ops not tied to one, e.g. ``step``).
        device: device the work belongs to (``""`` for server-wide ops).
    """

    lane: str
    op: str
    start: float
    dur: float
    mb: int = -1
    device: str = ""

    @property
    def end(self) -> float:
        """End time in seconds."""
        return self.start + self.dur


def lane_order(events: Iterable[TraceEvent], devices: Iterable[str] = ()) -> list[str]:
    """Lanes in display order: each device then its uplink and downlink, then servers.

    Devices come in the order of ``devices`` (e.g. the scenario's), then any others by first use;
    a lane counts as a device when it is named in ``devices`` or has a link lane.
    """
    seen = dict.fromkeys(ev.lane for ev in events)
    given = list(devices)
    owner = [lane.split(":", 1)[1] if lane.startswith(("link:", "downlink:")) else lane for lane in seen]
    is_device = set(given) | {o for o, lane in zip(owner, seen, strict=True) if lane != o}
    order = [d for d in dict.fromkeys(given + owner) if d in is_device]
    out = [lane for d in order for lane in (d, f"link:{d}", f"downlink:{d}") if lane in seen]
    placed = set(out)
    return out + [lane for lane in seen if lane not in placed]


def to_chrome(events: Iterable[TraceEvent], metadata: dict | None = None, devices: Iterable[str] = ()) -> dict:
    """Chrome Trace Event JSON (opens in Perfetto and chrome://tracing).

    Each lane becomes one process: Perfetto only accepts integer pids, so ``pid`` is the lane's
    index and a ``process_name`` metadata event carries the lane name (also in every event's
    ``args.lane``). Times are microseconds.
    """
    events = list(events)
    lanes = lane_order(events, devices)
    pid = {lane: i + 1 for i, lane in enumerate(lanes)}
    out: list[dict] = []
    for lane in lanes:
        out.append({"ph": "M", "name": "process_name", "pid": pid[lane], "tid": 0, "args": {"name": lane}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": pid[lane], "tid": 0,
                    "args": {"sort_index": pid[lane]}})
    for ev in events:
        args = {"lane": ev.lane, "device": ev.device}
        if ev.mb >= 0:
            args["mb"] = ev.mb
        out.append({"ph": "X", "name": ev.op, "cat": ev.op, "pid": pid[ev.lane], "tid": 0,
                    "ts": ev.start * 1e6, "dur": ev.dur * 1e6, "args": args})
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": metadata or {}}


def write_chrome_trace(events: Iterable[TraceEvent], path: str | Path, metadata: dict | None = None,
                       devices: Iterable[str] = ()) -> None:
    """Write :func:`to_chrome` output to ``path`` atomically (lanes ordered as in :func:`lane_order`)."""
    write_atomic(path, json.dumps(to_chrome(events, metadata, devices)))


def merge_attempts(before: Iterable[TraceEvent], after: Iterable[TraceEvent], offset_s: float,
                   lane: str) -> list[TraceEvent]:
    """One timeline of a resumed run: the events up to its checkpoint, a ``resume`` instant on ``lane`` at
    ``offset_s``, then the resumed attempt's events shifted by ``offset_s`` (its clock starts at 0).

    Example:
        >>> merge_attempts([TraceEvent("s", "step", 0.0, 1.0)], [TraceEvent("s", "step", 0.5, 1.0)], 2.0, "s")
        [TraceEvent(lane='s', op='step', start=0.0, dur=1.0, mb=-1, device=''), \
TraceEvent(lane='s', op='resume', start=2.0, dur=0.0, mb=-1, device=''), \
TraceEvent(lane='s', op='step', start=2.5, dur=1.0, mb=-1, device='')]
    """
    shifted = [ev._replace(start=ev.start + offset_s) for ev in after]
    return sorted([*before, TraceEvent(lane, "resume", offset_s, 0.0), *shifted], key=lambda ev: ev.start)


def read_chrome_trace(path: str | Path) -> list[TraceEvent]:
    """Read back the complete events of a trace written by :func:`write_chrome_trace`."""
    data = json.loads(Path(path).read_text())
    out = []
    for ev in data["traceEvents"]:
        if ev.get("ph") != "X":
            continue
        args = ev.get("args", {})
        out.append(TraceEvent(args["lane"], ev["name"], ev["ts"] / 1e6, ev["dur"] / 1e6,
                              args.get("mb", -1), args.get("device", "")))
    return out
