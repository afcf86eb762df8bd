"""The fast path's entry: which runs it covers, and a replay that hands simulate() what the engine would.

:func:`uncovered` says in one line why a run needs the SimPy engine (None: the fast path covers it);
:func:`replay` returns a :class:`Replayed` with the same totals an :class:`sfsim.engine.pool.Engine`
holds after its run, so ``simulate()`` builds the same :class:`~sfsim.outputs.result.SimResult`; it
dispatches on the schedule (:data:`COVERED`) to :mod:`sfsim.fast.splitfrozen`, :mod:`sfsim.fast.splitlora`,
:mod:`sfsim.fast.fedlora` or :mod:`sfsim.fast.cenlora`. :func:`rates` and :func:`rates_lines` time the
baselines' fast path against the SimPy engine (``bench/bench_scale.py --schedule``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from sfsim.errors import SfsimError
from sfsim.fast import (
    cenlora,
    censync,
    closing,
    dynamic,
    fedlora,
    fedmoves,
    fedsync,
    splitfrozen,
    splitlora,
    splitmoves,
    splitsync,
    synced,
)
from sfsim.fast.kernel import MAX_DEVICES
from sfsim.network.backhaul import Closed, close_epochs
from sfsim.schedules.splitfrozen import closes_per_epoch, whole_epochs
from sfsim.schedules.splitlora.moves import hands_over

ENGINES = ("auto", "fast", "simpy")
"""``simulate(engine=...)``: ``auto`` takes the fast path where it covers the run, else the SimPy engine."""

COVERED = ("splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora", "cenlora")
"""Schedules the fast path replays."""
SPLITFROZEN = ("splitfrozen", "splitfrozen-sequential")


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
    sync: Closed | None = None
    epoch_end: dict[str, float] = field(default_factory=dict)  # Engine.epoch_end: each server's wait at an epoch's end
    epoch_end_waited: set[str] = field(default_factory=set)  # the servers whose replay waited it


def uncovered(scenario, name: str, cfg, job, trace: bool = False) -> str | None:
    """Why the fast path cannot replay this run (one line), or None when it can."""
    if trace:
        return "a trace (and the Gantt chart) comes from the SimPy engine"
    warm = next((s.name for s in job.servers if getattr(s, "warmup", 0.0) > 0), None) if name != "fedlora" else None
    if warm is not None:  # FedLoRA's servers only average: no training forward to warm up
        return (f"server {warm}'s first-forward warm-up (its latency profile's first_step) is replayed by the SimPy "
                "engine only")
    tr = getattr(scenario, "training", None)  # the baselines' tests pass no scenario
    if (which := _baseline_epoch_end(name, tr, job)) is not None:
        return f"the epoch-end wait (training.eval_samples, several epochs) of {which} is replayed by the SimPy engine only"
    if name == "fedlora" and getattr(tr, "eval_samples", None) is not None and tr.epochs > 1:
        why = fedlora.wait_uncovered(job)  # constant or varying links: each server's wait between its epochs
        if why is not None:
            return why
    if name in SPLITFROZEN and not _synced(job) and whole_epochs(job) > 1:  # no backhaul rounds: one epoch at a time
        what = "several epochs opened one at a time"  # the single-server kernel's (sfsim.fast.opening): static only
        if job.sync is not None:
            return f"{what} with each epoch's closing round after the run is replayed by the SimPy engine only"
    if name not in COVERED:
        return f"the fast path covers {', '.join(COVERED)} only"
    net = getattr(job, "network", None)
    if getattr(job, "sync", None) is not None and name not in SPLITFROZEN:  # a baseline's backhaul rounds
        if job.sync.every is not None:  # training.sync: the servers' loops and their rounds in lockstep
            return {"splitlora": splitsync, "fedlora": fedsync, "cenlora": censync}[name].uncovered(job)
        if name == "fedlora":  # no training.sync: each epoch's closing round (sfsim.schedules.fedlora.EpochClose)
            why = closing.fed_uncovered(job, cfg)
            if why is not None:
                return why
    if name == "cenlora":
        return None  # no device links: the dynamic network does not apply, and it has no server policy
    if name == "fedlora" and net is not None:
        return fedlora.uncovered(net, job)  # time-varying links: each transfer integrates its rate
    if name == "splitlora" and net is not None:
        return splitlora.uncovered(net, job)  # the kernel integrates each transfer's rate
    if name not in SPLITFROZEN:
        return None if net is None else _DYNAMIC
    why_dyn = "" if net is not None and getattr(net, "views", None) is not None else None
    why = dynamic.covers(net, cfg.policy) if why_dyn is not None else None
    if why is None and why_dyn is not None and _cached_leaving(scenario, job):
        why = "availability with cached activations"  # a device that leaves drops its replays: SimPy's pool only
    if why is not None:  # first, as for the other schedules: --schedule all then says one reason for all
        return f"the dynamic network's {why} is replayed by the SimPy engine only"
    if why_dyn is not None and _moving_epochs(job):
        return "several epochs opened one at a time with moving devices is replayed by the SimPy engine only"
    if _synced(job):  # training.sync, or each epoch's closing round over several epochs: its rounds
        why = synced.covers(job, cfg.policy)
        if why is not None:
            return f"{why} is replayed by the SimPy engine only"
    per_server = Counter(d.server for d in job.devices)
    crowded = next((job.servers[k].name for k, c in per_server.items() if c >= MAX_DEVICES), None)
    if crowded is not None:
        return f"server {crowded} has {per_server.most_common(1)[0][1]:,} devices; the fast path takes < {MAX_DEVICES:,}"
    return None


def _moving_epochs(job) -> bool:
    """Whether SimPy opens the epochs of a job with moving devices one at a time (their EpochBooks: SimPy only):
    several epochs without backhaul rounds (:func:`sfsim.schedules.splitfrozen.run`), beside the activation cache or
    not, with or without an epoch-end wait."""
    return job.sync is None and whole_epochs(job) >= 2


def _cached_leaving(scenario, job) -> bool:
    """Whether the activation cache meets a device that may leave (SimPy's pool withdraws its replays, and stops them at
    its drop instant: :mod:`sfsim.engine.cacheparts`): the scenario's availability, or a motion that drops (jobs built
    without a scenario)."""
    if not any(d.sent < d.n for d in job.devices):
        return False
    if any(getattr(d, "availability", None) is not None for d in getattr(scenario, "devices", ())):
        return True
    moving = getattr(job.network, "moving", None) or {}
    return any(m.churn == "drop" and m.stop < math.inf for m in moving.values())


def _baseline_epoch_end(name: str, tr, job) -> str | None:
    """The baselines' epoch-end waits the fast path does not replay (what, or None): SplitLoRA's with handovers between
    servers (:mod:`sfsim.cost.epochend`); FedLoRA's: :func:`sfsim.fast.fedlora.wait_uncovered`."""
    if getattr(tr, "eval_samples", None) is None or tr.epochs < 2:
        return None
    net = getattr(job, "network", None)
    if name == "splitlora" and net is not None and hands_over(net.motions):
        return "SplitLoRA with handovers between servers"
    return None


