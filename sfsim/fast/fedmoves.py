"""FedLoRA on a moving network (handover, availability) on the fast path: the SimPy run as one compiled event loop.

The SimPy schedule (:mod:`sfsim.schedules.fedlora`) runs one process per device, a ``FedGroup`` per
server (its FedAvg barriers) and a ``Membership`` (which group expects which rounds, who leaves
when). Here each device's process is a state machine (:func:`_step`, program counter ``_PC``) and the
groups and membership are arrays; the loop keeps SimPy's queue order (time, priority, then the order
events were scheduled) with the events the SimPy run schedules: the processes' starts (urgent), the
handovers' and leaves' soft timers, each timeout, each ``succeed_at`` (a timer, then the event it
succeeds), the barriers' keep-alive timers, each group's poke and each ``done | poke`` condition, and each
process's end; without ``training.sync`` each epoch's closing round (``EpochClose``: a process per server, its
``ready`` and ``closes`` events). Rounds are formed per epoch as the schedule's (``round_plan``: FedAvg slot ``e * width + q``); a
device whose epoch has fewer rounds waits for its server's epoch to end (``FedGroup.until``). Local work is
:func:`sfsim.fast.fedlora._local_net`; every transfer integrates its leg's rate (:mod:`sfsim.fast.rates`).
Memory: per device its legs, uploads and handovers; per server a few numbers per round.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from sfsim.fast import closing as cl
from sfsim.fast import rates
from sfsim.fast.fedlora import _local_net, layout
from sfsim.fast.jit import njit
from sfsim.fast.simq import NORMAL, NSOFT, push, start
from sfsim.schedules import fedlora as fl

_INIT, _RESUME, _SWITCH, _LEAVE, _AT_DONE, _DONE, _AT_OWN, _OWN, _HARD, _EXIT, _POKE, _COND = range(12)  # event kinds
_AT_READY, _READY, _AT_CLOSES, _CLOSES = range(12, 16)  # EpochClose's events: an epoch's average, a server's return
_BEGIN, _UP, _ARRIVE, _DOWN, _NEXT, _OVER, _UNTIL, _CLOSING = range(8)  # a device's program counter
_S_UNTIL, _S_READY = range(8, 10)  # an EpochClose server process's program counter
(_PC, _R, _SRV, _APPLIED, _NMOVED, _SYNCS, _DOWNLOADS, _SENT, _DONE_MB, _STEPS, _NUPL, _WNEXT, _KEPT, _LEG0,
 _LEGS, _PAUSE, _AVAIL, _ROUNDS, _DROPS, _PE, _RPE, _WPREV, _WR, _ISCOND, _PNEXT, _PPREV, _PSER) = range(27)  # DI
_START, _STOP, _GONE, _SEND_S, _RECV_S = range(5)  # DF: float per device
_L_UP, _L_DOWN, _L_SERVER = range(3)  # LI: per leg
_L_AT, _L_UP_L, _L_DOWN_L = range(3)  # LF: per leg
_NLEAVE = 2  # CNT, after sfsim.fast.simq's EID and NSOFT
_HAS, _LO, _HI = range(3)  # EXP: a group's expected rounds of a device
_NEED, _ARRIVED, _CLOSED, _WHEAD, _WTAIL, _TRIG = range(6)  # G: per server and slot
_PHEAD, _PTAIL, _PCUR, _PLIVE = range(4)  # PK: per server, its poke (FedGroup.poke) and who waits on it
_NDI = 27


# -- a device's rounds (sfsim.schedules.fedlora.round_plan): per epoch, on the slots of width() ----------------
@njit
def _plan(DI, N, PS, i, u):
    """Device ``i``'s ``u``-th round: (slot, first, last) micro-batches, as ``round_plan`` forms it."""
    pe, per = DI[i, _PE], PS[0]
    e, q = u // DI[i, _RPE], u % DI[i, _RPE]
    first = e * pe + q * per
    return e * PS[1] + q, first, min(first + per, (e + 1) * pe, N[0, i])


