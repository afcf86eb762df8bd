"""SplitLoRA handovers on the fast path: :mod:`sfsim.schedules.splitlora.moves`, every server's loop jointly in time, compiled.

With handovers the SimPy schedule runs one process per server (``Server.run_in_time``) that waits until
each decision's instant and is woken early when a client joins, leaves, finishes or is lost. Here that
run is one compiled event loop: each server's process a state machine (:func:`_resume`), the queue in
SimPy's order (time, priority, then scheduling order) with the events the SimPy run schedules (process
starts, the handovers' soft timers, each wait's timer, a poke's wake-up, the condition either triggers,
each process's last timer and its end), so servers decide at the same instants in the same order and
every figure is the same float. The primitives are :mod:`sfsim.fast.splitops`', on each client's legs; the state
(each server's lists, who holds each client) is :mod:`sfsim.fast.splitholds`'; with backhaul links and no
``training.sync`` each epoch ends with its closing round (:mod:`sfsim.fast.splitclose`). An idle client released at
its server's next look (``InTime.look_at``: :func:`~sfsim.fast.splitholds._look_at`) and a server keeping its epoch
open for a visitor (``InTime._visitor``: :func:`_visit`) are replayed; with the closing rounds such an open epoch is
not, and the run goes to SimPy (:data:`OPEN`).

Memory: per client a few numbers, its legs and its server history; per server and client its
place in that server's lists (``servers x clients``); and the order of each server's stream (one
int per micro-batch served), which its mixing needs once the run's totals are known.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from sfsim.errors import SfsimError
from sfsim.fast import closing, mixing, rates, splitclose
from sfsim.fast import splitops as sl
from sfsim.fast.jit import njit
from sfsim.fast.simq import NORMAL, NSOFT, push, start
from sfsim.fast.splitholds import (
    _AT_EPOCH,
    _CHOSEN,
    _COND,
    _COND_WAIT,
    _DONE_PC,
    _EP,
    _EPOCHS,
    _ERR,
    _EXIT,
    _FBACK,
    _FINAL,
    _FINISHED,
    _GEN,
    _HEAD,
    _HOME,
    _IDLE_WAIT,
    _INIT,
    _INTER,
    _ISSUED,
    _LOOK,
    _MOVING,
    _NHIST,
    _NLEFT,
    _NO_WAIT,
    _NOUT,
    _NPEND,
    _NSTREAM,
    _PC,
    _QUOTA,
    _RET,
    _ROUND,
    _ROUND_WAKE,
    _SEG,
    _SEG_END,
    _SEG_MOVE,
    _SEG_WAKE,
    _SERVED,
    _SERVING,
    _SOFT,
    _SYNCED,
    _TAIL,
    _TIMER,
    _TOKEN,
    _TOKENS,
    _TOP,
    _TRIG,
    _VISIT,
    _VISIT_T,
    _WAIT,
    _WAKE,
    _WAKEP,
    HISTORY,
    _changed,
    _deferred,
    _drop,
    _hand_over,
    _holder,
    _in_epoch,
    _leave,
    _left_del,
    _left_list,
    _left_set,
    _lost,
    _may_join,
    _out_add,
    _out_remove,
    _pend_remove,
    _release_deferred,
    _rest,
    _tick,
    _uni,
    _until,
)
from sfsim.fast.unreplayable import Unreplayable
from sfsim.network.backhaul import STUCK, Closed


# -- the segment: Server._give, _fill, the serving of one turn ------------------------------------------
@njit
def _give(J, K, Q, CNT, now, k, c):
    """``Server._give``: send ``c`` its next ``fwd`` if this server still holds it then; route its upload."""
    SF, SI, C, CI, D, N, R = K
    SJ = J[0]
    t = max(SF[k, sl._SFREE], J[2][c], J[19][c])  # its fwd goes once its join is here (without rounds: since)
    lv = _leave(J, R, k, c)
    if t >= lv:  # gone by then: out of this loop (the handover's instant moves it)
        _drop(J, k, c)
        if now >= lv:
            _hand_over(J, K, Q, CNT, now, k, c, now, 0)
        return
    J[9][k, c] -= 1
    SJ[k, _ISSUED] += 1
    sl._issue(SF[k], C, CI, D, N, R, c, t)
    _lost(J, R, Q, CNT, now)
    per = N[sl._PER_EPOCH, c] if N[sl._PER_EPOCH, c] else N[sl._N, c]
    if CI[sl._NEXT, c] % per == 0:  # its epoch's last: no more visits (a server may close its epoch)
        _changed(J, Q, CNT, now)
    if C[sl._ARRIVAL, c] != -math.inf:
        sent = C[sl._SENT_AT, c]
        first, last = R[2][sl._LEG0, c], R[2][sl._LEG0, c] + R[2][sl._LEGS, c]
        for q in range(first + 1, last):  # micro-batches whose upload started before each handover
            if sent < R[4][sl._L_AT, q]:
                J[17][q] += 1
        j = sl.leg_at(R, c, sent)
        if R[3][sl._L_SERVER, j] != k:  # uploaded after the handover: it goes to the new server
            SJ[k, _ISSUED] -= 1
            _hand_over(J, K, Q, CNT, now, k, c, max(now, R[4][sl._L_AT, j]), 1)
            if CNT[_SYNCED]:  # ``moved`` here, ``join`` there: sent together
                J[20][k, _MOVING] = max(J[20][k, _MOVING], J[19][c])
            return
    _out_add(J, k, c)


@njit
def _fill(J, K, Q, CNT, now, k, buf):
    """``Server._fill``: send ``fwd`` to clients that joined mid-segment, while the segment has room."""
    SJ, PEND = J[0], J[13]
    n = SJ[k, _NPEND]
    for q in range(n):
        buf[q] = PEND[k, q]
    for q in range(n):
        if SJ[k, _ISSUED] >= SJ[k, _QUOTA]:
            break
        c = buf[q]
        _pend_remove(J, k, c)
        if _uni(J, k, c):
            _give(J, K, Q, CNT, now, k, c)


@njit
def _turn(J, K, Q, CNT, now, k, c, buf):
    """One turn of ``_segment_in_time``: serve ``c``'s micro-batch (or skip it), then what follows."""
    SF, SI, C, CI, D, N, R = K
    SJ, STREAM = J[0], J[18]
    _out_remove(J, k, c)
    skipped = C[sl._ARRIVAL, c] == -math.inf
    if sl.serve(SF[k], SI[k], C, CI, D, N, R, c):
        STREAM[0, CNT[_NSTREAM]], STREAM[1, CNT[_NSTREAM]] = k, c
        CNT[_NSTREAM] += 1
    C[sl._ARRIVAL, c] = np.nan
    J[20][k, _LOOK] = max(now, SF[k, sl._SFREE])  # the runtime looks at every client once this serve ends
    _lost(J, R, Q, CNT, now)
    if not J[8][k, c]:
        CNT[_ERR] = 2  # SimPy's left[c] -= 1 would raise
        return
    J[5][k, c] -= 1
    if J[5][k, c] == 0:
        _left_del(J, k, c)
    SJ[k, _SERVED] += 0 if skipped else 1
    SJ[k, _ISSUED] -= 1 if skipped else 0
    if CI[sl._NEXT, c] >= N[sl._N, c]:
        _changed(J, Q, CNT, now)  # no more work of it: servers waiting for it may end
    elif not R[2][sl._LOST, c] and _leave(J, R, k, c) <= now:
        stepped = _deferred(J, k, c)
        _hand_over(J, K, Q, CNT, now, k, c, now, 0)  # its handover passed while a micro-batch was out here
        if stepped and J[14][c, _HOME] == k and SJ[k, _ISSUED] < SJ[k, _QUOTA] and _uni(J, k, c):
            _give(J, K, Q, CNT, now, k, c)  # its legs took it back here meanwhile: it stays
    elif SJ[k, _ISSUED] < SJ[k, _QUOTA] and _uni(J, k, c):
        _give(J, K, Q, CNT, now, k, c)
    _release_deferred(J, K, Q, CNT, now, k)  # the runtime looks at every client after each micro-batch
    _fill(J, K, Q, CNT, now, k, buf)


