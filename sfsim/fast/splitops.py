"""SplitLoRA on the fast path, one server's state and primitives: :mod:`sfsim.fast.splitlora`'s loops are made of these.

As :class:`sfsim.schedules.splitlora.Server`'s three primitives (a client's compute, a message on its uplink, one
on its downlink) on constant links and on the dynamic network (each transfer integrates the rate of the leg
holding when it starts, :mod:`sfsim.fast.rates`), and what they make: one micro-batch (``_issue``, ``serve``), the
server's and a client's optimizer steps, the clients' adapter uploads and FedAvg. Also the arrays the kernels
hold (:func:`layout`, :func:`network_arrays`) and what a run leaves on the clients' motions and figures
(:func:`fill_motions`, :func:`client_figures`). The rows of each array are named below (see
:mod:`sfsim.fast.splitlora` for what each array holds).
"""

from __future__ import annotations

import math

import numpy as np

from sfsim.fast import mixing, rates
from sfsim.fast.jit import njit

_ROWS = ("f", "b", "w", "step", "warmup", "last", "up_s", "up_l", "down_s", "down_l", "sync_up_s", "sync_down_s",
         "srv_f", "srv_b", "srv_w", "up_bytes", "down_bytes", "sync_bytes")
(_F, _B, _W, _STEP, _WARM, _LAST, _UP_S, _UP_L, _DOWN_S, _DOWN_L, _SYNC_UP, _SYNC_DOWN, _SRV_F, _SRV_B, _SRV_W,
 _UP_BYTES, _DOWN_BYTES, _SYNC_BYTES) = range(18)
_N, _PER_EPOCH = range(2)
_FREE, _UP_FREE, _DOWN_FREE, _ARRIVAL, _BUSY, _UP, _DOWN, _SENT_AT = range(8)  # rows of C
_NEXT, _MB, _SINCE, _LEFT, _UNISSUED, _TODO = range(6)  # rows of CI
_SFREE, _END, _SBUSY, _SSTEP, _AGG = range(5)  # SF
ARRIVAL, PROPORTIONAL, ROUND_ROBIN = range(3)
"""Interleaved clients' server order: arrival order (fifo, pool) or a fixed order (:data:`FIXED_ORDERS`)."""
_KINDS = {None: ARRIVAL, "proportional": PROPORTIONAL, "round-robin": ROUND_ROBIN}
_STEPS, _WINDOW, _ACC, _EVERY, _DECOMPOSE, _RELAY = range(6)  # SI
_BW_UP, _BW_DOWN, _START, _STOP, _SEND_S, _RECV_S, _GONE = range(7)  # NC: float, per client
_LOST, _DONE, _SENT, _R_PAUSE, _R_AVAIL, _DROPS, _LEG0, _LEGS = range(8)  # NI: int, per client
_L_UP, _L_DOWN, _L_SERVER = range(3)  # LI: int, per leg (rate nodes, server)
_L_AT, _L_UP_L, _L_DOWN_L = range(3)  # LF: float, per leg (start, latencies)


# -- lanes: sfsim.schedules.splitlora.Server._op, _device, _up, _down ----------------------------------------
@njit
def _op(SF, t, dur):
    SF[_SBUSY] += dur
    SF[_END] = max(SF[_END], t + dur)
    return t + dur


@njit
def _device(SF, C, R, c, t, dur, w):
    """A client's compute from ``t`` for ``dur`` (``w``: its W of a micro-batch, counted done on the network)."""
    if R is not None:
        return _device_net(SF, C, R, c, t, dur, w)
    C[_BUSY, c] += dur
    SF[_END] = max(SF[_END], t + dur)
    return t + dur


@njit
def _up(SF, C, D, R, c, t, dur, nbytes, mb):
    """A message queued on the uplink at ``t`` (``mb``: a micro-batch's activations); returns its arrival."""
    if R is not None:
        return _up_net(SF, C, R, c, t, dur, nbytes, mb)
    start = max(t, C[_UP_FREE, c])
    C[_UP_FREE, c] = start + dur
    C[_UP, c] += nbytes
    SF[_END] = max(SF[_END], start + dur + D[_UP_L, c])
    return start + dur + D[_UP_L, c]


