"""The compiled event loop of one SplitFrozen server, its workers and the devices that send to it.

It replays exactly what :class:`sfsim.engine.pool.ServerPool` and the device processes of
:mod:`sfsim.schedules.splitfrozen` do on the SimPy engine, event for event: one heap of
``(time, priority, id, code)`` entries queued in the order SimPy would queue them (process starts
first at time 0, then by creation order), so ties at equal times resolve the same way and the
figures agree to the last bits. Servers without backhaul sync share nothing, so each is replayed
alone (:mod:`sfsim.fast.splitfrozen`).

State is a few arrays per device and worker and heaps (:mod:`sfsim.fast.heap`) sized by devices and
micro-batches in flight: memory grows with devices, never with the run's length. The event loop is
compiled without reference counting (:func:`no_refcounts`): it allocates nothing. Everything is in the subset of Python that
numba compiles (:mod:`sfsim.fast.jit`): scalars that helpers change live in the int array ``S``
and the float array ``F`` (slots named below); no SimPy, no I/O.

Arrays passed in: ``D`` (float, 8 x devices: f, warmup, up_s, up_l, srv_f, srv_b, srv_w, last) and
``N`` (int, 3 x devices: n, sent, per_epoch). Policy codes: 0 fifo, 1 round-robin, 2 proportional,
3 paced (its order given as segments: ``order[start[s]:start[s] + length[s]]``, ``repeats[s]`` times).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast.heap import pop, push
from sfsim.fast.jit import COMPILED, inline, njit

if COMPILED:
    import numba


def no_refcounts(fn):
    """:func:`~sfsim.fast.jit.njit` without numba's reference counting (``_nrt=False``), else ``fn`` itself.

    The event loop allocates nothing; with reference counting on, each array handed to an inlined
    helper costs an atomic increment and decrement, about a third of the loop's time.
    """
    if not COMPILED:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, _nrt=False)(fn)

FIFO, ROUND_ROBIN, PROPORTIONAL, PACED = 0, 1, 2, 3

# D rows and N rows
_F, _WARM, _UP_S, _UP_L, _SRV_F, _SRV_B, _SRV_W, _LAST = range(8)
_N, _SENT, _PER_EPOCH = range(3)
# event kinds (code & 7); code >> 3 is the device, worker or alarm number
_WORKER, _ALARM, _START, _RETRY, _GRANT, _AFTER_F, _RELEASE, _RESUMED = range(8)
_URGENT, _NORMAL = 0, 1  # SimPy's priorities: process starts come before ordinary events at one instant
# Heaps are float arrays, row 0 the time, row 1 a key (exact as a float below 2**53: at most 2**31
# events), compared as (time, key) pairs: no list, no reference counting. Events: key = id << 22 | code; SimPy
# orders by (time, priority, id), and since every process start (the only urgent events) is queued before
# any other event, ids alone give the same order. Pending arrivals and credit waiters: key = seq << 20 |
# device; a device's micro-batches leave the pending heap in order, so ``PK`` (next micro-batch per
# device) names them. Hence at most 2**19 devices per server (:data:`MAX_DEVICES`).
_CODE_BITS, _DEV_BITS = 22, 20
_CODE_MASK, _DEV_MASK = (1 << _CODE_BITS) - 1, (1 << _DEV_BITS) - 1
MAX_DEVICES = 1 << (_CODE_BITS - 3)
"""Most devices one server may have on the fast path (the event code holds device * 8 + kind)."""
# int scalars S
(_EID, _WSEQ, _PSEQ, _UNCLAIMED, _IDLE_N, _ALARM_ID, _QHEAD, _QLEN, _PSIZE, _HELD, _SEG, _SEG_POS, _SEG_DONE,
 _TURN, _NTOUCHED, _SEEN, _BOUND, _TV_COUNT, _TOTAL, _BUFFER, _ACCUMULATE, _POLICY, _FLAGS, _CAP,
 _NEVENTS, _NPENDING, _NWAITERS, _NPROP, _OVERFLOW) = range(29)
_SEQUENTIAL, _PER_DEVICE, _DECOMPOSE = 1, 2, 4  # bits of S[_FLAGS]
# float scalars F
_ALARM_AT, _TV_SUM, _WAIT_S, _BUSY, _END, _STEP, _FLIGHT = range(7)
# per-worker ints W (rows) and floats WF (rows)
_DONE, _WQ_HEAD, _WQ_LEN, _WOKEN, _FINAL, _CHECK, _WHELD = range(7)
_WBUSY, _WLAST, _WSTART = range(3)

OUT_MAKESPAN, OUT_BUSY, OUT_WAIT, OUT_END, OUT_TV_SUM, OUT_TV_COUNT, OUT_UNCLAIMED, OUT_TOTAL, OUT_EVENTS, OUT_OVERFLOW = (
    range(10))
"""Slots of :func:`replay_server`'s result."""