@njit
def _segment(J, K, Q, CNT, now, k, buf):
    """The start of ``_segment_in_time``: quota, the unissued counts, the first ``fwd``'s."""
    SI = K[1]
    SJ = J[0]
    SJ[k, _QUOTA] = (SI[k, sl._EVERY] - SI[k, sl._STEPS] % SI[k, sl._EVERY]) * SI[k, sl._ACC]
    SJ[k, _ISSUED], SJ[k, _NPEND], SJ[k, _SERVED], SJ[k, _SERVING] = SJ[k, _NOUT], 0, 0, 1
    SJ[k, _GEN] += 1
    n = _left_list(J, k, buf)
    for q in range(n):
        c = buf[q]
        J[9][k, c], J[10][k, c] = J[5][k, c] - J[12][k, c], J[0][k, _GEN]
    _release_deferred(J, K, Q, CNT, now, k)  # the runtime's first look at each client releases before any fwd
    n = _left_list(J, k, buf)
    for q in range(n):
        c = buf[q]
        if SJ[k, _ISSUED] < SJ[k, _QUOTA] and _uni(J, k, c) and not J[12][k, c]:
            _give(J, K, Q, CNT, now, k, c)


@njit
def _next_turn(J, K, k):
    """The client of server ``k``'s next turn: its earliest arrival (ties: lower client)."""
    C, OUT = K[2], J[11]
    best = OUT[k, 0]
    for q in range(1, J[0][k, _NOUT]):
        c = OUT[k, q]
        if C[sl._ARRIVAL, c] < C[sl._ARRIVAL, best] or (C[sl._ARRIVAL, c] == C[sl._ARRIVAL, best] and c < best):
            best = c
    return best


