"""The compiled loop of every SplitFrozen server together, one event heap: how handovers replay (:mod:`sfsim.fast.handover`).

A device that moves couples the servers (a credit it waits for at one server, a place a server holds
for it, the stream it brings), so the servers are replayed together, in the order SimPy runs their
events: one heap of ``(time, id)`` over all servers, one event id counter. Each server keeps the
state of :mod:`sfsim.fast.kernel` (its row of the stacked arrays below) and its workers run the
kernel's own step (:func:`sfsim.fast.kernel._worker`); devices on one leg with constant rates run
:mod:`sfsim.fast.devices`' steps on their server. A device of the dynamic network runs :func:`_mover`,
which replays :func:`sfsim.schedules.splitfrozen.device_process` with its legs: at a credit wait it
takes the handovers due by then (its unsent micro-batches move to the new server, ``_switch``),
waits on the holding leg's server until the next handover (a soft timer cancels the wait there),
and sends over the holding leg's uplink; micro-batches in flight finish on the old server.

The event counter and heap size live in the server rows (``S[_EID]``, ``S[_NEVENTS]``,
``S[_NSOFT]``) because the kernel's helpers read them there: the row in use holds the live values
(``G[0]`` names it) and :func:`_hold` hands them to another row before it is used.

A server may receive a device's micro-batches out of their order (it leaves and comes back, and a
later one overtakes an earlier one in flight), and only policies that pick a device keep their own
count: so each push notes its micro-batch number by the push's sequence number (``RN``/``RS``, a
ring per server), and a worker pops arrivals with their own numbers (:func:`_arrivals`), as
:class:`sfsim.engine.pool.ServerPool`'s heap holds them.

With backhaul rounds over several epochs (:mod:`sfsim.fast.rounds`) a static device that reaches an epoch its
server has not opened waits (:func:`_gate`), and the server's epoch start sets it going again (:func:`_go`).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast.devices import _pipelined, _sequential
from sfsim.fast.events import (
    _AFTER_F,
    _ALARM,
    _ALARM_AT,
    _ALARM_ID,
    _CODE_BITS,
    _CODE_MASK,
    _DEV_BITS,
    _DEV_MASK,
    _DOWN_L,
    _EID,
    _FLAGS,
    _GRANT,
    _N,
    _NEVENTS,
    _NEXITED,
    _NORMAL,
    _NPENDING,
    _NSOFT,
    _NWAITERS,
    _OVERFLOW,
    _PER_DEVICE,
    _PER_EPOCH,
    _POLICY,
    _PSEQ,
    _RELEASE,
    _RESUMED,
    _RETRY,
    _SEQUENTIAL,
    _SHOLD,
    _START,
    _UNCLAIMED,
    _URGENT,
    _WORKER,
    POOL,
    _give_back,
    _push,
    _schedule,
    _send,
    _size,
    _wait_credit,
    _wake,
    change,
    no_refcounts,
    soft_room,
)
from sfsim.fast.heap import pop, remove
from sfsim.fast.jit import inline, njit
from sfsim.fast.kernel import _SENT, _policy_add, _worker
from sfsim.fast.moving import _ready
from sfsim.fast.rates import online, span, stuck
from sfsim.fast.rounds import (
    EP_N0,
    EP_NOW,
    EP_OFF,
    GO,
    OPEN,
    WAITED,
    alone,
    begin,
    epoch_end,
    event,
    gate,
    joint_step,
    left,
    noted,
    open_epoch,
    step_done,
)

_PAUSE, _LEG0, _NLEGS, _LEG = range(4)  # YI columns: pause node, first leg's row in L, legs, the holding leg
_START_AT, _STOP, _BITS = range(3)  # YF columns
_SOFT_EID, _SOFT_GIVE, _SOFT_SRV, _SENT_OUT = range(4)  # YN columns
_BEGIN, _TAKE, _ACQUIRE, _SEND = range(4)  # where a moving device resumes
_TAKEN, _WAITS, _NOT_NOW, _LEFT = range(4)  # what a credit try ends in
RING_FULL = 3
"""``S[_OVERFLOW]`` when a push's ring slot (``RN``) is still in use: the caller replays with a bigger ring."""


