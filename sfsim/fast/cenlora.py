"""CenLoRA on the fast path: one compiled replay per server of :mod:`sfsim.schedules.cenlora`.

A server's ``count`` workers take micro-batches from one shared source in proportional order
(:class:`sfsim.engine.policies.ProportionalPolicy`: the device with the largest fraction of its
micro-batches not yet taken; ties: lower index) and each runs ``F``, ``B`` (W queued) or ``BW``,
then its queued W's and a ``step`` every ``accumulate`` micro-batches and once more for a partial
window when the source is empty. Workers resume in SimPy's order: by time, then by the order their
timeouts were queued (process starts, in worker order, come first), and a worker whose iteration
takes no time goes on without yielding, as the SimPy process does. Servers share nothing, so each
is replayed alone. Memory: the devices, the workers and one accumulation window of W's per worker.

With the servers' epoch-end waits (``training.eval_samples`` over several epochs, :mod:`sfsim.cost.epochend`) each
server goes epoch by epoch as ``sfsim.schedules.cenlora._by_epochs``: :func:`replay_epochs`.
"""

from __future__ import annotations

import heapq

import numpy as np

from sfsim.fast import mixing
from sfsim.fast.jit import njit

_F, _B, _W, _LAST = range(4)  # float rows of D
_N, _PER_EPOCH = range(2)  # int rows of N


def layout(devices: list) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's rows for a server's devices: D (srv_f, srv_b, srv_w, last) and N (n, per_epoch)."""
    D = np.array([[d.srv_f, d.srv_b, d.srv_w, d.last] for d in devices], np.float64).reshape(-1, 4).T.copy()
    N = np.array([[d.n, d.per_epoch] for d in devices], np.int64).reshape(-1, 2).T.copy()
    return D, N


@njit
def _take(prop, taken, cnt):
    """Pop the proportional source's next device (-1 when empty): :class:`sfsim.engine.policies.ProportionalPolicy`
    of the counts ``cnt``, of which ``taken`` are taken (this one included)."""
    if len(prop) == 0:
        return -1
    i = heapq.heappop(prop)[1]
    taken[i] += 1
    if taken[i] < cnt[i]:
        heapq.heappush(prop, (-(cnt[i] - taken[i]) / cnt[i], i))
    return i


@njit
def _step(queued, qlen, done, w, t, busy, step_s, per_op):
    """Worker ``w``'s optimizer step after its queued W ops, from ``t``: returns (its end, ``busy`` with them)."""
    for q in range(qlen[w]):
        t += queued[w, q]
        if per_op:
            busy += queued[w, q]
    qlen[w] = 0
    t += step_s
    if per_op:
        busy += step_s
    done[w] = 0
    return t, busy


@njit
def epoch(D, N, lo, cnt, count, step_s, accumulate, decompose, start, busy, per_op, M, T, share, counts, touched):
    """A CenLoRA server's ``count`` workers from ``start`` over micro-batches ``lo[i]`` on, ``cnt[i]`` of device ``i``
    (the whole run: ``lo`` 0 and ``cnt`` every micro-batch; with closing rounds: one epoch's); mixing goes to M, T.

    Returns (when its last worker ends, ``busy`` plus the workers' busy seconds). ``per_op``: every op's seconds
    added to ``busy`` one by one, as ``sfsim.schedules.cenlora._synced_worker`` adds them; else each iteration's
    ``t - t0``, as ``_worker``.
    """
    m = N.shape[1]
    prop = [(0.0, 0)]
    prop.pop()
    for i in range(m):
        if cnt[i] > 0:
            heapq.heappush(prop, (-(cnt[i] - 0) / cnt[i], i))
    taken = np.zeros(m, np.int64)
    queued = np.zeros((count, max(1, min(accumulate, cnt.sum()))))  # each worker's queued W seconds, oldest first
    qlen, done, ending = np.zeros(count, np.int64), np.zeros(count, np.int64), np.zeros(count, np.bool_)
    timers = [(start, 0)]  # (time, sequence number * count + worker): SimPy's order
    timers.pop()
    for w in range(count):
        heapq.heappush(timers, (start, w))
    seq, last = count, start
    while len(timers):
        t0, key = heapq.heappop(timers)
        w = key % count
        last = t0
        if ending[w]:
            continue
        while True:
            i = _take(prop, taken, cnt)
            t = t0
            if i >= 0:
                n = lo[i] + taken[i] - 1
                mixing.add(M, T, share, counts, touched, i)
                x = D[_LAST, i] if D[_LAST, i] < 1.0 and (n + 1) % N[_PER_EPOCH, i] == 0 else 1.0
                b = D[_B, i] * x if decompose else (D[_B, i] + D[_W, i]) * x
                t += D[_F, i] * x
                t += b
                if per_op:
                    busy += D[_F, i] * x
                    busy += b
                if decompose:
                    queued[w, qlen[w]] = D[_W, i] * x
                    qlen[w] += 1
                done[w] += 1
            if done[w] and (done[w] == accumulate or i < 0):
                t, busy = _step(queued, qlen, done, w, t, busy, step_s, per_op)
            if not per_op:
                busy += t - t0
            if t > t0:
                ending[w] = i < 0
                heapq.heappush(timers, (t0 + (t - t0), seq * count + w))
                seq += 1
                break
            if i < 0:
                break
    return last, busy


