"""One server's epochs opened one at a time in the single-server kernel (:mod:`sfsim.fast.kernel`).

The runtime's SplitFrozen server trains each epoch out (``trainer.run.runner``: one ``train_epoch`` per epoch), waits
its epoch-end wait when ``training.eval_samples`` is set, and only then sends each device the next epoch's ``start``
over its downlink; the SimPy engine replays that with :meth:`sfsim.engine.worker.WorkerLoop.by_epochs`. Here, as
:mod:`sfsim.fast.rounds` does for the joint loop, with its state in ``EP`` (int64): the epoch open now, the epochs,
the micro-batches of an epoch, and the devices waiting for the next epoch's start (two queues by the epoch's parity,
their lengths in ``EP[3]`` and ``EP[4]``, their devices in ``GQ``):

- a device that reaches an epoch its server has not opened stops (:data:`sfsim.fast.devices.EPOCHS`) and queues
  (:func:`gate`);
- the server's last worker ends the epoch (:func:`ended`): its wait, then :func:`open_epoch` (``WAITED``), or at once;
- the opening (``WorkerLoop._next_epoch``): the epoch's micro-batches, the ``pool`` policy's senders, its workers
  afresh (urgent starts), the epoch's start event (``GO``), then each device's first cached micro-batch of it;
- the start (:func:`go`): the queued devices forward, in the order they came, once their ``start`` has come (one
  downlink latency later: ``splitfrozen._Pipelined._epoch``, or the process's resume).

Events past the devices: ``m * 8 + _START`` is ``GO``, ``(m + 1) * 8 + _START`` is ``WAITED``.
"""

from __future__ import annotations

import numpy as np

from sfsim.fast.devices import EPOCHS, _pipelined, _sequential
from sfsim.fast.events import (
    _DOWN_L,
    _FLAGS,
    _N,
    _NEXITED,
    _NORMAL,
    _PER_EPOCH,
    _POLICY,
    _SCOUNT,
    _SENT,
    _SEQUENTIAL,
    _SLIMIT,
    _START,
    _UNCLAIMED,
    _URGENT,
    _WORKER,
    POOL,
    _push,
    _schedule,
    change,
)
from sfsim.fast.jit import inline, njit

EP_NOW, EP_EPOCHS, EP_UNCL, EP_N0 = 0, 1, 2, 3
"""Slots of ``EP``: the epoch open now, the epochs, micro-batches of an epoch, the first queue's length."""


@inline
def by_epochs(S, N, P, epochs):
    """``EP`` of a server whose devices' micro-batches are ``epochs`` equal epochs; more than one: the first epoch's
    micro-batches and the ``pool`` policy's senders (WorkerLoop.by_epochs; :func:`sfsim.fast.synced._by_epochs`)."""
    EP = np.zeros(5, np.int64)
    EP[EP_EPOCHS] = epochs
    if epochs > 1:
        S[_FLAGS] |= EPOCHS
        EP[EP_UNCL] = (N[_N] // epochs).sum()
        S[_UNCLAIMED] = EP[EP_UNCL]
        if S[_POLICY] == POOL:
            S[_SCOUNT] = 0
            for j in range(N.shape[1]):
                P[0, j] = N[_N, j] // epochs if N[_N, j] > 0 else 0
                P[2, j] = 1 if P[0, j] > 0 and P[1, j] < S[_SLIMIT] else 0
                S[_SCOUNT] += P[2, j]
    return EP


@inline
def gate(GQ, EP, N, nn, j):
    """Device ``j`` waits for the start of the epoch of its next micro-batch (splitfrozen._gate)."""
    par = (nn[j] // N[_PER_EPOCH, j]) & 1
    GQ[par, EP[EP_N0 + par]] = j
    EP[EP_N0 + par] += 1


@inline
def ended(events, S, EP, wait, count, m, now):
    """After a worker's step: when it was the server's last and an epoch is left, the epoch is over
    (WorkerLoop._epoch_end): True to open the next one now, else its wait ends it (``WAITED``)."""
    if S[_NEXITED] != count or EP[EP_NOW] + 1 >= EP[EP_EPOCHS]:
        return False
    if wait <= 0:
        return True
    _schedule(events, S, now + wait, _NORMAL, (m + 1) * 8 + _START)
    return False


@njit
def open_epoch(events, pending, S, F, N, P, W, WF, EP, now):
    """The server opens its next epoch (WorkerLoop._next_epoch; :func:`sfsim.fast.rounds.open_epoch` and
    :func:`sfsim.fast.joint._replays` in the joint loop). Compiled on its own: a one-epoch run never calls it."""
    m, count = N.shape[1], W.shape[1]
    EP[EP_NOW] += 1
    e = EP[EP_NOW]
    S[_UNCLAIMED] = EP[EP_UNCL]
    S[_NEXITED] = 0
    if S[_POLICY] == POOL:  # the mixing pool's "could still send": this epoch's micro-batches (none cached)
        for j in range(m):
            per = N[_N, j] // EP[EP_EPOCHS]
            change(S, P, j, per if e * per < N[_SENT, j] else 0, 0)
    for w in range(count):
        W[:, w] = 0
        WF[:, w] = 0.0
        _schedule(events, S, now, _URGENT, w * 8 + _WORKER)
    _schedule(events, S, now, _NORMAL, m * 8 + _START)  # GO
    for j in range(m):  # each device's first cached micro-batch of the epoch, in device order
        first = e * N[_PER_EPOCH, j]
        if N[_N, j] > 0 and N[_SENT, j] <= first < N[_N, j]:
            _push(events, pending, S, F, now, j, first)


@njit
def go(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, f_start, link_free, ready, GQ, EP,
       now):
    """The epoch's start: the devices waiting for it forward once their ``start`` has come, one downlink latency
    from now, in the order they came to wait (:func:`sfsim.fast.joint._go`)."""
    par = EP[EP_NOW] & 1
    waiting = EP[EP_N0 + par]
    EP[EP_N0 + par] = 0
    for q in range(waiting):
        j = GQ[par, q]
        got = now + D[_DOWN_L, j]
        f_start[j] = got
        link_free[j] = got
        if S[_FLAGS] & _SEQUENTIAL:
            gated = _sequential(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, j, _START,
                                got)
        else:
            gated = _pipelined(events, pending, waiters, S, F, D, N, P, credits, dev_wait, dev_ready, nn, f_start,
                               link_free, ready, j, _START, now)
        if gated:
            gate(GQ, EP, N, nn, j)
