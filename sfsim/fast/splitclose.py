"""SplitLoRA handovers on the fast path with each epoch's closing round (no ``training.sync``, backhaul links).

``Server.run_in_time`` with a :class:`sfsim.network.backhaul.ServerRounds` whose ``every`` is None: the server trains
each epoch over the clients it holds (``_in_epoch``), waits for a visitor's ``join`` (``_idle_until``: a timer that
succeeds an event, then the condition of ``ServerRounds.idle``), answers nothing while it waits for one that may come
(``ServerRounds.idle``: a condition on its wake-up), and ends the epoch with the closing round
(``ServerRounds.finish``: a timer to its free time, then :meth:`sfsim.network.backhaul.Rounds.join`; the last server
to join schedules the average's readiness, which schedules each server's receive, which succeeds its event). The next
epoch releases the clients whose leg ended meanwhile (``_release_due``). Here these are the program counters of
:mod:`sfsim.fast.splitmoves`' state machine that only a run with the rounds reaches (:func:`step`) and the events they
schedule (:func:`event`), in SimPy's order; a server's backhaul lane serves its send and receive as
:class:`sfsim.engine.core.FifoLane` does.
"""

from __future__ import annotations

import math

from sfsim.fast import splitops as sl
from sfsim.fast.jit import njit
from sfsim.fast.simq import NORMAL, push
from sfsim.fast.splitholds import (
    _ARRIVE,
    _AT,
    _AT_EPOCH,
    _BACK,
    _BH_BW,
    _BH_BYTES,
    _BH_FREE,
    _BH_LAT,
    _CLOSING,
    _COND_WAIT,
    _COUNTED,
    _DONE_PC,
    _EPOCH_PC,
    _EPOCHS,
    _FBACK,
    _FINAL,
    _FINISH,
    _FINISHED,
    _FJOIN,
    _HOME,
    _INTER,
    _LEAVING,
    _NOUT,
    _PC,
    _READY,
    _REV,
    _RJOINS,
    _SUCC,
    _TOKEN,
    _TOKENS,
    _TOP,
    _TRIG,
    _WAIT,
    _WAKE,
    _WAKEP,
    _hand_over,
    _in_epoch,
    _leave,
    _left_set,
    _may_join,
    _rest,
)


@njit
def _wait(J, CNT, k, t, pokeable, pc):
    """The process waits on a condition (``ServerRounds.idle``'s ``invited | wake``) until ``t``'s event or a poke."""
    SJ = J[0]
    CNT[_TOKENS] += 1
    SJ[k, _TOKEN], SJ[k, _WAKEP], SJ[k, _WAIT], SJ[k, _TRIG], SJ[k, _PC] = CNT[_TOKENS], pokeable, _COND_WAIT, 0, pc
    J[1][k] = t
    return CNT[_TOKENS]


@njit
def top(J, K, Q, CNT, now, k):
    """The top of ``run_in_time``'s epoch: the clients it holds with work left in it (``counts``, kept aside until the
    first ``join`` is here), else wait for a visitor, or the epoch's end; True when the process waits."""
    SF, N, R = K[0], K[5], K[6]
    SJ, JC, SINCE, INO, CV = J[0], J[14], J[2], J[12], J[21]
    e = SJ[k, _AT_EPOCH]
    n, t = 0, math.inf
    for c in range(N.shape[1]):
        if JC[c, _HOME] == k and (INO[k, c] or max(SF[k, sl._SFREE], SINCE[c]) < _leave(J, R, k, c)) \
                and _in_epoch(J, K, k, c, e):
            v = _rest(J, K, k, c) + INO[k, c]
            if v > 0:
                CV[k, c] = v
                n += 1
                if R[1][sl._START, c] < math.inf:  # one never online: the runtime's leaves at once
                    t = min(t, max(SINCE[c], J[19][c]))
    if n:
        t = 0.0 if t == math.inf else t
        if t > now:  # visitors only, not there yet: ``_idle_until`` (succeed_at: a timer, then the event)
            push(Q, CNT, t, NORMAL, _SUCC, k, _wait(J, CNT, k, t, 0, _COUNTED))
            return True
        SJ[k, _PC] = _COUNTED
        return False
    if not _may_join(J, K, k, e):
        due = _leaving(J, K, k, e)
        if due == math.inf:
            SJ[k, _PC] = _FINISH
            return False
        if due > now:  # ``_idle_until`` the handover's instant (succeed_at: a timer, then the event)
            push(Q, CNT, due, NORMAL, _SUCC, k, _wait(J, CNT, k, due, 0, _LEAVING))
            return True
        SJ[k, _PC] = _LEAVING
        return False
    _wait(J, CNT, k, math.inf, 1, _TOP)  # ServerRounds.idle: nobody opens a round without training.sync
    return True


@njit
def _held_idle(J, K, k, c, e):
    """``Server._held_idle``: whether ``c`` is held by ``k``, idle, with work left in epoch ``e`` (and not counted)."""
    return J[14][c, _HOME] == k and not J[12][k, c] and not K[6][2][sl._LOST, c] \
        and K[3][sl._NEXT, c] < K[5][sl._N, c] and _in_epoch(J, K, k, c, e) and _rest(J, K, k, c) > 0


