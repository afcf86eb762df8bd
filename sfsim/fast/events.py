"""The compiled SplitFrozen loop's state slots, its event queue, arrivals and credits (shared by its parts).

Slots and codes are :mod:`sfsim.fast.kernel`'s (its module docstring tells the layout); the helpers
here are what both the server loop (:mod:`sfsim.fast.kernel`) and the device steps
(:mod:`sfsim.fast.devices`) do to the queue: schedule an event, wake idle workers, announce an
arrival, queue for a credit and return one.
"""

from __future__ import annotations

from sfsim.fast.heap import heapify, pop, push
from sfsim.fast.jit import COMPILED, inline

if COMPILED:
    import numba


def no_refcounts(fn):
    """:func:`~sfsim.fast.jit.njit` without numba's reference counting (``_nrt=False``), else ``fn`` itself.

    The event loop allocates nothing; with reference counting on, each array handed to an inlined
    helper costs an atomic increment and decrement, about a third of the loop's time.
    """
    if not COMPILED:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True, _nrt=False)(fn)

FIFO, ROUND_ROBIN, PROPORTIONAL, PACED, POOL = 0, 1, 2, 3, 4

# D rows and N rows; _DOWN_L: the downlink's latency, which a later epoch's ``start`` takes (sfsim.fast.joint._go)
_F, _WARM, _UP_S, _UP_L, _SRV_F, _SRV_B, _SRV_W, _LAST, _DOWN_L = range(9)
_N, _SENT, _PER_EPOCH = range(3)
# event kinds (code & 7); code >> 3 is the device, worker or alarm number. An alarm with number j > 0 is
# device j - 1's soft timer (sfsim.fast.moving); _AFTER_F of a moving device: its credit wait was cancelled
_WORKER, _ALARM, _START, _RETRY, _GRANT, _AFTER_F, _RELEASE, _RESUMED = range(8)
_URGENT, _NORMAL = 0, 1  # SimPy's priorities: process starts come before ordinary events at one instant
# Heaps are float arrays, row 0 the time, row 1 a key (exact as a float below 2**53: at most 2**31
# events), compared as (time, key) pairs: no list, no reference counting. Events: key = id << 22 | code; SimPy
# orders by (time, priority, id), and since every process start (the only urgent events) is queued before
# any other event, ids alone give the same order. Pending arrivals and credit waiters: key = seq << 20 |
# device; a device's micro-batches leave the pending heap in order, so ``PK`` (next micro-batch per
# device) names them. Hence at most 2**19 devices per server (:data:`MAX_DEVICES`).
_CODE_BITS, _DEV_BITS = 22, 20
_CODE_MASK, _DEV_MASK = (1 << _CODE_BITS) - 1, (1 << _DEV_BITS) - 1
MAX_DEVICES = 1 << (_CODE_BITS - 3)
"""Most devices one server may have on the fast path (the event code holds device * 8 + kind)."""
# int scalars S
(_EID, _WSEQ, _PSEQ, _UNCLAIMED, _IDLE_N, _ALARM_ID, _QHEAD, _QLEN, _PSIZE, _HELD, _SEG, _SEG_POS, _SEG_DONE,
 _TURN, _NTOUCHED, _SEEN, _BOUND, _TV_COUNT, _TOTAL, _BUFFER, _ACCUMULATE, _POLICY, _FLAGS, _CAP,
 _NEVENTS, _NPENDING, _NWAITERS, _NPROP, _OVERFLOW, _NSOFT, _NSTREAM,
 _SCOUNT, _SHOLD, _SLIMIT, _SBUF, _PCAP, _NSTEPS, _NEXITED, _SOFT_CAP) = range(39)
S_SLOTS = 39
# _SOFT_CAP: the soft timers the event heap has room for; when that many are queued, those superseded go
# (:func:`soft_room`), so the heap grows with the devices, not with their waits
# the pool policy (POOL): P rows are the senders' unsent, out and free (Senders); _SCOUNT devices free to
# send, _SHOLD sent micro-batches holding a server credit, _SLIMIT / _SBUF their limits, _PCAP the pool's
# capacity
_SEQUENTIAL, _PER_DEVICE, _DECOMPOSE = 1, 2, 4  # bits of S[_FLAGS]
# float scalars F
_ALARM_AT, _TV_SUM, _WAIT_S, _BUSY, _END, _STEP, _FLIGHT, _SOFT_UNTIL, _PBYTES, _PPEAK, _LEAVE = range(11)
F_SLOTS = 11  # _LEAVE: when the server's last worker ended (Backhaul.leave)
# per-worker ints W (rows) and floats WF (rows)
_DONE, _WQ_HEAD, _WQ_LEN, _WOKEN, _FINAL, _CHECK, _WHELD = range(7)
_WBUSY, _WLAST, _WSTART = range(3)

(OUT_MAKESPAN, OUT_BUSY, OUT_WAIT, OUT_END, OUT_TV_SUM, OUT_TV_COUNT, OUT_UNCLAIMED, OUT_TOTAL, OUT_EVENTS, OUT_OVERFLOW,
 OUT_STALLED, OUT_STUCK, OUT_PEAK, OUT_WORDS, OUT_LEAVE, OUT_NSTEPS) = range(16)
