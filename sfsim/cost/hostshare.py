"""CPU sharing between processes on one host: how much slower a process computes when others run too.

When a real run puts a server and several devices on one machine (``sfsim run --launch local``,
``sfsim validate``), they share its cores. An emulated device computes for its real time and then
sleeps up to its scenario time, so it burns CPU only for a fraction of the run; the server computes
whenever it has work. Under the kernel's fair sharing, a process that wants ``t`` threads among
runnable processes wanting ``n`` threads in all gets ``min(1, cores / n)`` of its speed.

The model here is the steady-state expectation: each other process ``j`` is runnable at a random
instant with probability ``p_j`` (its CPU-seconds over the run's span), independently; the
process's slowdown is ``E[max(1, (own + sum_j threads_j X_j) / cores)]`` with ``X_j ~ Bernoulli(p_j)``.
Everything is pure: the caller (``trainer.validate``) measures the shares and applies the factor
(:func:`scale_profile` stretches a latency profile by it).

Example:
    >>> round(slowdown(2, [(1.0, 1), (1.0, 1)]), 3)  # two always-busy others on two cores
    1.5
    >>> slowdown(2, [(0.5, 1)])  # one other: never more runnable threads than cores
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sfsim.units import parse_quantity

_TABLES = ("forward", "forward_train", "input_grad", "weight_grad", "backward", "step")


def slowdown(cores: int, others: Sequence[tuple[float, int]], own_threads: int = 1) -> float:
    """Expected compute stretch of a process that shares ``cores`` with ``others``.

    Args:
        cores: CPU cores of the host (> 0).
        others: ``(p, threads)`` per other process: the share of the time it is runnable (0..1)
            and the threads it then runs.
        own_threads: threads of this process while it computes.

    Returns:
        ``E[max(1, (own_threads + runnable threads of the others) / cores)]`` (>= 1).

    Raises:
        ValueError: cores or threads < 1, or a share outside 0..1.
    """
    if cores < 1 or own_threads < 1:
        raise ValueError(f"cores and threads must be >= 1 (got {cores}, {own_threads})")
    dist = {0: 1.0}  # runnable threads of the others -> probability (Poisson-binomial, by convolution)
    for p, threads in others:
        if not 0.0 <= p <= 1.0 or threads < 1:
            raise ValueError(f"a process's runnable share must be in 0..1 and its threads >= 1 (got {p}, {threads})")
        nxt: dict[int, float] = {}
        for n, q in dist.items():
            nxt[n] = nxt.get(n, 0.0) + q * (1 - p)
            nxt[n + threads] = nxt.get(n + threads, 0.0) + q * p
        dist = nxt
    return sum(q * max(1.0, (own_threads + n) / cores) for n, q in dist.items())


def runnable_shares(cpu_seconds: dict[str, float], span: float) -> dict[str, float]:
    """Each process's runnable share: its CPU-seconds over the run's span, capped at 1."""
    if span <= 0 or not math.isfinite(span):
        raise ValueError(f"the run's span must be a positive number of seconds (got {span})")
    return {k: min(1.0, max(0.0, v / span)) for k, v in cpu_seconds.items()}


def _scaled(value, factor: float):
    """A time (unit string or seconds) times ``factor``, in seconds."""
    return parse_quantity(value, "time") * factor


def scale_profile(prof: dict, factor: float) -> dict:
    """A copy of a latency profile (the :mod:`sfsim.cost.latency` format, as a dict) with every time
    stretched by ``factor`` (medians and IQRs of every grid entry or of the single-shape layout)."""
    if factor <= 0:
        raise ValueError(f"a time factor must be > 0 (got {factor})")
    out = dict(prof)
    entries = [dict(e) for e in prof.get("grid") or []]
    for e in entries if entries else [out]:
        for table in _TABLES:
            if isinstance(e.get(table), dict):
                e[table] = _scale_table(e[table], factor)
        if isinstance(e.get("iqr"), dict):
            e["iqr"] = {k: _scale_table(v, factor) if isinstance(v, dict) else v for k, v in e["iqr"].items()}
    if entries:
        out["grid"] = entries
    return out


def _scale_table(table: dict, factor: float) -> dict:
    return {k: [_scaled(x, factor) for x in v] if isinstance(v, list) else _scaled(v, factor)
            for k, v in table.items()}