@njit
def _slot_of(DI, N, PS, i, u):
    """``slot_of``: the slot of the ``u``-th round; past the last, the slot after it (0 for none)."""
    if u < DI[i, _ROUNDS]:
        return _plan(DI, N, PS, i, u)[0]
    return _plan(DI, N, PS, i, DI[i, _ROUNDS] - 1)[0] + 1 if DI[i, _ROUNDS] else 0


@njit
def _leg_at(DI, LF, i, t):
    """``Motion.leg_at``: the row of device ``i``'s leg holding at ``t``."""
    j, last = DI[i, _LEG0], DI[i, _LEG0] + DI[i, _LEGS] - 1
    while j < last and LF[_L_AT, j + 1] <= t:
        j += 1
    return j


@njit
def _serve(LANE, k, now, dur):
    """``FifoLane.serve`` of one op: its end."""
    t = max(now, LANE[k, 0]) + dur
    LANE[k, 1] += dur
    LANE[k, 0] = t
    return t


# -- who waits on a round's event (its callbacks) and on a group's poke, in the order they began waiting ----------
@njit
def _wait_done(G, DI, k, r, i, cond):
    """Device ``i`` waits on round ``r``'s event of server ``k`` (``cond``: through ``done | poke``)."""
    DI[i, _WNEXT], DI[i, _WPREV], DI[i, _ISCOND] = -1, G[_WTAIL, k, r], cond
    if G[_WHEAD, k, r] < 0:
        G[_WHEAD, k, r] = i
    else:
        DI[G[_WTAIL, k, r], _WNEXT] = i
    G[_WTAIL, k, r] = i


@njit
def _unwait_done(G, DI, k, r, i):
    nxt, prv = DI[i, _WNEXT], DI[i, _WPREV]
    if prv < 0:
        G[_WHEAD, k, r] = nxt
    else:
        DI[prv, _WNEXT] = nxt
    if nxt < 0:
        G[_WTAIL, k, r] = prv
    else:
        DI[nxt, _WPREV] = prv


@njit
def _unwait_poke(PK, DI, k, i):
    nxt, prv = DI[i, _PNEXT], DI[i, _PPREV]
    if prv < 0:
        PK[k, _PHEAD] = nxt
    else:
        DI[prv, _PNEXT] = nxt
    if nxt < 0:
        PK[k, _PTAIL] = prv
    else:
        DI[nxt, _PPREV] = prv


@njit
def _wait_either(S, DI, k, r, i):
    """``yield done[r] | poke`` in ``FedGroup.until``: a fresh poke when none is pending untriggered."""
    G, PK = S[0], S[4]
    if not PK[k, _PLIVE]:
        PK[k, _PCUR] += 1
        PK[k, _PLIVE] = 1
    _wait_done(G, DI, k, r, i, 1)
    DI[i, _PNEXT], DI[i, _PPREV], DI[i, _PSER] = -1, PK[k, _PTAIL], PK[k, _PCUR]
    if PK[k, _PHEAD] < 0:
        PK[k, _PHEAD] = i
    else:
        DI[PK[k, _PTAIL], _PNEXT] = i
    PK[k, _PTAIL] = i


# -- FedGroup: join, cut, arrive, _close, until -------------------------------------------------------------
@njit
def _join(G, EXP, DI, N, PS, k, i, lo, hi):
    """``FedGroup.join``: device ``i`` is expected at server ``k`` for its rounds in slots ``lo..hi-1``."""
    EXP[k, i, _HAS], EXP[k, i, _LO], EXP[k, i, _HI] = 1, lo, hi
    for u in range(DI[i, _ROUNDS]):
        r = _plan(DI, N, PS, i, u)[0]
        if lo <= r < hi:
            G[_NEED, k, r] += 1


@njit
def _close(S, Q, CNT, now, k, r):
    G, LANE, AGG = S[0], S[2], S[3]
    if not G[_CLOSED, k, r] and G[_ARRIVED, k, r] and G[_ARRIVED, k, r] >= G[_NEED, k, r]:
        G[_CLOSED, k, r] = 1
        push(Q, CNT, _serve(LANE, k, now, AGG[k] * G[_ARRIVED, k, r]), NORMAL, _AT_DONE, k, r)