def replay(job, cfg) -> tuple[dict, float]:
    """Replay a CenLoRA job; returns the per-server figures (``busy``, ``mixing``, ``total``) and the makespan."""
    out: dict[str, dict] = {}
    makespan = 0.0
    for k in dict.fromkeys(d.server for d in job.devices):  # the SimPy schedule's order (groups())
        srv, mine = job.servers[k], [d for d in job.devices if d.server == k]
        D, N = layout(mine)
        M, T, share, counts, touched = mixing.start(N[_N])
        end, busy = epoch(D, N, np.zeros(N.shape[1], np.int64), N[_N].copy(), int(srv.count), float(srv.step),
                          int(cfg.accumulate), bool(cfg.decompose), 0.0, 0.0, False, M, T, share, counts, touched)
        makespan = max(makespan, end)
        out[srv.name] = {"busy": busy, "mixing": mixing.value(M, T), "total": int(N[_N].sum())}
    return out, makespan


def epochs_waited(job, waits: dict[str, float]) -> int:
    """The epochs ``sfsim.schedules.cenlora`` replays one at a time for the servers' epoch-end waits (its
    ``_epoch_ends``): the most of any device with data; 0 when no server waits."""
    if not any(w > 0 for w in waits.values()):
        return 0
    return max((-(-d.n // (d.per_epoch or d.n)) for d in job.devices if d.n), default=0)


def replay_epochs(job, cfg, waits: dict[str, float], epochs: int) -> tuple[dict, float, set[str]]:
    """:func:`replay` epoch by epoch with each server's wait between two (``sfsim.schedules.cenlora._by_epochs``, no
    backhaul): its workers over the epoch's micro-batches, the next epoch at exactly the last one's end plus its wait
    (``Engine.at``); a server without data waits too. Returns :func:`replay`'s figures (every server's ``busy``, the
    workers' alone) and makespan, and the servers that waited."""
    out: dict[str, dict] = {}
    makespan = 0.0
    for k, srv in enumerate(job.servers):
        mine = [d for d in job.devices if d.server == k]
        D, N = layout(mine)
        mix = mixing.start(N[_N])
        per = np.where(N[_PER_EPOCH] > 0, N[_PER_EPOCH], N[_N])
        now, busy, wait = 0.0, 0.0, waits.get(srv.name, 0.0)
        for e in range(epochs):
            if mine:
                lo, hi = np.minimum(e * per, N[_N]), np.minimum((e + 1) * per, N[_N])
                now, busy = epoch(D, N, lo, hi - lo, int(srv.count), float(srv.step), int(cfg.accumulate),
                                  bool(cfg.decompose), now, busy, False, *mix)
            if e + 1 < epochs and wait > 0:
                now = now + wait
        makespan = max(makespan, now)
        out[srv.name] = {"busy": busy}
        if mine:
            out[srv.name].update(mixing=mixing.value(mix[0], mix[1]), total=int(N[_N].sum()))
    return out, makespan, {s.name for s in job.servers if waits.get(s.name, 0.0) > 0}
