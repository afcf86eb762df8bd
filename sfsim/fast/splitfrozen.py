"""SplitFrozen on the fast path: per-server arrays from a job's stage times, one compiled replay per server."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter

import numpy as np

from sfsim.engine.pacing import pool_capacity, server_order
from sfsim.engine.policies import PACED
from sfsim.fast import pool
from sfsim.fast.kernel import (
    _DECOMPOSE,
    _F,
    _LAST,
    _N,
    _PER_DEVICE,
    _PER_EPOCH,
    _SENT,
    _SEQUENTIAL,
    _UP_L,
    _UP_S,
    _WARM,
    FIFO,
    OUT_BUSY,
    OUT_END,
    OUT_MAKESPAN,
    OUT_OVERFLOW,
    OUT_PEAK,
    OUT_TOTAL,
    OUT_TV_COUNT,
    OUT_TV_SUM,
    OUT_UNCLAIMED,
    OUT_WAIT,
    POOL,
    PROPORTIONAL,
    ROUND_ROBIN,
    replay_dynamic,
)
from sfsim.fast.kernel import (
    PACED as PACED_CODE,
)
from sfsim.fast.rates import no_rates

POLICY_CODES = {"fifo": FIFO, "round-robin": ROUND_ROBIN, "proportional": PROPORTIONAL,
                "paced-proportional": PACED_CODE, "paced-round-robin": PACED_CODE, "pool": POOL}
"""Server policies the fast path replays (every one: ``pool``'s random draws are Python's, :mod:`sfsim.fast.pool`)."""
_UNLIMITED = 1 << 62  # Senders' "no limit" (math.inf) as an int

_FLOATS = ("f", "warmup", "up_s", "up_l", "srv_f", "srv_b", "srv_w", "last", "down_l")  # the kernel's D rows
_INTS = ("n", "sent", "per_epoch")  # its N rows


def layout(devices: list) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's per-device rows: D (9 x devices, seconds and sizes) and N (3 x devices, counts)."""
    floats, ints = attrgetter(*_FLOATS), attrgetter(*_INTS)
    D = np.array([floats(d) for d in devices], np.float64).reshape(-1, len(_FLOATS)).T
    N = np.array([ints(d) for d in devices], np.int64).reshape(-1, len(_INTS)).T
    return np.ascontiguousarray(D), np.ascontiguousarray(N)


def flags_for(cfg, sequential: bool) -> int:
    """The kernel's flag bits for run knobs ``cfg`` (sequential ablation, device credits, decomposed B/W)."""
    return (_SEQUENTIAL * bool(sequential) | _PER_DEVICE * (cfg.credits == "device")
            | _DECOMPOSE * bool(cfg.decompose))


def min_flight(D: np.ndarray, N: np.ndarray) -> float:
    """ServerPool._min_flight from kernel rows: a lower bound on how long after a push its micro-batch arrives."""
    mine = N[_N] > 0
    if (N[_SENT][mine] < N[_N][mine]).any():
        return 0.0
    return float((D[_UP_S][mine] * D[_LAST][mine] + D[_UP_L][mine]).min()) if mine.any() else 0.0