@njit
def _cut(S, M, N, Q, CNT, now, k, i, hi):
    """``FedGroup.cut``: device ``i`` is expected at server ``k`` only before slot ``hi``; its poke fires."""
    G, EXP, PK, PS = S[0], S[1], S[4], S[5]
    DI = M[0]
    if not EXP[k, i, _HAS] or hi >= EXP[k, i, _HI]:
        return
    lo, old = EXP[k, i, _LO], EXP[k, i, _HI]
    EXP[k, i, _HI] = max(lo, hi)
    for u in range(DI[i, _ROUNDS]):
        r = _plan(DI, N, PS, i, u)[0]
        if EXP[k, i, _HI] <= r < old:
            G[_NEED, k, r] -= 1
    for u in range(DI[i, _ROUNDS]):
        r = _plan(DI, N, PS, i, u)[0]
        if EXP[k, i, _HI] <= r < old:
            _close(S, Q, CNT, now, k, r)
    if PK[k, _PLIVE]:  # the poke succeeds: an event now
        PK[k, _PLIVE] = 0
        push(Q, CNT, now, NORMAL, _POKE, k, PK[k, _PCUR])


@njit
def _arrive(S, M, Q, CNT, now, k, r, i):
    """``FedGroup.arrive``: device ``i``'s upload for round ``r`` arrived; it waits for the round's (or its own) end."""
    G, LANE, AGG = S[0], S[2], S[3]
    if G[_CLOSED, k, r]:  # averaged before the device joined: on its own
        push(Q, CNT, _serve(LANE, k, now, AGG[k]), NORMAL, _AT_OWN, i, 0)
        return
    G[_ARRIVED, k, r] += 1
    _close(S, Q, CNT, now, k, r)
    if not G[_CLOSED, k, r]:
        _keep_alive(S, M, Q, CNT, now, k, r)
    _wait_done(G, M[0], k, r, i, 0)


@njit
def _until(S, M, K, i):
    """``FedGroup.until`` from slot ``_WR`` to the device's next round's: True when it has to wait (it does)."""
    G, PS = S[0], S[5]
    DI, N = M[0], K[1]
    k, hi = DI[i, _SRV], _slot_of(DI, N, PS, i, DI[i, _R] + 1)
    while DI[i, _WR] < hi:
        r = DI[i, _WR]
        if (G[_CLOSED, k, r] or G[_NEED, k, r]) and not G[_TRIG, k, r]:
            _wait_either(S, DI, k, r, i)
            return True
        DI[i, _WR] += 1
    return False


# -- Membership: switch, leave_at, _keep_alive, leave ---------------------------------------------------
@njit
def _switch(S, M, N, Q, CNT, now, i, t):
    """``Membership.switch``: apply device ``i``'s handovers up to ``t``; the row of the leg holding then."""
    EXP, PS = S[1], S[5]
    DI, DF, LI, LF, UPL, MV = M[0], M[1], M[2], M[3], M[4], M[5]
    j = _leg_at(DI, LF, i, t)
    first = DI[i, _LEG0]
    while first + DI[i, _APPLIED] < j:
        DI[i, _APPLIED] += 1
        q = first + DI[i, _APPLIED]
        u = 0
        while u < DI[i, _NUPL] and UPL[i, u] < LF[_L_AT, q]:  # uploads started before the handover stay
            u += 1
        MV[i, DI[i, _NMOVED]] = u
        DI[i, _NMOVED] += 1
        old, new = LI[_L_SERVER, q - 1], LI[_L_SERVER, q]
        if old == new or DF[i, _GONE] < math.inf:
            continue
        s, end = _slot_of(DI, N, PS, i, u), _slot_of(DI, N, PS, i, DI[i, _ROUNDS])
        hi = EXP[old, i, _HI] if EXP[old, i, _HAS] else end
        _cut(S, M, N, Q, CNT, now, old, i, s)
        if s < hi:
            _join(S[0], EXP, DI, N, PS, new, i, s, hi)
    return j


