"""The compiled event loop of one SplitFrozen server, its workers and the devices that send to it.

It replays exactly what :class:`sfsim.engine.pool.ServerPool` and the device processes of
:mod:`sfsim.schedules.splitfrozen` do on the SimPy engine, event for event: one heap of
``(time, priority, id, code)`` entries queued in the order SimPy would queue them (process starts
first at time 0, then by creation order), so ties at equal times resolve the same way and the
figures agree to the last bits. Servers without backhaul sync share nothing, so each is replayed
alone (:mod:`sfsim.fast.splitfrozen`); devices that hand over couple them, and then all are replayed
in one loop whose workers run this module's step (:mod:`sfsim.fast.joint`).

State is a few arrays per device and worker and heaps (:mod:`sfsim.fast.heap`) sized by devices and
micro-batches in flight: memory grows with devices, never with the run's length. The event loop is
compiled without reference counting (:func:`no_refcounts`): it allocates nothing. Everything is in the subset of Python that
numba compiles (:mod:`sfsim.fast.jit`): scalars that helpers change live in the int array ``S``
and the float array ``F`` (slots named below); no SimPy, no I/O.

Arrays passed in: ``D`` (float, 9 x devices: f, warmup, up_s, up_l, srv_f, srv_b, srv_w, last, down_l) and
``N`` (int, 3 x devices: n, sent, per_epoch). Policy codes: 0 fifo, 1 round-robin, 2 proportional,
3 paced (its order given as segments: ``order[start[s]:start[s] + length[s]]``, ``repeats[s]`` times).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast import mixing, pool
from sfsim.fast.devices import EPOCHS, _pipelined, _sequential
from sfsim.fast.events import (  # noqa: F401 (slots and codes: re-exported for sfsim.fast.splitfrozen)
    _ACCUMULATE,
    _ALARM,
    _ALARM_AT,
    _ALARM_ID,
    _BUFFER,
    _BUSY,
    _CAP,
    _CHECK,
    _CODE_BITS,
    _CODE_MASK,
    _DECOMPOSE,
    _DEV_MASK,
    _DONE,
    _EID,
    _END,
    _F,
    _FINAL,
    _FLAGS,
    _FLIGHT,
    _HELD,
    _IDLE_N,
    _LAST,
    _LEAVE,
    _N,
    _NEVENTS,
    _NEXITED,
    _NORMAL,
    _NPENDING,
    _NPROP,
    _NSOFT,
    _NSTEPS,
    _NSTREAM,
    _OVERFLOW,
    _PCAP,
    _PER_DEVICE,
    _PER_EPOCH,
    _POLICY,
    _PPEAK,
    _PSIZE,
    _QHEAD,
    _QLEN,
    _RELEASE,
    _RESUMED,
    _SBUF,
    _SCOUNT,
    _SEG,
    _SEG_DONE,
    _SEG_POS,
    _SENT,
    _SEQUENTIAL,
    _SHOLD,
    _SLIMIT,
    _SOFT_CAP,
    _SOFT_UNTIL,
    _SRV_B,
    _SRV_F,
    _SRV_W,
    _START,
    _STEP,
    _TOTAL,
    _TURN,
    _UNCLAIMED,
    _UP_L,
    _UP_S,
    _URGENT,
    _WAIT_S,
    _WARM,
    _WBUSY,
    _WHELD,
    _WLAST,
    _WOKEN,
    _WORKER,
    _WQ_HEAD,
    _WQ_LEN,
    _WSTART,
    F_SLOTS,
    FIFO,
    MAX_DEVICES,
    OUT_BUSY,
    OUT_END,
    OUT_EVENTS,
    OUT_LEAVE,
    OUT_MAKESPAN,
    OUT_NSTEPS,
    OUT_OVERFLOW,
    OUT_PEAK,
    OUT_STALLED,
    OUT_STUCK,
    OUT_TOTAL,
    OUT_TV_COUNT,
    OUT_TV_SUM,
    OUT_UNCLAIMED,
    OUT_WAIT,
    OUT_WORDS,
    PACED,
    POOL,
    PROPORTIONAL,
    ROUND_ROBIN,
    S_SLOTS,
    _arm,
    _give_back,
    _push,
    _schedule,
    _size,
    _wake,
    change,
    no_refcounts,
)
from sfsim.fast.heap import pop, push
from sfsim.fast.jit import inline, njit
from sfsim.fast.moving import moving, soft_timer
from sfsim.fast.opening import by_epochs, ended, gate, go, open_epoch
from sfsim.fast.rates import no_rates, stuck


@inline
def _policy_add(S, F, D, N, P, prop, ring_a, ring_b, order, i, k):
    """Micro-batch ``k`` of device ``i`` is eligible (policy.push). ``P``: ready, next, started rows."""
    pol = S[_POLICY]
    if pol == POOL:
        pool.add(S, F, D, N, order, ring_a, ring_b, i, k)
        return
    if pol == FIFO:
        pos = (S[_QHEAD] + S[_QLEN]) % S[_CAP]
        ring_a[pos] = i
        ring_b[pos] = k
        S[_QLEN] += 1
        return
    P[0, i] += 1
    if pol == PACED:
        S[_HELD] += 1
        return
    S[_PSIZE] += 1
    if P[0, i] == 1:
        P[1, i] = k
        _policy_turn(S, N, P, prop, ring_a, i)


@inline
def _policy_turn(S, N, P, prop, ring_a, i):
    """Device ``i`` has work waiting again: round-robin queues it, proportional ranks it."""
    if S[_POLICY] == ROUND_ROBIN:
        ring_a[(S[_QHEAD] + S[_QLEN]) % S[_CAP]] = i
        S[_QLEN] += 1
    else:
        t = max(N[_N, i], 1)
        push(prop, S, _NPROP, _OVERFLOW, -(t - P[2, i]) / t, i)


@inline
def _policy_ready(S, P):
    """Whether a micro-batch may start now (``len(policy)``)."""
    pol = S[_POLICY]
    if pol == FIFO:
        return S[_QLEN] > 0
    if pol == POOL:
        return pool.ready(S)
    if pol == PACED:
        return S[_TURN] >= 0 and P[0, S[_TURN]] > 0
    return S[_PSIZE] > 0


@inline
def _paced_next(S, order, seg_start, seg_len, seg_rep):
    """Advance the paced order by one; ``S[_TURN]`` becomes the next device (-1: done)."""
    S[_SEG_POS] += 1
    if S[_SEG_POS] == seg_len[S[_SEG]]:
        S[_SEG_POS] = 0
        S[_SEG_DONE] += 1
        if S[_SEG_DONE] == seg_rep[S[_SEG]]:
            S[_SEG_DONE] = 0
            S[_SEG] += 1
            while S[_SEG] < seg_start.shape[0] and (seg_len[S[_SEG]] == 0 or seg_rep[S[_SEG]] == 0):
                S[_SEG] += 1
    S[_TURN] = order[seg_start[S[_SEG]] + S[_SEG_POS]] if S[_SEG] < seg_start.shape[0] else -1


@inline
def _policy_take(S, F, D, N, P, prop, ring_a, ring_b, paced):
    """Remove the next ``(device, micro-batch)`` (policy.pop); ``paced`` = (order, start, length, repeats, pool...)."""
    pol = S[_POLICY]
    if pol == POOL:
        return pool.take(S, F, D, N, paced, ring_a, ring_b)
    if pol == FIFO:
        h = S[_QHEAD]
        S[_QHEAD] = (h + 1) % S[_CAP]
        S[_QLEN] -= 1
        return ring_a[h], ring_b[h]
    if pol == PACED:
        i = S[_TURN]
        k = P[1, i]
        P[1, i] = k + 1
        P[0, i] -= 1
        S[_HELD] -= 1
        _paced_next(S, paced[0], paced[1], paced[2], paced[3])
        return i, k
    if pol == ROUND_ROBIN:
        i = ring_a[S[_QHEAD]]
        S[_QHEAD] = (S[_QHEAD] + 1) % S[_CAP]
        S[_QLEN] -= 1
    else:
        i = pop(prop, S, _NPROP)[1]
        P[2, i] += 1
    k = P[1, i]
    P[1, i] = k + 1
    P[0, i] -= 1
    S[_PSIZE] -= 1
    if P[0, i] > 0:
        _policy_turn(S, N, P, prop, ring_a, i)
    return i, k


@inline
def _flush_ws(D, N, W, QD, QK, w, t, until):
    """Run worker ``w``'s queued W's from ``t`` while the clock stands at ``t`` or is before ``until``."""
    cap, start = QD.shape[1], t
    while W[_WQ_LEN, w] > 0 and (t == start or t < until):
        h = W[_WQ_HEAD, w]
        qi = QD[w, h]
        t += D[_SRV_W, qi] * _size(D, N, qi, QK[w, h])
        W[_WQ_HEAD, w] = (h + 1) % cap
        W[_WQ_LEN, w] -= 1
    return t


@inline
def _claim(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, mix, idle, i, k, now, stream):
    """Bookkeeping when a worker starts micro-batch ``k`` of device ``i`` (ServerPool._claim).

    ``stream``: where a server whose devices join and leave records the order it received (else empty).
    """
    S[_UNCLAIMED] -= 1
    mixing.add(mix[0], mix[1], mix[2], mix[3], mix[4], i)  # mix: (M, T, share, counts, touched)
    if stream.shape[0]:
        stream[S[_NSTREAM]] = i
        S[_NSTREAM] += 1
    claim_returns = not ((S[_FLAGS] & _SEQUENTIAL) and (S[_FLAGS] & _PER_DEVICE))
    if k < N[_SENT, i] and claim_returns:
        _give_back(events, waiters, S, credits, dev_wait, dev_ready, i, now)
        if S[_POLICY] == POOL:  # ServerPool._give_pool
            S[_SHOLD] -= 1
            if not S[_FLAGS] & _SEQUENTIAL:
                change(S, P, i, 0, -1)
    if k + 1 < N[_N, i] and k + 1 >= N[_SENT, i] and not (S[_FLAGS] & EPOCHS and (k + 1) % N[_PER_EPOCH, i] == 0):
        _push(events, pending, S, F, now, i, k + 1)  # the next cached micro-batch is eligible now (one epoch at a
        # time: an epoch's first comes at its start, sfsim.fast.joint._replays)
    if S[_UNCLAIMED] == 0:
        _wake(events, S, idle, now)


@inline
def _run_mb(events, S, F, D, N, W, WF, QD, QK, steps, w, i, k, now):
    """Worker ``w`` runs F and B (or BW) of micro-batch ``k`` of device ``i``, a step when due; yields."""
    x = _size(D, N, i, k)
    flags = S[_FLAGS]
    if (flags & _DECOMPOSE) and not (flags & _SEQUENTIAL):
        t = now + D[_SRV_F, i] * x + D[_SRV_B, i] * x
        pos = (W[_WQ_HEAD, w] + W[_WQ_LEN, w]) % QD.shape[1]
        QD[w, pos] = i
        QK[w, pos] = k
        W[_WQ_LEN, w] += 1
    else:
        t = now + D[_SRV_F, i] * x
        t += D[_SRV_B, i] * x + D[_SRV_W, i] * x
        if (flags & _SEQUENTIAL) and k < N[_SENT, i]:
            _schedule(events, S, t, _NORMAL, i * 8 + _RELEASE)
    W[_DONE, w] += 1
    if W[_DONE, w] == S[_ACCUMULATE]:
        t = _flush_ws(D, N, W, QD, QK, w, t, np.inf) + F[_STEP]
        W[_DONE, w] = 0
        _stepped(S, steps, t)
    WF[_WBUSY, w] += t - now
    if t > now:
        WF[_WLAST, w] = t
    _schedule(events, S, t, _NORMAL, w * 8 + _WORKER)


@inline
def _exit(S, F, W, WF, w, now):
    """Worker ``w`` is done: its busy time and last op join the server's (the last one's time: ``F[_LEAVE]``)."""
    F[_BUSY] += WF[_WBUSY, w]
    F[_END] = max(F[_END], WF[_WLAST, w])
    W[_FINAL, w] = 2
    S[_NEXITED] += 1
    F[_LEAVE] = now


@inline
def _stepped(S, steps, t):
    """An optimizer step ends at ``t`` (Backhaul.step_done is told then): recorded when ``steps`` has room."""
    if steps.shape[0]:
        steps[S[_NSTEPS]] = t
        S[_NSTEPS] += 1


@inline
def _sleep(events, pending, S, F, W, WF, idle, w, now):
    """Worker ``w`` waits: until the next arrival when nothing can come sooner, else idle with an alarm."""
    W[_WHELD, w] = S[_HELD]
    WF[_WSTART, w] = now
    W[_CHECK, w] = 1
    if S[_NPENDING] > 0 and pending[0, 0] <= now + F[_FLIGHT]:
        _schedule(events, S, pending[0, 0], _NORMAL, w * 8 + _WORKER)
        return
    idle[S[_IDLE_N]] = w
    S[_IDLE_N] += 1
    W[_WOKEN, w] = 1  # it resumes from the idle queue
    if S[_NPENDING] > 0 and pending[0, 0] < F[_ALARM_AT]:
        _arm(events, S, F, pending[0, 0])


@inline
def _resumed(F, W, WF, w, now):
    """Worker ``w`` resumes: the end of a final step, or of a sleep while the policy held work back."""
    if W[_FINAL, w] == 1:
        return False
    if W[_CHECK, w]:
        W[_CHECK, w] = 0
        if W[_WHELD, w] > 0:
            dur = now - WF[_WSTART, w]
            F[_WAIT_S] += dur
            if dur > 0:
                WF[_WLAST, w] = now
    return True


@inline
def _worker(events, pending, waiters, prop, S, F, D, N, P, W, WF, QD, QK, credits, dev_wait, dev_ready, mix,
            idle, ring_a, ring_b, paced, PK, stream, w, now):
    """One pass of ServerPool._worker's loop for worker ``w`` at ``now``, up to its next yield."""
    if not _resumed(F, W, WF, w, now):
        _exit(S, F, W, WF, w, now)
        return
    while S[_NPENDING] > 0 and pending[0, 0] <= now:
        i = pop(pending, S, _NPENDING)[1] & _DEV_MASK
        k = PK[i]
        PK[i] = k + 1
        _policy_add(S, F, D, N, P, prop, ring_a, ring_b, paced, i, k)
    avail = _policy_ready(S, P)
    if S[_IDLE_N] > 0 and not W[_WOKEN, w] and avail:  # workers idle longer choose first
        _wake(events, S, idle, now)
        idle[0] = w
        S[_IDLE_N] = 1
        W[_WOKEN, w] = 1
        return
    W[_WOKEN, w] = 0
    if avail:
        i, k = _policy_take(S, F, D, N, P, prop, ring_a, ring_b, paced)
        _claim(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, mix, idle, i, k, now, stream)
        _run_mb(events, S, F, D, N, W, WF, QD, QK, paced[7], w, i, k, now)
    elif W[_WQ_LEN, w] > 0:  # idle: deferred W's while nothing can have arrived (exact, see the engine)
        until = now + F[_FLIGHT]
        if S[_NPENDING] > 0 and pending[0, 0] < until:
            until = pending[0, 0]
        t = _flush_ws(D, N, W, QD, QK, w, now, until)
        WF[_WBUSY, w] += t - now
        if t > now:
            WF[_WLAST, w] = t
        _schedule(events, S, t, _NORMAL, w * 8 + _WORKER)
    elif S[_UNCLAIMED] == 0:
        if W[_DONE, w] == 0:
            _exit(S, F, W, WF, w, now)
            return
        WF[_WBUSY, w] += F[_STEP]
        if F[_STEP] > 0:
            WF[_WLAST, w] = now + F[_STEP]
        W[_FINAL, w] = 1
        _stepped(S, paced[7], now + F[_STEP])
        _schedule(events, S, now + F[_STEP], _NORMAL, w * 8 + _WORKER)
    else:
        _sleep(events, pending, S, F, W, WF, idle, w, now)


