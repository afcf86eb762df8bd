"""SplitFrozen on the fast path: per-server arrays from a job's stage times, one compiled replay per server."""

from __future__ import annotations

import numpy as np

from sfsim.engine.pacing import server_order
from sfsim.engine.policies import PACED
from sfsim.fast.kernel import (
    _DECOMPOSE,
    _PER_DEVICE,
    _SEQUENTIAL,
    FIFO,
    OUT_BUSY,
    OUT_END,
    OUT_MAKESPAN,
    OUT_TOTAL,
    OUT_TV_COUNT,
    OUT_TV_SUM,
    OUT_UNCLAIMED,
    OUT_WAIT,
    PROPORTIONAL,
    ROUND_ROBIN,
    replay_server,
)
from sfsim.fast.kernel import (
    PACED as PACED_CODE,
)

POLICY_CODES = {"fifo": FIFO, "round-robin": ROUND_ROBIN, "proportional": PROPORTIONAL,
                "paced-proportional": PACED_CODE, "paced-round-robin": PACED_CODE}
"""Server policies the fast path replays (``pool`` draws at random: the SimPy engine replays it)."""

_FLOATS = ("f", "warmup", "up_s", "up_l", "srv_f", "srv_b", "srv_w", "last")  # the kernel's D rows
_INTS = ("n", "sent", "per_epoch")  # its N rows


def layout(devices: list) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's per-device rows: D (8 x devices, seconds and sizes) and N (3 x devices, counts)."""
    D = np.array([[getattr(d, k) for d in devices] for k in _FLOATS], np.float64).reshape(len(_FLOATS), -1)
    N = np.array([[getattr(d, k) for d in devices] for k in _INTS], np.int64).reshape(len(_INTS), -1)
    return D, N


def flags_for(cfg, sequential: bool) -> int:
    """The kernel's flag bits for run knobs ``cfg`` (sequential ablation, device credits, decomposed B/W)."""
    return (_SEQUENTIAL * bool(sequential) | _PER_DEVICE * (cfg.credits == "device")
            | _DECOMPOSE * bool(cfg.decompose))


def min_flight(devices: list) -> float:
    """ServerPool._min_flight: a lower bound on how long after a push its micro-batch arrives."""
    mine = [d for d in devices if d.n]
    if any(d.sent < d.n for d in mine):
        return 0.0
    return min((d.up_s * d.last + d.up_l for d in mine), default=0.0)


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


def replay(devices: list, server, cfg, sequential: bool) -> dict[str, float]:
    """Replay one SplitFrozen server (a :class:`ServerTimes`) and its ``devices`` (all of them send to it).

    Returns:
        ``makespan``, ``busy``, ``wait``, ``end``, ``mixing`` (None without micro-batches) and
        ``total`` (micro-batches: the stream's weight).
    """
    D, N = layout(devices)
    if cfg.policy in PACED:
        paced = paced_segments(devices, PACED[cfg.policy])
    else:
        paced = (np.zeros(0, np.int64),) * 4
    out = replay_server(D, N, int(server.count), float(server.step), int(cfg.buffer), int(cfg.accumulate),
                        flags_for(cfg, sequential),
                        POLICY_CODES[cfg.policy], float(min_flight(devices)), paced)
    if out[OUT_UNCLAIMED]:  # the SimPy engine fails the same way (a lost wake-up, or a deadlock)
        raise RuntimeError(f"fast path: {int(out[OUT_UNCLAIMED])} micro-batches never processed")
    count = int(out[OUT_TV_COUNT])
    return {"makespan": float(out[OUT_MAKESPAN]), "busy": float(out[OUT_BUSY]), "wait": float(out[OUT_WAIT]),
            "end": float(out[OUT_END]), "mixing": float(out[OUT_TV_SUM]) / count if count else None,
            "total": int(out[OUT_TOTAL])}
