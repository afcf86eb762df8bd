"""SplitFrozen's backhaul rounds (``training.sync``) in the compiled loop of every server (:mod:`sfsim.fast.joint`).

The same rounds as :class:`sfsim.network.backhaul.PoolRounds` over :class:`~sfsim.network.backhaul.Rounds`, with
the SimPy engine's events in its order, so that the servers' timelines stay exact:

* A worker's step ends (its timer; the kernel notes the step, :func:`noted`); when it resumes there,
  :func:`step_done` counts the step. A due one (every ``every``-th of the server) is the process
  ``PoolRounds._step``, which SimPy starts at once (an urgent event: it runs before anything else at that
  instant): in ``sync`` mode the server joins the round and the worker waits until the average is back; in
  ``async`` mode it first waits for its round still in flight, joins, and goes on. The worker resumes when the
  process ends (a fresh event at that instant, :data:`_WORKER` as any of its timers).
* A round (:func:`_join`): the server's upload holds its backhaul lane (``bytes x 8 / bandwidth``, after what
  it sent before) and arrives a latency later; when every server has joined, a timer at the last arrival
  (``READY``) sends the average back on each lane in join order, each arriving a latency later (``ARRIVE``,
  whose callback triggers the server's event: ``EV``, processed at that instant).
* When a server's last worker has ended, its ``ServerRounds.finish`` runs at once (:func:`leave`): it waits for
  its round in flight, answers rounds of zeros until no server trains, then a closing round when some server did
  not take the last average.

Over several epochs (:meth:`sfsim.engine.worker.WorkerLoop.by_epochs`) each server's epoch ends with its
drain and closing rounds (without ``training.sync`` its closing round alone: ``ServerRounds.finish``); when the
finish process ends (a fresh event at that instant, ``OPEN``) the server opens the next epoch (:func:`open_epoch`:
its workers start, urgent, then the epoch's start event, ``GO``, whose callbacks start the devices that wait for it,
in the order they came to wait: :mod:`sfsim.fast.joint`).

Backhaul events are the loop's ``_RELEASE`` events numbered past the devices: ``m + 8 * index + type``.
State: ``B = (BI, BF, BW, STP, BG, JO, PB, EP, GQ)``: per server ints and floats, per worker whether its timer ends
a step, per server the kernel's one-slot step record (no column: no rounds, a handover replay), the run's ints,
the open round's join order, the bytes of a round and of the closing round, per server its epochs' books, and the
devices waiting for an epoch's start (row: the epoch's parity; each server's devices from its ``EP_OFF``).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast.events import (
    _CODE_BITS,
    _EID,
    _FINAL,
    _N,
    _NEVENTS,
    _NEXITED,
    _NORMAL,
    _NSTEPS,
    _POLICY,
    _RELEASE,
    _SENT,
    _STEP,
    _UNCLAIMED,
    _URGENT,
    _WBUSY,
    _WLAST,
    _WORKER,
    POOL,
    _schedule,
    change,
)
from sfsim.fast.heap import remove
from sfsim.fast.jit import inline, njit

# BI columns: rounds joined, steps taken, async round in flight (0 none, 1 in flight, 2 its average is back),
# what waits for the server's round (0 nothing, SYNC_P, ASYNC_P, FINISH), the worker a process resumes,
# ended (-1 None, 0 no closing round due, 1 due), finish stage, whether the next async join still trains
_CALLS, _STEPS, _PSTATE, _WAITER, _PWORKER, _ENDED, _FSTAGE, _PACTIVE = range(8)
BI_COLS = 8
_SYNC_P, _ASYNC_P, _FINISH, _JOINT_P = 1, 2, 3, 4
# BF columns: lane free at, seconds of a round's and of the closing round's transfer, latency, bytes up and down,
# the open round's arrival of its upload, its transfer seconds and bytes; its wait at each epoch's end
_FREE, _SEND, _CLOSE, _LAT, _BYTES, _ARR, _EDUR, _ENB, _STEP_S, _WAIT_END = range(10)
BF_COLS = 10  # _STEP_S: joint mode, the server's step seconds (the kernel's are 0: the step follows the round)
# BG slots: joined the open round, rounds completed, some joiner trains, some does not adopt, the last round's
# ended and differ, every, async, devices (events past them are the backhaul's), payload bytes (int), closing bytes
(_NJOINED, _ROUNDS, _ANY_ACTIVE, _ANY_NOADOPT, _R_ENDED, _R_DIFFER, _EVERY, _ASYNC, _M, _JOINT, _ANY_STEPPING,
 _R_STEPPING, _NOSYNC, _EPOCHS) = range(14)
BG_SLOTS = 14  # _JOINT: sync every 1 (gradients averaged before each step); stepping: some joiner steps on it;
# _NOSYNC: no training.sync (each epoch's closing round alone); _EPOCHS: the epochs the servers open one at a time
_READY, _ARRIVE, _EV, _FSTEP, OPEN, GO, WAITED = range(7)  # backhaul event types (8 * index + type); _FSTEP: a
# drained step ends; OPEN: a server's epoch-end rounds are over (its next epoch opens, after its epoch-end wait:
# WAITED); GO: that epoch's start (its devices)
# EP columns (per server): the epoch open now, devices gated for an even / odd epoch, micro-batches of an epoch,
# its devices' first slot in GQ, its first worker
EP_NOW, EP_N0, EP_N1, EP_UNCL, EP_OFF, EP_W0 = range(6)


@inline
def _at(events, S2, G, t, j):
    """Queue backhaul event ``j`` (device-numbered past the devices) at ``t`` on the row holding the counters."""
    _schedule(events, S2[G[0]], t, _NORMAL, j * 8 + _RELEASE)


@inline
def _join(events, S2, G, B, k, nbytes, dur, active, adopt, now, stepping=False):
    """Server ``k`` joins its next round now (Rounds.join): its upload, and the round's READY timer when it is the last."""
    BI, BF, BG, JO = B[0], B[1], B[4], B[5]
    BI[k, _CALLS] += 1
    start = max(now, BF[k, _FREE])
    end = start + dur
    BF[k, _FREE] = end
    BF[k, _BYTES] += nbytes
    BF[k, _ARR] = end + BF[k, _LAT]
    BF[k, _EDUR] = dur
    BF[k, _ENB] = nbytes
    JO[BG[_NJOINED]] = k
    BG[_NJOINED] += 1
    if active:
        BG[_ANY_ACTIVE] = 1
    if not adopt:
        BG[_ANY_NOADOPT] = 1
    if stepping:
        BG[_ANY_STEPPING] = 1
    K = JO.shape[0]
    if BG[_NJOINED] == K:
        BG[_ROUNDS] += 1
        BG[_R_ENDED], BG[_R_DIFFER], BG[_R_STEPPING] = 1 - BG[_ANY_ACTIVE], BG[_ANY_NOADOPT], BG[_ANY_STEPPING]
        BG[_ANY_STEPPING] = 0
        ready = BF[JO[0], _ARR]
        for q in range(1, K):
            ready = max(ready, BF[JO[q], _ARR])
        BG[_NJOINED], BG[_ANY_ACTIVE], BG[_ANY_NOADOPT] = 0, 0, 0
        _at(events, S2, G, ready, BG[_M] + _READY)


