"""FedLoRA with ``training.sync`` on the fast path: each server's FedAvg rounds and the backhaul rounds, exact.

The SimPy schedule (:mod:`sfsim.schedules.fedsync`) runs each server's rounds as the runtime forms them: the
server sends ``round`` to every device it holds that still has data this epoch; each downloads the last average
(none before its first round), trains its round's micro-batches and uploads; once the last upload has arrived the
server averages (``aggregate`` seconds per upload, on its lane) and joins its backhaul round
(:meth:`sfsim.network.backhaul.ServerRounds.fed_round`) before the next round; a device's last round of the run
ends with its download of the average. Each epoch ends with the drain and closing rounds.

On constant links nothing else moves, so a server's rounds are a recurrence (as :func:`sfsim.fast.fedlora.rounds`,
each float as the SimPy processes compute it: ``now + (t - now)`` for a timeout to ``t``): :func:`server_run` is
a compiled generator that stops where the server joins a round (:mod:`sfsim.fast.lockstep` forms them) and at each
epoch's end. Devices' figures count what they did (a device whose epochs outnumber the run's trains only the run's).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast import fedlora as fed
from sfsim.fast import lockstep
from sfsim.fast.jit import njit
from sfsim.schedules import fedlora as fl

_U, _DONE, _STEPS, _DOWNS, _TOTAL = range(5)  # DI: per device its uploads, micro-batches, steps, downloads, rounds
_FREE, _BUSY = range(2)  # S: the server's lane free at, its busy seconds
_JOINT, _EVERY = range(2)  # Y: the sync knobs


@njit
def _round(D, N, DI, DF, per, accumulate, slot, slots, now):
    """Every device's round in FedAvg ``slot`` from the server's ``now``: (the latest upload's arrival, uploads, and
    whether some device has a round in the next slot of the epoch)."""
    close, need, more = -np.inf, 0, False
    for i in range(N.shape[1]):
        first, stop = fed._span(N, i, slot, per, slots)
        if first == stop:
            continue
        s = now
        if DI[_U, i] > 0:  # the last average's download first
            s = now + (D[fed._DOWN, i] + D[fed._DOWN_L, i])
            DI[_DOWNS, i] += 1
        t, k = fed._local(D, N, i, first, stop, accumulate, s)
        DI[_STEPS, i] += k
        DI[_DONE, i] += stop - first
        sent = s + (t - s)  # the timeout to the local work's end
        close = max(close, sent + (D[fed._UP, i] + D[fed._UP_L, i]))
        need += 1
        DI[_U, i] += 1
        if (slot + 1) % slots:
            nxt, stop = fed._span(N, i, slot + 1, per, slots)
            more = more or nxt < stop
    return close, need, more


@njit
def server_run(D, N, DI, DF, per, accumulate, aggregate, epochs, slots, S, X, Y):
    """One server's rounds over the run's ``epochs``, stopping where it joins a backhaul round (:data:`AFTER`,
    ``X[2]``: whether it still trains) and at each epoch's end (:data:`FINISH`): its time in ``X[0]``, and it goes on
    from ``X[1]``. ``DF``: each device's last download's end (-inf: none)."""
    now, steps = 0.0, 0
    for e in range(epochs):
        q = 0
        while q < slots:
            close, need, more = _round(D, N, DI, DF, per, accumulate, e * slots + q, slots, now)
            if need == 0:
                break
            now = close
            dur = aggregate * need
            t = max(now, S[_FREE]) + dur
            S[_BUSY] += dur
            S[_FREE] = t
            steps += 1
            if Y[_JOINT] or steps % Y[_EVERY] == 0:
                X[0], X[2] = t, 1.0 if more else 0.0
                yield lockstep.AFTER
                t = X[1]
            now = max(now, t)
            for i in range(N.shape[1]):  # the run's last round of a device: its download of the average now
                first, stop = fed._span(N, i, e * slots + q, per, slots)
                if first < stop and DI[_U, i] == DI[_TOTAL, i]:
                    DF[i] = now + (D[fed._DOWN, i] + D[fed._DOWN_L, i])
                    DI[_DOWNS, i] += 1
            q += 1
        X[0] = now
        yield lockstep.FINISH
        now = X[1]
    X[0] = now
    yield lockstep.DONE


class _Loop:
    """Server ``k``'s rounds for :func:`sfsim.fast.lockstep.lockstep`: its compiled generator and its devices' state."""

    def __init__(self, job, cfg, k: int, slots: int, joint: bool):
        per = int(cfg.local_steps)
        self.mine = [d for d in job.devices if d.server == k]
        D, N = fed.layout(self.mine)
        self.DI = np.zeros((5, len(self.mine)), np.int64)
        self.DI[_TOTAL] = [fl.count(d.n, d.per_epoch, per) for d in self.mine]
        self.DF = np.full(len(self.mine), -np.inf)
        self.S, self.X = np.zeros(2), np.zeros(3)
        Y = np.array([joint, job.sync.every], np.int64)
        self.gen = server_run(D, N, self.DI, self.DF, per, int(cfg.accumulate), float(job.servers[k].aggregate),
                              int(job.sync.epochs), max(slots, 1), self.S, self.X, Y)

    def go(self, t: float) -> tuple[int, float, bool]:
        """Go on from ``t`` to the server's next backhaul round or its epoch's end."""
        self.X[1] = t
        return int(next(self.gen)), float(self.X[0]), bool(self.X[2])

    def drained(self, t: float) -> None:
        """FedLoRA's drained server takes no step with the others."""
        return None


def replay(job, cfg) -> tuple[dict, dict, float, object]:
    """FedLoRA with ``training.sync`` on constant links: per-device figures (``busy``, ``up``, ``down``), server busy,
    the makespan and the rounds (:class:`sfsim.network.backhaul.Closed`)."""
    joint = job.sync.mode == "sync" and job.sync.every == 1
    slots = fl.width(job.devices, int(cfg.local_steps))
    loops = [_Loop(job, cfg, k, slots, joint) for k in range(len(job.servers))]
    closed, ends = lockstep.lockstep(job.sync, loops, always_close=False)
    devices, busy, makespan = {}, {}, max(ends, default=0.0)
    for srv, loop in zip(job.servers, loops, strict=True):
        busy[srv.name] = float(loop.S[_BUSY])
        for c, d in enumerate(loop.mine):
            done, steps = int(loop.DI[_DONE, c]), int(loop.DI[_STEPS, c])
            devices[d.name] = {"busy": d.units(done) * (d.f + d.b + d.w) + steps * d.step + d.first_extra(done),
                               "up": int(loop.DI[_U, c]) * d.sync_bytes, "down": int(loop.DI[_DOWNS, c]) * d.sync_bytes}
            makespan = max(makespan, float(loop.DF[c]))
    return devices, busy, makespan, closed


def uncovered(job) -> str | None:
    """Why FedLoRA's ``training.sync`` stays on the SimPy engine (one line), or None: covered on constant links."""
    if getattr(job, "network", None) is not None:
        return "fedlora's backhaul sync on the dynamic network is replayed by the SimPy engine only"
    return None
