"""CenLoRA with ``training.sync`` on the fast path: each server's worker and the backhaul rounds, exact.

The SimPy schedule (``sfsim.schedules.cenlora._synced``) runs each server epoch by epoch: its workers take the
epoch's micro-batches in proportional order, and each step joins the servers' rounds
(:class:`sfsim.network.backhaul.ServerRounds`: before it with ``every: 1`` in ``sync`` mode, else after every
``every``-th; the server's last step, when its data is used up, says it trains no more); once the workers are
done the epoch ends with the drain and closing rounds. With one worker a server (:func:`uncovered`) that is one
loop: :func:`server_run`, a compiled generator that stops where the worker joins a round and at each epoch's end
(:mod:`sfsim.fast.lockstep` forms the rounds), each float as the SimPy process computes it (``now + (t - now)``
for a timeout to ``t``; a round leaves the clock at its return).
"""

from __future__ import annotations

import heapq

import numpy as np

from sfsim.fast import cenlora as cl
from sfsim.fast import lockstep, mixing
from sfsim.fast.jit import njit

_JOINT, _EVERY, _ACC, _DECOMPOSE = range(4)  # Y: the sync and run knobs


@njit
def _epoch(D, N, lo, cnt, step_s, now, S, Y, X, M, T, share, counts, touched):
    """One epoch of the server's worker from ``now`` (``S``: its busy seconds, its steps): yields where it joins a
    round; ``X[0]`` then holds its time, ``X[2]`` whether it still trains, and it goes on from ``X[1]``. Leaves
    when the worker ends in ``X[0]``."""
    m = N.shape[1]
    prop = [(0.0, 0)]
    prop.pop()
    for i in range(m):
        if cnt[i] > 0:
            heapq.heappush(prop, (-(cnt[i] - 0) / cnt[i], i))
    taken = np.zeros(m, np.int64)
    queued = np.zeros(max(1, min(Y[_ACC], cnt.sum())))
    qlen = done = 0
    while True:
        i = cl._take(prop, taken, cnt)
        t = now
        if i >= 0:
            n = lo[i] + taken[i] - 1
            mixing.add(M, T, share, counts, touched, i)
            x = D[cl._LAST, i] if D[cl._LAST, i] < 1.0 and (n + 1) % N[cl._PER_EPOCH, i] == 0 else 1.0
            b = D[cl._B, i] * x if Y[_DECOMPOSE] else (D[cl._B, i] + D[cl._W, i]) * x
            t += D[cl._F, i] * x
            S[0] += D[cl._F, i] * x
            t += b
            S[0] += b
            if Y[_DECOMPOSE]:
                queued[qlen] = D[cl._W, i] * x
                qlen += 1
            done += 1
        if done and (done == Y[_ACC] or i < 0):
            for q in range(qlen):
                t += queued[q]
                S[0] += queued[q]
            qlen = 0
            X[2] = 0.0 if len(prop) == 0 else 1.0  # the data used up: its last step
            if Y[_JOINT]:
                X[0] = t
                yield lockstep.BEFORE
                t = now = X[1]
            t += step_s
            S[0] += step_s
            done = 0
            S[1] += 1
            if not Y[_JOINT] and S[1] % Y[_EVERY] == 0:
                X[0] = t
                yield lockstep.AFTER
                t = now = X[1]
        if t > now:
            now = now + (t - now)
        if i < 0:
            X[0] = now
            return


@njit
def server_run(D, N, step_s, epochs, wait, S, X, Y, M, T, share, counts, touched):
    """One server's epochs (``sfsim.schedules.cenlora._epochs``), stopping at its rounds and each epoch's end; after
    each closing round but the last epoch's, its epoch-end ``wait`` (0: none), to exactly its return plus it."""
    now = 0.0
    per = np.where(N[cl._PER_EPOCH] > 0, N[cl._PER_EPOCH], N[cl._N])
    for e in range(epochs):
        lo, hi = np.minimum(e * per, N[cl._N]), np.minimum((e + 1) * per, N[cl._N])
        if N.shape[1]:
            for code in _epoch(D, N, lo, hi - lo, step_s, now, S, Y, X, M, T, share, counts, touched):  # noqa: UP028
                yield code
            now = X[0]
        X[0] = now
        yield lockstep.FINISH
        now = X[1]
        if e + 1 < epochs and wait > 0:
            now = now + wait
    X[0] = now
    yield lockstep.DONE


class _Loop:
    """Server ``k``'s worker for :func:`sfsim.fast.lockstep.lockstep`: its compiled generator and its state."""

    def __init__(self, job, cfg, k: int, joint: bool, wait: float = 0.0):
        mine = [d for d in job.devices if d.server == k]
        self.D, self.N = cl.layout(mine)
        self.step = float(job.servers[k].step)
        self.mix = mixing.start(self.N[cl._N]) if mine else None
        self.S, self.X = np.zeros(2), np.zeros(3)
        Y = np.array([joint, job.sync.every, cfg.accumulate, bool(cfg.decompose)], np.int64)
        self.gen = server_run(self.D, self.N, self.step, int(job.sync.epochs), float(wait), self.S, self.X, Y,
                              *(self.mix or mixing.start(self.N[cl._N])))

    def go(self, t: float) -> tuple[int, float, bool]:
        """Go on from ``t`` to the worker's next round or its epoch's end."""
        self.X[1] = t
        return int(next(self.gen)), float(self.X[0]), bool(self.X[2])

    def drained(self, t: float) -> float:
        """``sfsim.schedules.cenlora._drained_step``: a step with the others once its data is used up (not busy time)."""
        return t + self.step


def replay(job, cfg, waits: dict[str, float] | None = None) -> tuple[dict, float, object]:
    """CenLoRA with ``training.sync`` (:func:`uncovered`): per-server figures (``busy``; ``mixing`` and ``total`` for
    servers with data), the makespan and the rounds (:class:`sfsim.network.backhaul.Closed`). ``waits``: each
    server's epoch-end wait (:mod:`sfsim.cost.epochend`), after its epoch's closing rounds."""
    joint = job.sync.mode == "sync" and job.sync.every == 1
    waits = waits or {}
    loops = [_Loop(job, cfg, k, joint, waits.get(s.name, 0.0)) for k, s in enumerate(job.servers)]
    closed, ends = lockstep.lockstep(job.sync, loops, always_close=False)
    out = {}
    for srv, loop in zip(job.servers, loops, strict=True):
        out[srv.name] = {"busy": float(loop.S[0])}
        if loop.mix is not None:
            out[srv.name].update(mixing=mixing.value(loop.mix[0], loop.mix[1]), total=int(loop.N[cl._N].sum()))
    return out, max(ends, default=0.0), closed


def uncovered(job) -> str | None:
    """Why CenLoRA's ``training.sync`` stays on the SimPy engine (one line), or None: one worker a server with data."""
    if any(job.servers[d.server].count > 1 for d in job.devices):
        return "cenlora's backhaul sync with several workers a server is replayed by the SimPy engine only"
    return None
