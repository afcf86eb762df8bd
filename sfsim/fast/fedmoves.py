"""FedLoRA on a moving network (handover, availability) on the fast path: the SimPy run as one compiled event loop.

The SimPy schedule (:mod:`sfsim.schedules.fedlora`) runs one process per device, a ``FedGroup`` per
server (its FedAvg barriers) and a ``Membership`` (which group expects which rounds, who leaves
when). Here each device's process is a state machine (:func:`_step`, program counter ``fedgroup.PC``) and the
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
from sfsim.fast import fedgroup as fg
from sfsim.fast import rates
from sfsim.fast.draws import compile_draws
from sfsim.fast.fedlora import _local_net, layout
from sfsim.fast.jit import njit
from sfsim.fast.simq import NORMAL, NSOFT, URGENT, push, start
from sfsim.schedules import fedlora as fl


# -- a device's process (device_process, _transfer, _compute) -------------------------------------------
@njit
def _gone(P, DI, DF, i, t):
    """When a device whose work from ``t`` never ends leaves: its drop, or when it goes offline for good."""
    return DF[i, fg.STOP] if DF[i, fg.STOP] < math.inf else rates.gone_at(P, DI[i, fg.AVAIL], t)


@njit
def _present(P, DI, DF, i, t):
    """``sfsim.schedules.fedsync.present``: a server's send at ``t`` reaches device ``i`` (it is counted)."""
    return t < DF[i, fg.STOP] and (DI[i, fg.AVAIL] < 0 or rates.next_online(P, DI[i, fg.AVAIL], t) < math.inf)


@njit
def _transfer(S, M, K, Q, CNT, now, i, up, last):
    """``_transfer``: the upload (``up``, of micro-batches before ``last``) or download from now on the leg holding;
    False when the device leaves."""
    N, P, bits = K[1], K[2], K[4]
    DI, DF, LI, LF, UPL = M[0], M[1], M[2], M[3], M[4]
    if up:
        leg = fg.switch(S, M, N, Q, CNT, now, i, now)
        UPL[i, DI[i, fg.NUPL]] = now
        DI[i, fg.NUPL] += 1
        secs = rates.span(P, LI[fg.L_UP, leg], now, bits[i], 1.0)
    else:
        leg = fg.leg_at(DI, LF, i, now)
        secs = rates.span(P, LI[fg.L_DOWN, leg], now, bits[i], 1.0)
        if _present(P, DI, DF, i, now):  # the round's average, counted as the runtime sends it
            DI[i, fg.DOWNLOADS] += 1
    if now + secs > DF[i, fg.STOP] or secs == math.inf:
        fg.leave_at(S, M, N, Q, CNT, now, i, _gone(P, DI, DF, i, now), DI[i, fg.SYNCS])
        return False
    if up:
        DF[i, fg.SEND_S] += rates.online(P, DI[i, fg.PAUSE], now, now + secs)
        DI[i, fg.SYNCS] += 1
        DI[i, fg.SENT] = last
        DI[i, fg.SRV] = LI[fg.L_SERVER, leg]
        push(Q, CNT, now + (secs + LF[fg.L_UP_L, leg]), NORMAL, fg.RESUME, i, 0)
    else:
        DF[i, fg.RECV_S] += rates.online(P, DI[i, fg.PAUSE], now, now + secs)
        push(Q, CNT, now + (secs + LF[fg.L_DOWN_L, leg]), NORMAL, fg.RESUME, i, 0)
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
        pc = DI[i, fg.PC]
        if pc == fg.BEGIN:
            DI[i, fg.PC] = fg.OVER if DI[i, fg.R] >= DI[i, fg.ROUNDS] else fg.DOWN  # the round's average first
            continue
        if pc == fg.TRAIN:
            _, first, last = fg.plan(DI, N, PS, i, DI[i, fg.R])
            t, done, steps, cut = _local_net(D, N, P, DI[i, fg.PAUSE], i, first, last, acc, now, DF[i, fg.STOP])
            DI[i, fg.DONE_MB] += done
            DI[i, fg.STEPS] += steps
            if cut >= 0.0:
                fg.leave_at(S, M, N, Q, CNT, now, i, _gone(P, DI, DF, i, cut), DI[i, fg.SYNCS])
                DI[i, fg.PC] = fg.OVER
                continue
            push(Q, CNT, now + (t - now), NORMAL, fg.RESUME, i, 0)
            DI[i, fg.PC] = fg.UP
            return
        if pc == fg.UP or pc == fg.DOWN:
            if not _transfer(S, M, K, Q, CNT, now, i, pc == fg.UP, fg.plan(DI, N, PS, i, DI[i, fg.R])[2]):
                DI[i, fg.PC] = fg.OVER
                continue
            DI[i, fg.PC] = fg.ARRIVE if pc == fg.UP else fg.TRAIN
            return
        if pc == fg.ARRIVE:
            r = fg.plan(DI, N, PS, i, DI[i, fg.R])[0]
            fg.arrive(S, M, Q, CNT, now, DI[i, fg.SRV], r, i)
            DI[i, fg.UPLOADED] += 1  # Membership.arrived
            fg.notify(S, Q, CNT, now)
            DI[i, fg.PC], DI[i, fg.WR] = fg.UNTIL, r + 1
            return
        if pc == fg.UNTIL:  # its epoch's end, then a new epoch's after the closing round (FedGroup.closing)
            if fg.until(S, M, K, i):
                return
            DI[i, fg.PC] = fg.CLOSING
            if _closing(S, M, K, i):
                return
        if DI[i, fg.PC] == fg.CLOSING:  # then the server's epoch-end wait (FedGroup.evaluated)
            DI[i, fg.PC] = fg.EVALUATED
            if _evaluated(S, M, K, Q, CNT, now, i):
                return
        if DI[i, fg.PC] == fg.EVALUATED:
            DI[i, fg.PC] = fg.NEXT
            continue
        if pc == fg.NEXT:
            DI[i, fg.R] += 1
            DI[i, fg.PC] = fg.BEGIN
            continue
        push(Q, CNT, now, NORMAL, fg.EXIT, i, 0)  # the process returns: SimPy schedules its own event
        return