@inline
def _hold(S2, G, k):
    """Server ``k``'s row holds the event counters from now on."""
    h = G[0]
    if h != k:
        S2[k, _EID] = S2[h, _EID]
        S2[k, _NEVENTS] = S2[h, _NEVENTS]
        S2[k, _NSOFT] = S2[h, _NSOFT]
        G[0] = k


@inline
def _note(S2, RN, RS, k, seq0, n0):
    """Pushes ``seq0 + 1 ..`` at server ``k`` (since ``seq0``) carried micro-batches ``n0, n0 + 1, ..``."""
    mask = RN.shape[1] - 1
    for s in range(seq0 + 1, S2[k, _PSEQ] + 1):
        q = s & mask
        if RS[k, q] >= 0:
            S2[k, _OVERFLOW] = RING_FULL
        RS[k, q] = s
        RN[k, q] = n0 + s - seq0 - 1


@inline
def _arrivals(S, F, D, N, P, prop, ring_a, ring_b, order, pending, RN, RS, k, now):
    """Every micro-batch arrived by ``now`` at server ``k`` becomes eligible, with its own number."""
    mask = RN.shape[1] - 1
    while S[_NPENDING] > 0 and pending[0, 0] <= now:
        key = pop(pending, S, _NPENDING)[1]
        q = (key >> _DEV_BITS) & mask
        RS[k, q] = -1
        _policy_add(S, F, D, N, P, prop, ring_a, ring_b, order, key & _DEV_MASK, RN[k, q])


@inline
def _unclaim(events, X, G, k, j, moved, place, now):
    """ServerPool._change at server ``k``: ``moved`` micro-batches of device ``j`` come (or not), ``place`` goes."""
    S2, IDLE, TOT = X[0], X[10], X[11]
    _hold(S2, G, k)
    TOT[k, j] += moved
    S2[k, _UNCLAIMED] += moved - place
    if S2[k, _UNCLAIMED] == 0:
        _wake(events, S2[k], IDLE[k], now)


@inline
def _soft(events, S, Y, y, j, k, t, give):
    """A soft timer of device ``j`` (row ``y``) at ``t`` on server ``k``: cancel its wait there, or give back."""
    YN = Y[4]
    soft_room(events, S, Y[0], YN)
    YN[y, _SOFT_EID] = S[_EID]
    YN[y, _SOFT_GIVE] = give
    YN[y, _SOFT_SRV] = k
    S[_NSOFT] += 1
    _schedule(events, S, t, _NORMAL, (j + 1) * 8 + _ALARM)


@inline
def _deadline(YI, YF, LA, y):
    """Until when the holding leg's credit wait may last: the next handover, or the device's drop."""
    nxt = YI[y, _LEG] + 1
    stop = YF[y, _STOP]
    return min(stop, LA[YI[y, _LEG0] + nxt]) if nxt < YI[y, _NLEGS] else stop


@njit
def _switch(events, X, Y, L, nn, cur, G, j, y, now):
    """Device ``j`` takes its next leg having sent ``nn[j]``: the rest moves to that leg's server (_switch)."""
    YI, LS, SW = Y[1], L[1], L[4]
    YI[y, _LEG] += 1
    at = YI[y, _LEG0] + YI[y, _LEG]
    left = X[3][0, _SENT, j] - nn[j]
    SW[at] = nn[j]
    _unclaim(events, X, G, LS[at], j, left, 1, now)  # hand_over, then withdraw
    _unclaim(events, X, G, LS[at - 1], j, -left, 0, now)
    cur[j] = LS[at]