def _synced(job) -> bool:
    """Whether a SplitFrozen job's backhaul rounds run with its servers (:mod:`sfsim.fast.synced`): ``training.sync``,
    or without it each epoch's closing round over several epochs (else those come after the replay)."""
    if getattr(job, "sync", None) is None:
        return False
    return job.sync.every is not None or closes_per_epoch(job, getattr(getattr(job, "network", None), "moving", None) or {})


_DYNAMIC = "the dynamic network (handover, varying links, availability) is replayed by the SimPy engine only"


def replay(job, cfg, sequential: bool = False, schedule: str | None = None,
           epoch_end: dict[str, float] | None = None) -> tuple[Replayed, float]:
    """Replay a covered job (see :func:`uncovered`); returns the totals and the makespan.

    ``schedule``: the job's schedule name (None: SplitFrozen, ``sequential`` for its ablation). ``epoch_end``: server
    name -> its wait at each epoch's end (:func:`sfsim.cost.epochend.epoch_end_seconds`), which SplitFrozen's servers
    wait between epochs when they close each with backhaul rounds (as ``Engine.epoch_end``).
    """
    if schedule == "cenlora":
        return _cenlora(job, cfg, epoch_end or {})
    if schedule == "fedlora":
        return _fedlora(job, cfg, epoch_end or {})
    if schedule == "splitlora":
        return _splitlora(job, cfg, epoch_end or {})
    if schedule not in (None, *SPLITFROZEN):
        raise SfsimError(f"the fast path does not replay schedule {schedule!r}")
    return _splitfrozen(job, cfg, sequential or schedule == "splitfrozen-sequential", epoch_end or {})


