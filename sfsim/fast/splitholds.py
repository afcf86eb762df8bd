"""SplitLoRA handovers on the fast path, the joint loop's state (:mod:`sfsim.fast.splitmoves` runs it).

What :class:`sfsim.schedules.splitlora.moves.Moves` and each ``Server``'s lists hold, as arrays: SimPy's wake-ups
(``Server.poke``, ``Moves.changed``, ``Server.until``: each wait's token and timer), each server's lists (``left`` in
insertion order, ``unissued``, ``out``, ``pending``) and who holds each client since when (``Server.leave``,
``rest``, ``hand_over``, ``join``; ``Moves.holder``, ``may_join``, ``tick``). ``J`` holds the joint state and ``K`` the
kernel's (:mod:`sfsim.fast.splitops`); the rows and codes are named below.
"""

from __future__ import annotations

import math

from sfsim.fast import splitops as sl
from sfsim.fast.jit import njit
from sfsim.fast.simq import NORMAL, push

_INIT, _SOFT, _TIMER, _WAKE, _COND, _FINAL, _EXIT, _AT, _SUCC, _READY, _BACK, _REV = range(12)  # event kinds
(_TOP, _INTER, _SEG, _SEG_WAKE, _SEG_END, _ROUND, _ROUND_WAKE, _DONE_PC, _EPOCH_PC, _COUNTED, _FINISH, _FJOIN, _FBACK,
 _SEG_MOVE, _LEAVING, _VISIT, _VISIT_T) = range(17)  # a server's program counter
(_PC, _RET, _ISSUED, _QUOTA, _SERVED, _CHOSEN, _WAKEP, _WAIT, _TOKEN, _TRIG, _HEAD, _TAIL, _NLEFT, _NOUT,
 _NPEND, _GEN, _FINISHED, _AT_EPOCH, _CLOSING, _SERVING, _EP, _NDEF) = range(22)  # SJ: int per server (_EP: the
# pass's epoch; _NDEF: how many clients its ``deferred`` list holds, J[24])
_NO_WAIT, _COND_WAIT, _IDLE_WAIT = range(3)  # SJ[_WAIT]
_HOME, _HOLD, _NHIST = range(3)  # JC: int per client
_TOKENS, _NSTREAM, _ERR, _RJOINS, _SYNCED, _EPOCHS = range(2, 8)  # CNT, after sfsim.fast.simq's EID and NSOFT
_MOVING, _BH_FREE, _ARRIVE, _LOOK = range(4)  # SX: float per server (a mover's join due; its backhaul lane; its round's
# arrival; when it looks at every client after the serve it is in: InTime.look)
_BH_BW, _BH_LAT, _BH_BYTES = range(3)  # BH: float per server (its backhaul link, the closing round's bytes)
HISTORY = 4
"""History slots per leg of a client (who held it since when); a run that needs more fails."""


# -- SimPy's queue and wake-ups ------------------------------------------------------------------------
@njit
def _poke(J, Q, CNT, now, k):
    """``Server.poke``: succeed the server's wake-up event if it waits on one not yet triggered."""
    if J[0][k, _WAKEP]:
        J[0][k, _WAKEP] = 0
        push(Q, CNT, now, NORMAL, _WAKE, k, J[0][k, _TOKEN])


@njit
def _changed(J, Q, CNT, now):
    """``Moves.changed``: wake every server waiting for something to change."""
    for k in range(J[0].shape[0]):
        _poke(J, Q, CNT, now, k)


@njit
def _lost(J, R, Q, CNT, now):
    """A primitive lost a client (``Server._outlasts`` calls ``Moves.changed``): wake the servers now."""
    if R[5][0]:
        R[5][0] = 0
        _changed(J, Q, CNT, now)


@njit
def _until(J, Q, CNT, now, k, t, pc):
    """``Server.until(t)``: False when ``t`` is not later than now; else the process waits (resumes at ``pc``)."""
    SJ, TW = J[0], J[1]
    if t <= now:
        return False
    CNT[_TOKENS] += 1
    SJ[k, _TOKEN], SJ[k, _WAKEP], SJ[k, _WAIT], SJ[k, _TRIG], SJ[k, _PC] = CNT[_TOKENS], 1, _COND_WAIT, 0, pc
    TW[k] = t
    push(Q, CNT, t, NORMAL, _TIMER, k, CNT[_TOKENS])
    return True


# -- a server's lists: left (ordered), unissued, out, pending ----------------------------------------------
@njit
def _left_set(J, k, c, v):
    SJ, LV, LN, LP, INL = J[0], J[5], J[6], J[7], J[8]
    LV[k, c] = v
    if INL[k, c]:
        return
    INL[k, c], LN[k, c], LP[k, c] = 1, -1, SJ[k, _TAIL]
    if SJ[k, _TAIL] >= 0:
        LN[k, SJ[k, _TAIL]] = c
    else:
        SJ[k, _HEAD] = c
    SJ[k, _TAIL] = c
    SJ[k, _NLEFT] += 1