@inline
def _took(B, k):
    """Server ``k`` took the last round's average (ServerRounds._took)."""
    BG = B[4]
    if BG[_R_ENDED]:
        B[0][k, _ENDED] = BG[_R_DIFFER]


@inline
def noted(events, X, W, B, G, counts, k, w, now):
    """After a pass of worker ``w`` of server ``k``: whether it ended with a step (its timer then ends it). Joint
    mode: a final step on a partial window starts its round process at once (ServerPool._final has no timer
    before it), so the kernel's timer of that (0 s) step goes."""
    S2 = X[0]
    if B[3].shape[1] and S2[k, _NSTEPS]:
        S2[k, _NSTEPS] = 0
        if B[4][_JOINT] and W[_FINAL, w] == 1:
            key = float(((S2[G[0], _EID] - 1) << _CODE_BITS) | (w * 8 + _WORKER))
            H = S2[G[0]]
            for pos in range(H[_NEVENTS]):
                if events[1, pos] == key:
                    remove(events, H, _NEVENTS, pos)
                    break
            step_done(events, X, B, G, counts, k, w, now)
        else:
            B[2][w] = 1


@inline
def joint_step(events, S2, WF, B, G, k, w, now):
    """Joint mode: the round's average is back and the worker takes its step now (ServerPool._joint_step)."""
    step = B[1][k, _STEP_S]
    WF[_WBUSY, w] += step
    if step > 0:
        WF[_WLAST, w] = now + step
    _schedule(events, S2[G[0]], now + step, _NORMAL, w * 8 + _WORKER)