@inline
def _size(D, N, j, k):
    """Size of micro-batch ``k`` of device ``j`` relative to a full one (DeviceTimes.size)."""
    if D[_LAST, j] < 1.0 and (k + 1) % N[_PER_EPOCH, j] == 0:
        return D[_LAST, j]
    return 1.0


@inline
def _fwd_ready(D, N, j, k, f_start, link_free):
    """When device ``j`` can send micro-batch ``k``: its forward ends and its link is free."""
    fe = f_start + D[_F, j] * _size(D, N, j, k) + (D[_WARM, j] if k == 0 else 0.0)
    return fe if fe > link_free else link_free


@inline
def _schedule(events, S, t, prio, code):
    """Queue an event at ``t`` (SimPy's queue order: time, priority, creation)."""
    push(events, S, _NEVENTS, _OVERFLOW, t, (S[_EID] << _CODE_BITS) | code)
    S[_EID] += 1


@inline
def _wake(events, S, idle, now):
    """Every idle worker resumes at ``now``, in the order it went idle (ServerPool._wake_all)."""
    for q in range(S[_IDLE_N]):
        _schedule(events, S, now, _NORMAL, idle[q] * 8 + _WORKER)
    S[_IDLE_N] = 0


@inline
def _arm(events, S, F, t):
    """A new alarm at ``t``: wakes the idle workers then (earlier alarms are superseded)."""
    F[_ALARM_AT] = t
    S[_ALARM_ID] = S[_EID]  # the id this alarm's event gets
    _schedule(events, S, t, _NORMAL, _ALARM)


@inline
def _push(events, pending, S, F, arrival, j, k):
    """Announce micro-batch ``k`` of device ``j`` arriving at ``arrival`` (ServerPool.push)."""
    S[_PSEQ] += 1
    push(pending, S, _NPENDING, _OVERFLOW, arrival, (S[_PSEQ] << _DEV_BITS) | j)
    if S[_IDLE_N] > 0 and arrival < F[_ALARM_AT]:
        _arm(events, S, F, arrival)


@inline
def _wait_credit(waiters, S, dev_wait, dev_ready, j, ready):
    """Queue device ``j`` for a credit from ``ready`` on (Credits.wait)."""
    if S[_FLAGS] & _PER_DEVICE:
        dev_wait[j] = True
        dev_ready[j] = ready
    else:
        S[_WSEQ] += 1
        push(waiters, S, _NWAITERS, _OVERFLOW, ready, (S[_WSEQ] << _DEV_BITS) | j)


@inline
def _give_back(events, waiters, S, credits, dev_wait, dev_ready, j, now):
    """Return one credit of device ``j``'s account (Credits.give_back)."""
    if S[_FLAGS] & _PER_DEVICE:
        if dev_wait[j] and dev_ready[j] <= now:
            dev_wait[j] = False
            _schedule(events, S, now, _NORMAL, j * 8 + _GRANT)
            return
        credits[j] += 1
        if dev_wait[j]:
            dev_wait[j] = False
            _schedule(events, S, dev_ready[j], _NORMAL, j * 8 + _RETRY)
        return
    if S[_NWAITERS] > 0 and waiters[0, 0] <= now:
        w = pop(waiters, S, _NWAITERS)[1] & _DEV_MASK
        _schedule(events, S, now, _NORMAL, w * 8 + _GRANT)
        return
    credits[0] += 1
    if S[_NWAITERS] > 0:
        wr, key = pop(waiters, S, _NWAITERS)
        w = key & _DEV_MASK
        _schedule(events, S, wr, _NORMAL, w * 8 + _RETRY)