@njit
def _left_del(J, k, c):
    SJ, LN, LP, INL = J[0], J[6], J[7], J[8]
    if not INL[k, c]:
        return
    INL[k, c] = 0
    p, q = LP[k, c], LN[k, c]
    if p >= 0:
        LN[k, p] = q
    else:
        SJ[k, _HEAD] = q
    if q >= 0:
        LP[k, q] = p
    else:
        SJ[k, _TAIL] = p
    SJ[k, _NLEFT] -= 1


@njit
def _left_list(J, k, buf):
    """The clients in ``left`` in insertion order (a snapshot, ``list(self.left)``), into ``buf``; their count."""
    SJ, LN = J[0], J[6]
    n, c = 0, SJ[k, _HEAD]
    while c >= 0:
        buf[n] = c
        n += 1
        c = LN[k, c]
    return n


@njit
def _uni(J, k, c):
    """``self.unissued.get(c)`` (0 when absent: set in an earlier segment, or popped)."""
    return J[9][k, c] if J[10][k, c] == J[0][k, _GEN] else 0


@njit
def _out_add(J, k, c):
    SJ, OUT, INO = J[0], J[11], J[12]
    OUT[k, SJ[k, _NOUT]], INO[k, c] = c, 1
    SJ[k, _NOUT] += 1


@njit
def _out_remove(J, k, c):
    SJ, OUT, INO = J[0], J[11], J[12]
    for q in range(SJ[k, _NOUT]):
        if OUT[k, q] == c:  # SimPy's list.remove: the order stays (a recount takes joiners in it)
            for r in range(q, SJ[k, _NOUT] - 1):
                OUT[k, r] = OUT[k, r + 1]
            INO[k, c] = 0
            SJ[k, _NOUT] -= 1
            return


@njit
def _pend_remove(J, k, c):
    SJ, PEND = J[0], J[13]
    n = SJ[k, _NPEND]
    for q in range(n):
        if PEND[k, q] == c:
            for r in range(q, n - 1):
                PEND[k, r] = PEND[k, r + 1]
            SJ[k, _NPEND] = n - 1
            return


@njit
def _drop(J, k, c):
    """``Server._drop``: ``c`` leaves this server's lists."""
    _left_del(J, k, c)
    J[10][k, c] = -1
    _pend_remove(J, k, c)


# -- holding: Server.leave, rest, hand_over, join; Moves.holder, may_join, tick ---------------------------
@njit
def _leave(J, R, k, c):
    """When ``c`` leaves server ``k``: its next leg on another server (``inf``: never)."""
    NI, LI, LF = R[2], R[3], R[4]
    first = NI[sl._LEG0, c]
    for j in range(first + J[14][c, _HOLD] + 1, first + NI[sl._LEGS, c]):
        if LI[sl._L_SERVER, j] != k:
            return LF[sl._L_AT, j]
    return math.inf