@njit
def begin(X, B):
    """Joint mode: the servers' steps come after their rounds, so the kernel's steps take 0 s (kept in ``B``)."""
    if B[4][_JOINT]:
        for k in range(X[1].shape[0]):
            B[1][k, _STEP_S] = X[1][k, _STEP]
            X[1][k, _STEP] = 0.0


@njit
def step_done(events, X, B, G, counts, k, w, now):
    """Worker ``w`` of server ``k`` resumes after a step (PoolRounds.step_done); True when a round process took
    over (the worker resumes when it ends), False when it goes on now."""
    S2, BI, BF, BG = X[0], B[0], B[1], B[4]
    if BG[_NOSYNC] or (not BG[_JOINT] and (BI[k, _STEPS] + 1) % BG[_EVERY]):
        BI[k, _STEPS] += 1
        return False
    last = S2[k, _UNCLAIMED] == 0 and counts[k] - S2[k, _NEXITED] == 1
    BI[k, _STEPS] += 1
    BI[k, _PWORKER] = w
    if BG[_JOINT]:  # the round before the step (ServerRounds.before_step)
        _join(events, S2, G, B, k, B[6][0], BF[k, _SEND], not last, True, now, True)
        BI[k, _WAITER] = _JOINT_P
        return True
    if not BG[_ASYNC]:
        _join(events, S2, G, B, k, B[6][0], BF[k, _SEND], not last, True, now)
        BI[k, _WAITER] = _SYNC_P
        return True
    if BI[k, _PSTATE] == 1:  # its round in flight first (ServerRounds._wait)
        BI[k, _WAITER] = _ASYNC_P
        BI[k, _PACTIVE] = not last
        return True
    if BI[k, _PSTATE] == 2:
        _took(B, k)
    _async_join(events, S2, G, B, k, not last, now)
    return True


@inline
def _async_join(events, S2, G, B, k, active, now):
    """An async round goes off (it holds nobody) and the round process ends: its worker resumes now."""
    BI = B[0]
    _join(events, S2, G, B, k, B[6][0], B[1][k, _SEND], active, True, now)
    BI[k, _PSTATE] = 1
    _schedule(events, S2[G[0]], now, _NORMAL, BI[k, _PWORKER] * 8 + _WORKER)


@inline
def left(events, X, B, G, counts, k, exited, now):
    """After a pass of a worker of server ``k``: if its last worker has just ended, its finish runs (leave)."""
    if exited < counts[k] and X[0][k, _NEXITED] == counts[k]:
        B[0][k, _FSTAGE] = 1
        _finish(events, X[0], G, B, k, now)


@njit
def _finish(events, S2, G, B, k, now):
    """ServerRounds.finish from where it stands: its round in flight, rounds of zeros until none trains, the
    closing round when due; each join waits for its average (:func:`event`)."""
    BI, BF = B[0], B[1]
    if BI[k, _FSTAGE] == 1:
        if BI[k, _PSTATE] == 1:
            BI[k, _WAITER] = _FINISH
            return
        if BI[k, _PSTATE] == 2:
            _took(B, k)
        BI[k, _PSTATE] = 0
        BI[k, _FSTAGE] = 2
    if BI[k, _FSTAGE] == 2 and B[4][_NOSYNC]:  # no training.sync: the closing round alone
        BI[k, _FSTAGE] = 3
        _join(events, S2, G, B, k, B[6][1], BF[k, _CLOSE], False, True, now)
        BI[k, _WAITER] = _FINISH
        return
    if BI[k, _FSTAGE] == 2:
        if BI[k, _ENDED] < 0:
            _join(events, S2, G, B, k, B[6][0], BF[k, _SEND], False, B[4][_JOINT] == 1, now)
            BI[k, _WAITER] = _FINISH
            return
        BI[k, _FSTAGE] = 3
        if BI[k, _ENDED] == 1:
            _join(events, S2, G, B, k, B[6][1], BF[k, _CLOSE], False, True, now)
            BI[k, _WAITER] = _FINISH
            return
    BI[k, _ENDED] = -1
    BI[k, _FSTAGE] = 4
    if B[7][k, EP_NOW] + 1 < B[4][_EPOCHS]:  # the finish process ends: its next epoch opens then
        _at(events, S2, G, now, B[4][_M] + 8 * k + OPEN)