def _splitfrozen(job, cfg, sequential: bool, epoch_end: dict[str, float]) -> tuple[Replayed, float]:
    rec = Replayed(epoch_end=dict(epoch_end))
    net = getattr(job, "network", None)
    dyn = net is not None and getattr(net, "views", None) is not None
    closed = None
    if _synced(job):  # training.sync (or each epoch's closing round): the servers' rounds, replayed with them
        outs, busy, up, closed = synced.replay_job(job, cfg, sequential, epoch_end)
        if job.sync.epochs > 1:  # each server waits at the end of each epoch but the last (WorkerLoop._epoch_end)
            rec.epoch_end_waited = {s.name for s in job.servers if epoch_end.get(s.name, 0.0) > 0}
    elif job.sync is None and not dyn and (epochs := whole_epochs(job)) > 1:  # one epoch at a time, no rounds
        outs, busy, up = splitfrozen.replay_job(job, cfg, sequential, epochs, epoch_end)
        rec.epoch_end_waited = {s.name for s in job.servers if epoch_end.get(s.name, 0.0) > 0}
    elif dyn:
        outs, busy, up = dynamic.replay_job(job, cfg, sequential)
    else:
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
        if cfg.policy == "pool":
            rec.pool_peak_bytes[srv.name] = out["peak"]
    if closed is not None:
        rec.sync = closed
    elif job.sync is not None:  # no training.sync: each epoch's closing round after the servers' ends
        rec.sync, makespan = close_epochs(job.sync, rec.server_end, makespan)
    return rec, makespan


def _cenlora(job, cfg, epoch_end: dict[str, float]) -> tuple[Replayed, float]:
    """What sfsim.schedules.cenlora.run leaves: no device work or traffic, server busy and mixing; without backhaul
    rounds each server's wait between epochs (``epoch_end``)."""
    rec = Replayed(epoch_end=dict(epoch_end))
    if job.sync is None and (epochs := cenlora.epochs_waited(job, epoch_end)) > 1:  # the waits: epoch by epoch
        out, makespan, rec.epoch_end_waited = cenlora.replay_epochs(job, cfg, epoch_end, epochs)
    elif job.sync is not None and job.sync.every is not None:  # training.sync: the servers' workers and their rounds
        out, makespan, rec.sync = censync.replay(job, cfg, epoch_end)
    elif job.sync is not None:  # each epoch's closing round, waited for before the next epoch
        out, makespan, closed_ = closing.replay_cenlora(job, cfg, epoch_end)
        rec.sync = Closed(closed_["bytes"], closed_["rounds"])
    else:
        out, makespan = cenlora.replay(job, cfg)
    if job.sync is not None and job.sync.epochs > 1:  # each server waits after its closing rounds but the last
        rec.epoch_end_waited = {s.name for s in job.servers if epoch_end.get(s.name, 0.0) > 0}
    for d in job.devices:
        rec.device_busy[d.name] = rec.up_bytes[d.name] = rec.down_bytes[d.name] = 0.0
    for srv in job.servers:
        rec.server_busy[srv.name] = out[srv.name]["busy"] if srv.name in out else 0.0
    rec.mixing = {name: Mixed(o["mixing"], o["total"]) for name, o in out.items() if "mixing" in o}
    return rec, makespan