@njit
def _gone(events, X, Y, L, nn, G, j, y, now):
    """Device ``j`` ends on its holding leg having sent ``nn[j]`` (splitfrozen._left)."""
    YI, YN, LS, SW = Y[1], Y[4], L[1], L[4]
    n, first = nn[j], YI[y, _LEG0]
    YN[y, _SENT_OUT] = n
    rest = X[3][0, _SENT, j] - n
    if rest > 0:
        _unclaim(events, X, G, LS[first + YI[y, _LEG]], j, -rest, 0, now)
    for q in range(YI[y, _LEG] + 1, YI[y, _NLEGS]):  # handovers never reached: the places held there go
        SW[first + q] = n
        _unclaim(events, X, G, LS[first + q], j, 0, 1, now)


@njit
def _acquire(events, X, Y, G, j, y, k, r, deadline, now):
    """splitfrozen._acquire at server ``k`` from ``r`` until ``deadline``: taken now, waits, or not now."""
    S2, CR, WAI, DW, DR = X[0], X[7], X[6], X[8], X[9]
    _hold(S2, G, k)
    if max(r, now) >= deadline:
        return _NOT_NOW
    acct = j if S2[k, _FLAGS] & _PER_DEVICE else 0
    if r > now:
        if CR[k, acct] > 0:
            _schedule(events, S2[k], r, _NORMAL, j * 8 + _RETRY)
            return _WAITS
        _wait_credit(WAI[k], S2[k], DW[k], DR[k], j, r)
    elif CR[k, acct] > 0:
        CR[k, acct] -= 1
        return _TAKEN
    else:
        _wait_credit(WAI[k], S2[k], DW[k], DR[k], j, now)
    Y[4][y, _SOFT_EID] = -1  # a new wait: an earlier wait's timer finds nothing to cancel
    if deadline < np.inf:
        _soft(events, S2[k], Y, y, j, k, deadline, 0)
    return _WAITS


@njit
def _take(events, X, Y, L, nn, ready, cur, G, j, y, now, resume):
    """splitfrozen._take_credit: handovers due first, then a credit on the holding leg (``resume``: back in its wait)."""
    YI, YF, LA, LS = Y[1], Y[2], L[0], L[1]
    stop = YF[y, _STOP]
    if resume:
        got = _acquire(events, X, Y, G, j, y, LS[YI[y, _LEG0] + YI[y, _LEG]], ready[j],
                       _deadline(YI, YF, LA, y), now)
        if got != _NOT_NOW:
            return got
        ready[j] = now
    while ready[j] < stop:
        while YI[y, _LEG] + 1 < YI[y, _NLEGS] and LA[YI[y, _LEG0] + YI[y, _LEG] + 1] <= max(ready[j], now):
            _switch(events, X, Y, L, nn, cur, G, j, y, now)
        got = _acquire(events, X, Y, G, j, y, LS[YI[y, _LEG0] + YI[y, _LEG]], ready[j],
                       _deadline(YI, YF, LA, y), now)
        if got != _NOT_NOW:
            return got
        ready[j] = now
    return _LEFT


@njit
def _mover(events, X, Y, L, RP, RN, RS, nn, f_start, link_free, ready, cur, G, j, kind, now):
    """Device ``j`` of the dynamic network resumes (started, a timer, granted, cancelled or released)."""
    S2, D2, N2, YI, YF = X[0], X[2], X[3], Y[1], Y[2]
    y = Y[0][j]
    pause = YI[y, _PAUSE]
    step = _TAKE
    if kind == _START or kind == _RESUMED:
        f_start[j] = YF[y, _START_AT] if kind == _START else now
        if nn[j] >= N2[0, _SENT, j] or f_start[j] == np.inf:
            _gone(events, X, Y, L, nn, G, j, y, now)
            return
        step = _BEGIN
    elif kind == _AFTER_F:  # its wait was cancelled (a handover or its drop): try again from now
        ready[j] = now
    elif kind == _GRANT:
        if now >= _deadline(YI, YF, L[0], y):  # granted at the deadline: the send would start after it
            k = cur[j]
            _hold(S2, G, k)
            _give_back(events, X[6][k], S2[k], X[7][k], X[8][k], X[9][k], j, now)
            ready[j] = now
        else:
            step = _SEND
    else:  # _RETRY: back in its credit wait at its ready time (or told to try again)
        step = _ACQUIRE
    while True:
        if step == _BEGIN:
            _ready(D2[0], N2[0], RP, nn, f_start, link_free, ready, pause, j)
        if step != _SEND:
            got = _take(events, X, Y, L, nn, ready, cur, G, j, y, now, step == _ACQUIRE)
            if got == _WAITS:
                return
            if got == _LEFT:
                _gone(events, X, Y, L, nn, G, j, y, now)
                return
        if not _send_leg(events, X, Y, L, RP, RN, RS, nn, link_free, G, j, y, now):
            _gone(events, X, Y, L, nn, G, j, y, now)
            return
        if S2[cur[j], _FLAGS] & _SEQUENTIAL:
            return  # the worker releases it when this micro-batch's W ends
        f_start[j] = now
        if nn[j] >= N2[0, _SENT, j]:
            _gone(events, X, Y, L, nn, G, j, y, now)
            return
        step = _BEGIN