@inline
def epoch_end(events, S2, G, B, k, now):
    """Server ``k``'s epoch-end rounds are over (WorkerLoop._epoch_end): True when its next epoch opens now, else its
    epoch-end wait (evaluation, adapter, checkpoint: :mod:`sfsim.cost.epochend`) runs first (a timer, ``WAITED``)."""
    wait = B[1][k, _WAIT_END]
    if wait <= 0:
        return True
    _at(events, S2, G, now + wait, B[4][_M] + 8 * k + WAITED)
    return False


@inline
def alone(events, S2, G, B, counts, k, exited, now):
    """No backhaul rounds over several epochs (the epoch-end wait alone): after a pass of a worker of server ``k``, True
    when its last worker has just ended and its next epoch opens now (WorkerLoop._final -> _epoch_end -> _next_epoch,
    at once); with a wait, its timer (``WAITED``) opens it later (:func:`epoch_end`)."""
    if exited < counts[k] and S2[k, _NEXITED] == counts[k] and B[7][k, EP_NOW] + 1 < B[4][_EPOCHS]:
        return epoch_end(events, S2, G, B, k, now)
    return False


@njit
def open_epoch(events, X, W, WF, B, G, counts, k, now):
    """Server ``k`` opens its next epoch (WorkerLoop._next_epoch): its books, its workers afresh (urgent starts),
    then the epoch's start event (``GO``)."""
    S2, N2, P2, EP, BG = X[0], X[3], X[4], B[7], B[4]
    EP[k, EP_NOW] += 1
    S2[k, _UNCLAIMED] = EP[k, EP_UNCL]
    S2[k, _NEXITED] = 0
    B[0][k, _FSTAGE] = 0
    if S2[k, _POLICY] == POOL:  # the mixing pool's "could still send": this epoch's micro-batches (none cached)
        for j in range(N2.shape[2]):
            per = N2[k, _N, j] // BG[_EPOCHS]
            change(S2[k], P2[k], j, per if EP[k, EP_NOW] * per < N2[k, _SENT, j] else 0, 0)
    for w in range(EP[k, EP_W0], EP[k, EP_W0] + counts[k]):
        W[:, w] = 0
        WF[:, w] = 0.0
        B[2][w] = 0
        _schedule(events, S2[G[0]], now, _URGENT, w * 8 + _WORKER)
    _at(events, S2, G, now, BG[_M] + 8 * k + GO)


@inline
def gate(B, k, j, epoch):
    """Device ``j`` of server ``k`` waits for the start of ``epoch`` (splitfrozen._gate)."""
    EP, GQ = B[7], B[8]
    col = EP_N0 + (epoch & 1)
    GQ[epoch & 1, EP[k, EP_OFF] + EP[k, col]] = j
    EP[k, col] += 1


def gates(B, epochs: int, where: np.ndarray, counts: np.ndarray, unclaimed: np.ndarray, waits: np.ndarray) -> None:
    """``B``'s epochs (:meth:`sfsim.engine.worker.WorkerLoop.by_epochs`): ``epochs``, each device's server
    (``where``), the workers, each server's micro-batches of an epoch and its wait at each epoch's end (seconds)."""
    B[4][_EPOCHS] = epochs
    B[1][:, _WAIT_END] = waits
    EP = B[7]
    EP[:, EP_UNCL] = unclaimed
    EP[:, EP_OFF] = np.concatenate(([0], np.cumsum(np.bincount(where, minlength=EP.shape[0]))[:-1]))
    EP[:, EP_W0] = np.concatenate(([0], np.cumsum(counts)[:-1]))


