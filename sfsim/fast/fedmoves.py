"""FedLoRA on a moving network (handover, availability) on the fast path: the SimPy run as one compiled event loop.

The SimPy schedule (:mod:`sfsim.schedules.fedlora`) runs one process per device, a ``FedGroup`` per
server (its FedAvg barriers) and a ``Membership`` (which group expects which rounds, who leaves
when). Here each device's process is a state machine (:func:`_step`, program counter ``_PC``) and the
groups and membership are arrays; the loop keeps SimPy's queue order (time, priority, then the order
events were scheduled) with the events the SimPy run schedules: the processes' starts (urgent), the
handovers' and leaves' soft timers, each timeout, each ``succeed_at`` (a timer, then the event it
succeeds), the barriers' keep-alive timers and each process's end. Local work is
:func:`sfsim.fast.fedlora._local_net`; every transfer integrates its leg's rate (:mod:`sfsim.fast.rates`).
Memory: per device its legs, uploads and handovers; per server a few numbers per round.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from sfsim.fast import rates
from sfsim.fast.fedlora import _local_net, layout
from sfsim.fast.jit import njit
from sfsim.fast.simq import NORMAL, NSOFT, push, start

_INIT, _RESUME, _SWITCH, _LEAVE, _AT_DONE, _DONE, _AT_OWN, _OWN, _HARD, _EXIT = range(10)  # event kinds
_BEGIN, _UP, _ARRIVE, _DOWN, _NEXT, _OVER = range(6)  # a device's program counter
(_PC, _R, _SRV, _APPLIED, _NMOVED, _SYNCS, _DOWNLOADS, _SENT, _DONE_MB, _STEPS, _NUPL, _WNEXT, _KEPT, _LEG0,
 _LEGS, _PAUSE, _AVAIL, _ROUNDS, _DROPS) = range(19)  # DI: int per device
_START, _STOP, _GONE, _SEND_S, _RECV_S = range(5)  # DF: float per device
_L_UP, _L_DOWN, _L_SERVER = range(3)  # LI: per leg
_L_AT, _L_UP_L, _L_DOWN_L = range(3)  # LF: per leg
_NLEAVE = 2  # CNT, after sfsim.fast.simq's EID and NSOFT
_HAS, _LO, _HI = range(3)  # EXP: a group's expected rounds of a device
_NEED, _ARRIVED, _CLOSED, _WHEAD, _WTAIL = range(5)  # G: per server and round


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


# -- FedGroup: join, cut, arrive, _close -------------------------------------------------------------
@njit
def _join(G, EXP, k, i, lo, hi):
    EXP[k, i, _HAS], EXP[k, i, _LO], EXP[k, i, _HI] = 1, lo, hi
    for r in range(lo, hi):
        G[_NEED, k, r] += 1


@njit
def _close(S, Q, CNT, now, k, r):
    G, LANE, AGG = S[0], S[2], S[3]
    if not G[_CLOSED, k, r] and G[_ARRIVED, k, r] and G[_ARRIVED, k, r] >= G[_NEED, k, r]:
        G[_CLOSED, k, r] = 1
        push(Q, CNT, _serve(LANE, k, now, AGG[k] * G[_ARRIVED, k, r]), NORMAL, _AT_DONE, k, r)


@njit
def _cut(S, Q, CNT, now, k, i, hi):
    """``FedGroup.cut``: device ``i`` is expected at server ``k`` only before round ``hi``."""
    G, EXP = S[0], S[1]
    if not EXP[k, i, _HAS] or hi >= EXP[k, i, _HI]:
        return
    lo, old = EXP[k, i, _LO], EXP[k, i, _HI]
    EXP[k, i, _HI] = max(lo, hi)
    for r in range(EXP[k, i, _HI], old):
        G[_NEED, k, r] -= 1
    for r in range(EXP[k, i, _HI], old):
        _close(S, Q, CNT, now, k, r)


@njit
def _arrive(S, M, Q, CNT, now, k, r, i):
    """``FedGroup.arrive``: device ``i``'s upload for round ``r`` arrived; it waits for the round's (or its own) end."""
    G, LANE, AGG = S[0], S[2], S[3]
    DI = M[0]
    if G[_CLOSED, k, r]:  # averaged before the device joined: on its own
        push(Q, CNT, _serve(LANE, k, now, AGG[k]), NORMAL, _AT_OWN, i, 0)
        return
    G[_ARRIVED, k, r] += 1
    _close(S, Q, CNT, now, k, r)
    if not G[_CLOSED, k, r]:
        _keep_alive(S, M, Q, CNT, now, k, r)
    DI[i, _WNEXT] = -1  # waits on the round's event, after those already waiting
    if G[_WHEAD, k, r] < 0:
        G[_WHEAD, k, r] = i
    else:
        DI[G[_WTAIL, k, r], _WNEXT] = i
    G[_WTAIL, k, r] = i


# -- Membership: switch, leave_at, _keep_alive, leave ---------------------------------------------------
@njit
def _switch(S, M, Q, CNT, now, i, t):
    """``Membership.switch``: apply device ``i``'s handovers up to ``t``; the row of the leg holding then."""
    EXP = S[1]
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
        hi = EXP[old, i, _HI] if EXP[old, i, _HAS] else DI[i, _ROUNDS]
        _cut(S, Q, CNT, now, old, i, u)
        if u < hi:
            _join(S[0], EXP, new, i, u, hi)
    return j