@no_refcounts
def _loop(events, pending, waiters, prop, S, F, D, N, P, W, WF, QD, QK, credits, dev_wait, dev_ready, mix,
          idle, ring_a, ring_b, paced, PK, nn, f_start, link_free, ready, Y, RP, stream, EP, GQ, wait):
    """Process events until only soft timers are left; returns the time of the last other event (the makespan).

    Soft timers before ``F[_SOFT_UNTIL]`` run even then (the run goes on elsewhere, :func:`replay_dynamic`), and
    so do those of a server with micro-batches left (``Engine.hold_open``: a drop deadline is all it waits for).
    ``EP``, ``GQ``, ``wait``: its epochs opened one at a time (:mod:`sfsim.fast.opening`; one epoch: never).
    """
    m, count = N.shape[1], W.shape[1]
    now = last = 0.0
    sequential = S[_FLAGS] & _SEQUENTIAL
    claim_returns = not (sequential and (S[_FLAGS] & _PER_DEVICE))
    DY = Y[0]
    while (S[_NEVENTS] > S[_NSOFT] or (S[_NEVENTS] > 0 and (events[0, 0] < F[_SOFT_UNTIL] or S[_UNCLAIMED] > 0))
           ) and not S[_OVERFLOW]:
        now, key = pop(events, S, _NEVENTS)
        code = key & _CODE_MASK
        kind = code & 7
        j = code >> 3
        if kind == _ALARM and j > 0:  # a soft timer: it does not make the run last
            soft_timer(events, waiters, S, credits, dev_wait, dev_ready, Y, key, j - 1, now)
            continue
        last = now
        if kind == _WORKER:
            _worker(events, pending, waiters, prop, S, F, D, N, P, W, WF, QD, QK, credits, dev_wait, dev_ready,
                    mix, idle, ring_a, ring_b, paced, PK, stream, j, now)
            if ended(events, S, EP, wait, count, m, now):  # its last worker ended the epoch: the next one opens
                open_epoch(events, pending, S, F, N, P, W, WF, EP, now)
        elif kind == _ALARM:
            if key >> _CODE_BITS == S[_ALARM_ID]:  # else superseded by an earlier alarm
                F[_ALARM_AT] = np.inf
                _wake(events, S, idle, now)
        elif kind == _RELEASE:  # sequential: the micro-batch's W ended; the device goes on
            if not claim_returns:
                _give_back(events, waiters, S, credits, dev_wait, dev_ready, j, now)
            if S[_POLICY] == POOL:  # ServerPool._released: the pool's books
                if not claim_returns:
                    S[_SHOLD] -= 1
                change(S, P, j, 0, -1)
            _schedule(events, S, now, _NORMAL, j * 8 + _RESUMED)
        elif j >= m:  # the epoch's start (GO), or the end of its epoch-end wait (WAITED)
            if j == m:
                go(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, f_start, link_free,
                   ready, GQ, EP, now)
            else:
                open_epoch(events, pending, S, F, N, P, W, WF, EP, now)
        elif DY[j] >= 0:
            moving(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, f_start, link_free,
                   ready, idle, Y, RP, j, kind, now)
            if stuck(RP):  # a rate was asked past what was drawn: the caller draws further and replays
                break
        elif sequential:
            if _sequential(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, j, kind, now):
                gate(GQ, EP, N, nn, j)  # its next micro-batch is of an epoch not open yet
        elif _pipelined(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, f_start, link_free,
                        ready, j, kind, now):
            gate(GQ, EP, N, nn, j)
    return last