@njit
def _start(S, M, K, Q, CNT, now, i, acc):
    """The process's first resume: a device never online leaves; a drop-churn one joins at its first online instant."""
    DI, DF = M[0], M[1]
    if i >= S[10][cl.E_DEVICES]:  # an EpochClose server process
        _epoch_close(S, M, Q, CNT, now, i)
        return
    if DF[i, fg.START] == math.inf:
        fg.leave_at(S, M, K[1], Q, CNT, now, i, 0.0, 0)
        DI[i, fg.PC] = fg.OVER
    elif DI[i, fg.DROPS] and DF[i, fg.START] > 0:  # it joins at its first online instant
        push(Q, CNT, DF[i, fg.START], NORMAL, fg.RESUME, i, 0)
        return
    _step(S, M, K, Q, CNT, now, i, acc)


@njit
def _fire_done(S, M, K, Q, CNT, now, k, r, acc):
    """Round ``r``'s event of server ``k``: its callbacks in order (a process resumes, a ``done | poke`` succeeds)."""
    G, PK = S[0], S[4]
    DI = M[0]
    i = G[fg.WHEAD, k, r]
    G[fg.WHEAD, k, r] = G[fg.WTAIL, k, r] = -1
    while i >= 0:
        nxt = DI[i, fg.WNEXT]
        if DI[i, fg.ISCOND]:
            fg.unwait_poke(PK, DI, k, i)
            push(Q, CNT, now, NORMAL, fg.COND, i, 0)
        else:
            _step(S, M, K, Q, CNT, now, i, acc)
        i = nxt


