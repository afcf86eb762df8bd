"""CenLoRA on the fast path: one compiled replay per server of :mod:`sfsim.schedules.cenlora`.

A server's ``count`` workers take micro-batches from one shared source in proportional order
(:class:`sfsim.engine.policies.ProportionalPolicy`: the device with the largest fraction of its
micro-batches not yet taken; ties: lower index) and each runs ``F``, ``B`` (W queued) or ``BW``,
then its queued W's and a ``step`` every ``accumulate`` micro-batches and once more for a partial
window when the source is empty. Workers resume in SimPy's order: by time, then by the order their
timeouts were queued (process starts, in worker order, come first), and a worker whose iteration
takes no time goes on without yielding, as the SimPy process does. Servers share nothing, so each
is replayed alone. Memory: the devices, the workers and one accumulation window of W's per worker.
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
def _take(prop, started, N):
    """Pop the proportional source's next device (-1 when empty); its micro-batch is ``started`` before."""
    if len(prop) == 0:
        return -1
    i = heapq.heappop(prop)[1]
    started[i] += 1
    if started[i] < N[_N, i]:
        heapq.heappush(prop, (-(N[_N, i] - started[i]) / N[_N, i], i))
    return i


@njit
def replay_server(D, N, count, step_s, accumulate, decompose, M, T, share, counts, touched):
    """Replay one CenLoRA server; returns (time of its last event, busy seconds). Mixing goes to M, T."""
    m = N.shape[1]
    prop = [(0.0, 0)]
    prop.pop()
    for i in range(m):
        if N[_N, i] > 0:
            heapq.heappush(prop, (-(N[_N, i] - 0) / N[_N, i], i))
    started = np.zeros(m, np.int64)
    wcap = max(1, min(accumulate, N[_N].sum()))
    queued = np.zeros((count, wcap))  # each worker's queued W seconds, oldest first
    qlen = np.zeros(count, np.int64)
    done = np.zeros(count, np.int64)
    ending = np.zeros(count, np.bool_)
    timers = [(0.0, 0)]  # (time, sequence number * count + worker): SimPy's (time, id) order
    timers.pop()
    for w in range(count):
        heapq.heappush(timers, (0.0, w))
    seq = count
    busy = 0.0
    last = 0.0
    while len(timers):
        t0, key = heapq.heappop(timers)
        w = key % count
        last = t0
        if ending[w]:
            continue
        while True:
            i = _take(prop, started, N)
            t = t0
            if i >= 0:
                n = started[i] - 1
                mixing.add(M, T, share, counts, touched, i)
                x = D[_LAST, i] if D[_LAST, i] < 1.0 and (n + 1) % N[_PER_EPOCH, i] == 0 else 1.0
                t += D[_F, i] * x
                if decompose:
                    t += D[_B, i] * x
                    queued[w, qlen[w]] = D[_W, i] * x
                    qlen[w] += 1
                else:
                    t += (D[_B, i] + D[_W, i]) * x
                done[w] += 1
            if done[w] and (done[w] == accumulate or i < 0):
                for q in range(qlen[w]):
                    t += queued[w, q]
                qlen[w] = 0
                t += step_s
                done[w] = 0
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
        end, busy = replay_server(D, N, int(srv.count), float(srv.step), int(cfg.accumulate),
                                  bool(cfg.decompose), M, T, share, counts, touched)
        makespan = max(makespan, end)
        out[srv.name] = {"busy": busy, "mixing": mixing.value(M, T), "total": int(N[_N].sum())}
    return out, makespan