@njit
def _leaving(J, K, k, e):
    """``Server._leaving``: when the first held idle client with work left in epoch ``e`` leaves (``inf``: none)."""
    t = math.inf
    for c in range(K[5].shape[1]):
        if _held_idle(J, K, k, c, e):
            t = min(t, _leave(J, K[6], k, c))
    return t


@njit
def _recount(J, K, k):
    """``_recount`` after the wait for a visitor's ``join``: a counted client that left meanwhile is no longer counted,
    one out here that joined meanwhile is (the rest of its epoch and that one); the counts go into ``left`` (the counted
    in client order, then the joined in ``out``'s order). Returns their number."""
    CV, OUT = J[21], J[11]
    n = 0
    for c in range(CV.shape[1]):
        if CV[k, c] and J[14][c, _HOME] == k:
            _left_set(J, k, c, CV[k, c])
            n += 1
        CV[k, c] = 0
    for q in range(J[0][k, _NOUT]):
        c = OUT[k, q]
        if J[14][c, _HOME] == k and not J[8][k, c]:
            _left_set(J, k, c, _rest(J, K, k, c) + 1)
            n += 1
    return n


@njit
def step(J, K, Q, CNT, now, k, pc):
    """Run one of the rounds' program counters; True when the process waits."""
    SF, N = K[0], K[5]
    SJ, SX, BH = J[0], J[20], J[22]
    if pc == _EPOCH_PC:  # the next epoch starts: release the clients whose leg here ended during the last rounds
        for c in range(N.shape[1]):
            if J[14][c, _HOME] == k and not J[12][k, c] and not K[6][2][sl._LOST, c] \
                    and K[3][sl._NEXT, c] < N[sl._N, c] and _leave(J, K[6], k, c) <= now:
                _hand_over(J, K, Q, CNT, now, k, c, now, 0)
        SJ[k, _PC] = _TOP
    elif pc == _LEAVING:  # ``_release_left``: hand over the held idle clients whose leg here has ended, then decide again
        for c in range(N.shape[1]):
            if _held_idle(J, K, k, c, SJ[k, _AT_EPOCH]) and _leave(J, K[6], k, c) <= now:
                _hand_over(J, K, Q, CNT, now, k, c, now, 0)
        SJ[k, _PC] = _TOP
    elif pc == _COUNTED:  # _recount, then _interleaved_in_time(counts): ``left`` is the counts, in SimPy's order
        SJ[k, _PC] = _INTER if _recount(J, K, k) else _TOP
    elif pc == _FINISH:  # ServerRounds.finish: at its free time (a timer when later)
        SJ[k, _CLOSING], SJ[k, _PC] = 1, _FJOIN
        if SF[k, sl._SFREE] > now:
            push(Q, CNT, SF[k, sl._SFREE], NORMAL, _AT, k, 0)
            return True
        return False
    elif pc == _FJOIN:  # Rounds.join: its send on its backhaul lane; the last to join schedules the average
        start = max(now, SX[k, _BH_FREE])
        SX[k, _BH_FREE] = start + BH[k, _BH_BYTES] * 8.0 / BH[k, _BH_BW]
        SX[k, _ARRIVE] = SX[k, _BH_FREE] + BH[k, _BH_LAT]
        J[23][CNT[_RJOINS]] = k
        CNT[_RJOINS] += 1
        if CNT[_RJOINS] == SJ.shape[0]:
            ready = SX[J[23][0], _ARRIVE]
            for q in range(1, SJ.shape[0]):
                ready = max(ready, SX[J[23][q], _ARRIVE])
            push(Q, CNT, ready, NORMAL, _READY, 0, 0)
        SJ[k, _PC] = _FBACK
    return SJ[k, _PC] == _FBACK or SJ[k, _PC] == _FJOIN  # waits for the average (or for its timer)


@njit
def event(J, K, Q, CNT, now, kind, a, b):
    """An event of the rounds; returns the server to resume (-1: none)."""
    SF, SJ, SX, BH = K[0], J[0], J[20], J[22]
    if kind == _SUCC:  # the timer of succeed_at: the event it succeeds is processed next
        push(Q, CNT, now, NORMAL, _WAKE, a, b)
    elif kind == _AT:
        return a
    elif kind == _READY:  # Rounds._send_back: each server receives the average, in join order
        for q in range(SJ.shape[0]):
            j = J[23][q]
            start = max(now, SX[j, _BH_FREE])
            SX[j, _BH_FREE] = start + BH[j, _BH_BYTES] * 8.0 / BH[j, _BH_BW]
            push(Q, CNT, SX[j, _BH_FREE] + BH[j, _BH_LAT], NORMAL, _BACK, j, 0)
        CNT[_RJOINS] = 0
    elif kind == _BACK:  # succeed_at's timer: the join's event is processed next
        push(Q, CNT, now, NORMAL, _REV, a, 0)
    elif kind == _REV:  # the round is back: the next epoch, or the run's end
        SF[a, sl._SFREE] = now
        SJ[a, _CLOSING] = 0
        SJ[a, _AT_EPOCH] += 1
        if SJ[a, _AT_EPOCH] < CNT[_EPOCHS]:
            SJ[a, _PC] = _EPOCH_PC
            return a
        SJ[a, _FINISHED], SJ[a, _PC] = 1, _DONE_PC
        push(Q, CNT, max(SF[a, sl._END], now), NORMAL, _FINAL, a, 0)
    return -1