"""Slots of :func:`replay_server`'s result."""


@inline
def _size(D, N, j, k):
    """Size of micro-batch ``k`` of device ``j`` relative to a full one (DeviceTimes.size)."""
    if D[_LAST, j] < 1.0 and (k + 1) % N[_PER_EPOCH, j] == 0:
        return D[_LAST, j]
    return 1.0


@inline
def _schedule(events, S, t, prio, code):
    """Queue an event at ``t`` (SimPy's queue order: time, priority, creation)."""
    push(events, S, _NEVENTS, _OVERFLOW, t, (S[_EID] << _CODE_BITS) | code)
    S[_EID] += 1


@inline
def _wake(events, S, idle, now):
    """Every idle worker resumes at ``now``, in the order it went idle (ServerPool._wake_all)."""
    for q in range(S[_IDLE_N]):
        _schedule(events, S, now, _NORMAL, idle[q] * 8 + _WORKER)
    S[_IDLE_N] = 0


@inline
def _arm(events, S, F, t):
    """A new alarm at ``t``: wakes the idle workers then (earlier alarms are superseded)."""
    F[_ALARM_AT] = t
    S[_ALARM_ID] = S[_EID]  # the id this alarm's event gets
    _schedule(events, S, t, _NORMAL, _ALARM)


@inline
def _push(events, pending, S, F, arrival, j, k):
    """Announce micro-batch ``k`` of device ``j`` arriving at ``arrival`` (ServerPool.push)."""
    S[_PSEQ] += 1
    push(pending, S, _NPENDING, _OVERFLOW, arrival, (S[_PSEQ] << _DEV_BITS) | j)
    if S[_IDLE_N] > 0 and arrival < F[_ALARM_AT]:
        _arm(events, S, F, arrival)


@inline
def _wait_credit(waiters, S, dev_wait, dev_ready, j, ready):
    """Queue device ``j`` for a credit from ``ready`` on (Credits.wait)."""
    if S[_FLAGS] & _PER_DEVICE:
        dev_wait[j] = True
        dev_ready[j] = ready
    else:
        S[_WSEQ] += 1
        push(waiters, S, _NWAITERS, _OVERFLOW, ready, (S[_WSEQ] << _DEV_BITS) | j)


@inline
def _give_back(events, waiters, S, credits, dev_wait, dev_ready, j, now):
    """Return one credit of device ``j``'s account (Credits.give_back)."""
    if S[_FLAGS] & _PER_DEVICE:
        if dev_wait[j] and dev_ready[j] <= now:
            dev_wait[j] = False
            _schedule(events, S, now, _NORMAL, j * 8 + _GRANT)
            return
        credits[j] += 1
        if dev_wait[j]:
            dev_wait[j] = False
            _schedule(events, S, dev_ready[j], _NORMAL, j * 8 + _RETRY)
        return
    if S[_NWAITERS] > 0 and waiters[0, 0] <= now:
        w = pop(waiters, S, _NWAITERS)[1] & _DEV_MASK
        _schedule(events, S, now, _NORMAL, w * 8 + _GRANT)
        return
    credits[0] += 1
    if S[_NWAITERS] > 0:
        wr, key = pop(waiters, S, _NWAITERS)
        w = key & _DEV_MASK
        _schedule(events, S, wr, _NORMAL, w * 8 + _RETRY)


@inline
def change(S, P, i, unsent, out):
    """Device ``i`` sent (``unsent=-1``), took or released an outstanding slot (``out=+-1``) (Senders.change)."""
    P[0, i] += unsent
    P[1, i] += out
    free = 1 if P[0, i] > 0 and P[1, i] < S[_SLIMIT] else 0
    if free != P[2, i]:
        P[2, i] = free
        S[_SCOUNT] += 1 if free else -1


@inline
def _send(events, pending, S, F, P, arrival, j, k):
    """Device ``j`` sends micro-batch ``k`` now, holding a credit (ServerPool.send): the pool's books, then the arrival."""
    if S[_POLICY] == POOL:
        S[_SHOLD] += 1
        change(S, P, j, -1, 1)
    _push(events, pending, S, F, arrival, j, k)


@inline
def soft_room(events, S, DY, YN):
    """Before a soft timer is queued: with ``S[_SOFT_CAP]`` queued, drop those superseded, then re-heap.

    A device's soft timer is superseded when its row's latest (``YN[DY[j], 0]``, the timer's event id)
    is another: firing, it would only uncount itself. Entries are distinct (time, key) pairs, so the
    heap pops the others in the same order whatever their places. Live timers: at most one a row.
    """
    if S[_NSOFT] < S[_SOFT_CAP]:
        return
    kept = 0
    for q in range(S[_NEVENTS]):
        key = int(events[1, q])
        code = key & _CODE_MASK
        j = code >> 3
        if code & 7 == _ALARM and j > 0 and key >> _CODE_BITS != YN[DY[j - 1], 0]:
            S[_NSOFT] -= 1
            continue
        events[0, kept] = events[0, q]
        events[1, kept] = events[1, q]
        kept += 1
    S[_NEVENTS] = kept
    heapify(events, kept)