@njit
def _send_leg(events, X, Y, L, RP, RN, RS, nn, link_free, G, j, y, now):
    """Device ``j`` (holding a credit) sends its next micro-batch over its holding leg now; False if cut off first."""
    S2, F2, D2, N2, P2, PEN = X[0], X[1], X[2], X[3], X[4], X[5]
    YI, YF, YS = Y[1], Y[2], Y[3]
    leg = YI[y, _LEG0] + YI[y, _LEG]
    k, stop, pause = L[1][leg], YF[y, _STOP], YI[y, _PAUSE]
    _hold(S2, G, k)
    n = nn[j]
    end = now + span(RP, L[2][leg], now, YF[y, _BITS], _size(D2[0], N2[0], j, n))
    if end > stop or end == np.inf:  # cut off mid-send: the credit comes back when it leaves
        if end == np.inf:
            _give_back(events, X[6][k], S2[k], X[7][k], X[8][k], X[9][k], j, now)
        else:
            _soft(events, S2[k], Y, y, j, k, stop, 1)
        return False
    YS[y] += end - now if pause < 0 else online(RP, pause, now, end)
    link_free[j] = end
    seq0 = S2[k, _PSEQ]
    _send(events, PEN[k], S2[k], F2[k], P2[k], end + L[3][leg], j, n)
    _note(S2, RN, RS, k, seq0, n)
    nn[j] = n + 1
    return True


@njit
def _soft_timer(events, X, Y, G, key, j, now):
    """Device ``j``'s soft timer fires: if still its latest, cancel its wait (Credits.cancel) or give back."""
    S2, WAI, DW = X[0], X[6], X[8]
    S2[G[0], _NSOFT] -= 1
    y, YN = Y[0][j], Y[4]
    if key >> _CODE_BITS != YN[y, _SOFT_EID]:
        return  # an earlier wait's timer: that wait has ended
    k = YN[y, _SOFT_SRV]
    _hold(S2, G, k)
    if YN[y, _SOFT_GIVE]:
        _give_back(events, WAI[k], S2[k], X[7][k], DW[k], X[9][k], j, now)
        return
    if S2[k, _FLAGS] & _PER_DEVICE:
        if not DW[k, j]:
            return
        DW[k, j] = False
    else:
        pos = -1
        for q in range(S2[k, _NWAITERS]):
            if int(WAI[k, 1, q]) & _DEV_MASK == j:
                pos = q
                break
        if pos < 0:
            return  # granted already, or told to try again
        remove(WAI[k], S2[k], _NWAITERS, pos)
    _schedule(events, S2[k], now, _NORMAL, j * 8 + _AFTER_F)


@inline
def _released(events, X, G, k, j, now):
    """Sequential: device ``j``'s micro-batch at server ``k`` ended its W; the device goes on (_released)."""
    S2, P2 = X[0], X[4]
    _hold(S2, G, k)
    S = S2[k]
    claim_returns = not ((S[_FLAGS] & _SEQUENTIAL) and (S[_FLAGS] & _PER_DEVICE))
    if not claim_returns:
        _give_back(events, X[6][k], S, X[7][k], X[8][k], X[9][k], j, now)
    if S[_POLICY] == POOL:
        if not claim_returns:
            S[_SHOLD] -= 1
        change(S, P2[k], j, 0, -1)
    _schedule(events, S, now, _NORMAL, j * 8 + _RESUMED)