@njit
def _round(J, K, Q, CNT, now, k, buf, fly):
    """``Server._round`` once the server is free: FedAvg over the clients it holds then."""
    SF, C, CI, D, R = K[0], K[2], K[3], K[4], K[6]
    t = SF[k, sl._SFREE]
    n = 0
    for c in range(D.shape[1]):
        if _holder(J, c, t) == k:
            buf[n] = c
            n += 1
    if n == 0:
        return
    for q in range(n):  # a member may have a micro-batch on its way to its next server already
        fly[q] = C[sl._ARRIVAL, buf[q]]
    sl.fedavg(SF[k], C, CI, D, R, buf, n)
    _lost(J, R, Q, CNT, now)
    for q in range(n):
        C[sl._ARRIVAL, buf[q]] = fly[q]


# -- a server's process (Server.run_in_time) and the event loop -----------------------------------------
@njit
def _top(J, K, Q, CNT, now, k):
    """The top of ``run_in_time``: the clients it holds with work left this epoch, else wait or end."""
    if CNT[_SYNCED]:  # each epoch closed with its round (sfsim.fast.splitclose)
        return splitclose.top(J, K, Q, CNT, now, k)
    SF, N = K[0], K[5]
    SJ, JC, SINCE, INO = J[0], J[14], J[2], J[12]
    for c in range(N.shape[1]):
        if JC[c, _HOME] == k and (INO[k, c] or max(SF[k, sl._SFREE], SINCE[c]) < _leave(J, K[6], k, c)):
            v = _rest(J, K, k, c) + INO[k, c]
            if v > 0:
                _left_set(J, k, c, v)
    if SJ[k, _NLEFT]:
        SJ[k, _EP], SJ[k, _PC] = _epoch_of(J, K, k), _INTER
        return False
    if not _may_join(J, K, k, -1):
        SJ[k, _FINISHED], SJ[k, _PC] = 1, _DONE_PC
        push(Q, CNT, max(SF[k, sl._END], now), NORMAL, _FINAL, k, 0)
        return True
    CNT[_TOKENS] += 1  # wait until something changes
    SJ[k, _TOKEN], SJ[k, _WAKEP], SJ[k, _WAIT] = CNT[_TOKENS], 1, _IDLE_WAIT
    return True