@njit
def _rest(J, K, k, c):
    """Micro-batches of ``c``'s current epoch not yet issued."""
    CI, N = K[3], K[5]
    per = N[sl._PER_EPOCH, c] if N[sl._PER_EPOCH, c] else N[sl._N, c]
    base = CI[sl._MB, c] if J[12][k, c] else CI[sl._NEXT, c]
    return min((base // per + 1) * per, N[sl._N, c]) - CI[sl._NEXT, c]


@njit
def _holder(J, c, t):
    """The server holding ``c`` at ``t`` (a join at exactly ``t`` holds)."""
    JC, HT, HS = J[14], J[15], J[16]
    h = JC[c, _NHIST] - 1
    while h > 0 and HT[c, h] > t:
        h -= 1
    return HS[c, h]


@njit
def _join(J, K, Q, CNT, now, k, c, outstanding):
    """``Server.join``: ``c`` joins server ``k`` (with a micro-batch on its way there when ``outstanding``)."""
    SJ = J[0]
    if outstanding:
        _out_add(J, k, c)
        SJ[k, _ISSUED] += 1
        _pend_remove(J, k, c)  # joined here idle already (it came back before its old server's fwd): now busy
    if SJ[k, _NLEFT] or outstanding and SJ[k, _SERVING]:  # mid-epoch: the rest of its own epoch joins this one
        r = _rest(J, K, k, c)
        _left_set(J, k, c, r + outstanding)
        J[9][k, c], J[10][k, c] = r, J[0][k, _GEN]
        if r and not outstanding:
            J[13][k, SJ[k, _NPEND]] = c
            SJ[k, _NPEND] += 1
        if J[5][k, c] == 0:
            _left_del(J, k, c)
    _poke(J, Q, CNT, now, k)


@njit
def _hand_over(J, K, Q, CNT, now, k, c, since, outstanding):
    """``Server.hand_over``: from ``since`` on ``c`` is held by the server of the leg holding then."""
    R = K[6]
    JC, SINCE, HT, HS = J[14], J[2], J[15], J[16]
    j = sl.leg_at(R, c, since)
    dest = R[3][sl._L_SERVER, j]
    JC[c, _HOLD], SINCE[c] = j - R[2][sl._LEG0, c], since
    if dest == k and not outstanding:  # back here already (A -> B -> A): nothing moves
        return
    J[19][c] = _join_arrival(K, c, since, outstanding) if CNT[_SYNCED] else since
    _drop(J, k, c)
    JC[c, _HOME] = dest
    h = JC[c, _NHIST]
    if h == HT.shape[1]:
        CNT[_ERR] = 1
        return
    HT[c, h], HS[c, h] = since, dest
    JC[c, _NHIST] = h + 1
    _join(J, K, Q, CNT, now, dest, c, outstanding)
    _changed(J, Q, CNT, now)


@njit
def _join_arrival(K, c, since, outstanding):
    """``Server._join_arrival``: when ``c``'s ``join`` reaches its new server (with a micro-batch on its way: at its
    upload's start; else after the old server's ``release`` came down and the client's backward): latencies only."""
    C, R = K[2], K[6]
    LF = R[4]
    if outstanding:
        return C[sl._SENT_AT, c] + LF[sl._L_UP_L, sl.leg_at(R, c, C[sl._SENT_AT, c])]
    start = max(since, C[sl._DOWN_FREE, c])
    got = max(start + LF[sl._L_DOWN_L, sl.leg_at(R, c, start)], C[sl._FREE, c])
    start = max(got, C[sl._UP_FREE, c])
    return start + LF[sl._L_UP_L, sl.leg_at(R, c, start)]


@njit
def _in_epoch(J, K, k, c, e):
    """``Server._in_epoch``: whether ``c``'s next micro-batch (or the one it has out at ``k``) is of epoch ``e``."""
    CI, N = K[3], K[5]
    per = N[sl._PER_EPOCH, c] if N[sl._PER_EPOCH, c] else N[sl._N, c]
    return (CI[sl._MB, c] if J[12][k, c] else CI[sl._NEXT, c]) // per == e


@njit
def _may_join(J, K, k, e):
    """``Moves.may_join``: True while some client with work left (in epoch ``e``; -1: any) may still come to ``k``."""
    CI, N, R = K[3], K[5], K[6]
    NI, LI = R[2], R[3]
    for c in range(N.shape[1]):
        per = N[sl._PER_EPOCH, c] if N[sl._PER_EPOCH, c] else N[sl._N, c]
        if NI[sl._LOST, c] or CI[sl._NEXT, c] >= (N[sl._N, c] if e < 0 else min((e + 1) * per, N[sl._N, c])):
            continue
        first = NI[sl._LEG0, c]
        for j in range(first + J[14][c, _HOLD] + 1, first + NI[sl._LEGS, c]):
            if LI[sl._L_SERVER, j] == k and LI[sl._L_SERVER, j - 1] != k:
                return True
    return False


@njit
def _look_at(J, K, Q, CNT, now, k, c):
    """``InTime.look_at``: ``c``'s leg at ``k`` ends now while it is idle there and counted in its epoch: released at
    the end of the serve ``k`` is in, else deferred to ``k``'s next look (:func:`_release_deferred`)."""
    SJ, DEF = J[0], J[24]
    if J[20][k, _LOOK] > now:
        _hand_over(J, K, Q, CNT, now, k, c, J[20][k, _LOOK], 0)
        return
    for q in range(SJ[k, _NDEF]):
        if DEF[k, q] == c:
            return
    DEF[k, SJ[k, _NDEF]] = c
    SJ[k, _NDEF] += 1


@njit
def _deferred(J, k, c):
    """Whether ``c`` is in server ``k``'s ``deferred`` list."""
    for q in range(J[0][k, _NDEF]):
        if J[24][k, q] == c:
            return True
    return False


@njit
def _release_deferred(J, K, Q, CNT, now, k):
    """``InTime._release_deferred``: release now the deferred idle clients whose leg at ``k`` has ended (one whose legs
    took it back here stays); the list empties."""
    SF, CI, N, R = K[0], K[3], K[5], K[6]
    SJ, DEF = J[0], J[24]
    for q in range(SJ[k, _NDEF]):
        c = DEF[k, q]
        if J[14][c, _HOME] == k and not J[12][k, c] and not R[2][sl._LOST, c] and CI[sl._NEXT, c] < N[sl._N, c] \
                and J[8][k, c] and _leave(J, R, k, c) <= now:
            _hand_over(J, K, Q, CNT, now, k, c, max(now, SF[k, sl._SFREE]), 0)
    SJ[k, _NDEF] = 0


@njit
def _tick(J, K, Q, CNT, now, c):
    """``Moves.tick``: a handover's instant; the client leaves its server now if it is idle there and not counted in
    its epoch. One counted there is released when the server next looks at it (:func:`_look_at`)."""
    CI, N, R = K[3], K[5], K[6]
    k = J[14][c, _HOME]
    if R[2][sl._LOST, c] or CI[sl._NEXT, c] >= N[sl._N, c] or J[12][k, c] or _leave(J, R, k, c) > now \
            or J[0][k, _CLOSING]:  # in its epoch's last rounds: its next epoch releases the client
        return
    if J[8][k, c]:
        _look_at(J, K, Q, CNT, now, k, c)
        return
    _hand_over(J, K, Q, CNT, now, k, c, now, 0)