@inline
def _alarm(events, X, G, key, now):
    """A server's alarm: the server whose latest alarm it is wakes its idle workers (else it was superseded)."""
    S2, F2, IDLE = X[0], X[1], X[10]
    for k in range(S2.shape[0]):
        if S2[k, _ALARM_ID] == key >> _CODE_BITS:
            _hold(S2, G, k)
            F2[k, _ALARM_AT] = np.inf
            _wake(events, S2[k], IDLE[k], now)
            return


@no_refcounts
def _worker_step(events, X, Z, RN, RS, G, k, w, now, steps):
    """Worker ``w`` of server ``k`` resumes: arrivals with their numbers, then the kernel's worker step.

    Compiled on its own (the kernel's step is inlined here once, not into :func:`_loop`): a shorter first compile.
    Without reference counting, as the loop (it allocates nothing): each of the arrays it unpacks from ``X`` and
    ``Z`` and hands to the inlined step cost an atomic increment and decrement at every step, some 15% of a
    one-epoch ``training.sync`` replay (bench/bench_sync_ab.py).
    """
    S2, F2, D2, N2, P2, PEN, WAI, CR, DW, DR, IDLE = X[:11]
    PROP, RA, RB, PL, M2, T2, SH, CN, TC, ST, W, WF, QD, QK, words, act, none, PK = Z
    _hold(S2, G, k)
    S, F, D, N, P = S2[k], F2[k], D2[k], N2[k], P2[k]
    order = (none, none, none, none, PL[k], words[k], act, steps)  # words[k]: server k's generator
    _arrivals(S, F, D, N, P, PROP[k], RA[k], RB[k], order, PEN[k], RN, RS, k, now)
    seq0 = S[_PSEQ]
    _worker(events, PEN[k], WAI[k], PROP[k], S, F, D, N, P, W, WF, QD, QK, CR[k], DW[k], DR[k],
            (M2[k], T2[k], SH[k], CN[k], TC[k]), IDLE[k], RA[k], RB[k], order, PK, ST[k], w, now)
    if S[_PSEQ] > seq0:  # its claim made a device's next cached micro-batch eligible now (ServerPool._claim): at
        j = int(PEN[k][1, 0]) & _DEV_MASK  # the heap's top (the others arrive later); PK: its next cached one
        _note(S2, RN, RS, k, seq0, PK[j])
        PK[j] += 1


@no_refcounts
def _static_step(events, X, RN, RS, nn, f_start, link_free, ready, G, k, j, kind, now):
    """A device on one leg with constant rates resumes at its server ``k`` (:mod:`sfsim.fast.devices`' steps);
    True when it stops before an epoch its server has not opened (the caller has it wait: :func:`_gate`). Without
    reference counting (as :func:`_worker_step`)."""
    S2, F2, D2, N2, P2, PEN, WAI, CR, DW, DR = X[:10]
    _hold(S2, G, k)
    seq0, n0 = S2[k, _PSEQ], nn[j]
    if S2[k, _FLAGS] & _SEQUENTIAL:
        gated = _sequential(events, PEN[k], WAI[k], S2[k], F2[k], D2[k], N2[k], P2[k], CR[k], DW[k], DR[k], nn, j,
                            kind, now)
    else:
        gated = _pipelined(events, PEN[k], WAI[k], S2[k], F2[k], D2[k], N2[k], P2[k], CR[k], DW[k], DR[k], nn, f_start,
                           link_free, ready, j, kind, now)
    _note(S2, RN, RS, k, seq0, n0)
    return gated


