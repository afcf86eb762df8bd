"""FedLoRA with ``training.sync`` on the fast path: each server's FedAvg rounds and the backhaul rounds, exact.

The SimPy schedule (:mod:`sfsim.schedules.fedsync`) runs each server's rounds as the runtime forms them: the
server sends ``round`` to every device it holds that still has data this epoch; each downloads the last average
(the initial adapters before its first round), trains its round's micro-batches and uploads; once the last upload has arrived the
server averages (``aggregate`` seconds per upload, on its lane) and joins its backhaul round
(:meth:`sfsim.network.backhaul.ServerRounds.fed_round`) before the next round; nothing goes down after a device's
last round. Each epoch ends with the drain and closing rounds.

On constant links nothing else moves, so a server's rounds are a recurrence (as :func:`sfsim.fast.fedlora.rounds`,
each float as the SimPy processes compute it: ``now + (t - now)`` for a timeout to ``t``): :func:`server_run` is
a compiled generator that stops where the server joins a round (:mod:`sfsim.fast.lockstep` forms them) and at each
epoch's end. Devices' figures count what they did (a device whose epochs outnumber the run's trains only the run's).
On time-varying links (no handover, no availability) the same rounds run in Python, each adapter transfer
integrating its leg's rate (:func:`_varying_run`); with availability (pause, drop) and handovers to other links of a
device's own server, a round ends at the latest of its devices' answers (an upload, or a leave) (:func:`_moving_run`).
Each server waits its epoch-end wait (``training.eval_samples``: :mod:`sfsim.cost.epochend`) after each epoch's
closing round but the last's, in its loop (``Server.run``). Handovers between servers (the ``moved``/``join``
messages, a waiting server answering the others' rounds) stay on the SimPy engine. Downloads are counted as the runtime's server sends them (:func:`sfsim.schedules.fedsync.present`).
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from sfsim.fast import fedlora as fed
from sfsim.fast import lockstep
from sfsim.fast.draws import compile_draws
from sfsim.fast.jit import njit
from sfsim.fast.rates import may_stall
from sfsim.fast.splitlora import DYNAMIC, STALLS
from sfsim.network.legs import online, span
from sfsim.schedules import fedlora as fl
from sfsim.schedules import fedsync as fs

_U, _DONE, _STEPS, _DOWNS = range(4)  # DI: per device its uploads, micro-batches, steps, downloads
_FREE, _BUSY = range(2)  # S: the server's lane free at, its busy seconds
_JOINT, _EVERY = range(2)  # Y: the sync knobs


@njit
def _round(D, N, DI, per, accumulate, slot, slots, now):
    """Every device's round in FedAvg ``slot`` from the server's ``now``: (the latest upload's arrival, uploads, and
    whether some device has a round in the next slot of the epoch)."""
    close, need, more = -np.inf, 0, False
    for i in range(N.shape[1]):
        first, stop = fed._span(N, i, slot, per, slots)
        if first == stop:
            continue
        DI[_DOWNS, i] += 1  # the round's average (the initial adapters' for the first), as the runtime sends it
        s = now + (D[fed._DOWN, i] + D[fed._DOWN_L, i])
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
def _aggregate(S, now, dur):
    """The server averages its round's uploads (``dur`` seconds on its lane, from ``now``); when it is done."""
    t = max(now, S[_FREE]) + dur
    S[_BUSY] += dur
    S[_FREE] = t
    return t


@njit
def server_run(D, N, DI, per, accumulate, aggregate, epochs, slots, S, X, Y, wait):
    """One server's rounds over the run's ``epochs``, stopping where it joins a backhaul round (:data:`AFTER`,
    ``X[2]``: whether it still trains) and at each epoch's end (:data:`FINISH`): its time in ``X[0]``, and it goes on
    from ``X[1]``, after each epoch's but the last its epoch-end wait of ``wait`` seconds (``Server.run``: evaluation,
    adapter, checkpoint; 0: none)."""
    now, steps = 0.0, 0
    for e in range(epochs):
        q = 0
        while q < slots:
            close, need, more = _round(D, N, DI, per, accumulate, e * slots + q, slots, now)
            if need == 0:
                break
            now = close
            t = _aggregate(S, now, aggregate * need)
            steps += 1
            if Y[_JOINT] or steps % Y[_EVERY] == 0:
                X[0], X[2] = t, 1.0 if more else 0.0
                yield lockstep.AFTER
                t = X[1]
            now = max(now, t)
            q += 1
        X[0] = now
        yield lockstep.FINISH
        now = X[1]
        if e + 1 < epochs and wait > 0:  # the server's epoch-end wait (Server.run), then the next epoch's rounds
            now = now + wait
    X[0] = now
    yield lockstep.DONE