@njit
def _down(SF, C, D, R, c, t, dur, nbytes):
    """A message queued on the downlink at ``t`` (a command: ``dur`` 0); returns its arrival."""
    if R is not None:
        return _down_net(SF, C, R, c, t, dur, nbytes)
    start = max(t, C[_DOWN_FREE, c])
    C[_DOWN_FREE, c] = start + dur
    C[_DOWN, c] += nbytes
    SF[_END] = max(SF[_END], start + dur + D[_DOWN_L, c])
    return start + dur + D[_DOWN_L, c]


# -- the dynamic network: Server._device_net, _up_net, _down_net, _begin, _outlasts ------------------------
@njit
def _begin(NC, NI, c, t):
    """A drop-churn client starts nothing before its first online instant."""
    return max(t, NC[_START, c]) if NI[_DROPS, c] else t


@njit
def _outlasts(R, c, t, end):
    """True, and the client is gone from then on, when what runs from ``t`` to ``end`` outlasts it."""
    NC, NI = R[1], R[2]
    if end <= NC[_STOP, c] and end < math.inf:
        return False
    NI[_LOST, c] = 1
    NC[_GONE, c] = NC[_STOP, c] if NC[_STOP, c] < math.inf else rates.gone_at(R[0], NI[_R_AVAIL, c], t)
    R[5][0] += 1  # handovers' joint loop: the servers waiting for it may go on (sfsim.fast.splitmoves)
    return True


@njit
def leg_at(R, c, t):
    """The row of client ``c``'s leg holding at ``t`` (``Motion.leg_at``: a handover at exactly ``t`` holds)."""
    NI, LF = R[2], R[4]
    j, last = NI[_LEG0, c], NI[_LEG0, c] + NI[_LEGS, c] - 1
    while j < last and LF[_L_AT, j + 1] <= t:
        j += 1
    return j


@njit
def _device_net(SF, C, R, c, t, dur, w):
    NC, NI = R[1], R[2]
    if NI[_LOST, c]:
        return t
    t = _begin(NC, NI, c, t)
    end = t + (dur if NI[_R_PAUSE, c] < 0 else rates.span(R[0], NI[_R_PAUSE, c], t, dur, 1.0))
    if _outlasts(R, c, t, end):
        return t
    C[_BUSY, c] += dur
    if w:
        NI[_DONE, c] += 1
    SF[_END] = max(SF[_END], end)
    return end


@njit
def _up_net(SF, C, R, c, t, dur, nbytes, mb):
    NC, NI = R[1], R[2]
    if NI[_LOST, c]:
        return -math.inf
    start = _begin(NC, NI, c, max(t, C[_UP_FREE, c]))
    leg = leg_at(R, c, start)  # the leg holding when it starts; dur is at the first leg's bandwidth
    secs = rates.span_at(R[0], R[3][_L_UP, leg], start, dur, NC[_BW_UP, c])
    if _outlasts(R, c, start, start + secs):
        return -math.inf
    C[_UP_FREE, c], C[_SENT_AT, c] = start + secs, start
    NC[_SEND_S, c] += rates.online(R[0], NI[_R_PAUSE, c], start, start + secs)
    if mb:
        NI[_SENT, c] += 1
        for j in range(NI[_LEG0, c] + 1, NI[_LEG0, c] + NI[_LEGS, c]):  # uploads started before each handover
            if start < R[4][_L_AT, j]:
                R[6][j] += 1
    C[_UP, c] += nbytes
    SF[_END] = max(SF[_END], start + secs + R[4][_L_UP_L, leg])
    return start + secs + R[4][_L_UP_L, leg]


@njit
def _down_net(SF, C, R, c, t, dur, nbytes):
    NC, NI = R[1], R[2]
    if NI[_LOST, c]:
        return t
    start = _begin(NC, NI, c, max(t, C[_DOWN_FREE, c]))
    leg = leg_at(R, c, start)  # a handover's downlink carries what starts after it
    secs = rates.span_at(R[0], R[3][_L_DOWN, leg], start, dur, NC[_BW_DOWN, c])
    if _outlasts(R, c, start, start + secs):
        return t
    C[_DOWN_FREE, c] = start + secs
    NC[_RECV_S, c] += rates.online(R[0], NI[_R_PAUSE, c], start, start + secs)
    C[_DOWN, c] += nbytes
    SF[_END] = max(SF[_END], start + secs + R[4][_L_DOWN_L, leg])
    return start + secs + R[4][_L_DOWN_L, leg]