@inline
def _gate(X, B, nn, k, j):
    """Device ``j`` waits for its server ``k``'s next epoch (:func:`sfsim.fast.rounds.gate`)."""
    gate(B, k, j, nn[j] // X[3][k, _PER_EPOCH, j])


@njit
def _go(events, X, RN, RS, nn, f_start, link_free, ready, G, B, k, now):
    """Server ``k``'s epoch starts (its event's callbacks): the devices waiting for it forward once its ``start`` has
    come, one downlink latency from now, in the order they came to wait (splitfrozen._Pipelined._epoch, or the
    process's resume: a sequential device's forward timer is set from then)."""
    EP, GQ, D2, S2 = B[7], B[8], X[2], X[0]
    par = EP[k, EP_NOW] & 1
    waiting = EP[k, EP_N0 + par]
    EP[k, EP_N0 + par] = 0
    for q in range(EP[k, EP_OFF], EP[k, EP_OFF] + waiting):
        j = GQ[par, q]
        got = now + D2[k, _DOWN_L, j]
        f_start[j] = got
        link_free[j] = got
        at = got if S2[k, _FLAGS] & _SEQUENTIAL else now
        if _static_step(events, X, RN, RS, nn, f_start, link_free, ready, G, k, j, _START, at):
            _gate(X, B, nn, k, j)


@njit
def _replays(events, X, PK, RN, RS, G, B, k, now):
    """Server ``k`` opens an epoch: each of its devices' first cached micro-batch of it is eligible now, in device
    order (WorkerLoop._next_epoch, before its workers start); ``PK``: per device its next cached one."""
    S2, F2, N2, PEN = X[0], X[1], X[3], X[5]
    _hold(S2, G, k)
    N, e = N2[k], B[7][k, EP_NOW]
    for j in range(N.shape[1]):
        first = e * N[_PER_EPOCH, j]
        if N[_N, j] > 0 and N[_SENT, j] <= first < N[_N, j]:
            seq0 = S2[k, _PSEQ]
            _push(events, PEN[k], S2[k], F2[k], now, j, first)
            _note(S2, RN, RS, k, seq0, first)
            PK[j] = first + 1


@njit
def _next_epoch(events, X, Z, RN, RS, G, B, counts, k, now):
    """Server ``k`` opens its next epoch (:func:`sfsim.fast.rounds.open_epoch`) and its devices' cached micro-batches
    of it are eligible (:func:`_replays`). Compiled on its own: the loop keeps one call for what a one-epoch run
    never does."""
    open_epoch(events, X, Z[10], Z[11], B, G, counts, k, now)
    _replays(events, X, Z[-1], RN, RS, G, B, k, now)


@inline
def _backhaul(events, X, Z, RN, RS, nn, f_start, link_free, ready, G, B, counts, q, now):
    """Backhaul event ``q`` (:mod:`sfsim.fast.rounds`): a server opens its next epoch (after its epoch-end wait), the
    epoch starts, or a round's."""
    kind, k = q & 7, q >> 3
    if kind == OPEN or kind == WAITED:  # its epoch-end rounds are over, or then its epoch-end wait
        if kind == WAITED or epoch_end(events, X[0], G, B, k, now):
            _next_epoch(events, X, Z, RN, RS, G, B, counts, k, now)
    elif kind == GO:
        _go(events, X, RN, RS, nn, f_start, link_free, ready, G, B, k, now)
    else:
        event(events, X, B, G, q, now)


@inline
def _broken(S2, RP):
    """Whether the run must stop: a heap or ring full, the pool out of words, or a rate past what was drawn."""
    for k in range(S2.shape[0]):
        if S2[k, _OVERFLOW]:
            return True
    return stuck(RP)


@inline
def _unfinished(S2):
    """Whether a server has micro-batches left: its soft timers then run even when nothing else is left
    (``Engine.hold_open``: a drop deadline may be all it waits for)."""
    for k in range(S2.shape[0]):
        if S2[k, _UNCLAIMED] > 0:
            return True
    return False


@no_refcounts
def _loop(events, X, Z, Y, L, RP, RN, RS, nn, f_start, link_free, ready, cur, wsrv, G, B, counts):
    """Process events until only soft timers are left (and no server has work left, :func:`_unfinished`); returns the
    time of the last other event (the makespan).

    ``Z``: per server the kernel's other state (prop, ring_a, ring_b, P rows, mixing, stream) and the
    shared arrays the workers use (W, WF, QD, QK, the pool's words and bytes). ``B``: the backhaul rounds'
    (:mod:`sfsim.fast.rounds`; none when its step records have no column).
    """
    S2 = X[0]
    m = Y[0].shape[0]
    synced = B[3].shape[1] > 0
    now = last = 0.0
    while S2[G[0], _NEVENTS] > S2[G[0], _NSOFT] or (S2[G[0], _NEVENTS] > 0 and _unfinished(S2)):
        h = G[0]
        now, key = pop(events, S2[h], _NEVENTS)
        code = key & _CODE_MASK
        kind = code & 7
        j = code >> 3
        if kind == _ALARM and j > 0:  # a soft timer: it does not make the run last
            _soft_timer(events, X, Y, G, key, j - 1, now)
        elif kind == _ALARM:
            last = now
            _alarm(events, X, G, key, now)
        elif kind == _WORKER:
            last = now
            k = wsrv[j]
            rounds = False
            if synced and B[2][j] == 1:  # its step ended: PoolRounds.step_done (a round process may take over)
                B[2][j] = 0
                rounds = step_done(events, X, B, G, counts, k, j, now)
            elif synced and B[2][j] == 2:  # joint mode: its round is over, its step now
                B[2][j] = 0
                joint_step(events, S2, Z[11], B, G, k, j, now)
                rounds = True
            if not rounds:
                exited = S2[k, _NEXITED]
                _worker_step(events, X, Z, RN, RS, G, k, j, now, B[3][k])
                if synced:
                    noted(events, X, Z[10], B, G, counts, k, j, now)
                    left(events, X, B, G, counts, k, exited, now)
                elif alone(events, S2, G, B, counts, k, exited, now):  # no rounds: its next epoch opens now
                    _next_epoch(events, X, Z, RN, RS, G, B, counts, k, now)
        elif kind == _RELEASE and j >= m:
            last = now
            _backhaul(events, X, Z, RN, RS, nn, f_start, link_free, ready, G, B, counts, j - m, now)
        elif kind == _RELEASE:
            last = now
            _released(events, X, G, cur[j], j, now)
        elif Y[0][j] >= 0:
            last = now
            _mover(events, X, Y, L, RP, RN, RS, nn, f_start, link_free, ready, cur, G, j, kind, now)
        else:
            last = now
            if _static_step(events, X, RN, RS, nn, f_start, link_free, ready, G, cur[j], j, kind, now):
                _gate(X, B, nn, cur[j], j)
        if _broken(S2, RP):
            break
    return last


@njit
def replay_handover(events, X, Z, Y, L, RP, RN, RS, counts, cur, B):
    """Replay every server together (:func:`_loop`) from the process starts; returns the makespan.

    The starts are SimPy's: every server's workers (server order), the devices of the dynamic
    network, then the others that send (device order). ``B``: the backhaul rounds' state
    (:mod:`sfsim.fast.rounds`), or one without step records (no rounds).
    """
    S2, N2 = X[0], X[3]
    m = N2.shape[2]
    G = np.zeros(1, np.int64)
    for w in range(counts.sum()):
        _schedule(events, S2[0], 0.0, _URGENT, w * 8 + _WORKER)
    for first in (True, False):
        for j in range(m):
            if N2[0, _SENT, j] > 0 and (Y[0][j] >= 0) == first:
                _schedule(events, S2[0], 0.0, _URGENT, j * 8 + _START)
    wsrv = np.zeros(counts.sum(), np.int64)
    w = 0
    for k in range(counts.shape[0]):
        for _ in range(counts[k]):
            wsrv[w] = k
            w += 1
    begin(X, B)
    return _loop(events, X, Z, Y, L, RP, RN, RS, np.zeros(m, np.int64), np.zeros(m), np.zeros(m), np.zeros(m),
                 cur, wsrv, G, B, counts)