@njit
def _fire_poke(S, M, Q, CNT, now, k, serial):
    """Server ``k``'s poke ``serial``: every ``done | poke`` waiting on it succeeds (they are the list's head)."""
    G, PK = S[0], S[4]
    DI = M[0]
    while PK[k, fg.PHEAD] >= 0 and DI[PK[k, fg.PHEAD], fg.PSER] <= serial:
        i = PK[k, fg.PHEAD]
        fg.unwait_poke(PK, DI, k, i)
        fg.unwait_done(G, DI, k, DI[i, fg.WR], i)
        push(Q, CNT, now, NORMAL, fg.COND, i, 0)


# -- EpochClose (no training.sync): each epoch's closing round over the servers' backhaul links ---------------
@njit
def _closing(S, M, K, i):
    """``FedGroup.closing``: True when device ``i``'s next round is in a later epoch and its group's closing round
    is not back yet (it then waits on the group's ``closes`` event)."""
    DI, PS, CI, EP = M[0], S[5], S[7], S[10]
    if not EP[cl.E_CLOSING] or DI[i, fg.R] + 1 >= DI[i, fg.ROUNDS]:
        return False
    w = max(PS[1], 1)
    k, e = DI[i, fg.SRV], fg.plan(DI, K[1], PS, i, DI[i, fg.R])[0] // w
    if fg.plan(DI, K[1], PS, i, DI[i, fg.R] + 1)[0] // w == e or CI[cl.C_STATE, k, e] == 2:
        return False
    DI[i, fg.WNEXT] = -1
    if CI[cl.C_HEAD, k, e] < 0:
        CI[cl.C_HEAD, k, e] = i
    else:
        DI[CI[cl.C_TAIL, k, e], fg.WNEXT] = i
    CI[cl.C_TAIL, k, e] = i
    return True


@njit
def _evaluated(S, M, K, Q, CNT, now, i):
    """``FedGroup.evaluated``: True when device ``i``'s next round is in a later epoch and its server's epoch-end wait
    is not over (it then waits on the wait's event; the first to come starts ``_evaluate``, an urgent process start)."""
    DI, PS, EV, EW = M[0], S[5], S[12], S[13]
    if DI[i, fg.R] + 1 >= DI[i, fg.ROUNDS]:
        return False
    w = max(PS[1], 1)
    k, e = DI[i, fg.SRV], fg.plan(DI, K[1], PS, i, DI[i, fg.R])[0] // w
    if fg.plan(DI, K[1], PS, i, DI[i, fg.R] + 1)[0] // w == e or EW[0, k] <= 0.0 or EV[fg.EV_STATE, k, e] == 2:
        return False
    if EV[fg.EV_STATE, k, e] == 0:
        EV[fg.EV_STATE, k, e] = 1
        push(Q, CNT, now, URGENT, fg.EVAL_INIT, k, e)
    DI[i, fg.WNEXT] = -1
    if EV[fg.EV_HEAD, k, e] < 0:
        EV[fg.EV_HEAD, k, e] = i
    else:
        DI[EV[fg.EV_TAIL, k, e], fg.WNEXT] = i
    EV[fg.EV_TAIL, k, e] = i
    return True


@njit
def _fire_evals(S, M, K, Q, CNT, now, k, e, acc):
    """Server ``k``'s epoch-``e`` wait is over: the devices waiting on it resume, in the order they came."""
    EV, DI = S[12], M[0]
    EV[fg.EV_STATE, k, e] = 2
    i = EV[fg.EV_HEAD, k, e]
    EV[fg.EV_HEAD, k, e] = EV[fg.EV_TAIL, k, e] = -1
    while i >= 0:
        nxt = DI[i, fg.WNEXT]
        _step(S, M, K, Q, CNT, now, i, acc)
        i = nxt