def paced_segments(devices: list, kind: str) -> tuple[np.ndarray, ...]:
    """The paced order of :func:`sfsim.engine.policies.paced_order` as (order, start, length, repeats).

    Each epoch's order (local device indices) is stored once per run of equal epochs, so memory is
    one epoch's micro-batches per distinct epoch, not the run's.
    """
    members = [i for i, d in enumerate(devices) if d.n > 0]
    per = {i: devices[i].per_epoch or devices[i].n for i in members}
    epochs = max((-(-devices[i].n // per[i]) for i in members), default=0)
    index = {devices[i].name: i for i in members}
    segs: list[list] = []  # [order, repeats]
    last_counts = None
    for e in range(epochs):
        counts = {devices[i].name: c for i in members if (c := min(per[i], devices[i].n - e * per[i])) > 0}
        if counts != last_counts:
            last_counts = counts
            segs.append([[index[d] for d in server_order(counts, kind)], 0])
        segs[-1][1] += 1
    order = np.array([i for o, _ in segs for i in o], np.int64)
    lens = np.array([len(o) for o, _ in segs], np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if segs else np.zeros(0, np.int64)
    return order, starts, lens, np.array([r for _, r in segs], np.int64)


def replay(devices: list, server, cfg, sequential: bool, rows: tuple | None = None,
           flight: float | None = None, epochs: int = 1, wait: float = 0.0) -> dict[str, float]:
    """Replay one SplitFrozen server (a :class:`ServerTimes`) and its ``devices`` (all of them send to it).

    ``rows``: their :func:`layout`, when the caller has it already; ``flight``: the pool's bound on
    how soon a push arrives (None: :func:`min_flight`). ``epochs`` > 1: the server opens its devices' equal epochs
    one at a time, each after the one before and its epoch-end ``wait`` (:mod:`sfsim.fast.opening`).

    Returns:
        ``makespan``, ``busy``, ``wait``, ``end``, ``mixing`` (None without micro-batches) and
        ``total`` (micro-batches: the stream's weight), ``peak`` (bytes the ``pool`` policy held at most).
    """
    D, N = layout(devices) if rows is None else rows
    if cfg.policy in PACED:
        paced = paced_segments(devices, PACED[cfg.policy])
    else:
        paced = (np.zeros(0, np.int64),) * 4
    m = N.shape[1]
    Y = (np.full(m, -1, np.int64), np.zeros((1, 2), np.int64), np.zeros((1, 4)), np.zeros(1),
         np.zeros((1, 3), np.int64), np.zeros(m, np.int64))
    RP = no_rates()
    out = run(D, N, server, cfg, sequential, devices, paced, flight, Y, RP, np.zeros(0, np.int64), 0, -np.inf,
              epochs=epochs, wait=wait)
    if out[OUT_OVERFLOW]:
        raise RuntimeError("fast path: an event heap ran out of room (a bug: use engine simpy)")
    if out[OUT_UNCLAIMED]:  # the SimPy engine fails the same way (a lost wake-up, or a deadlock)
        raise RuntimeError(f"fast path: {int(out[OUT_UNCLAIMED])} micro-batches never processed")
    count = int(out[OUT_TV_COUNT])
    return {"makespan": float(out[OUT_MAKESPAN]), "busy": float(out[OUT_BUSY]), "wait": float(out[OUT_WAIT]),
            "end": float(out[OUT_END]), "mixing": float(out[OUT_TV_SUM]) / count if count else None,
            "total": int(out[OUT_TOTAL]), "peak": float(out[OUT_PEAK])}


def run(D, N, server, cfg, sequential: bool, devices: list, paced: tuple, flight: float | None, *dynamic,
        epochs: int = 1, wait: float = 0.0) -> np.ndarray:
    """:func:`sfsim.fast.kernel.replay_dynamic` of one server.

    ``dynamic``: its ``Y, RP, stream, soft_room, soft_until`` (:mod:`sfsim.fast.moving`); ``epochs``, ``wait``: its
    epochs opened one at a time (static devices only, :mod:`sfsim.fast.opening`). The kernel's room
    for optimizer steps' end times is left empty (no caller keeps them). The ``pool`` policy's generator
    runs in the kernel (:mod:`sfsim.fast.pool`), so no run is replayed again for more random words.
    """
    if flight is None:
        flight = min_flight(D, N)
    return replay_dynamic(D, N, int(server.count), float(server.step), int(cfg.buffer), int(cfg.accumulate),
                          flags_for(cfg, sequential), POLICY_CODES[cfg.policy], flight, paced, *dynamic,
                          pool_args(devices, N, cfg, sequential), np.zeros(0), np.int64(epochs), float(wait))


def pool_args(devices: list, N: np.ndarray, cfg, sequential: bool) -> tuple:
    """The ``pool`` policy's kernel arguments (:mod:`sfsim.fast.pool`): its seeded random generator, activation bytes
    and (capacity, each device's limit, credits held) as :class:`sfsim.engine.pool.ServerPool` sets them."""
    m = N.shape[1]
    if cfg.policy != "pool":
        return np.zeros(0, np.int64), np.zeros(m), np.zeros(3, np.int64)
    sent = [int(s) if n else 0 for s, n in zip(N[_SENT], N[_N], strict=True)]
    if cfg.credits == "device":
        limit, total = (1 if sequential else cfg.buffer), _UNLIMITED
        credits = max(1, limit * sum(1 for x in sent if x))
    else:
        limit, total, credits = (1 if sequential else _UNLIMITED), cfg.buffer, cfg.buffer
    if cfg.pool_memory is None:
        capacity = credits
    else:  # the widest activation decides how many fit
        capacity = pool_capacity(cfg.pool_memory, max(d.act_bytes for d, n in zip(devices, N[_N], strict=True) if n))
    act = np.array([d.act_bytes for d in devices], np.float64)
    return pool.state(cfg.seed), act, np.array([capacity, limit, total], np.int64)


def replay_job(job, cfg, sequential: bool, epochs: int = 1, waits: dict[str, float] | None = None
               ) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray]:
    """Replay every server of a SplitFrozen ``job``: one :func:`replay` result per server, in order.

    ``epochs`` > 1 (no backhaul rounds: :func:`sfsim.schedules.splitfrozen.whole_epochs`): each server opens them one
    at a time, after its epoch-end wait in ``waits`` (server name -> seconds).

    Servers share nothing without backhaul sync, so on a big run (:data:`THREADED_FROM` micro-batches)
    they are replayed on threads, one per CPU core (the kernel releases the GIL); the figures are the
    same as one after the other.

    Returns:
        ``(results, busy, up)``: per server; and per device (job order) the busy seconds and uplink bytes
        that :func:`sfsim.schedules.splitfrozen.run` sets before a run.
    """
    devices = job.devices
    D, N = layout(devices)
    units = _units(D, N[_SENT], N[_PER_EPOCH])
    busy = units * D[_F] + np.where(N[_SENT] > 0, D[_WARM], 0.0)
    up = units * np.array([d.up_bytes for d in devices], np.float64)
    where = np.array([d.server for d in devices], np.int64)

    def one(k):
        sel = np.flatnonzero(where == k)
        mine = [devices[i] for i in sel] if cfg.policy in PACED or cfg.policy == "pool" else [None] * len(sel)
        return replay(mine, job.servers[k], cfg, sequential, (np.ascontiguousarray(D[:, sel]),
                                                               np.ascontiguousarray(N[:, sel])),
                      epochs=epochs, wait=(waits or {}).get(job.servers[k].name, 0.0))

    ks = range(len(job.servers))
    threads = min(len(job.servers), _cores())
    if threads > 1 and int(N[_N].sum()) >= THREADED_FROM:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, ks)), busy, up
    return [one(k) for k in ks], busy, up


THREADED_FROM = 200_000
"""Micro-batches from which :func:`replay_job` replays servers on threads (below, threads cost more)."""


def _cores() -> int:
    """CPU cores this process may run on (its affinity where the system says, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _units(D: np.ndarray, m: np.ndarray, per_epoch: np.ndarray) -> np.ndarray:
    """DeviceTimes.units(m) of every device: full-micro-batch equivalents in its first ``m``."""
    last = D[_LAST]
    part = last < 1.0
    whole = np.where(part, m // np.where(part, per_epoch, 1), 0)
    return np.where(part, m - whole * (1.0 - last), m.astype(np.float64))