# -- one micro-batch: Server._issue, _serve, _server_step, _client_step --------------------------------------
@njit
def _size(D, N, c, n):
    return D[_LAST, c] if D[_LAST, c] < 1.0 and (n + 1) % N[_PER_EPOCH, c] == 0 else 1.0


@njit
def _issue(SF, C, CI, D, N, R, c, t):
    """``fwd`` sent at ``t``: the client's forward and upload of its next micro-batch."""
    n = CI[_NEXT, c]
    CI[_NEXT, c], CI[_MB, c] = n + 1, n
    x = _size(D, N, c, n)
    start = max(C[_FREE, c], _down(SF, C, D, R, c, t, 0.0, 0.0))
    C[_FREE, c] = _device(SF, C, R, c, start, D[_F, c] * x + (D[_WARM, c] if n == 0 else 0.0), False)
    C[_ARRIVAL, c] = _up(SF, C, D, R, c, C[_FREE, c], D[_UP_S, c] * x, D[_UP_BYTES, c] * x, True)


@njit
def _server_step(SF, SI):
    if SI[_WINDOW]:
        SF[_SFREE] = _op(SF, SF[_SFREE], SF[_SSTEP])
        SI[_STEPS] += 1
        SI[_WINDOW] = 0


@njit
def _client_step(SF, C, CI, D, R, c):
    C[_FREE, c] = _device(SF, C, R, c, C[_FREE, c], D[_STEP, c], False)
    CI[_SINCE, c] = 0


@njit
def serve(SF, SI, C, CI, D, N, R, c):
    """Server F, B (gradient down), W, maybe its step; the client's B, W, maybe its step. False: skipped.

    A turn whose upload never arrived (arrival ``-inf``: the client is gone) is skipped; a served one
    is next in the server's stream (the caller's mixing).
    """
    if not served(SF, SI, C, CI, D, N, R, c):
        return False
    if SI[_WINDOW] == SI[_ACC]:
        _server_step(SF, SI)
    return True


@njit
def served(SF, SI, C, CI, D, N, R, c):
    """:func:`serve` but the server's step its window may now be due for (the caller's: ``SI[_WINDOW] == SI[_ACC]``)."""
    if C[_ARRIVAL, c] == -math.inf:
        return False
    x = _size(D, N, c, CI[_MB, c])
    t = _op(SF, max(SF[_SFREE], C[_ARRIVAL, c]), D[_SRV_F, c] * x)
    if SI[_DECOMPOSE]:
        t = _op(SF, t, D[_SRV_B, c] * x)
        t_grad = t
        t = _op(SF, t, D[_SRV_W, c] * x)
    else:
        t = _op(SF, t, (D[_SRV_B, c] + D[_SRV_W, c]) * x)
        t_grad = t
    SF[_SFREE] = t
    got = _down(SF, C, D, R, c, t_grad, D[_DOWN_S, c] * x, D[_DOWN_BYTES, c] * x)
    t = _device(SF, C, R, c, max(C[_FREE, c], got), D[_B, c] * x, False)
    C[_FREE, c] = _device(SF, C, R, c, t, D[_W, c] * x, True)
    CI[_SINCE, c] += 1
    if CI[_SINCE, c] == SI[_ACC]:
        _client_step(SF, C, CI, D, R, c)
    SI[_WINDOW] += 1
    return True


@njit
def _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched):
    """:func:`serve`, the micro-batch next in the server's stream mixing."""
    if serve(SF, SI, C, CI, D, N, R, c):
        mixing.add(M, T, share, counts, touched, c)


# -- adapters: Server._upload_adapters, _fedavg ----------------------------------------------------------
@njit
def _upload(SF, C, CI, D, R, c):
    """``sync`` sent now: the client steps on a partial window and uploads (C[_ARRIVAL]: at the server)."""
    C[_FREE, c] = max(C[_FREE, c], _down(SF, C, D, R, c, SF[_SFREE], 0.0, 0.0))
    if CI[_SINCE, c]:
        _client_step(SF, C, CI, D, R, c)
    C[_ARRIVAL, c] = _up(SF, C, D, R, c, C[_FREE, c], D[_SYNC_UP, c], D[_SYNC_BYTES, c], False)


