"""Devices of the dynamic network in the compiled SplitFrozen loop: varying uplinks, pause and drop.

One device step replays :func:`sfsim.schedules.splitfrozen.device_process` for a device on one leg
(a device that hands over runs :func:`sfsim.fast.joint._mover`, which shares :func:`_ready`) whose uplink varies or that has availability: its forward under ``pause``, its
credit wait with the drop deadline (:func:`sfsim.schedules.splitfrozen._acquire`), its send
integrated over the uplink's rate (:mod:`sfsim.fast.rates`), and its exit (the micro-batches it
will not send are withdrawn from the server). Events are those the SimPy process queues, in the
same order: a timer at its ready time (``_RETRY``), a credit granted (``_GRANT``), a wait cancelled
at the deadline (``_AFTER_F``, a kind static devices use otherwise), the release of a sequential
device (``_RESUMED``); soft timers (:meth:`sfsim.engine.core.Engine.soft_at`) are alarms numbered
``device + 1`` and do not keep the run going.

State ``Y`` = ``(DY, YI, YF, YS, YN, tot)``: per local device its row (-1: a static device), per
row the rate nodes (uplink, pause), start, stop, bits of a full micro-batch and latency, the
seconds its uplink sent, its soft timer's event id and kind and the micro-batches it sent; and
per device the micro-batches the server still expects (``tot``).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast.events import (
    _AFTER_F,
    _ALARM,
    _CODE_BITS,
    _DEV_MASK,
    _EID,
    _F,
    _FLAGS,
    _GRANT,
    _N,
    _NORMAL,
    _NSOFT,
    _NWAITERS,
    _PER_DEVICE,
    _RESUMED,
    _RETRY,
    _SENT,
    _SEQUENTIAL,
    _START,
    _UNCLAIMED,
    _WARM,
    _give_back,
    _schedule,
    _send,
    _size,
    _wait_credit,
    _wake,
    soft_room,
)
from sfsim.fast.heap import remove
from sfsim.fast.jit import njit
from sfsim.fast.rates import next_online, online, span

_UP, _PAUSE = range(2)  # YI columns: rate nodes
_START_AT, _STOP, _BITS, _LAT = range(4)  # YF columns
_SOFT_EID, _SOFT_GIVE, _SENT_OUT = range(3)  # YN columns
_BEGIN, _ACQUIRE, _SEND = range(3)


@njit
def _soft(events, S, Y, y, j, t, give):
    """A soft timer of device ``j`` (row ``y``) at ``t``: cancel its credit wait, or give back its credit."""
    YN = Y[4]
    soft_room(events, S, Y[0], YN)
    YN[y, _SOFT_EID] = S[_EID]
    YN[y, _SOFT_GIVE] = give
    S[_NSOFT] += 1
    _schedule(events, S, t, _NORMAL, (j + 1) * 8 + _ALARM)


@njit
def _left(events, S, N, Y, idle, nn, j, y, now):
    """Device ``j`` ends having sent ``nn[j]``: the rest will not come (ServerPool.withdraw)."""
    tot, YN = Y[5], Y[4]
    YN[y, _SENT_OUT] = nn[j]
    k = N[_SENT, j] - nn[j]
    if k > 0:
        k = N[_N, j] - nn[j]  # with the cache (sent < n) its replays go too (splitfrozen._left)
        tot[j] -= k
        S[_UNCLAIMED] -= k
        if S[_UNCLAIMED] == 0:
            _wake(events, S, idle, now)


@njit
def soft_timer(events, waiters, S, credits, dev_wait, dev_ready, Y, key, j, now):
    """Soft timer of device ``j`` fires: if still its latest, cancel its wait (Credits.cancel) or give back."""
    S[_NSOFT] -= 1
    y = Y[0][j]
    YN = Y[4]
    if key >> _CODE_BITS != YN[y, _SOFT_EID]:
        return  # an earlier wait's timer: that wait has ended
    if YN[y, _SOFT_GIVE]:
        _give_back(events, waiters, S, credits, dev_wait, dev_ready, j, now)
        return
    if S[_FLAGS] & _PER_DEVICE:
        if not dev_wait[j]:
            return
        dev_wait[j] = False
    else:
        pos = -1
        for q in range(S[_NWAITERS]):
            if int(waiters[1, q]) & _DEV_MASK == j:
                pos = q
                break
        if pos < 0:
            return  # granted already, or told to try again
        remove(waiters, S, _NWAITERS, pos)
    _schedule(events, S, now, _NORMAL, j * 8 + _AFTER_F)


@njit
def _ready(D, N, RP, nn, f_start, link_free, ready, pause, j):
    """``ready[j]``: device ``j``'s forward done (paused offline) and its link free, at an online instant."""
    n = nn[j]
    fx = D[_F, j] * _size(D, N, j, n) + (D[_WARM, j] if n == 0 else 0.0)
    f_end = f_start[j] + (fx if pause < 0 else span(RP, pause, f_start[j], fx, 1.0))
    r = max(f_end, link_free[j])
    if pause >= 0 and r < np.inf:
        r = next_online(RP, pause, r)
    ready[j] = r


