"""Device steps of the compiled SplitFrozen loop: static devices (constant rates) as the engine's callbacks.

:func:`_pipelined` and :func:`_sequential` replay the constant-rate branches of
:func:`sfsim.schedules.splitfrozen.device_process` (the hot path); devices of the dynamic network
follow :mod:`sfsim.fast.moving`. With :data:`EPOCHS` set in ``S[_FLAGS]`` a device stops before the first
micro-batch of each later epoch (splitfrozen._gate): the step returns True and the server starts it again when it
opens that epoch (:mod:`sfsim.fast.joint`, a ``_START`` from then); else the steps return False.
"""

from __future__ import annotations

from sfsim.fast.events import (
    _AFTER_F,
    _F,
    _FLAGS,
    _GRANT,
    _NORMAL,
    _PER_DEVICE,
    _PER_EPOCH,
    _RESUMED,
    _RETRY,
    _SENT,
    _START,
    _UP_L,
    _UP_S,
    _WARM,
    _schedule,
    _send,
    _size,
    _wait_credit,
)
from sfsim.fast.jit import inline

EPOCHS = 8
"""A bit of ``S[_FLAGS]`` beside :mod:`sfsim.fast.events`' (1, 2, 4): the server opens one epoch at a time."""


@inline
def _gated(S, N, nn, j):
    """Whether device ``j``'s next micro-batch starts an epoch its server has not opened yet."""
    return (S[_FLAGS] & EPOCHS) != 0 and nn[j] % N[_PER_EPOCH, j] == 0


@inline
def _fwd_ready(D, N, j, k, f_start, link_free):
    """When device ``j`` can send micro-batch ``k``: its forward ends and its link is free."""
    fe = f_start + D[_F, j] * _size(D, N, j, k) + (D[_WARM, j] if k == 0 else 0.0)
    return fe if fe > link_free else link_free



@inline
def _pipelined(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, f_start, link_free,
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
                return False
            if credits[acct] == 0:
                _wait_credit(waiters, S, dev_wait, dev_ready, j, now)
                return False
            credits[acct] -= 1
        go = False
        k = nn[j]
        link_free[j] = now + D[_UP_S, j] * _size(D, N, j, k)
        _send(events, pending, S, F, P, link_free[j] + D[_UP_L, j], j, k)
        f_start[j] = now
        nn[j] += 1
        if nn[j] >= N[_SENT, j]:
            return False
        if _gated(S, N, nn, j):
            return True
        ready[j] = _fwd_ready(D, N, j, nn[j], f_start[j], link_free[j])


@inline
def _sequential(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, j, kind, now):
    """Device ``j`` of schedules.splitfrozen._sequential resumes."""
    if kind == _START or kind == _RESUMED:
        if kind == _RESUMED:
            nn[j] += 1
            if nn[j] >= N[_SENT, j]:
                return False
            if _gated(S, N, nn, j):
                return True
        k = nn[j]
        fx = D[_F, j] * _size(D, N, j, k) + (D[_WARM, j] if k == 0 else 0.0)
        _schedule(events, S, now + fx, _NORMAL, j * 8 + _AFTER_F)
        return False
    acct = j if S[_FLAGS] & _PER_DEVICE else 0
    if kind != _GRANT:
        if credits[acct] == 0:
            _wait_credit(waiters, S, dev_wait, dev_ready, j, now)
            return False
        credits[acct] -= 1
    k = nn[j]
    _send(events, pending, S, F, P, now + D[_UP_S, j] * _size(D, N, j, k) + D[_UP_L, j], j, k)
    return False