@njit
def _leave(S, M, N, Q, CNT, now, i, uploaded):
    """``Membership.leave``: device ``i`` leaves for good now, having sent ``uploaded`` uploads."""
    _switch(S, M, N, Q, CNT, now, i, now)
    M[1][i, _GONE] = now
    s = _slot_of(M[0], N, S[5], i, uploaded)
    for k in range(S[2].shape[0]):
        _cut(S, M, N, Q, CNT, now, k, i, s)


@njit
def _leave_at(S, M, N, Q, CNT, now, i, t, uploaded):
    """``Membership.leave_at``: now, or a soft timer at ``t``."""
    if t <= now:
        _leave(S, M, N, Q, CNT, now, i, uploaded)
        return
    LQ, LT = M[6], M[7]
    LQ[CNT[_NLEAVE]] = i
    LT[i] = t
    CNT[_NLEAVE] += 1
    push(Q, CNT, t, NORMAL, _LEAVE, i, uploaded)
    CNT[NSOFT] += 1


@njit
def _keep_alive(S, M, Q, CNT, now, k, r):
    """``Membership._keep_alive``: round ``r`` of server ``k`` waits; its expected devices that will leave keep the run."""
    EXP = S[1]
    DI, LQ, LT = M[0], M[6], M[7]
    for q in range(CNT[_NLEAVE]):
        i = LQ[q]
        lo, hi = (EXP[k, i, _LO], EXP[k, i, _HI]) if EXP[k, i, _HAS] else (0, 0)
        if not DI[i, _KEPT] and lo <= r < hi and LT[i] > now:
            DI[i, _KEPT] = 1
            push(Q, CNT, LT[i], NORMAL, _HARD, i, 0)


# -- a device's process (device_process, _transfer, _compute) -------------------------------------------
@njit
def _gone(P, DI, DF, i, t):
    """When a device whose work from ``t`` never ends leaves: its drop, or when it goes offline for good."""
    return DF[i, _STOP] if DF[i, _STOP] < math.inf else rates.gone_at(P, DI[i, _AVAIL], t)


@njit
def _transfer(S, M, K, Q, CNT, now, i, up, last):
    """``_transfer``: the upload (``up``, of micro-batches before ``last``) or download from now on the leg holding;
    False when the device leaves."""
    N, P, bits = K[1], K[2], K[4]
    DI, DF, LI, LF, UPL = M[0], M[1], M[2], M[3], M[4]
    if up:
        leg = _switch(S, M, N, Q, CNT, now, i, now)
        UPL[i, DI[i, _NUPL]] = now
        DI[i, _NUPL] += 1
        secs = rates.span(P, LI[_L_UP, leg], now, bits[i], 1.0)
    else:
        leg = _leg_at(DI, LF, i, now)
        secs = rates.span(P, LI[_L_DOWN, leg], now, bits[i], 1.0)
    if now + secs > DF[i, _STOP] or secs == math.inf:
        _leave_at(S, M, N, Q, CNT, now, i, _gone(P, DI, DF, i, now), DI[i, _SYNCS])
        return False
    if up:
        DF[i, _SEND_S] += rates.online(P, DI[i, _PAUSE], now, now + secs)
        DI[i, _SYNCS] += 1
        DI[i, _SENT] = last
        DI[i, _SRV] = LI[_L_SERVER, leg]
        push(Q, CNT, now + (secs + LF[_L_UP_L, leg]), NORMAL, _RESUME, i, 0)
    else:
        DF[i, _RECV_S] += rates.online(P, DI[i, _PAUSE], now, now + secs)
        DI[i, _DOWNLOADS] += 1
        push(Q, CNT, now + (secs + LF[_L_DOWN_L, leg]), NORMAL, _RESUME, i, 0)
    return True