@njit
def _leave(S, M, Q, CNT, now, i, uploaded):
    """``Membership.leave``: device ``i`` leaves for good now, having sent ``uploaded`` uploads."""
    _switch(S, M, Q, CNT, now, i, now)
    M[1][i, _GONE] = now
    for k in range(S[2].shape[0]):
        _cut(S, Q, CNT, now, k, i, uploaded)


@njit
def _leave_at(S, M, Q, CNT, now, i, t, uploaded):
    """``Membership.leave_at``: now, or a soft timer at ``t``."""
    if t <= now:
        _leave(S, M, Q, CNT, now, i, uploaded)
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
def _transfer(S, M, K, Q, CNT, now, i, up):
    """``_transfer``: the upload (``up``) or download from now on the leg holding; False when the device leaves."""
    D, N, P, per, bits = K
    DI, DF, LI, LF, UPL = M[0], M[1], M[2], M[3], M[4]
    if up:
        leg = _switch(S, M, Q, CNT, now, i, now)
        UPL[i, DI[i, _NUPL]] = now
        DI[i, _NUPL] += 1
        secs = rates.span(P, LI[_L_UP, leg], now, bits[i], 1.0)
    else:
        leg = _leg_at(DI, LF, i, now)
        secs = rates.span(P, LI[_L_DOWN, leg], now, bits[i], 1.0)
    if now + secs > DF[i, _STOP] or secs == math.inf:
        _leave_at(S, M, Q, CNT, now, i, _gone(P, DI, DF, i, now), DI[i, _SYNCS])
        return False
    if up:
        DF[i, _SEND_S] += rates.online(P, DI[i, _PAUSE], now, now + secs)
        DI[i, _SYNCS] += 1
        DI[i, _SENT] = min(N[0, i], (DI[i, _R] + 1) * per)
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
    D, N, P, per, bits = K
    DI, DF = M[0], M[1]
    while True:
        pc = DI[i, _PC]
        if pc == _BEGIN:
            r = DI[i, _R]
            if r >= DI[i, _ROUNDS]:
                DI[i, _PC] = _OVER
                continue
            first, last = r * per, min(N[0, i], (r + 1) * per)
            t, done, steps, cut = _local_net(D, N, P, DI[i, _PAUSE], i, first, last, acc, now, DF[i, _STOP])
            DI[i, _DONE_MB] += done
            DI[i, _STEPS] += steps
            if cut >= 0.0:
                _leave_at(S, M, Q, CNT, now, i, _gone(P, DI, DF, i, cut), DI[i, _SYNCS])
                DI[i, _PC] = _OVER
                continue
            push(Q, CNT, now + (t - now), NORMAL, _RESUME, i, 0)
            DI[i, _PC] = _UP
            return
        if pc == _UP or pc == _DOWN:
            if not _transfer(S, M, K, Q, CNT, now, i, pc == _UP):
                DI[i, _PC] = _OVER
                continue
            DI[i, _PC] = _ARRIVE if pc == _UP else _NEXT
            return
        if pc == _ARRIVE:
            _arrive(S, M, Q, CNT, now, DI[i, _SRV], DI[i, _R], i)
            DI[i, _PC] = _DOWN
            return
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
    if DF[i, _START] == math.inf:
        _leave_at(S, M, Q, CNT, now, i, 0.0, 0)
        DI[i, _PC] = _OVER
    elif DI[i, _DROPS] and DF[i, _START] > 0:  # it joins at its first online instant
        push(Q, CNT, DF[i, _START], NORMAL, _RESUME, i, 0)
        return
    _step(S, M, K, Q, CNT, now, i, acc)