@njit
def _epoch_of(J, K, k):
    """``Server._epoch_of``: the epoch of the pass over ``left`` (no rounds), its clients' earliest."""
    CI, N = K[3], K[5]
    e, c = -1, J[0][k, _HEAD]
    while c >= 0:
        per = N[sl._PER_EPOCH, c] if N[sl._PER_EPOCH, c] else N[sl._N, c]
        v = (CI[sl._MB, c] if J[12][k, c] else CI[sl._NEXT, c]) // per
        e = v if e < 0 else min(e, v)
        c = J[6][k, c]
    return e


@njit
def _visit(J, K, Q, CNT, now, k):
    """``Server._visitor``: the clients are done with the pass's epoch; the runtime keeps it open while a visitor may
    still come in it (no FedAvg round before). With the closing rounds (:mod:`sfsim.fast.splitclose`) that wait is not
    replayed: error 6 (OPEN) where it would differ from closing now. True when the process waits."""
    SF, N, R = K[0], K[5], K[6]
    SJ, JC, SINCE, INO = J[0], J[14], J[2], J[12]
    e = SJ[k, _AT_EPOCH] if CNT[_SYNCED] else SJ[k, _EP]
    for c in range(N.shape[1]):
        if JC[c, _HOME] == k and (INO[k, c] or max(SF[k, sl._SFREE], SINCE[c]) < _leave(J, R, k, c)) \
                and _in_epoch(J, K, k, c, e):
            v = _rest(J, K, k, c) + INO[k, c]
            if v > 0:
                if CNT[_SYNCED]:
                    CNT[_ERR] = 6
                    return True
                _left_set(J, k, c, v)
    if SJ[k, _NLEFT]:
        SJ[k, _PC] = _INTER
        return False
    if _may_join(J, K, k, e):
        if CNT[_SYNCED]:
            CNT[_ERR] = 6
            return True
        due = splitclose._leaving(J, K, k, e)  # one held here idle, uncounted, leaves first: wait for its instant
        if due < math.inf:
            if not _until(J, Q, CNT, now, k, due, _VISIT_T):
                _release_left(J, K, Q, CNT, now, k, e)
            return SJ[k, _PC] == _VISIT_T
        CNT[_TOKENS] += 1  # wait until something changes
        SJ[k, _TOKEN], SJ[k, _WAKEP], SJ[k, _WAIT] = CNT[_TOKENS], 1, _IDLE_WAIT
        return True
    SJ[k, _RET], SJ[k, _PC] = _TOP, _ROUND
    return False


@njit
def _release_left(J, K, Q, CNT, now, k, e):
    """``Server._release_left``: hand over the held idle clients (epoch ``e``) whose leg at ``k`` has ended."""
    for c in range(K[5].shape[1]):
        if splitclose._held_idle(J, K, k, c, e) and _leave(J, K[6], k, c) <= now:
            _hand_over(J, K, Q, CNT, now, k, c, now, 0)


@njit
def _seg(J, K, Q, CNT, now, k, buf):
    """A step of ``_segment_in_time``'s loop: serve the earliest arrival (waiting for it), or wait for a mover's
    ``moved`` (with rounds), or end the segment; True when the process waits."""
    SF, SJ = K[0], J[0]
    if SJ[k, _SERVED] < SJ[k, _QUOTA] and SJ[k, _NOUT]:
        for q in range(SJ[k, _NOUT]):
            if np.isnan(K[2][sl._ARRIVAL, J[11][k, q]]):
                CNT[_ERR] = 4  # SimPy's min() or max() over a client out without an arrival would raise
                return True
        c = _next_turn(J, K, k)
        SJ[k, _CHOSEN] = c
        if _until(J, Q, CNT, now, k, max(SF[k, sl._SFREE], K[2][sl._ARRIVAL, c]), _SEG_WAKE):
            return True
        _turn(J, K, Q, CNT, now, k, c, buf)
    elif SJ[k, _SERVED] < SJ[k, _QUOTA] and J[20][k, _MOVING] > now:  # the runtime waits for the mover's ``moved``
        return _until(J, Q, CNT, now, k, J[20][k, _MOVING], _SEG_MOVE)
    else:
        SJ[k, _PC] = _SEG_END
    return False