@njit
def replay_server(D, N, count, step_s, buffer, accumulate, flags, policy, flight, paced):
    """Replay one server (``count`` workers) and its devices, all static; returns the ``OUT_*`` figures.

    Args:
        D, N: per-device float and int rows (module docstring).
        count: workers; step_s: optimizer step seconds; buffer, accumulate: training knobs.
        flags: ``_SEQUENTIAL | _PER_DEVICE | _DECOMPOSE`` bits; policy: policy code.
        flight: ServerPool._min_flight(); paced: (order, start, length, repeats) of a paced policy.
    """
    m = N.shape[1]
    Y = (np.full(m, -1, np.int64), np.zeros((1, 2), np.int64), np.zeros((1, 4)), np.zeros(1),
         np.zeros((1, 3), np.int64), np.zeros(m, np.int64))
    RP = no_rates()
    pool = (np.zeros(0, np.int64), np.zeros(m), np.zeros(3, np.int64))
    # soft_room as an int64, not the literal 0: the same specialisation as the Python callers' (one compile)
    return replay_dynamic(D, N, count, step_s, buffer, accumulate, flags, policy, flight, paced, Y, RP,
                          np.zeros(0, np.int64), np.int64(0), -np.inf, pool, np.zeros(0), np.int64(1), 0.0)