@inline
def _pipelined(events, pending, waiters, S, F, D, N, credits, dev_wait, dev_ready, nn, f_start, link_free,
               ready, j, kind, now):
    """Device ``j`` of schedules.splitfrozen._pipelined resumes (start, retry or granted)."""
    acct = j if S[_FLAGS] & _PER_DEVICE else 0
    go = kind == _GRANT
    if kind == _START:
        ready[j] = _fwd_ready(D, N, j, nn[j], f_start[j], link_free[j])
    while True:
        if not go:
            r = ready[j]
            if r > now:
                if credits[acct] > 0:
                    _schedule(events, S, r, _NORMAL, j * 8 + _RETRY)
                else:
                    _wait_credit(waiters, S, dev_wait, dev_ready, j, r)
                return
            if credits[acct] == 0:
                _wait_credit(waiters, S, dev_wait, dev_ready, j, now)
                return
            credits[acct] -= 1
        go = False
        k = nn[j]
        link_free[j] = now + D[_UP_S, j] * _size(D, N, j, k)
        _push(events, pending, S, F, link_free[j] + D[_UP_L, j], j, k)
        f_start[j] = now
        nn[j] += 1
        if nn[j] >= N[_SENT, j]:
            return
        ready[j] = _fwd_ready(D, N, j, nn[j], f_start[j], link_free[j])


@inline
def _sequential(events, pending, waiters, S, F, D, N, credits, dev_wait, dev_ready, nn, j, kind, now):
    """Device ``j`` of schedules.splitfrozen._sequential resumes."""
    if kind == _START or kind == _RESUMED:
        if kind == _RESUMED:
            nn[j] += 1
            if nn[j] >= N[_SENT, j]:
                return
        k = nn[j]
        fx = D[_F, j] * _size(D, N, j, k) + (D[_WARM, j] if k == 0 else 0.0)
        _schedule(events, S, now + fx, _NORMAL, j * 8 + _AFTER_F)
        return
    acct = j if S[_FLAGS] & _PER_DEVICE else 0
    if kind != _GRANT:
        if credits[acct] == 0:
            _wait_credit(waiters, S, dev_wait, dev_ready, j, now)
            return
        credits[acct] -= 1
    k = nn[j]
    _push(events, pending, S, F, now + D[_UP_S, j] * _size(D, N, j, k) + D[_UP_L, j], j, k)