def _fedlora(job, cfg, waits: dict[str, float]) -> tuple[Replayed, float]:
    """What sfsim.schedules.fedlora.run leaves on constant links: device busy and adapter bytes, FedAvg busy.
    ``waits``: each server's epoch-end wait (``FedGroup.evaluated``; with training.sync ``fedsync.Server.run``)."""
    rec = Replayed(epoch_end=dict(waits))
    net = getattr(job, "network", None)
    if job.sync is not None and job.sync.every is not None:  # training.sync: each server's rounds and their backhaul
        devices, busy, makespan, rec.sync = fedsync.replay(job, cfg, waits)
    elif net is None and job.sync is not None:  # each epoch's closing round, waited for before the next epoch
        devices, busy, makespan, rec.sync = closing.replay_fedlora(job, cfg, waits)
    elif net is None:
        devices, busy, makespan = fedlora.replay(job, cfg, waits)
    elif fedlora.varying_only(net, job):
        devices, busy, makespan = fedlora.replay_varying(job, cfg, waits)
        rec.sync = closing.fed_closed(job.sync) if job.sync is not None else None
    else:
        devices, busy, makespan, rec.epoch_end_waited = fedmoves.replay(job, cfg, waits)
        rec.sync = closing.fed_closed(job.sync) if job.sync is not None else None
    if job.sync is not None and job.sync.every is not None:  # each server after each epoch but the last
        rec.epoch_end_waited = fedsync.waited(job, waits)
    elif net is None or fedlora.varying_only(net, job):
        rec.epoch_end_waited = fedlora.waited(job, waits)
    for name, fig in devices.items():
        rec.device_busy[name], rec.up_bytes[name], rec.down_bytes[name] = fig["busy"], fig["up"], fig["down"]
    for srv in job.servers:
        rec.server_busy[srv.name] = busy.get(srv.name, 0.0)
    return rec, makespan


def _splitlora(job, cfg, epoch_end: dict[str, float]) -> tuple[Replayed, float]:
    """What sfsim.schedules.splitlora.run leaves on constant links: every lane's busy time and bytes, mixing; without
    handovers between servers each server's wait between epochs (``epoch_end``, ``Server._epoch_end``)."""
    rec = Replayed(epoch_end=dict(epoch_end))
    net = getattr(job, "network", None)
    moves = net is not None and hands_over(net.motions)  # the servers' loops jointly in time
    if job.sync is not None and (job.sync.every is not None or not moves) and job.sync.epochs > 1:  # every server
        rec.epoch_end_waited = {s.name for s in job.servers if epoch_end.get(s.name, 0.0) > 0}
    if job.sync is not None and job.sync.every is not None:  # training.sync: the servers' loops and their rounds
        devices, servers, makespan, rec.sync = splitsync.replay(job, cfg, epoch_end)
    elif job.sync is not None and not moves:  # each epoch's closing round, waited for before the next epoch
        devices, servers, makespan, closed = closing.replay_closing(job, cfg, epoch_end)
        rec.sync = Closed(closed["bytes"], closed["rounds"])
    elif moves:  # the servers' loops jointly in time (with backhaul links: each epoch closed with its round)
        devices, servers, makespan, rec.sync = splitmoves.replay(job, cfg)
    else:
        devices, servers, makespan = splitlora.replay(job, cfg, epoch_end)
        rec.epoch_end_waited = splitlora.waited(job, epoch_end)
    for i, d in enumerate(job.devices) if net is not None and not moves else ():  # handovers on its server
        if not d.n and len(net.motions[i].legs) > 1:  # no client: no upload before any (schedule.switched)
            net.motions[i].switched_at = [0] * (len(net.motions[i].legs) - 1)
    for name, fig in devices.items():
        rec.device_busy[name], rec.up_bytes[name], rec.down_bytes[name] = fig["busy"], fig["up"], fig["down"]
    for srv in job.servers:
        rec.server_busy[srv.name] = servers[srv.name]["busy"] if srv.name in servers else 0.0
    rec.mixing = {name: Mixed(o["mixing"], o["total"]) for name, o in servers.items() if "mixing" in o}
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