@njit
def replay_dynamic(D, N, count, step_s, buffer, accumulate, flags, policy, flight, paced, Y, RP, stream,
                   soft_room, soft_until, pool, steps, epochs, wait):
    """:func:`replay_server` with devices of the dynamic network (:mod:`sfsim.fast.moving`).

    Args:
        Y: the moving devices' rows (:mod:`sfsim.fast.moving`); its ``tot`` (devices' micro-batches) is set here.
            On entry ``tot`` holds the totals the server's stream mixing is measured against (all 0: ``N``'s).
        RP: their rates' program (:mod:`sfsim.fast.rates`).
        stream: room for the order of every micro-batch this server receives (empty: not kept).
        soft_room: the soft timers the events heap has room for (superseded ones go when it is full).
        soft_until: soft timers before this time run even when only they are left.
        pool: the ``pool`` policy's random words, devices' activation bytes and (capacity, senders'
            limit, credits they may hold) (:mod:`sfsim.fast.pool`).
        steps: room for the end times of every optimizer step (for backhaul sync; empty: not kept).
        epochs, wait: static devices' equal epochs opened one at a time, ``wait`` s apart (:mod:`sfsim.fast.opening`).
    """
    m = N.shape[1]
    S = np.zeros(S_SLOTS, np.int64)
    F = np.zeros(F_SLOTS)
    total = N[_N].sum()
    measured = Y[5].copy() if Y[5].any() else N[_N].copy()  # StreamMixing's totals
    Y[5][:] = N[_N]
    S[_UNCLAIMED], S[_TOTAL], S[_BUFFER], S[_ACCUMULATE] = total, total, buffer, accumulate
    S[_POLICY], S[_FLAGS], S[_TURN], S[_ALARM_ID] = policy, flags, -1, -1
    flight_max = (m * buffer if flags & _PER_DEVICE else buffer) + m  # sent and holding a credit, plus replays
    S[_CAP] = min(total, flight_max) + 2  # most micro-batches ever waiting at the server
    F[_ALARM_AT], F[_STEP], F[_FLIGHT], F[_SOFT_UNTIL] = np.inf, step_s, flight, soft_until
    S[_SOFT_CAP] = soft_room  # superseded soft timers go when that many are queued (events.soft_room)
    credits = np.zeros(max(m, 1), np.int64)  # the shared account is slot 0, even with no device
    credits[0] = buffer
    if flags & _PER_DEVICE:
        credits[:] = 1 if flags & _SEQUENTIAL else buffer
    P = np.zeros((3, m), np.int64)
    _policy_start(S, N, P, paced, pool)
    EP = by_epochs(S, N, P, epochs)
    order = (paced[0], paced[1], paced[2], paced[3], np.zeros((2, min(S[_PCAP], total) + 1), np.int64),
             pool[0], pool[1], steps)
    share = measured / measured.sum() if measured.sum() else np.zeros(m)
    wcap = min(accumulate, total) + 2  # queued W's: never more than one window's
    # heaps (row 0 keys, row 1 values): at most an event per device (and its alarm-free replays), per
    # worker and per pending arrival's alarm, and the soft timers; an arrival per micro-batch that may wait; a device each
    events = np.empty((2, 2 * m + count + 4 * S[_CAP] + soft_room + 64))
    pending = np.empty((2, S[_CAP] + m + 16))
    waiters = np.empty((2, m + 16))
    prop = np.empty((2, m + 16))
    for w in range(count):  # process starts: the workers, the moving devices, then the others that send
        _schedule(events, S, 0.0, _URGENT, w * 8 + _WORKER)
    for first in (True, False):
        for j in range(m):
            if N[_SENT, j] > 0 and (Y[0][j] >= 0) == first:
                _schedule(events, S, 0.0, _URGENT, j * 8 + _START)
    W, WF = np.zeros((7, count), np.int64), np.zeros((3, count))
    M, T, counts, touched = mixing.fresh(measured.sum(), m)
    mix = (M, T, share, counts, touched)
    makespan = _loop(events, pending, waiters, prop, S, F, D, N, P, W, WF, np.zeros((count, wcap), np.int64),
                     np.zeros((count, wcap), np.int64), credits, np.zeros(m, np.bool_), np.zeros(m), mix,
                     np.zeros(count, np.int64), np.zeros(S[_CAP], np.int64), np.zeros(S[_CAP], np.int64), order,
                     np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(m), np.zeros(m), np.zeros(m), Y, RP,
                     stream, EP, np.zeros((2, max(m, 1)), np.int64), wait)
    return _results(S, F, M, T, makespan, total, RP)