@njit
def run(S, M, K, soft, order, acc):
    """The run: handover soft timers ``soft`` (time, device), then the devices' processes in ``order``.

    Returns ``(makespan, stuck)``; stuck: a rate was asked past what was drawn (the figures are void).
    """
    G = S[0]
    DI = M[0]
    Q, CNT = start(soft, _SWITCH, order, _INIT, 3)
    now = 0.0
    while len(Q) > CNT[NSOFT]:
        now, _, _, kind, a, b = heapq.heappop(Q)
        if kind == _SWITCH or kind == _LEAVE:
            CNT[NSOFT] -= 1
            if kind == _SWITCH:
                _switch(S, M, Q, CNT, now, a, now)
            else:
                _leave(S, M, Q, CNT, now, a, b)
        elif kind == _INIT:
            _start(S, M, K, Q, CNT, now, a, acc)
        elif kind == _RESUME or kind == _OWN:
            _step(S, M, K, Q, CNT, now, a, acc)
        elif kind == _AT_DONE:
            push(Q, CNT, now, NORMAL, _DONE, a, b)
        elif kind == _AT_OWN:
            push(Q, CNT, now, NORMAL, _OWN, a, 0)
        elif kind == _DONE:  # the round's event: its waiters resume in the order they began waiting
            i = G[_WHEAD, a, b]
            G[_WHEAD, a, b] = -1
            while i >= 0:
                nxt = DI[i, _WNEXT]
                _step(S, M, K, Q, CNT, now, i, acc)
                i = nxt
        if rates.stuck(K[2]):
            return now, True
    return now, False


def _state(job, cfg, horizon: float) -> tuple:
    """Fresh state ``S`` (groups), ``M`` (devices), ``K`` (work and rates, drawn to ``horizon``), soft timers, order."""
    motions, per, devs = job.network.motions, int(cfg.local_steps), job.devices
    n, n_srv = len(devs), len(job.servers)
    n_rounds = [-(-d.n // per) for d in devs]
    most, n_legs = max(n_rounds, default=0), sum(len(m.legs) for m in motions.values())
    prog = rates.Program()
    DI, DF = np.zeros((n, 19), np.int64), np.zeros((n, 5))
    LI, LF = np.zeros((3, max(1, n_legs)), np.int64), np.zeros((3, max(1, n_legs)))
    G, EXP = np.zeros((5, n_srv, max(1, most)), np.int64), np.zeros((n_srv, n, 3), np.int64)
    G[_WHEAD] = G[_WTAIL] = -1
    soft, row = [], 0
    for i, m in motions.items():
        DI[i] = (_BEGIN, 0, -1, 0, 0, m.syncs_sent, m.downloads, m.sent, 0, m.steps, 0, -1, 0, row, len(m.legs),
                 prog.add(m.pause), prog.add(m.avail), n_rounds[i], m.churn == "drop" and m.avail is not None)
        DF[i] = (m.start, m.stop, m.gone, m.send_s, m.recv_s)
        if n_rounds[i]:
            _join(G, EXP, m.legs[0].server, i, 0, n_rounds[i])
        for j, leg in enumerate(m.legs):
            LI[:, row + j] = (prog.add(leg.up_rate(m.pause)), prog.add(leg.down_rate(m.pause)), leg.server)
            LF[:, row + j] = (leg.at, leg.up_l, leg.down_l)
            soft += [(leg.at, i)] if j else []
        row += len(m.legs)
    prog.draw_all(horizon)
    D, N = layout(devs)
    order = [i for k in dict.fromkeys(d.server for d in devs) for i, d in enumerate(devs) if d.server == k and d.n]
    S = (G, EXP, np.zeros((n_srv, 2)), np.array([s.aggregate for s in job.servers], np.float64))
    M = (DI, DF, LI, LF, np.zeros((n, max(1, most))), np.zeros((n, max(1, max(len(m.legs) for m in motions.values())))
         , np.int64), np.zeros(n, np.int64), np.zeros(n))
    K = (D, N, prog.arrays(), per, np.array([d.sync_bytes * 8.0 for d in devs], np.float64))
    return S, M, K, np.array(soft, np.float64).reshape(-1, 2).T.copy(), np.array(order, np.int64)


def replay(job, cfg) -> tuple[dict, dict, float]:
    """FedLoRA on any dynamic network (handover, availability, varying links), compiled; as
    :func:`sfsim.fast.fedlora.replay`, filling the devices' motions as the SimPy run does."""
    per, motions = int(cfg.local_steps), job.network.motions
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
        m.switched_at = [min(u * per, m.sent) for u in moved]
    return devices, {srv.name: float(S[2][k, 1]) for k, srv in enumerate(job.servers)}, float(makespan)
