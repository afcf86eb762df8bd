"""FedLoRA's FedAvg groups and membership on a moving network, as arrays: the state :mod:`sfsim.fast.fedmoves`' loop keeps.

``sfsim.schedules.fedlora``'s ``FedGroup`` (per server: the devices expected at each FedAvg slot, who arrived, the
rounds' events and who waits on them, its poke) and ``Membership`` (each device's handovers and leaving) as compiled
functions over the loop's arrays: ``S`` (per server and slot), ``M`` (per device and leg), ``Q``/``CNT`` (the event
queue of :mod:`sfsim.fast.simq`). The event kinds, the program counters and the columns of those arrays live here.
"""

from __future__ import annotations

import math

from sfsim.fast.jit import njit
from sfsim.fast.simq import NORMAL, NSOFT, push

INIT, RESUME, SWITCH, LEAVE, AT_DONE, DONE, AT_OWN, OWN, HARD, EXIT, POKE, COND = range(12)  # event kinds
AT_READY, READY, AT_CLOSES, CLOSES = range(12, 16)  # EpochClose's events: an epoch's average, a server's return
CHANGE = 16  # Membership.changed succeeds: the EpochClose processes waiting on it look again
EVAL_INIT, AT_EVAL, EVAL = range(17, 20)  # a server's epoch-end wait (FedGroup._evaluate): its start, timer, event
EVALUATED = 10  # a device's program counter: past its server's epoch-end wait (FedGroup.evaluated)
TRAIN = 11  # a device's program counter: it has its round's average (the download), its local work next
EV_STATE, EV_HEAD, EV_TAIL = range(3)  # EV: per server and epoch, its wait's event (1 started, 2 processed), waiters
BEGIN, UP, ARRIVE, DOWN, NEXT, OVER, UNTIL, CLOSING = range(8)  # a device's program counter
S_UNTIL, S_READY = range(8, 10)  # an EpochClose server process's program counter
(PC, R, SRV, APPLIED, NMOVED, SYNCS, DOWNLOADS, SENT, DONE_MB, STEPS, NUPL, WNEXT, KEPT, LEG0,
 LEGS, PAUSE, AVAIL, ROUNDS, DROPS, PE, RPE, WPREV, WR, ISCOND, PNEXT, PPREV, PSER, UPLOADED) = range(28)  # DI
START, STOP, GONE, SEND_S, RECV_S = range(5)  # DF: float per device
L_UP, L_DOWN, L_SERVER = range(3)  # LI: per leg
L_AT, L_UP_L, L_DOWN_L = range(3)  # LF: per leg
NLEAVE = 2  # CNT, after sfsim.fast.simq's EID and NSOFT
HAS, LO, HI = range(3)  # EXP: a group's expected rounds of a device
NEED, ARRIVED, CLOSED, WHEAD, WTAIL, TRIG = range(6)  # G: per server and slot
PHEAD, PTAIL, PCUR, PLIVE = range(4)  # PK: per server, its poke (FedGroup.poke) and who waits on it
CH_CUR, CH_LIVE, CH_N = range(3)  # CH: Membership.changed (serial, untriggered), then its waiters (process, serial)
NDI = 28


# -- a device's rounds (sfsim.schedules.fedlora.round_plan): per epoch, on the slots of width() ----------------
@njit
def plan(DI, N, PS, i, u):
    """Device ``i``'s ``u``-th round: (slot, first, last) micro-batches, as ``round_plan`` forms it."""
    pe, per = DI[i, PE], PS[0]
    e, q = u // DI[i, RPE], u % DI[i, RPE]
    first = e * pe + q * per
    return e * PS[1] + q, first, min(first + per, (e + 1) * pe, N[0, i])


@njit
def slot_of(DI, N, PS, i, u):
    """``slot_of``: the slot of the ``u``-th round; past the last, the slot after it (0 for none)."""
    if u < DI[i, ROUNDS]:
        return plan(DI, N, PS, i, u)[0]
    return plan(DI, N, PS, i, DI[i, ROUNDS] - 1)[0] + 1 if DI[i, ROUNDS] else 0