@inline
def _policy_start(S, N, P, paced, pool):
    """The policy's state before the run: the paced order's first turn, or the pool's books (Senders)."""
    policy = S[_POLICY]
    if policy == PACED:
        _paced_start(S, paced[1], paced[2], paced[3])
        if S[_SEG] < paced[1].shape[0]:
            S[_TURN] = paced[0][paced[1][S[_SEG]]]
    elif policy == POOL:  # Senders: unsent, out, free
        S[_PCAP], S[_SLIMIT], S[_SBUF] = pool[2][0], pool[2][1], pool[2][2]
        for j in range(N.shape[1]):
            P[0, j] = N[_SENT, j] if N[_N, j] > 0 else 0
            P[2, j] = 1 if P[0, j] > 0 else 0
            S[_SCOUNT] += P[2, j]
    else:
        P[1, :] = -1


@inline
def _results(S, F, M, T, makespan, total, RP):
    """The ``OUT_*`` figures of a replay."""
    out = np.zeros(16)
    out[OUT_LEAVE], out[OUT_NSTEPS] = F[_LEAVE], S[_NSTEPS]
    out[OUT_EVENTS], out[OUT_OVERFLOW], out[OUT_WORDS] = S[_EID], S[_OVERFLOW] == 1, S[_OVERFLOW] == 2
    out[OUT_MAKESPAN], out[OUT_BUSY], out[OUT_WAIT], out[OUT_END] = makespan, F[_BUSY], F[_WAIT_S], F[_END]
    out[OUT_TV_SUM], out[OUT_TV_COUNT], out[OUT_UNCLAIMED], out[OUT_TOTAL] = T[0], M[mixing.COUNT], S[_UNCLAIMED], total
    out[OUT_STALLED], out[OUT_STUCK], out[OUT_PEAK] = S[_UNCLAIMED] > 0 and S[_NSOFT] > 0, stuck(RP), F[_PPEAK]
    return out


@inline
def _paced_start(S, seg_start, seg_len, seg_rep):
    """Skip empty segments at the start of a paced order."""
    while S[_SEG] < seg_start.shape[0] and (seg_len[S[_SEG]] == 0 or seg_rep[S[_SEG]] == 0):
        S[_SEG] += 1