@njit
def _step(S, M, K, Q, CNT, now, i, acc):
    """Run device ``i``'s process from its program counter until it waits (or ends: its end event)."""
    D, N, P = K[0], K[1], K[2]
    DI, DF, PS = M[0], M[1], S[5]
    if i >= S[10][cl.E_DEVICES]:  # an EpochClose server process
        _epoch_close(S, M, Q, CNT, now, i)
        return
    while True:
        pc = DI[i, _PC]
        if pc == _BEGIN:
            if DI[i, _R] >= DI[i, _ROUNDS]:
                DI[i, _PC] = _OVER
                continue
            _, first, last = _plan(DI, N, PS, i, DI[i, _R])
            t, done, steps, cut = _local_net(D, N, P, DI[i, _PAUSE], i, first, last, acc, now, DF[i, _STOP])
            DI[i, _DONE_MB] += done
            DI[i, _STEPS] += steps
            if cut >= 0.0:
                _leave_at(S, M, N, Q, CNT, now, i, _gone(P, DI, DF, i, cut), DI[i, _SYNCS])
                DI[i, _PC] = _OVER
                continue
            push(Q, CNT, now + (t - now), NORMAL, _RESUME, i, 0)
            DI[i, _PC] = _UP
            return
        if pc == _UP or pc == _DOWN:
            if not _transfer(S, M, K, Q, CNT, now, i, pc == _UP, _plan(DI, N, PS, i, DI[i, _R])[2]):
                DI[i, _PC] = _OVER
                continue
            DI[i, _PC] = _ARRIVE if pc == _UP else _NEXT
            return
        if pc == _ARRIVE:
            r = _plan(DI, N, PS, i, DI[i, _R])[0]
            _arrive(S, M, Q, CNT, now, DI[i, _SRV], r, i)
            DI[i, _PC], DI[i, _WR] = _UNTIL, r + 1
            return
        if pc == _UNTIL:  # its epoch's end, then a new epoch's after the closing round (FedGroup.closing)
            if _until(S, M, K, i):
                return
            DI[i, _PC] = _CLOSING
            if _closing(S, M, K, i):
                return
        if DI[i, _PC] == _CLOSING:
            DI[i, _PC] = _DOWN
            continue
        if pc == _NEXT:
            DI[i, _R] += 1
            DI[i, _PC] = _BEGIN
            continue
        push(Q, CNT, now, NORMAL, _EXIT, i, 0)  # the process returns: SimPy schedules its own event
        return


@njit
def _start(S, M, K, Q, CNT, now, i, acc):
    """The process's first resume: a device never online leaves; a drop-churn one joins at its first online instant."""
    DI, DF = M[0], M[1]
    if i >= S[10][cl.E_DEVICES]:  # an EpochClose server process
        _epoch_close(S, M, Q, CNT, now, i)
        return
    if DF[i, _START] == math.inf:
        _leave_at(S, M, K[1], Q, CNT, now, i, 0.0, 0)
        DI[i, _PC] = _OVER
    elif DI[i, _DROPS] and DF[i, _START] > 0:  # it joins at its first online instant
        push(Q, CNT, DF[i, _START], NORMAL, _RESUME, i, 0)
        return
    _step(S, M, K, Q, CNT, now, i, acc)


@njit
def _fire_done(S, M, K, Q, CNT, now, k, r, acc):
    """Round ``r``'s event of server ``k``: its callbacks in order (a process resumes, a ``done | poke`` succeeds)."""
    G, PK = S[0], S[4]
    DI = M[0]
    i = G[_WHEAD, k, r]
    G[_WHEAD, k, r] = G[_WTAIL, k, r] = -1
    while i >= 0:
        nxt = DI[i, _WNEXT]
        if DI[i, _ISCOND]:
            _unwait_poke(PK, DI, k, i)
            push(Q, CNT, now, NORMAL, _COND, i, 0)
        else:
            _step(S, M, K, Q, CNT, now, i, acc)
        i = nxt


@njit
def _fire_poke(S, M, Q, CNT, now, k, serial):
    """Server ``k``'s poke ``serial``: every ``done | poke`` waiting on it succeeds (they are the list's head)."""
    G, PK = S[0], S[4]
    DI = M[0]
    while PK[k, _PHEAD] >= 0 and DI[PK[k, _PHEAD], _PSER] <= serial:
        i = PK[k, _PHEAD]
        _unwait_poke(PK, DI, k, i)
        _unwait_done(G, DI, k, DI[i, _WR], i)
        push(Q, CNT, now, NORMAL, _COND, i, 0)