def _varying_run(job, loop, per: int, accumulate: int, aggregate: float, epochs: int, slots: int, wait: float):
    """:func:`server_run` on time-varying links (:func:`sfsim.fast.fedlora.varying_only`), in Python: each adapter
    transfer integrates its leg's rate (:func:`sfsim.network.legs.span`, as ``sfsim.schedules.fedsync._transfer``), the
    local work is :func:`sfsim.fast.fedlora._local`; the devices' motions get what the SimPy run leaves on them."""
    D, N, DI, S, X, Y = loop.D, loop.N, loop.DI, loop.S, loop.X, loop.Y
    motions = [job.network.motions[i] for i in loop.members]
    compile_draws(r for m in motions for leg in m.legs for r in (leg.rate, leg.down))  # the same steps, compiled
    for m in motions:
        m.done = 0
    now, steps = 0.0, 0
    for e in range(epochs):
        for q in range(slots):
            close, need, more, got = -math.inf, 0, False, []
            for c, d in enumerate(loop.mine):
                first, stop = fed._span(N, c, e * slots + q, per, slots)
                if first == stop:
                    continue
                m = motions[c]
                m.downloads += 1  # the round's average (the initial adapters' for the first), as the runtime sends it
                s = _download(d, m, now)
                t, k = fed._local(D, N, c, first, stop, accumulate, s)
                m.done, m.steps = m.done + (stop - first), m.steps + int(k)
                t0 = s + (t - s)  # the timeout to the local work's end
                m.uploads.append(t0)
                leg = m.legs[0]
                up = span(leg.up_rate(None), t0, d.sync_bytes * 8.0)
                m.send_s += (t0 + up) - t0
                m.syncs_sent, m.sent = m.syncs_sent + 1, stop
                close, need = max(close, t0 + (up + leg.up_l)), need + 1
                DI[_U, c] += 1
                got.append(c)
                if (q + 1) % slots:
                    nxt, end = fed._span(N, c, e * slots + q + 1, per, slots)
                    more = more or nxt < end
            if need == 0:
                break
            now = close
            t = _aggregate(S, now, aggregate * need)
            steps += 1
            if Y[_JOINT] or steps % Y[_EVERY] == 0:
                X[0], X[2] = t, 1.0 if more else 0.0
                yield lockstep.AFTER
                t = X[1]
            now = max(now, t)
        X[0] = now
        yield lockstep.FINISH
        now = X[1]
        if e + 1 < epochs and wait > 0:  # the server's epoch-end wait (Server.run), then the next epoch's rounds
            now = now + wait
    X[0] = now
    yield lockstep.DONE


