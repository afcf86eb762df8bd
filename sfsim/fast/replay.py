"""The fast path's entry: which runs it covers, and a replay that hands simulate() what the engine would.

:func:`uncovered` says in one line why a run needs the SimPy engine (None: the fast path covers it);
:func:`replay` returns a :class:`Replayed` with the same totals an :class:`sfsim.engine.pool.Engine`
holds after its run, so ``simulate()`` builds the same :class:`~sfsim.outputs.result.SimResult`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sfsim.errors import SfsimError
from sfsim.fast import splitfrozen
from sfsim.fast.kernel import MAX_DEVICES
from sfsim.fast.splitfrozen import POLICY_CODES

ENGINES = ("auto", "fast", "simpy")
"""``simulate(engine=...)``: ``auto`` takes the fast path where it covers the run, else the SimPy engine."""

COVERED = ("splitfrozen", "splitfrozen-sequential")
"""Schedules the fast path replays."""


@dataclass
class Mixed:
    """A server stream's mixing, as :class:`sfsim.outputs.mixing.StreamMixing` reports it."""

    value: float | None
    total: int


@dataclass
class Replayed:
    """What a run leaves on the engine, without the engine (the attributes simulate() reads)."""

    device_busy: dict[str, float] = field(default_factory=dict)
    server_busy: dict[str, float] = field(default_factory=dict)
    up_bytes: dict[str, float] = field(default_factory=dict)
    down_bytes: dict[str, float] = field(default_factory=dict)
    mixing: dict[str, Mixed] = field(default_factory=dict)
    server_wait: dict[str, float] = field(default_factory=dict)
    server_end: dict[str, float] = field(default_factory=dict)
    pool_peak_bytes: dict[str, float] = field(default_factory=dict)
    events: None = None
    sync: None = None


def uncovered(scenario, name: str, cfg, job, trace: bool = False) -> str | None:
    """Why the fast path cannot replay this run (one line), or None when it can."""
    if trace:
        return "a trace (and the Gantt chart) comes from the SimPy engine"
    if name not in COVERED:
        return f"the fast path covers {' and '.join(COVERED)} only"
    if cfg.policy not in POLICY_CODES:
        return f"server policy {cfg.policy!r} is replayed by the SimPy engine only"
    if scenario.training.sync is not None and len(scenario.servers) > 1:
        return "backhaul sync between servers is replayed by the SimPy engine only"
    net = getattr(job, "network", None)
    if net is not None and (getattr(net, "moving", None) or getattr(net, "views", None) is not None):
        return "the dynamic network (handover, varying links, availability) is replayed by the SimPy engine only"
    per_server = Counter(d.server for d in job.devices)
    crowded = next((job.servers[k].name for k, c in per_server.items() if c >= MAX_DEVICES), None)
    if crowded is not None:
        return f"server {crowded} has {per_server.most_common(1)[0][1]:,} devices; the fast path takes < {MAX_DEVICES:,}"
    return None


def replay(job, cfg, sequential: bool = False) -> tuple[Replayed, float]:
    """Replay a covered SplitFrozen job (see :func:`uncovered`); returns the totals and the makespan."""
    rec = Replayed()
    outs, busy, up = splitfrozen.replay_job(job, cfg, sequential)
    names = [d.name for d in job.devices]  # what sfsim.schedules.splitfrozen.run sets before the run
    rec.device_busy, rec.up_bytes = dict(zip(names, busy.tolist(), strict=True)), dict(zip(names, up.tolist(), strict=True))
    rec.down_bytes = dict.fromkeys(names, 0.0)
    makespan = 0.0
    for srv, out in zip(job.servers, outs, strict=True):
        makespan = max(makespan, out["makespan"])
        rec.server_busy[srv.name] = out["busy"]
        rec.server_wait[srv.name] = out["wait"]
        rec.server_end[srv.name] = out["end"]
        rec.mixing[srv.name] = Mixed(out["mixing"], out["total"])
    return rec, makespan


def choose_engine(engine: str, scenario, name: str, cfg, job, trace: bool) -> str | None:
    """None when the fast path replays the run; else why not ('' for ``engine="simpy"``).

    Raises SfsimError for an unknown engine, or for ``engine="fast"`` on a run it does not cover.
    """
    if engine not in ENGINES:
        raise SfsimError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "simpy":
        return ""
    why = uncovered(scenario, name, cfg, job, trace)
    if why is not None and engine == "fast":
        raise SfsimError(f"engine fast: {why}; use engine auto or simpy")
    return why