# -- EpochClose (no training.sync): each epoch's closing round over the servers' backhaul links ---------------
@njit
def _closing(S, M, K, i):
    """``FedGroup.closing``: True when device ``i``'s next round is in a later epoch and its group's closing round
    is not back yet (it then waits on the group's ``closes`` event)."""
    DI, PS, CI, EP = M[0], S[5], S[7], S[10]
    if not EP[cl.E_CLOSING] or DI[i, _R] + 1 >= DI[i, _ROUNDS]:
        return False
    w = max(PS[1], 1)
    k, e = DI[i, _SRV], _plan(DI, K[1], PS, i, DI[i, _R])[0] // w
    if _plan(DI, K[1], PS, i, DI[i, _R] + 1)[0] // w == e or CI[cl.C_STATE, k, e] == 2:
        return False
    DI[i, _WNEXT] = -1
    if CI[cl.C_HEAD, k, e] < 0:
        CI[cl.C_HEAD, k, e] = i
    else:
        DI[CI[cl.C_TAIL, k, e], _WNEXT] = i
    CI[cl.C_TAIL, k, e] = i
    return True


@njit
def _fire_closes(S, M, K, Q, CNT, now, k, e, acc):
    """Server ``k``'s epoch-``e`` closing round is back: the devices waiting on it resume, in the order they began."""
    CI, DI = S[7], M[0]
    CI[cl.C_STATE, k, e] = 2
    i = CI[cl.C_HEAD, k, e]
    CI[cl.C_HEAD, k, e] = CI[cl.C_TAIL, k, e] = -1
    while i >= 0:
        nxt = DI[i, _WNEXT]
        _step(S, M, K, Q, CNT, now, i, acc)
        i = nxt


@njit
def _epoch_close(S, M, Q, CNT, now, i):
    """``EpochClose._server`` of server ``i - devices``: per epoch, wait for its rounds (``FedGroup.until``), send
    once its last round is back, wait for every server's upload (``ready``), then its ``closes`` event."""
    G, PS, CF, AR, RW, EP = S[0], S[5], S[6], S[8], S[9], S[10]
    DI = M[0]
    k, w = i - EP[cl.E_DEVICES], max(PS[1], 1)
    while True:
        e = DI[i, _R]
        if DI[i, _PC] == _S_READY:  # epoch e's average is ready: it comes back on the server's backhaul
            CF[k, cl.C_FREE] = now + CF[k, cl.C_BUSY] + CF[k, cl.C_LAT]
            push(Q, CNT, CF[k, cl.C_FREE], NORMAL, _AT_CLOSES, k, e)
            DI[i, _R], DI[i, _WR], DI[i, _PC] = e + 1, (e + 1) * w, _S_UNTIL
            continue
        if e >= EP[cl.E_EPOCHS]:
            DI[i, _PC] = _OVER
            push(Q, CNT, now, NORMAL, _EXIT, i, 0)
            return
        while DI[i, _WR] < (e + 1) * w:
            r = DI[i, _WR]
            if (G[_CLOSED, k, r] or G[_NEED, k, r]) and not G[_TRIG, k, r]:
                _wait_either(S, DI, k, r, i)
                return
            DI[i, _WR] += 1
        t = max(now, CF[k, cl.C_FREE])
        AR[e] = max(AR[e], t + CF[k, cl.C_BUSY] + CF[k, cl.C_LAT])
        RW[e, 0] += 1  # the servers waiting on ready[e], in order
        RW[e, RW[e, 0]] = k
        if RW[e, 0] == CF.shape[0]:
            push(Q, CNT, AR[e], NORMAL, _AT_READY, e, 0)
        DI[i, _PC] = _S_READY
        return