@njit
def leg_at(DI, LF, i, t):
    """``Motion.leg_at``: the row of device ``i``'s leg holding at ``t``."""
    j, last = DI[i, LEG0], DI[i, LEG0] + DI[i, LEGS] - 1
    while j < last and LF[L_AT, j + 1] <= t:
        j += 1
    return j


@njit
def serve(LANE, k, now, dur):
    """``FifoLane.serve`` of one op: its end."""
    t = max(now, LANE[k, 0]) + dur
    LANE[k, 1] += dur
    LANE[k, 0] = t
    return t


# -- who waits on a round's event (its callbacks) and on a group's poke, in the order they began waiting ----------
@njit
def wait_done(G, DI, k, r, i, cond):
    """Device ``i`` waits on round ``r``'s event of server ``k`` (``cond``: through ``done | poke``)."""
    DI[i, WNEXT], DI[i, WPREV], DI[i, ISCOND] = -1, G[WTAIL, k, r], cond
    if G[WHEAD, k, r] < 0:
        G[WHEAD, k, r] = i
    else:
        DI[G[WTAIL, k, r], WNEXT] = i
    G[WTAIL, k, r] = i


@njit
def unwait_done(G, DI, k, r, i):
    nxt, prv = DI[i, WNEXT], DI[i, WPREV]
    if prv < 0:
        G[WHEAD, k, r] = nxt
    else:
        DI[prv, WNEXT] = nxt
    if nxt < 0:
        G[WTAIL, k, r] = prv
    else:
        DI[nxt, WPREV] = prv


@njit
def unwait_poke(PK, DI, k, i):
    nxt, prv = DI[i, PNEXT], DI[i, PPREV]
    if prv < 0:
        PK[k, PHEAD] = nxt
    else:
        DI[prv, PNEXT] = nxt
    if nxt < 0:
        PK[k, PTAIL] = prv
    else:
        DI[nxt, PPREV] = prv


@njit
def wait_either(S, DI, k, r, i):
    """``yield done[r] | poke`` in ``FedGroup.until``: a fresh poke when none is pending untriggered."""
    G, PK = S[0], S[4]
    if not PK[k, PLIVE]:
        PK[k, PCUR] += 1
        PK[k, PLIVE] = 1
    wait_done(G, DI, k, r, i, 1)
    DI[i, PNEXT], DI[i, PPREV], DI[i, PSER] = -1, PK[k, PTAIL], PK[k, PCUR]
    if PK[k, PHEAD] < 0:
        PK[k, PHEAD] = i
    else:
        DI[PK[k, PTAIL], PNEXT] = i
    PK[k, PTAIL] = i


# -- FedGroup: join, cut, arrive, close, until -------------------------------------------------------------
@njit
def join(G, EXP, DI, N, PS, k, i, lo, hi):
    """``FedGroup.join``: device ``i`` is expected at server ``k`` for its rounds in slots ``lo..hi-1``."""
    EXP[k, i, HAS], EXP[k, i, LO], EXP[k, i, HI] = 1, lo, hi
    for u in range(DI[i, ROUNDS]):
        r = plan(DI, N, PS, i, u)[0]
        if lo <= r < hi:
            G[NEED, k, r] += 1


@njit
def close(S, Q, CNT, now, k, r):
    G, LANE, AGG = S[0], S[2], S[3]
    if not G[CLOSED, k, r] and G[ARRIVED, k, r] and G[ARRIVED, k, r] >= G[NEED, k, r]:
        G[CLOSED, k, r] = 1
        push(Q, CNT, serve(LANE, k, now, AGG[k] * G[ARRIVED, k, r]), NORMAL, AT_DONE, k, r)