@njit
def fedavg(SF, C, CI, D, R, members, k):
    """FedAvg over clients ``members[:k]``: each uploads, the server averages what arrives and sends it down."""
    for q in range(k):
        _upload(SF, C, CI, D, R, members[q])
    t = SF[_SFREE]
    came = 0
    for q in range(k):
        c = members[q]
        if C[_ARRIVAL, c] != -math.inf:
            t = max(t, C[_ARRIVAL, c])
            came += 1
    SF[_SFREE] = _op(SF, t, SF[_AGG] * came)
    for q in range(k):
        c = members[q]
        if C[_ARRIVAL, c] != -math.inf:
            _down(SF, C, D, R, c, SF[_SFREE], D[_SYNC_DOWN, c], D[_SYNC_BYTES, c])


@njit
def _fedavg(SF, C, CI, D, R):
    m = D.shape[1]
    fedavg(SF, C, CI, D, R, np.arange(m), m)


@njit
def _passed(R):
    """True when a rate was asked past its horizon: the replay is void, stop it (never on constant links)."""
    if R is not None:
        return rates.stuck(R[0])
    return False


@njit
def _count_down(CI, c):
    CI[_LEFT, c] -= 1
    return 1 if CI[_LEFT, c] == 0 else 0


@njit
def _order_key(kind, j, k):
    """:func:`sfsim.engine.pacing.server_order`'s sort key of a client's ``j``-th of ``k`` micro-batches."""
    return (j + 0.5) / k if kind == PROPORTIONAL else float(j)


# -- the arrays the kernels hold, and what a run leaves ------------------------------------------------------
def layout(clients: list) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's rows for a server's clients: D (18 x clients, seconds and bytes) and N (n, per_epoch)."""
    D = np.array([[getattr(d, k) for d in clients] for k in _ROWS], np.float64).reshape(len(_ROWS), -1)
    N = np.array([[d.n for d in clients], [d.per_epoch for d in clients]], np.int64).reshape(2, -1)
    return D, N


def network_arrays(motions: list, horizon: float) -> tuple:
    """``R`` for the kernel: the clients' rates (a :class:`~sfsim.fast.rates.Program`, drawn to ``horizon``
    seconds), their network state NC, NI, their legs LI, LF, a count of clients lost, and per leg the activation
    uploads started before it (``Motion.switched_at``, for handovers that keep a client on its server).

    ``motions``: each client's :class:`~sfsim.network.legs.Motion` (its figures start from what it holds,
    so the sums run on as in the SimPy run).
    """
    m, n_legs = len(motions), sum(len(mo.legs) for mo in motions)
    prog = rates.Program()
    NC, NI = np.zeros((7, m)), np.full((8, m), -1, np.int64)
    LI, LF = np.zeros((3, max(1, n_legs)), np.int64), np.zeros((3, max(1, n_legs)))
    row = 0
    for c, mo in enumerate(motions):
        NC[:, c] = (mo.legs[0].bandwidth, mo.legs[0].down_bw, mo.start, mo.stop, mo.send_s, mo.recv_s, mo.gone)
        NI[:, c] = (0, mo.done, mo.sent, prog.add(mo.pause), prog.add(mo.avail),
                    mo.churn == "drop" and mo.avail is not None, row, len(mo.legs))
        for leg in mo.legs:
            LI[:, row] = (prog.add(leg.up_rate(mo.pause)), prog.add(leg.down_rate(mo.pause)), leg.server)
            LF[:, row] = (leg.at, leg.up_l, leg.down_l)
            row += 1
    prog.draw_all(horizon)
    return prog.arrays(), NC, NI, LI, LF, np.zeros(1, np.int64), np.zeros(max(1, n_legs), np.int64)


def fill_motions(motions: list, R) -> None:
    """Leave on the clients' motions what the SimPy run leaves: micro-batches done and sent, radio seconds, gone,
    and with handovers (that keep the client on its server) the uploads started before each."""
    NC, NI = R[1], R[2]
    for c, m in enumerate(motions):
        m.done, m.sent, m.gone = int(NI[_DONE, c]), int(NI[_SENT, c]), float(NC[_GONE, c])
        m.send_s, m.recv_s = float(NC[_SEND_S, c]), float(NC[_RECV_S, c])
        if len(m.legs) > 1:
            m.switched_at = [int(R[6][j]) for j in range(NI[_LEG0, c] + 1, NI[_LEG0, c] + NI[_LEGS, c])]


def client_figures(C, c: int) -> dict:
    """Client ``c``'s figures from the kernel's ``C``: device busy seconds, bytes up and down."""
    return {"busy": float(C[_BUSY, c]), "up": float(C[_UP, c]), "down": float(C[_DOWN, c])}