@inline
def _policy_add(S, N, P, prop, ring_a, ring_b, i, k):
    """Micro-batch ``k`` of device ``i`` is eligible (policy.push). ``P``: ready, next, started rows."""
    pol = S[_POLICY]
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
def _policy_take(S, N, P, prop, ring_a, ring_b, paced):
    """Remove the next ``(device, micro-batch)`` (policy.pop); ``paced`` = (order, start, length, repeats)."""
    pol = S[_POLICY]
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
def _mix_add(S, F, share, counts, touched, i):
    """Device ``i``'s micro-batch is next in the stream (StreamMixing.add, same summation order)."""
    if counts[i] == 0:
        touched[S[_NTOUCHED]] = i
        S[_NTOUCHED] += 1
    counts[i] += 1
    S[_SEEN] += 1
    if S[_SEEN] < S[_BOUND]:
        return
    size = 0
    s1 = 0.0
    for q in range(S[_NTOUCHED]):
        size += counts[touched[q]]
        s1 += share[touched[q]]
    s2 = 0.0
    for q in range(S[_NTOUCHED]):
        s2 += abs(counts[touched[q]] / size - share[touched[q]])
        counts[touched[q]] = 0
    dist = 1.0 - s1
    dist += s2
    F[_TV_SUM] += 0.5 * dist
    S[_TV_COUNT] += 1
    S[_NTOUCHED] = 0
    windows = max(1, min(10, S[_TOTAL]))
    S[_BOUND] = -(-(S[_TV_COUNT] + 1) * S[_TOTAL] // windows)


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
def _claim(events, pending, waiters, S, F, D, N, credits, dev_wait, dev_ready, share, counts, touched, idle,
           i, k, now):
    """Bookkeeping when a worker starts micro-batch ``k`` of device ``i`` (ServerPool._claim)."""
    S[_UNCLAIMED] -= 1
    _mix_add(S, F, share, counts, touched, i)
    claim_returns = not ((S[_FLAGS] & _SEQUENTIAL) and (S[_FLAGS] & _PER_DEVICE))
    if k < N[_SENT, i] and claim_returns:
        _give_back(events, waiters, S, credits, dev_wait, dev_ready, i, now)
    if k + 1 < N[_N, i] and k + 1 >= N[_SENT, i]:
        _push(events, pending, S, F, now, i, k + 1)  # the next cached micro-batch is eligible now
    if S[_UNCLAIMED] == 0:
        _wake(events, S, idle, now)


@inline
def _run_mb(events, S, F, D, N, W, WF, QD, QK, w, i, k, now):
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
    WF[_WBUSY, w] += t - now
    if t > now:
        WF[_WLAST, w] = t
    _schedule(events, S, t, _NORMAL, w * 8 + _WORKER)


@inline
def _exit(S, F, W, WF, w):
    """Worker ``w`` is done: its busy time and last op join the server's."""
    F[_BUSY] += WF[_WBUSY, w]
    F[_END] = max(F[_END], WF[_WLAST, w])
    W[_FINAL, w] = 2


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
def _worker(events, pending, waiters, prop, S, F, D, N, P, W, WF, QD, QK, credits, dev_wait, dev_ready, share,
            counts, touched, idle, ring_a, ring_b, paced, PK, w, now):
    """One pass of ServerPool._worker's loop for worker ``w`` at ``now``, up to its next yield."""
    if not _resumed(F, W, WF, w, now):
        _exit(S, F, W, WF, w)
        return
    while S[_NPENDING] > 0 and pending[0, 0] <= now:
        i = pop(pending, S, _NPENDING)[1] & _DEV_MASK
        k = PK[i]
        PK[i] = k + 1
        _policy_add(S, N, P, prop, ring_a, ring_b, i, k)
    avail = _policy_ready(S, P)
    if S[_IDLE_N] > 0 and not W[_WOKEN, w] and avail:  # workers idle longer choose first
        _wake(events, S, idle, now)
        idle[0] = w
        S[_IDLE_N] = 1
        W[_WOKEN, w] = 1
        return
    W[_WOKEN, w] = 0
    if avail:
        i, k = _policy_take(S, N, P, prop, ring_a, ring_b, paced)
        _claim(events, pending, waiters, S, F, D, N, credits, dev_wait, dev_ready, share, counts, touched, idle,
               i, k, now)
        _run_mb(events, S, F, D, N, W, WF, QD, QK, w, i, k, now)
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
            _exit(S, F, W, WF, w)
            return
        WF[_WBUSY, w] += F[_STEP]
        if F[_STEP] > 0:
            WF[_WLAST, w] = now + F[_STEP]
        W[_FINAL, w] = 1
        _schedule(events, S, now + F[_STEP], _NORMAL, w * 8 + _WORKER)
    else:
        _sleep(events, pending, S, F, W, WF, idle, w, now)


@no_refcounts
def _loop(events, pending, waiters, prop, S, F, D, N, P, W, WF, QD, QK, credits, dev_wait, dev_ready, share,
          counts, touched, idle, ring_a, ring_b, paced, PK, nn, f_start, link_free, ready):
    """Process events until none is left; returns the clock then (the makespan)."""
    now = 0.0
    sequential = S[_FLAGS] & _SEQUENTIAL
    claim_returns = not (sequential and (S[_FLAGS] & _PER_DEVICE))
    while S[_NEVENTS] > 0 and not S[_OVERFLOW]:
        now, key = pop(events, S, _NEVENTS)
        code = key & _CODE_MASK
        kind = code & 7
        j = code >> 3
        if kind == _WORKER:
            _worker(events, pending, waiters, prop, S, F, D, N, P, W, WF, QD, QK, credits, dev_wait, dev_ready,
                    share, counts, touched, idle, ring_a, ring_b, paced, PK, j, now)
        elif kind == _ALARM:
            if key >> _CODE_BITS == S[_ALARM_ID]:  # else superseded by an earlier alarm
                F[_ALARM_AT] = np.inf
                _wake(events, S, idle, now)
        elif kind == _RELEASE:  # sequential: the micro-batch's W ended; the device goes on
            if not claim_returns:
                _give_back(events, waiters, S, credits, dev_wait, dev_ready, j, now)
            _schedule(events, S, now, _NORMAL, j * 8 + _RESUMED)
        elif sequential:
            _sequential(events, pending, waiters, S, F, D, N, credits, dev_wait, dev_ready, nn, j, kind, now)
        else:
            _pipelined(events, pending, waiters, S, F, D, N, credits, dev_wait, dev_ready, nn, f_start, link_free,
                       ready, j, kind, now)
    return now


@njit
def replay_server(D, N, count, step_s, buffer, accumulate, flags, policy, flight, paced):
    """Replay one server (``count`` workers) and its devices; returns the ``OUT_*`` figures.

    Args:
        D, N: per-device float and int rows (module docstring).
        count: workers; step_s: optimizer step seconds; buffer, accumulate: training knobs.
        flags: ``_SEQUENTIAL | _PER_DEVICE | _DECOMPOSE`` bits; policy: policy code.
        flight: ServerPool._min_flight(); paced: (order, start, length, repeats) of a paced policy.
    """
    m = N.shape[1]
    S = np.zeros(29, np.int64)
    F = np.zeros(7)
    total = N[_N].sum()
    S[_UNCLAIMED], S[_TOTAL], S[_BUFFER], S[_ACCUMULATE] = total, total, buffer, accumulate
    S[_POLICY], S[_FLAGS], S[_TURN], S[_ALARM_ID] = policy, flags, -1, -1
    flight_max = (m * buffer if flags & _PER_DEVICE else buffer) + m  # sent and holding a credit, plus replays
    S[_CAP] = min(total, flight_max) + 2  # most micro-batches ever waiting at the server
    S[_BOUND] = -(-total // max(1, min(10, total)))
    F[_ALARM_AT], F[_STEP], F[_FLIGHT] = np.inf, step_s, flight
    credits = np.zeros(max(m, 1), np.int64)  # the shared account is slot 0, even with no device
    credits[0] = buffer
    if flags & _PER_DEVICE:
        credits[:] = 1 if flags & _SEQUENTIAL else buffer
    P = np.zeros((3, m), np.int64)
    if policy == PACED:
        _paced_start(S, paced[1], paced[2], paced[3])
        if S[_SEG] < paced[1].shape[0]:
            S[_TURN] = paced[0][paced[1][S[_SEG]]]
    else:
        P[1, :] = -1
    share = N[_N] / total if total else np.zeros(m)
    wcap = min(accumulate, total) + 2  # queued W's: never more than one window's
    # heaps (row 0 keys, row 1 values): at most an event per device (and its alarm-free replays), per
    # worker and per pending arrival's alarm; an arrival per micro-batch that may wait; a device each
    events = np.empty((2, 2 * m + count + 4 * S[_CAP] + 64))
    pending = np.empty((2, S[_CAP] + m + 16))
    waiters = np.empty((2, m + 16))
    prop = np.empty((2, m + 16))
    for w in range(count):  # process starts: the workers, then every device that sends
        _schedule(events, S, 0.0, _URGENT, w * 8 + _WORKER)
    for j in range(m):
        if N[_SENT, j] > 0:
            _schedule(events, S, 0.0, _URGENT, j * 8 + _START)
    W = np.zeros((7, count), np.int64)
    WF = np.zeros((3, count))
    makespan = _loop(events, pending, waiters, prop, S, F, D, N, P, W, WF, np.zeros((count, wcap), np.int64),
                     np.zeros((count, wcap), np.int64), credits, np.zeros(m, np.bool_), np.zeros(m), share,
                     np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(count, np.int64),
                     np.zeros(S[_CAP], np.int64), np.zeros(S[_CAP], np.int64), paced, np.zeros(m, np.int64),
                     np.zeros(m, np.int64),
                     np.zeros(m), np.zeros(m), np.zeros(m))
    out = np.zeros(10)
    out[OUT_EVENTS], out[OUT_OVERFLOW] = S[_EID], S[_OVERFLOW]
    out[OUT_MAKESPAN], out[OUT_BUSY], out[OUT_WAIT], out[OUT_END] = makespan, F[_BUSY], F[_WAIT_S], F[_END]
    out[OUT_TV_SUM], out[OUT_TV_COUNT], out[OUT_UNCLAIMED], out[OUT_TOTAL] = (F[_TV_SUM], S[_TV_COUNT],
                                                                             S[_UNCLAIMED], total)
    return out


@inline
def _paced_start(S, seg_start, seg_len, seg_rep):
    """Skip empty segments at the start of a paced order."""
    while S[_SEG] < seg_start.shape[0] and (seg_len[S[_SEG]] == 0 or seg_rep[S[_SEG]] == 0):
        S[_SEG] += 1