@njit
def _acquire(events, waiters, S, N, Y, credits, dev_wait, dev_ready, nn, ready, idle, j, y, stop, now):
    """Take a credit at or after ``ready[j]`` and before ``stop`` (splitfrozen._acquire); True when taken now.

    Else the device waits (a timer, or queued for a credit with a soft timer at ``stop``) or has left.
    """
    r = ready[j]
    if max(r, now) >= stop:
        _left(events, S, N, Y, idle, nn, j, y, now)
        return False
    acct = j if S[_FLAGS] & _PER_DEVICE else 0
    if r > now:
        if credits[acct] > 0:
            _schedule(events, S, r, _NORMAL, j * 8 + _RETRY)
            return False
        _wait_credit(waiters, S, dev_wait, dev_ready, j, r)
    elif credits[acct] > 0:
        credits[acct] -= 1
        return True
    else:
        _wait_credit(waiters, S, dev_wait, dev_ready, j, now)
    if stop < np.inf:
        _soft(events, S, Y, y, j, stop, 0)
    return False


@njit
def moving(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, f_start, link_free, ready,
           idle, Y, RP, j, kind, now):
    """Device ``j`` of the dynamic network resumes (started, a timer, granted, cancelled or released)."""
    y = Y[0][j]
    YI, YF, YS = Y[1], Y[2], Y[3]
    stop = YF[y, _STOP]
    step = _ACQUIRE
    if kind == _START or kind == _RESUMED:
        f_start[j] = YF[y, _START_AT] if kind == _START else now
        if nn[j] >= N[_SENT, j] or f_start[j] == np.inf:
            _left(events, S, N, Y, idle, nn, j, y, now)
            return
        step = _BEGIN
    elif kind == _AFTER_F:
        _left(events, S, N, Y, idle, nn, j, y, now)
        return
    elif kind == _GRANT:
        if now >= stop:  # granted at the deadline: the send would start after it
            _give_back(events, waiters, S, credits, dev_wait, dev_ready, j, now)
            _left(events, S, N, Y, idle, nn, j, y, now)
            return
        step = _SEND
    pause = YI[y, _PAUSE]
    while True:
        if step == _BEGIN:
            _ready(D, N, RP, nn, f_start, link_free, ready, pause, j)
        if step != _SEND and not _acquire(events, waiters, S, N, Y, credits, dev_wait, dev_ready, nn, ready, idle,
                                          j, y, stop, now):
            return
        n = nn[j]
        end = now + span(RP, YI[y, _UP], now, YF[y, _BITS], _size(D, N, j, n))
        if end > stop or end == np.inf:  # cut off mid-send: the credit comes back when it leaves
            if end == np.inf:
                _give_back(events, waiters, S, credits, dev_wait, dev_ready, j, now)
            else:
                _soft(events, S, Y, y, j, stop, 1)
            _left(events, S, N, Y, idle, nn, j, y, now)
            return
        YS[y] += end - now if pause < 0 else online(RP, pause, now, end)
        link_free[j] = end
        _send(events, pending, S, F, P, end + YF[y, _LAT], j, n)
        nn[j] = n + 1
        if S[_FLAGS] & _SEQUENTIAL:
            return  # the worker releases it when this micro-batch's W ends
        f_start[j] = now
        if nn[j] >= N[_SENT, j]:
            _left(events, S, N, Y, idle, nn, j, y, now)
            return
        step = _BEGIN