@njit
def cut(S, M, N, Q, CNT, now, k, i, hi):
    """``FedGroup.cut``: device ``i`` is expected at server ``k`` only before slot ``hi``; its poke fires."""
    G, EXP, PK, PS = S[0], S[1], S[4], S[5]
    DI = M[0]
    if not EXP[k, i, HAS] or hi >= EXP[k, i, HI]:
        return
    lo, old = EXP[k, i, LO], EXP[k, i, HI]
    EXP[k, i, HI] = max(lo, hi)
    for u in range(DI[i, ROUNDS]):
        r = plan(DI, N, PS, i, u)[0]
        if EXP[k, i, HI] <= r < old:
            G[NEED, k, r] -= 1
    for u in range(DI[i, ROUNDS]):
        r = plan(DI, N, PS, i, u)[0]
        if EXP[k, i, HI] <= r < old:
            close(S, Q, CNT, now, k, r)
    if PK[k, PLIVE]:  # the poke succeeds: an event now
        PK[k, PLIVE] = 0
        push(Q, CNT, now, NORMAL, POKE, k, PK[k, PCUR])


@njit
def arrive(S, M, Q, CNT, now, k, r, i):
    """``FedGroup.arrive``: device ``i``'s upload for round ``r`` arrived; it waits for the round's (or its own) end."""
    G, LANE, AGG = S[0], S[2], S[3]
    if G[CLOSED, k, r]:  # averaged before the device joined: on its own
        push(Q, CNT, serve(LANE, k, now, AGG[k]), NORMAL, AT_OWN, i, 0)
        return
    G[ARRIVED, k, r] += 1
    close(S, Q, CNT, now, k, r)
    if not G[CLOSED, k, r]:
        keep_alive(S, M, Q, CNT, now, k, r)
    wait_done(G, M[0], k, r, i, 0)


@njit
def until(S, M, K, i):
    """``FedGroup.until`` from slot ``WR`` to the device's next round's: True when it has to wait (it does)."""
    G, PS = S[0], S[5]
    DI, N = M[0], K[1]
    k, hi = DI[i, SRV], slot_of(DI, N, PS, i, DI[i, R] + 1)
    while DI[i, WR] < hi:
        r = DI[i, WR]
        if (G[CLOSED, k, r] or G[NEED, k, r]) and not G[TRIG, k, r]:
            wait_either(S, DI, k, r, i)
            return True
        DI[i, WR] += 1
    return False


# -- Membership: switch, leave_at, keep_alive, leave ---------------------------------------------------
@njit
def switch(S, M, N, Q, CNT, now, i, t):
    """``Membership.switch``: apply device ``i``'s handovers up to ``t``; the row of the leg holding then."""
    EXP, PS = S[1], S[5]
    DI, DF, LI, LF, UPL, MV = M[0], M[1], M[2], M[3], M[4], M[5]
    j = leg_at(DI, LF, i, t)
    first = DI[i, LEG0]
    while first + DI[i, APPLIED] < j:
        DI[i, APPLIED] += 1
        q = first + DI[i, APPLIED]
        u = 0
        while u < DI[i, NUPL] and UPL[i, u] < LF[L_AT, q]:  # uploads started before the handover stay
            u += 1
        MV[i, DI[i, NMOVED]] = u
        DI[i, NMOVED] += 1
        notify(S, Q, CNT, now)
        old, new = LI[L_SERVER, q - 1], LI[L_SERVER, q]
        if old == new or DF[i, GONE] < math.inf:
            continue
        s, end = slot_of(DI, N, PS, i, u), slot_of(DI, N, PS, i, DI[i, ROUNDS])
        hi = EXP[old, i, HI] if EXP[old, i, HAS] else end
        cut(S, M, N, Q, CNT, now, old, i, s)
        if s < hi:
            join(S[0], EXP, DI, N, PS, new, i, s, hi)
    return j


@njit
def leave(S, M, N, Q, CNT, now, i, uploaded):
    """``Membership.leave``: device ``i`` leaves for good now, having sent ``uploaded`` uploads."""
    switch(S, M, N, Q, CNT, now, i, now)
    M[1][i, GONE] = now
    s = slot_of(M[0], N, S[5], i, uploaded)
    for k in range(S[2].shape[0]):
        cut(S, M, N, Q, CNT, now, k, i, s)
    notify(S, Q, CNT, now)