@njit
def _fire_closes(S, M, K, Q, CNT, now, k, e, acc):
    """Server ``k``'s epoch-``e`` closing round is back: the devices waiting on it resume, in the order they began."""
    CI, DI = S[7], M[0]
    CI[cl.C_STATE, k, e] = 2
    i = CI[cl.C_HEAD, k, e]
    CI[cl.C_HEAD, k, e] = CI[cl.C_TAIL, k, e] = -1
    while i >= 0:
        nxt = DI[i, fg.WNEXT]
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
        e = DI[i, fg.R]
        if DI[i, fg.PC] == fg.S_READY:  # epoch e's average is ready: it comes back on the server's backhaul
            CF[k, cl.C_FREE] = now + CF[k, cl.C_BUSY] + CF[k, cl.C_LAT]
            push(Q, CNT, CF[k, cl.C_FREE], NORMAL, fg.AT_CLOSES, k, e)
            DI[i, fg.R], DI[i, fg.WR], DI[i, fg.PC] = e + 1, (e + 1) * w, fg.S_UNTIL
            continue
        if e >= EP[cl.E_EPOCHS]:
            DI[i, fg.PC] = fg.OVER
            push(Q, CNT, now, NORMAL, fg.EXIT, i, 0)
            return
        while DI[i, fg.WR] < (e + 1) * w:
            r = DI[i, fg.WR]
            if (G[fg.CLOSED, k, r] or G[fg.NEED, k, r]) and not G[fg.TRIG, k, r]:
                fg.wait_either(S, DI, k, r, i)
                return
            DI[i, fg.WR] += 1
        if fg.awaited(M, Q, CNT, now, k, e):  # a visitor a later leg may bring (EpochClose._epoch_end)
            fg.wait_change(S, i)
            return
        t = max(now, CF[k, cl.C_FREE])
        AR[e] = max(AR[e], t + CF[k, cl.C_BUSY] + CF[k, cl.C_LAT])
        RW[e, 0] += 1  # the servers waiting on ready[e], in order
        RW[e, RW[e, 0]] = k
        if RW[e, 0] == CF.shape[0]:
            push(Q, CNT, AR[e], NORMAL, fg.AT_READY, e, 0)
        DI[i, fg.PC] = fg.S_READY
        return


@njit
def run(S, M, K, soft, order, acc):
    """The run: handover soft timers ``soft`` (time, device), then the devices' processes in ``order``.

    Returns ``(makespan, stuck)``; stuck: a rate was asked past what was drawn (the figures are void).
    """
    G = S[0]
    Q, CNT = start(soft, fg.SWITCH, order, fg.INIT, 3)
    now = 0.0
    while len(Q) > CNT[NSOFT]:
        now, _, _, kind, a, b = heapq.heappop(Q)
        if kind == fg.SWITCH or kind == fg.LEAVE:
            CNT[NSOFT] -= 1
            if kind == fg.SWITCH:
                fg.switch(S, M, K[1], Q, CNT, now, a, now)
            else:
                fg.leave(S, M, K[1], Q, CNT, now, a, b)
        elif kind == fg.INIT:
            _start(S, M, K, Q, CNT, now, a, acc)
        elif kind == fg.RESUME or kind == fg.OWN or kind == fg.COND:
            _step(S, M, K, Q, CNT, now, a, acc)
        elif kind == fg.AT_DONE:
            G[fg.TRIG, a, b] = 1
            push(Q, CNT, now, NORMAL, fg.DONE, a, b)
        elif kind == fg.AT_OWN:
            push(Q, CNT, now, NORMAL, fg.OWN, a, 0)
        elif kind == fg.DONE:
            _fire_done(S, M, K, Q, CNT, now, a, b, acc)
        elif kind == fg.POKE:
            _fire_poke(S, M, Q, CNT, now, a, b)
        elif kind == fg.AT_READY:  # succeed_at's timer: the event succeeds now
            push(Q, CNT, now, NORMAL, fg.READY, a, b)
        elif kind == fg.READY:  # the servers waiting on epoch a's average resume, in the order they began waiting
            for q in range(1, S[9][a, 0] + 1):
                _epoch_close(S, M, Q, CNT, now, S[10][cl.E_DEVICES] + S[9][a, q])
        elif kind == fg.AT_CLOSES:
            S[7][cl.C_STATE, a, b] = 1
            push(Q, CNT, now, NORMAL, fg.CLOSES, a, b)
        elif kind == fg.CLOSES:
            _fire_closes(S, M, K, Q, CNT, now, a, b, acc)
        elif kind == fg.EVAL_INIT:  # FedGroup._evaluate runs: its rounds are over, its wait's timer, its end
            S[13][1, a] = 1.0
            push(Q, CNT, now + S[13][0, a], NORMAL, fg.AT_EVAL, a, b)
            push(Q, CNT, now, NORMAL, fg.EXIT, -1, 0)
        elif kind == fg.AT_EVAL:
            push(Q, CNT, now, NORMAL, fg.EVAL, a, b)
        elif kind == fg.EVAL:
            _fire_evals(S, M, K, Q, CNT, now, a, b, acc)
        elif kind == fg.CHANGE:  # the EpochClose processes waiting resume: their epoch's rounds, from the first
            for p in fg.changed(S, a):
                M[0][p, fg.WR] = M[0][p, fg.R] * max(S[5][1], 1)
                _epoch_close(S, M, Q, CNT, now, p)
        if rates.stuck(K[2]):
            return now, True
    return now, False