@njit
def _resume(J, K, Q, CNT, now, k):
    """Run server ``k``'s process from its program counter until it waits (the SimPy generator's next yield)."""
    SF, SI = K[0], K[1]
    SJ, TW, buf = J[0], J[1], J[3]
    while True:
        pc = SJ[k, _PC]
        if pc == _TOP:
            if _top(J, K, Q, CNT, now, k):
                return
        elif pc == _INTER:  # _interleaved_in_time: segments while clients have work (visitors: _visit), then the round
            if SJ[k, _NLEFT]:
                _segment(J, K, Q, CNT, now, k, buf)
                SJ[k, _PC] = _SEG
            else:
                SJ[k, _PC] = _VISIT
        elif pc == _VISIT:
            if _visit(J, K, Q, CNT, now, k):
                return
        elif pc == _VISIT_T:  # the wait for a held idle client's handover: its instant (woken early: decide again)
            if now >= TW[k]:
                _release_left(J, K, Q, CNT, now, k, SJ[k, _EP])
            SJ[k, _PC] = _VISIT
        elif pc == _SEG:
            if _seg(J, K, Q, CNT, now, k, buf):
                return
        elif pc == _SEG_WAKE:
            if now < TW[k]:  # woken early: decide again
                _fill(J, K, Q, CNT, now, k, buf)
            else:
                _turn(J, K, Q, CNT, now, k, SJ[k, _CHOSEN], buf)
            SJ[k, _PC] = _SEG
        elif pc == _SEG_MOVE:
            if now < TW[k]:  # woken early: decide again
                _fill(J, K, Q, CNT, now, k, buf)
            else:  # what it does next (a step, FedAvg) starts then
                SF[k, sl._SFREE] = max(SF[k, sl._SFREE], J[20][k, _MOVING])
            SJ[k, _PC] = _SEG
        elif pc == _SEG_END:
            SJ[k, _SERVING] = 0
            sl._server_step(SF[k], SI[k])  # a partial window at the segment's end
            if SI[k, sl._STEPS] % SI[k, sl._EVERY] == 0 and SJ[k, _NLEFT]:
                SJ[k, _RET], SJ[k, _PC] = _INTER, _ROUND
            else:
                SJ[k, _PC] = _INTER
        elif pc == _ROUND or pc == _ROUND_WAKE:
            if pc == _ROUND_WAKE and now < TW[k]:
                SJ[k, _PC] = _ROUND
            elif pc == _ROUND and _until(J, Q, CNT, now, k, SF[k, sl._SFREE], _ROUND_WAKE):
                return
            else:
                _round(J, K, Q, CNT, now, k, buf, J[4])
                SJ[k, _PC] = SJ[k, _RET]
        elif splitclose.step(J, K, Q, CNT, now, k, pc):  # the epochs' closing rounds
            return
        if CNT[_ERR]:
            return


@njit
def _event(J, K, Q, CNT, now, kind, a, b):
    """Process one event of SimPy's queue (what its callbacks do)."""
    SJ = J[0]
    if kind == _SOFT:
        CNT[NSOFT] -= 1
        _tick(J, K, Q, CNT, now, a)
    elif kind == _INIT:
        _resume(J, K, Q, CNT, now, a)
    elif kind == _TIMER or kind == _WAKE:
        if b != SJ[a, _TOKEN]:
            return  # a timer or wake-up of a wait that is over: its condition ignores it
        if SJ[a, _WAIT] == _IDLE_WAIT:
            SJ[a, _WAKEP], SJ[a, _WAIT] = 0, _NO_WAIT
            _resume(J, K, Q, CNT, now, a)
        elif SJ[a, _WAIT] == _COND_WAIT and not SJ[a, _TRIG]:
            SJ[a, _TRIG] = 1  # the any_of condition triggers: the process resumes when it is processed
            push(Q, CNT, now, NORMAL, _COND, a, b)
    elif kind == _COND:
        SJ[a, _WAKEP], SJ[a, _WAIT] = 0, _NO_WAIT
        _resume(J, K, Q, CNT, now, a)
    elif kind == _FINAL:
        push(Q, CNT, now, NORMAL, _EXIT, a, 0)  # the process ends: SimPy schedules its own event
    elif kind != _EXIT:  # the epochs' closing rounds
        k = splitclose.event(J, K, Q, CNT, now, kind, a, b)
        if k >= 0:
            _resume(J, K, Q, CNT, now, k)