@njit
def leave_at(S, M, N, Q, CNT, now, i, t, uploaded):
    """``Membership.leave_at``: now, or a soft timer at ``t``."""
    if t <= now:
        leave(S, M, N, Q, CNT, now, i, uploaded)
        return
    LQ, LT = M[6], M[7]
    LQ[CNT[NLEAVE]] = i
    LT[i] = t
    CNT[NLEAVE] += 1
    push(Q, CNT, t, NORMAL, LEAVE, i, uploaded)
    CNT[NSOFT] += 1


@njit
def keep_alive(S, M, Q, CNT, now, k, r):
    """``Membership._keep_alive``: round ``r`` of server ``k`` waits; its expected devices that will leave keep the run."""
    EXP = S[1]
    DI, LQ, LT = M[0], M[6], M[7]
    for q in range(CNT[NLEAVE]):
        i = LQ[q]
        lo, hi = (EXP[k, i, LO], EXP[k, i, HI]) if EXP[k, i, HAS] else (0, 0)
        if not DI[i, KEPT] and lo <= r < hi and LT[i] > now:
            DI[i, KEPT] = 1
            push(Q, CNT, LT[i], NORMAL, HARD, i, 0)


# -- Membership.change / notify / awaited: a server's epoch waits for the visitors a later leg may bring ------------
@njit
def notify(S, Q, CNT, now):
    """``Membership.notify``: the change event, when one is waited on and untriggered, succeeds now."""
    CH = S[11]
    if CH[CH_LIVE]:
        CH[CH_LIVE] = 0
        push(Q, CNT, now, NORMAL, CHANGE, CH[CH_CUR], 0)


@njit
def wait_change(S, p):
    """``yield Membership.change()`` of process ``p``: a fresh event when none is pending untriggered."""
    CH = S[11]
    if not CH[CH_LIVE]:
        CH[CH_CUR] += 1
        CH[CH_LIVE] = 1
    q = 3 + 2 * CH[CH_N]
    CH[q], CH[q + 1] = p, CH[CH_CUR]
    CH[CH_N] += 1


@njit
def changed(S, serial):
    """The processes waiting on change event ``serial``, in the order they began waiting (taken off the list)."""
    CH = S[11]
    took, keep = [], 0
    for q in range(CH[CH_N]):
        p, s = CH[3 + 2 * q], CH[4 + 2 * q]
        if s == serial:
            took.append(p)
        else:
            CH[3 + 2 * keep], CH[4 + 2 * keep] = p, s
            keep += 1
    CH[CH_N] = keep
    return took


@njit
def awaited(M, Q, CNT, now, k, e):
    """``Membership.awaited``: whether server ``k`` still waits for a visitor in epoch ``e`` (a device there now, not
    gone, with rounds of epoch ``e`` still to upload and a later leg on ``k``); a leave due later keeps the run."""
    DI, DF, LI, LT = M[0], M[1], M[2], M[7]
    late = False
    for i in range(DF.shape[0]):
        rpe, rounds = DI[i, RPE], DI[i, ROUNDS]
        if e * rpe >= rounds or DF[i, GONE] < math.inf:
            continue
        j, end = DI[i, LEG0] + DI[i, APPLIED], DI[i, LEG0] + DI[i, LEGS]
        if DI[i, UPLOADED] > min((e + 1) * rpe, rounds) - 1 or LI[L_SERVER, j] == k:
            continue
        later = False
        for q in range(j + 1, end):
            later = later or LI[L_SERVER, q] == k
        if not later:
            continue
        late = True
        t = LT[i] if LT[i] > 0.0 else math.inf
        if not DI[i, KEPT] and now < t < math.inf:
            DI[i, KEPT] = 1
            push(Q, CNT, t, NORMAL, HARD, i, 0)
    return late