@njit
def run(S, M, K, soft, order, acc):
    """The run: handover soft timers ``soft`` (time, device), then the devices' processes in ``order``.

    Returns ``(makespan, stuck)``; stuck: a rate was asked past what was drawn (the figures are void).
    """
    G = S[0]
    Q, CNT = start(soft, _SWITCH, order, _INIT, 3)
    now = 0.0
    while len(Q) > CNT[NSOFT]:
        now, _, _, kind, a, b = heapq.heappop(Q)
        if kind == _SWITCH or kind == _LEAVE:
            CNT[NSOFT] -= 1
            if kind == _SWITCH:
                _switch(S, M, K[1], Q, CNT, now, a, now)
            else:
                _leave(S, M, K[1], Q, CNT, now, a, b)
        elif kind == _INIT:
            _start(S, M, K, Q, CNT, now, a, acc)
        elif kind == _RESUME or kind == _OWN or kind == _COND:
            _step(S, M, K, Q, CNT, now, a, acc)
        elif kind == _AT_DONE:
            G[_TRIG, a, b] = 1
            push(Q, CNT, now, NORMAL, _DONE, a, b)
        elif kind == _AT_OWN:
            push(Q, CNT, now, NORMAL, _OWN, a, 0)
        elif kind == _DONE:
            _fire_done(S, M, K, Q, CNT, now, a, b, acc)
        elif kind == _POKE:
            _fire_poke(S, M, Q, CNT, now, a, b)
        elif kind == _AT_READY:  # succeed_at's timer: the event succeeds now
            push(Q, CNT, now, NORMAL, _READY, a, b)
        elif kind == _READY:  # the servers waiting on epoch a's average resume, in the order they began waiting
            for q in range(1, S[9][a, 0] + 1):
                _epoch_close(S, M, Q, CNT, now, S[10][cl.E_DEVICES] + S[9][a, q])
        elif kind == _AT_CLOSES:
            S[7][cl.C_STATE, a, b] = 1
            push(Q, CNT, now, NORMAL, _CLOSES, a, b)
        elif kind == _CLOSES:
            _fire_closes(S, M, K, Q, CNT, now, a, b, acc)
        if rates.stuck(K[2]):
            return now, True
    return now, False