OPEN = ("splitlora handover: a server whose clients are done keeps its epoch open for a visitor that may still join it, "
        "with each epoch's closing round, which the SimPy engine replays only")


@njit
def run(J, K, soft, epochs):
    """The joint run: the handovers' soft timers ``soft`` (time, client), then every server's process; ``epochs``: the
    run's, each closed with its round (0: no rounds, the epochs run back to back).

    Returns ``(makespan, error)``: error 0; 1 or 2 where the SimPy run would fail or the history is
    too short; 3 when a server's loop did not finish; 6 an open epoch with closing rounds (OPEN); -1 when a rate was
    asked past what was drawn.
    """
    S = J[0].shape[0]
    Q, CNT = start(soft, _SOFT, np.arange(S), _INIT, 8)
    CNT[_SYNCED], CNT[_EPOCHS] = epochs > 0, epochs
    now = 0.0
    while len(Q) > CNT[NSOFT]:
        now, _, _, kind, a, b = heapq.heappop(Q)
        _event(J, K, Q, CNT, now, kind, a, b)
        if CNT[_ERR]:
            return now, CNT[_ERR], CNT[_NSTREAM]
        if rates.stuck(K[6][0]):
            return now, -1, CNT[_NSTREAM]
    for k in range(S):
        if not J[0][k, _FINISHED]:
            return now, 3, CNT[_NSTREAM]
    return now, 0, CNT[_NSTREAM]


def _state(job, cfg, clients: list[int], horizon: float) -> tuple:
    """Fresh kernel state ``K``, joint state ``J`` and soft timers for a run with drawn processes drawn to ``horizon``."""
    motions, S, m = job.network.motions, len(job.servers), len(clients)
    D, N = sl.layout([job.devices[i] for i in clients])
    R = sl.network_arrays([motions[i] for i in clients], horizon)
    SF = np.array([[0.0, 0.0, 0.0, s.step, s.aggregate] for s in job.servers]).reshape(S, 5)
    SI = np.array([[0, 0, cfg.accumulate, cfg.fedavg_every, bool(cfg.decompose), 0]] * S, np.int64).reshape(S, 6)
    C = np.zeros((8, m))
    C[sl._ARRIVAL] = np.nan  # nothing out
    K = (SF, SI, C, np.zeros((6, m), np.int64), D, N, R)
    SJ = np.zeros((S, 22), np.int64)
    SJ[:, _HEAD] = SJ[:, _TAIL] = -1
    H = HISTORY * max((len(motions[i].legs) for i in clients), default=1)
    JC, HT, HS = np.zeros((m, 3), np.int64), np.zeros((m, H)), np.zeros((m, H), np.int64)
    soft = []
    for c, i in enumerate(clients):
        legs = motions[i].legs
        JC[c, _HOME], JC[c, _NHIST], HS[c, 0] = legs[0].server, 1, legs[0].server
        soft += [(legs[j].at, c) for j in range(1, len(legs)) if legs[j].server != legs[j - 1].server]
    per = np.zeros((S, max(1, m)), np.int64)
    J = (SJ, np.zeros(S), np.zeros(m), np.zeros(max(1, m), np.int64), np.zeros(max(1, m)), per.copy(),
         np.full((S, max(1, m)), -1, np.int64), np.full((S, max(1, m)), -1, np.int64), per.copy(), per.copy(),
         np.full((S, max(1, m)), -1, np.int64), per.copy(), per.copy(), per.copy(), JC, HT, HS,
         np.zeros(R[3].shape[1], np.int64), np.zeros((2, max(1, int(N[sl._N].sum()))), np.int32),  # (server, client) per mb
         np.zeros(m), np.zeros((S, 4)), per.copy(), _backhaul(job), np.zeros(S, np.int64), per.copy())
    return K, J, np.array(soft, np.float64).reshape(-1, 2).T.copy()


def _backhaul(job) -> np.ndarray:
    """BH: each server's backhaul link (bandwidth, latency) and the closing round's bytes (zeros: no rounds)."""
    BH = np.zeros((len(job.servers), 3))
    if job.sync is not None:
        for k, (_, bw, lat) in enumerate(job.sync.servers):
            BH[k] = (bw, lat, job.sync.closing)
    return BH