@njit
def event(events, X, B, G, q, now):
    """Backhaul event ``q`` (its number past the devices): READY, ARRIVE or EV (module docstring)."""
    S2, BI, BF, JO = X[0], B[0], B[1], B[5]
    kind, k = q & 7, q >> 3
    if kind == _READY:  # Rounds._send_back: each receives the average on its lane, in join order
        for p in range(JO.shape[0]):
            s = JO[p]
            start = max(now, BF[s, _FREE])
            end = start + BF[s, _EDUR]
            BF[s, _FREE] = end
            BF[s, _BYTES] += BF[s, _ENB]
            _at(events, S2, G, end + BF[s, _LAT], B[4][_M] + 8 * s + _ARRIVE)
        return
    if kind == _ARRIVE:  # Engine.succeed_at's callback: the server's event is processed next, at this instant
        _at(events, S2, G, now, B[4][_M] + 8 * k + _EV)
        return
    if kind == _FSTEP:  # a drained server's step with the others ended: its finish goes on
        _finish(events, S2, G, B, k, now)
        return
    waiter = BI[k, _WAITER]
    BI[k, _WAITER] = 0
    if waiter == 0:  # an async round's average, nobody waiting
        BI[k, _PSTATE] = 2
        return
    _took(B, k)
    if waiter == _SYNC_P:  # the round process ends: its worker resumes
        _schedule(events, S2[G[0]], now, _NORMAL, BI[k, _PWORKER] * 8 + _WORKER)
    elif waiter == _JOINT_P:  # the round process ends: its worker resumes, to take its step (joint_step)
        B[2][BI[k, _PWORKER]] = 2
        _schedule(events, S2[G[0]], now, _NORMAL, BI[k, _PWORKER] * 8 + _WORKER)
    elif waiter == _ASYNC_P:
        BI[k, _PSTATE] = 0
        _async_join(events, S2, G, B, k, BI[k, _PACTIVE], now)
    else:
        if BI[k, _FSTAGE] == 1:
            BI[k, _PSTATE] = 0
            BI[k, _FSTAGE] = 2
        elif BI[k, _FSTAGE] == 2 and B[4][_R_STEPPING]:  # the others stepped on it: so does it, then goes on
            step = BF[k, _STEP_S]
            if step > 0:
                _at(events, S2, G, now + step, B[4][_M] + 8 * k + _FSTEP)
                return
        _finish(events, S2, G, B, k, now)


@njit
def still_open(B) -> bool:
    """Whether a round some server never joined is left (Rounds._check: a modelling error)."""
    return B[4][_NJOINED] > 0


def state(K: int, workers: int, devices: int, links=(), every: int | None = 1, mode: str = "sync", payload: float = 0.0,
          closing: float = 0.0) -> tuple:
    """``B`` before the run: ``links`` ``(name, bandwidth bit/s, latency s)`` per server (none: no rounds, a
    handover replay), ``every`` steps a round in ``mode`` (None: no ``training.sync``, each epoch's closing round
    alone), ``payload`` / ``closing`` bytes a round; one epoch (:func:`gates` sets several)."""
    BI = np.zeros((K, BI_COLS), np.int64)
    BI[:, _ENDED] = -1
    BF = np.zeros((K, BF_COLS))
    for k, (_, bw, lat) in enumerate(links):  # the engine's arithmetic: bytes x 8 / bandwidth
        BF[k, _SEND], BF[k, _CLOSE], BF[k, _LAT] = payload * 8.0 / bw, closing * 8.0 / bw, lat
    BG = np.zeros(BG_SLOTS, np.int64)
    BG[_EVERY], BG[_ASYNC], BG[_M], BG[_NOSYNC] = every or 1, mode == "async", devices, every is None
    BG[_JOINT] = bool(links) and every == 1 and mode == "sync"  # no links: no rounds (a handover replay)
    BG[_EPOCHS] = 1
    return (BI, BF, np.zeros(workers, np.int64), np.zeros((K, 1 if links else 0)), BG, np.zeros(K, np.int64),
            np.array([payload, closing], np.float64), np.zeros((K, 6), np.int64), np.zeros((2, devices), np.int64))


def totals(B, names: list[str]) -> tuple[dict[str, float], int]:
    """Server -> backhaul bytes up and down, and the rounds completed."""
    return {n: float(B[1][k, _BYTES]) for k, n in enumerate(names)}, int(B[4][_ROUNDS])


__all__ = ["GO", "OPEN", "WAITED", "alone", "begin", "epoch_end", "event", "gate", "gates", "open_epoch", "joint_step", "left", "noted", "state", "step_done", "still_open", "totals"]