def _rounds_of(d, per: int) -> tuple[int, int, int]:
    """A device's epoch (``per_epoch``, 0: one epoch), rounds per full epoch and rounds (``round_plan``'s)."""
    pe = d.per_epoch or d.n
    return pe, max(1, -(-pe // per)), fl.count(d.n, d.per_epoch, per)


def _state(job, cfg, horizon: float, waits: dict[str, float]) -> tuple:
    """Fresh state ``S`` (groups; ``S[12:]``: the servers' epoch-end waits of ``waits``), ``M`` (devices), ``K`` (work
    and rates, drawn to ``horizon``), soft timers, order."""
    motions, per, devs = job.network.motions, int(cfg.local_steps), job.devices
    n, n_srv, slots = len(devs), len(job.servers), fl.width(devs, per)
    plan = [_rounds_of(d, per) for d in devs]
    PS = np.array([per, slots], np.int64)
    most, n_legs = max([c for _, _, c in plan], default=0), sum(len(m.legs) for m in motions.values())
    prog = rates.Program()
    DI, DF = np.zeros((n + n_srv, fg.NDI), np.int64), np.zeros((n, 5))  # then a row per EpochClose server's process
    LI, LF = np.zeros((3, max(1, n_legs)), np.int64), np.zeros((3, max(1, n_legs)))
    D, N = layout(devs)
    soft, row = [], 0
    for i, m in motions.items():
        DI[i, :19] = (fg.BEGIN, 0, -1, 0, 0, m.syncs_sent, m.downloads, m.sent, 0, m.steps, 0, -1, 0, row, len(m.legs),
                      prog.add(m.pause), prog.add(m.avail), plan[i][2], m.churn == "drop" and m.avail is not None)
        DI[i, fg.PE], DI[i, fg.RPE] = plan[i][:2]
        DF[i] = (m.start, m.stop, m.gone, m.send_s, m.recv_s)
        for j, leg in enumerate(m.legs):
            LI[:, row + j] = (prog.add(leg.up_rate(m.pause)), prog.add(leg.down_rate(m.pause)), leg.server)
            LF[:, row + j] = (leg.at, leg.up_l, leg.down_l)
            soft += [(leg.at, i)] if j else []
        row += len(m.legs)
    n_slots = max([int(fg.slot_of(DI, N, PS, i, plan[i][2])) for i in range(n)], default=0)
    G, EXP = np.zeros((6, n_srv, max(1, n_slots)), np.int64), np.zeros((n_srv, n, 3), np.int64)
    G[fg.WHEAD] = G[fg.WTAIL] = -1
    for i, m in motions.items():
        if plan[i][2]:
            fg.join(G, EXP, DI, N, PS, m.legs[0].server, i, 0, fg.slot_of(DI, N, PS, i, plan[i][2]))
    compile_draws(r for m in motions.values() for leg in m.legs for r in (leg.rate, leg.down))  # the same steps
    prog.draw_all(horizon)
    order = [i for k in dict.fromkeys(d.server for d in devs) for i, d in enumerate(devs) if d.server == k and d.n]
    PK = np.zeros((n_srv, 4), np.int64)
    PK[:, fg.PHEAD] = PK[:, fg.PTAIL] = -1
    S = (G, EXP, np.zeros((n_srv, 2)), np.array([s.aggregate for s in job.servers], np.float64), PK, PS,
         *cl.fed_arrays(job, n), np.zeros(3 + 2 * n_srv, np.int64),
         np.full((3, n_srv, n_slots // max(slots, 1) + 1), -1, np.int64),
         np.array([[waits.get(srv.name, 0.0) for srv in job.servers], [0.0] * n_srv], np.float64).reshape(2, -1))
    S[12][fg.EV_STATE] = 0
    DI[n:, fg.PC] = fg.S_UNTIL  # EpochClose's processes: epoch 0, from slot 0
    if job.sync is not None:  # EpochClose's processes start first (it is made before the devices' processes)
        order = list(range(n, n + n_srv)) + order
    M = (DI, DF, LI, LF, np.zeros((n, max(1, most))), np.zeros((n, max(1, max(len(m.legs) for m in motions.values())))
         , np.int64), np.zeros(n, np.int64), np.zeros(n))
    K = (D, N, prog.arrays(), per, np.array([d.sync_bytes * 8.0 for d in devs], np.float64))
    return S, M, K, np.array(soft, np.float64).reshape(-1, 2).T.copy(), np.array(order, np.int64)


def replay(job, cfg, waits: dict[str, float] | None = None) -> tuple[dict, dict, float, set[str]]:
    """FedLoRA on any dynamic network (handover, availability, varying links), compiled; as
    :func:`sfsim.fast.fedlora.replay`, filling the devices' motions as the SimPy run does. ``waits``: server name ->
    its epoch-end wait (``FedGroup.evaluated``); returns the servers that waited last."""
    motions = job.network.motions
    horizon, total = rates.HORIZON, sum(d.n for d in job.devices)
    while True:
        S, M, K, soft, order = _state(job, cfg, horizon, waits or {})
        makespan, stuck = run(S, M, K, soft, order, int(cfg.accumulate))
        if not stuck:
            break
        done = int(M[0][:, fg.DONE_MB].sum())  # drawn too short: further than asked, and as far as the pace says
        horizon = max(2.0 * float(K[2][4][:-1].max()), 1.5 * makespan * total / max(1, done))
    DI, DF, UPL, MV = M[0], M[1], M[4], M[5]
    devices = {}
    for i, d in enumerate(job.devices):
        m = motions[i]
        m.done, m.steps, m.sent = int(DI[i, fg.DONE_MB]), int(DI[i, fg.STEPS]), int(DI[i, fg.SENT])
        m.syncs_sent, m.downloads = int(DI[i, fg.SYNCS]), int(DI[i, fg.DOWNLOADS])
        m.send_s, m.recv_s, m.gone = float(DF[i, fg.SEND_S]), float(DF[i, fg.RECV_S]), float(DF[i, fg.GONE])
        m.uploads = [float(t) for t in UPL[i, :DI[i, fg.NUPL]]]
        devices[d.name] = {"busy": d.units(m.done) * (d.f + d.b + d.w) + m.steps * d.step + d.first_extra(m.done),
                           "up": m.syncs_sent * d.sync_bytes, "down": m.downloads * d.sync_bytes}
        moved = [int(u) for u in MV[i, :DI[i, fg.NMOVED]]]
        moved += [len(m.uploads)] * (len(m.legs) - 1 - len(moved))
        firsts = [int(fg.plan(DI, K[1], S[5], i, u)[1]) if u < DI[i, fg.ROUNDS] else d.n for u in moved]  # first_of
        m.switched_at = [min(f, m.sent) for f in firsts]
    waited = {srv.name for k, srv in enumerate(job.servers) if S[13][1, k] > 0}
    return devices, {srv.name: float(S[2][k, 1]) for k, srv in enumerate(job.servers)}, float(makespan), waited