def _mixing(job, stream: np.ndarray, clients: list[int]) -> dict:
    """Each server's stream mixing, as ``run_jointly``'s finish builds it (servers with a stream or devices)."""
    out, device = {}, np.array(clients, np.int64)
    for k, srv in enumerate(job.servers):
        mine = device[stream[1][stream[0] == k]]  # the devices of its stream, in order
        if len(mine) or any(d.server == k for d in job.devices):
            totals = np.bincount(mine, minlength=len(job.devices)).astype(np.int64)
            M, T, share, counts, touched = mixing.start(totals)
            _stream(M, T, share, counts, touched, mine)
            out[srv.name] = (mixing.value(M, T), int(totals.sum()))
    return out


@njit
def _stream(M, T, share, counts, touched, devices):
    for i in devices:
        mixing.add(M, T, share, counts, touched, i)


def replay(job, cfg) -> tuple[dict, dict, float, Closed | None]:
    """Replay SplitLoRA with handovers (``Server.run_in_time`` on every server), as :func:`sfsim.fast.splitlora.replay`,
    and with backhaul links without ``training.sync`` each epoch's closing round (:mod:`sfsim.fast.splitclose`).

    Servers have ``busy`` and, where the SimPy run measures it, ``mixing`` and ``total``. Drawn processes are
    drawn further (and the run replayed) until no question passes what was drawn. The last item: the rounds
    (None: no backhaul modelled).
    """
    epochs = int(job.sync.epochs) if job.sync is not None else 0
    motions = job.network.motions
    clients = [i for i, d in enumerate(job.devices) if d.n]
    horizon, total = rates.HORIZON, sum(job.devices[i].n for i in clients)
    while True:
        K, J, soft = _state(job, cfg, clients, horizon)
        now, err, n_stream = run(J, K, soft, epochs)
        if err != -1:
            break
        # drawn too short: draw past the latest time asked, and as far as the run's pace so far says it lasts
        horizon = max(2.0 * float(K[6][0][4][:-1].max()), 1.5 * now * total / max(1, n_stream))
    came = [k for k in range(len(job.servers)) if J[0][k, _PC] == _FBACK] if err == 3 else []
    if came:  # SimPy's Rounds says so first, at the run's end
        names = ", ".join(sorted(job.servers[k].name for k in came))
        raise SfsimError(f"backhaul: sync round {J[0][came[0], _AT_EPOCH] + 1} waited for ever (only {names} joined "
                         f"it); {STUCK}")
    if err in (1, 3):
        raise RuntimeError("splitlora handover: a server's loop did not finish" if err == 3 else
                           f"splitlora handover: the fast path's joint loop failed ({err})")
    if err == 6:
        raise Unreplayable(OPEN)
    if err:
        what = "a micro-batch served outside its server's epoch count" if err == 2 else "a client out without an arrival"
        raise Unreplayable(f"splitlora handover: {what} ({err}; a joiner with a micro-batch on its way, issue 19), a "
                           "state the fast path does not replay")
    SF, C, NI = K[0], K[2], K[6][2]
    devices = {d.name: {"busy": 0.0, "up": 0.0, "down": 0.0} for d in job.devices}
    devices.update({job.devices[i].name: sl.client_figures(C, c) for c, i in enumerate(clients)})
    sl.fill_motions([motions[i] for i in clients], K[6])
    at = {i: int(NI[sl._LEG0, c]) for c, i in enumerate(clients)}
    for i, m in motions.items():  # micro-batches whose upload started before each handover
        m.switched_at = [int(J[17][at[i] + j]) if i in at else 0 for j in range(1, len(m.legs))]
    servers = {srv.name: {"busy": float(SF[k, sl._SBUSY]), "free": float(SF[k, sl._SFREE])}
               for k, srv in enumerate(job.servers)}
    for name, (value, total) in _mixing(job, J[18][:, :n_stream], clients).items():
        servers[name].update(mixing=value, total=total)
    closed = closing._closed(job) if epochs else None
    return devices, servers, float(now), Closed(closed["bytes"], closed["rounds"]) if epochs else None