def baseline_fleet(devices: int, mb: int, servers: int = 4) -> tuple:
    """A heterogeneous fleet for the baselines' rates: five device speeds, three link speeds, ``mb`` micro-batches each.

    Returns ``(job, cfg)``: stage times for every schedule (device and server compute, activations,
    gradients and adapters on the links) and bench_engine.py's knobs, 10 local steps, FedAvg every 100 server steps.
    """
    from sfsim.engine.pool import DeviceTimes, ServerTimes
    from sfsim.schedules.common import Job, ReplayConfig

    devs = [DeviceTimes(f"d{i}", server=i % servers, n=mb, per_epoch=mb, f=(0.05, 0.08, 0.13, 0.21, 0.34)[i % 5],
                        b=0.1, w=0.05, step=0.01, up_s=(0.02, 0.05, 0.11)[i % 3], up_l=0.005 * (i % 7),
                        down_s=0.01, down_l=0.005, sync_up_s=0.4, sync_down_s=0.2, srv_f=0.0008, srv_b=0.0006,
                        srv_w=0.0006, up_bytes=1e5, down_bytes=1e5, sync_bytes=1e6) for i in range(devices)]
    job = Job(devs, [ServerTimes(f"s{k}", count=1, step=0.0001, aggregate=1e-4) for k in range(servers)])
    return job, ReplayConfig(buffer=64, accumulate=4, decompose=True, local_steps=10, fedavg_every=100)


def rates(schedule: str, devices: int, mb: int, simpy: bool = True, **knobs) -> dict:
    """Micro-batches per second of the fast path (and the SimPy engine) on :func:`baseline_fleet`.

    ``schedule``: splitlora, fedlora or cenlora; ``knobs`` override the run knobs (``client_order``...).
    Returns ``fast`` and, with ``simpy``, ``simpy`` (micro-batches/s) and ``equal`` (makespans ==).
    """
    from dataclasses import replace

    from sfsim.engine.pool import Engine
    from sfsim.schedules.registry import get

    job, cfg = baseline_fleet(devices, mb)
    cfg = replace(cfg, **knobs)
    replay(baseline_fleet(4, 2)[0], cfg, schedule=schedule)  # load the compiled kernels (not timed)
    t0 = time.perf_counter()
    _, fast_ms = replay(job, cfg, schedule=schedule)
    out = {"fast": devices * mb / (time.perf_counter() - t0)}
    if simpy:
        t0 = time.perf_counter()
        engine = Engine()
        get(schedule).run(engine, job, cfg)
        eng_ms = engine.run()
        out.update(simpy=devices * mb / (time.perf_counter() - t0), equal=fast_ms == eng_ms)
    return out


def rates_lines(schedule: str, sizes=((1000, 100), (10_000, 100)), simpy_upto: int = 1000) -> list[str]:
    """One line per fleet size ``(devices, micro-batches)``: :func:`rates` of ``schedule``, fast vs SimPy.

    The SimPy engine runs on fleets of at most ``simpy_upto`` devices (SplitLoRA's FedAvg over 10,000
    clients takes it minutes). bench/bench_scale.py prints these with ``--schedule``.
    """
    lines = []
    for devices, mb in sizes:
        r = rates(schedule, devices, mb, devices <= simpy_upto)
        line = f"{schedule}, {devices:,} devices x {mb} micro-batches: fast path {r['fast']:,.0f} mb/s"
        if "simpy" in r:
            line += (f", SimPy engine {r['simpy']:,.0f} mb/s (fast is {r['fast'] / r['simpy']:,.0f}x); "
                     f"makespans equal: {r['equal']}")
        lines.append(line)
    return lines