def _moving_run(job, loop, per: int, accumulate: int, aggregate: float, epochs: int, slots: int, wait: float):
    """:func:`server_run` with availability (pause, drop) and handovers to other links of the devices' own server, in
    Python, as ``sfsim.schedules.fedsync``'s ``Server.epoch`` and ``device``: a round ends at the latest of its
    devices' messages (an upload's arrival, or a leave: when the device goes, or at once for one that has left); a
    device's epoch ends with its last upload or when it leaves. The devices' motions get what the SimPy run leaves."""
    S, X, Y = loop.S, loop.X, loop.Y
    motions = [job.network.motions[i] for i in loop.members]
    compile_draws(r for m in motions for leg in m.legs for r in (leg.rate, leg.down))  # the same steps, compiled
    plans = [fl.round_plan(d.n, d.per_epoch, per, slots) for d in loop.mine]
    for m in motions:
        m.done = 0
    done = [0] * len(plans)  # each device's rounds uploaded
    now, steps = 0.0, 0
    for e in range(epochs):
        left = [sum(hi - lo for r, lo, hi in p if r // slots == e) for p in plans]
        while sum(left) > 0:
            close, got = now, []
            for c in [c for c, k in enumerate(left) if k > 0]:
                t, k = _device_round(loop, c, motions[c], plans[c], done, now, accumulate)
                close = max(close, t)
                left[c] = max(left[c] - k, 0) if k > 0 else 0
                got += [c] if k > 0 else []
            t = _aggregate(S, close, aggregate * len(got)) if got else close
            steps += 1
            if Y[_JOINT] or steps % Y[_EVERY] == 0:
                X[0], X[2] = t, 1.0 if sum(left) > 0 else 0.0
                yield lockstep.AFTER
                t = X[1]
            now = max(close, t)
        X[0] = now
        yield lockstep.FINISH
        now = X[1]
        if e + 1 < epochs and wait > 0:  # the server's epoch-end wait (Server.run), then the next epoch's rounds
            now = now + wait
    X[0] = now
    yield lockstep.DONE


def _device_round(loop, c: int, m, plan: list, done: list, now: float, accumulate: int) -> tuple[float, int]:
    """Device ``c``'s next round, sent at ``now``: (when its answer reaches the server, micro-batches uploaded; 0: it
    left), as ``sfsim.schedules.fedsync.device`` and ``_round``."""
    d, stop, u = loop.mine[c], m.stop, done[c]
    if m.gone < math.inf or m.start == math.inf:  # it has left (or never comes): a leave at once
        m.gone = min(m.gone, now)
        return now, 0
    t = m.start if m.churn == "drop" and m.start > now else now  # it joins at its first online instant
    leg = m.legs[m.leg_at(t)]  # the round's average (the initial adapters' for the first)
    secs = span(leg.down_rate(m.pause), t, d.sync_bytes * 8.0)
    m.downloads += fs.present(m, t, stop)
    if t + secs > stop or secs == math.inf:
        return _leaves(m, t, fs._gone(m, t, stop))
    m.recv_s += online(m.pause, t, t + secs)
    t = t + (secs + leg.down_l)
    _, first, last = plan[u]
    end, cut = _train(loop, c, m, first, last, accumulate, t)
    if cut is not None:  # it leaves: from the start of the op it could not end
        return _leaves(m, t, fs._gone(m, cut, stop))
    t = t + (end - t)  # the timeout to the local work's end
    leg = m.legs[m.leg_at(t)]
    m.uploads.append(t)
    secs = span(leg.up_rate(m.pause), t, d.sync_bytes * 8.0)
    if t + secs > stop or secs == math.inf:
        return _leaves(m, t, fs._gone(m, t, stop))
    m.send_s += online(m.pause, t, t + secs)
    m.syncs_sent, m.sent, done[c] = m.syncs_sent + 1, last, u + 1
    return t + (secs + leg.up_l), last - first


def _leaves(m, now: float, t: float) -> tuple[float, int]:
    """The device leaves for good at ``t`` (``fleet.leave``, posted at ``now``): when its leave reaches the server."""
    m.gone = min(m.gone, t)
    return max(now, t), 0


def _train(loop, c: int, m, first: int, last: int, accumulate: int, t: float) -> tuple[float, float | None]:
    """``sfsim.schedules.fedsync._train`` from ``t``: (its end, None), or (-, the start of the op the device leaves
    in); the compiled :func:`sfsim.fast.fedlora._local` when it is always online and never drops."""
    d, stop = loop.mine[c], m.stop
    if m.pause is None and stop == math.inf:
        end, k = fed._local(loop.D, loop.N, c, first, last, accumulate, t)
        m.done, m.steps = m.done + (last - first), m.steps + int(k)
        return end, None
    for n in range(first, last):
        x = d.size(n)  # the last micro-batch of an epoch may be partial
        ops = [d.fwd(n), d.b * x, d.w * x] + ([d.step] if (n - first + 1) % accumulate == 0 or n + 1 == last else [])
        for j, dur in enumerate(ops):
            end = t + span(m.pause, t, dur)
            if end > stop or end == math.inf:
                return t, t
            t = end
            if j == 2:
                m.done += 1
        m.steps += len(ops) == 4
    return t, None


def _download(d, m, t: float) -> float:
    """A device's download of the average from ``t`` on its leg's varying rate; when it has it."""
    leg = m.legs[0]
    down = span(leg.down_rate(None), t, d.sync_bytes * 8.0)
    m.recv_s += (t + down) - t
    return t + (down + leg.down_l)


class _Loop:
    """Server ``k``'s rounds for :func:`sfsim.fast.lockstep.lockstep`: its generator (compiled on constant links) and
    its devices' state."""

    def __init__(self, job, cfg, k: int, slots: int, joint: bool, wait: float = 0.0):
        per, slots = int(cfg.local_steps), max(slots, 1)
        self.members = [i for i, d in enumerate(job.devices) if d.server == k]
        self.mine = [job.devices[i] for i in self.members]
        self.D, self.N = fed.layout(self.mine)
        self.DI = np.zeros((4, len(self.mine)), np.int64)
        self.S, self.X = np.zeros(2), np.zeros(3)
        self.Y = np.array([joint, job.sync.every], np.int64)
        knobs = (per, int(cfg.accumulate), float(job.servers[k].aggregate), int(job.sync.epochs), slots, float(wait))
        if job.network is None:
            self.gen = server_run(self.D, self.N, self.DI, *knobs[:-1], self.S, self.X, self.Y, knobs[-1])
        else:
            self.gen = (_varying_run if fed.varying_only(job.network, job) else _moving_run)(job, self, *knobs)

    def go(self, t: float) -> tuple[int, float, bool]:
        """Go on from ``t`` to the server's next backhaul round or its epoch's end."""
        self.X[1] = t
        return int(next(self.gen)), float(self.X[0]), bool(self.X[2])

    def drained(self, t: float) -> None:
        """FedLoRA's drained server takes no step with the others."""
        return None


def replay(job, cfg, waits: dict[str, float] | None = None) -> tuple[dict, dict, float, object]:
    """FedLoRA with ``training.sync``: per-device figures (``busy``, ``up``, ``down``), server busy, the makespan and
    the rounds (:class:`sfsim.network.backhaul.Closed`). ``waits``: server name -> its epoch-end wait after each epoch
    but the last (:func:`sfsim.cost.epochend.epoch_end_seconds`; :func:`waited`)."""
    joint = job.sync.mode == "sync" and job.sync.every == 1
    slots = fl.width(job.devices, int(cfg.local_steps))
    loops = [_Loop(job, cfg, k, slots, joint, (waits or {}).get(srv.name, 0.0)) for k, srv in enumerate(job.servers)]
    closed, ends = lockstep.lockstep(job.sync, loops, always_close=False)
    devices, busy, makespan = {}, {}, max(ends, default=0.0)
    for srv, loop in zip(job.servers, loops, strict=True):
        busy[srv.name] = float(loop.S[_BUSY])
        for c, (i, d) in enumerate(zip(loop.members, loop.mine, strict=True)):
            done, steps, ups, downs = (int(v) for v in loop.DI[[_DONE, _STEPS, _U, _DOWNS], c])
            if job.network is not None:  # what the motions hold
                m = job.network.motions[i]
                done, steps, ups, downs = m.done, m.steps, m.syncs_sent, m.downloads
                plan = fl.round_plan(d.n, d.per_epoch, int(cfg.local_steps), max(slots, 1))
                moved = [bisect.bisect_left(m.uploads, leg.at) for leg in m.legs[1:]]  # uploads before each handover
                m.switched_at = [min(plan[u][1] if u < len(plan) else d.n, m.sent) for u in moved]
            devices[d.name] = {"busy": d.units(done) * (d.f + d.b + d.w) + steps * d.step + d.first_extra(done),
                               "up": ups * d.sync_bytes, "down": downs * d.sync_bytes}
    return devices, busy, makespan, closed


def waited(job, waits: dict[str, float]) -> set[str]:
    """The servers that wait at an epoch's end (``sfsim.schedules.fedsync.Server.run``: a positive wait and a later
    epoch of the run, with devices or without), whose busy time then counts the waits (``Engine.epoch_end_waited``)."""
    if job.sync.epochs < 2:
        return set()
    return {srv.name for srv in job.servers if waits.get(srv.name, 0.0) > 0}


def uncovered(job) -> str | None:
    """Why FedLoRA's ``training.sync`` stays on the SimPy engine (one line), or None: covered on constant links, on
    time-varying links (:func:`sfsim.fast.fedlora.varying_only`), with availability and with handovers to other links
    of the device's own server (:func:`_moving_run`)."""
    net = getattr(job, "network", None)
    if net is None or fed.varying_only(net, job):
        return None
    motions = getattr(net, "motions", None)
    if motions is None:
        return DYNAMIC
    if any(leg.server != job.devices[i].server for i, m in motions.items() for leg in m.legs):
        return "fedlora's backhaul sync with handovers between servers is replayed by the SimPy engine only"
    if any(may_stall(leg.rate) or may_stall(leg.down) for m in motions.values() for leg in m.legs):
        return STALLS
    return None