def _rounds_of(d, per: int) -> tuple[int, int, int]:
    """A device's epoch (``per_epoch``, 0: one epoch), rounds per full epoch and rounds (``round_plan``'s)."""
    pe = d.per_epoch or d.n
    return pe, max(1, -(-pe // per)), fl.count(d.n, d.per_epoch, per)


def _state(job, cfg, horizon: float) -> tuple:
    """Fresh state ``S`` (groups), ``M`` (devices), ``K`` (work and rates, drawn to ``horizon``), soft timers, order."""
    motions, per, devs = job.network.motions, int(cfg.local_steps), job.devices
    n, n_srv, slots = len(devs), len(job.servers), fl.width(devs, per)
    plan = [_rounds_of(d, per) for d in devs]
    PS = np.array([per, slots], np.int64)
    most, n_legs = max([c for _, _, c in plan], default=0), sum(len(m.legs) for m in motions.values())
    prog = rates.Program()
    DI, DF = np.zeros((n + n_srv, _NDI), np.int64), np.zeros((n, 5))  # then a row per EpochClose server's process
    LI, LF = np.zeros((3, max(1, n_legs)), np.int64), np.zeros((3, max(1, n_legs)))
    D, N = layout(devs)
    soft, row = [], 0
    for i, m in motions.items():
        DI[i, :19] = (_BEGIN, 0, -1, 0, 0, m.syncs_sent, m.downloads, m.sent, 0, m.steps, 0, -1, 0, row, len(m.legs),
                      prog.add(m.pause), prog.add(m.avail), plan[i][2], m.churn == "drop" and m.avail is not None)
        DI[i, _PE], DI[i, _RPE] = plan[i][:2]
        DF[i] = (m.start, m.stop, m.gone, m.send_s, m.recv_s)
        for j, leg in enumerate(m.legs):
            LI[:, row + j] = (prog.add(leg.up_rate(m.pause)), prog.add(leg.down_rate(m.pause)), leg.server)
            LF[:, row + j] = (leg.at, leg.up_l, leg.down_l)
            soft += [(leg.at, i)] if j else []
        row += len(m.legs)
    n_slots = max([int(_slot_of(DI, N, PS, i, plan[i][2])) for i in range(n)], default=0)
    G, EXP = np.zeros((6, n_srv, max(1, n_slots)), np.int64), np.zeros((n_srv, n, 3), np.int64)
    G[_WHEAD] = G[_WTAIL] = -1
    for i, m in motions.items():
        if plan[i][2]:
            _join(G, EXP, DI, N, PS, m.legs[0].server, i, 0, _slot_of(DI, N, PS, i, plan[i][2]))
    prog.draw_all(horizon)
    order = [i for k in dict.fromkeys(d.server for d in devs) for i, d in enumerate(devs) if d.server == k and d.n]
    PK = np.zeros((n_srv, 4), np.int64)
    PK[:, _PHEAD] = PK[:, _PTAIL] = -1
    S = (G, EXP, np.zeros((n_srv, 2)), np.array([s.aggregate for s in job.servers], np.float64), PK, PS,
         *cl.fed_arrays(job, n))
    DI[n:, _PC] = _S_UNTIL  # EpochClose's processes: epoch 0, from slot 0
    if job.sync is not None:  # EpochClose's processes start first (it is made before the devices' processes)
        order = list(range(n, n + n_srv)) + order
    M = (DI, DF, LI, LF, np.zeros((n, max(1, most))), np.zeros((n, max(1, max(len(m.legs) for m in motions.values())))
         , np.int64), np.zeros(n, np.int64), np.zeros(n))
    K = (D, N, prog.arrays(), per, np.array([d.sync_bytes * 8.0 for d in devs], np.float64))
    return S, M, K, np.array(soft, np.float64).reshape(-1, 2).T.copy(), np.array(order, np.int64)


def replay(job, cfg) -> tuple[dict, dict, float]:
    """FedLoRA on any dynamic network (handover, availability, varying links), compiled; as
    :func:`sfsim.fast.fedlora.replay`, filling the devices' motions as the SimPy run does."""
    motions = job.network.motions
    horizon, total = rates.HORIZON, sum(d.n for d in job.devices)
    while True:
        S, M, K, soft, order = _state(job, cfg, horizon)
        makespan, stuck = run(S, M, K, soft, order, int(cfg.accumulate))
        if not stuck:
            break
        done = int(M[0][:, _DONE_MB].sum())  # drawn too short: further than asked, and as far as the pace says
        horizon = max(2.0 * float(K[2][4][:-1].max()), 1.5 * makespan * total / max(1, done))
    DI, DF, UPL, MV = M[0], M[1], M[4], M[5]
    devices = {}
    for i, d in enumerate(job.devices):
        m = motions[i]
        m.done, m.steps, m.sent = int(DI[i, _DONE_MB]), int(DI[i, _STEPS]), int(DI[i, _SENT])
        m.syncs_sent, m.downloads = int(DI[i, _SYNCS]), int(DI[i, _DOWNLOADS])
        m.send_s, m.recv_s, m.gone = float(DF[i, _SEND_S]), float(DF[i, _RECV_S]), float(DF[i, _GONE])
        m.uploads = [float(t) for t in UPL[i, :DI[i, _NUPL]]]
        devices[d.name] = {"busy": d.units(m.done) * (d.f + d.b + d.w) + m.steps * d.step + d.first_extra(m.done),
                           "up": m.syncs_sent * d.sync_bytes, "down": m.downloads * d.sync_bytes}
        moved = [int(u) for u in MV[i, :DI[i, _NMOVED]]]
        moved += [len(m.uploads)] * (len(m.legs) - 1 - len(moved))
        firsts = [int(_plan(DI, K[1], S[5], i, u)[1]) if u < DI[i, _ROUNDS] else d.n for u in moved]  # first_of
        m.switched_at = [min(f, m.sent) for f in firsts]
    return devices, {srv.name: float(S[2][k, 1]) for k, srv in enumerate(job.servers)}, float(makespan)
