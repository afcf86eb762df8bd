"""SplitLoRA on the fast path: :class:`sfsim.schedules.splitlora.Server` on constant links, compiled.

The SimPy schedule computes each server's whole run by arithmetic over three primitives (a
client's compute, a message on its uplink, one on its downlink) and waits once, so the fast path
is the same arithmetic in numba, step for step and in the same order (every float is summed as the
schedule sums it): interleaved clients in arrival order (a heap by arrival, then device) or in a
fixed order per epoch (:func:`sfsim.engine.pacing.server_order`, drawn lazily from a heap of the
clients' keys), segments of ``fedavg_every`` server steps closed by a FedAvg, or sequential
clients relaying their adapters. Servers share nothing. Memory: a few numbers per client and one
segment's order (``fedavg_every`` x ``accumulate`` at most), never one per micro-batch (the SimPy
schedule holds each epoch's order).

State in arrays (numba passes them to helpers): ``D`` (float per client, :data:`_ROWS`), ``N``
(n, per_epoch), ``C`` (float client state: free, up_free, down_free, arrival, busy, up and down
bytes), ``CI`` (int client state: next, mb, since_step, left, unissued, todo), ``SF`` (server free,
end, busy, step, aggregate) and ``SI`` (steps, window, accumulate, fedavg_every, decompose, relay).
"""

from __future__ import annotations

import heapq

import numpy as np

from sfsim.engine.pacing import FIXED_ORDERS
from sfsim.fast import mixing
from sfsim.fast.jit import njit

_ROWS = ("f", "b", "w", "step", "warmup", "last", "up_s", "up_l", "down_s", "down_l", "sync_up_s", "sync_down_s",
         "srv_f", "srv_b", "srv_w", "up_bytes", "down_bytes", "sync_bytes")
(_F, _B, _W, _STEP, _WARM, _LAST, _UP_S, _UP_L, _DOWN_S, _DOWN_L, _SYNC_UP, _SYNC_DOWN, _SRV_F, _SRV_B, _SRV_W,
 _UP_BYTES, _DOWN_BYTES, _SYNC_BYTES) = range(18)
_N, _PER_EPOCH = range(2)
_FREE, _UP_FREE, _DOWN_FREE, _ARRIVAL, _BUSY, _UP, _DOWN = range(7)  # rows of C
_NEXT, _MB, _SINCE, _LEFT, _UNISSUED, _TODO = range(6)  # rows of CI
_SFREE, _END, _SBUSY, _SSTEP, _AGG = range(5)  # SF
ARRIVAL, PROPORTIONAL, ROUND_ROBIN = range(3)
"""Interleaved clients' server order: arrival order (fifo, pool) or a fixed order (:data:`FIXED_ORDERS`)."""
_KINDS = {None: ARRIVAL, "proportional": PROPORTIONAL, "round-robin": ROUND_ROBIN}
_STEPS, _WINDOW, _ACC, _EVERY, _DECOMPOSE, _RELAY = range(6)  # SI


# -- lanes: sfsim.schedules.splitlora.Server._op, _device, _up, _down ----------------------------------------
@njit
def _op(SF, t, dur):
    SF[_SBUSY] += dur
    SF[_END] = max(SF[_END], t + dur)
    return t + dur


@njit
def _device(SF, C, c, t, dur):
    C[_BUSY, c] += dur
    SF[_END] = max(SF[_END], t + dur)
    return t + dur


@njit
def _up(SF, C, D, c, t, dur, nbytes):
    start = max(t, C[_UP_FREE, c])
    C[_UP_FREE, c] = start + dur
    C[_UP, c] += nbytes
    SF[_END] = max(SF[_END], start + dur + D[_UP_L, c])
    return start + dur + D[_UP_L, c]


@njit
def _down(SF, C, D, c, t, dur, nbytes):
    start = max(t, C[_DOWN_FREE, c])
    C[_DOWN_FREE, c] = start + dur
    C[_DOWN, c] += nbytes
    SF[_END] = max(SF[_END], start + dur + D[_DOWN_L, c])
    return start + dur + D[_DOWN_L, c]


# -- one micro-batch: Server._issue, _serve, _server_step, _client_step --------------------------------------
@njit
def _size(D, N, c, n):
    return D[_LAST, c] if D[_LAST, c] < 1.0 and (n + 1) % N[_PER_EPOCH, c] == 0 else 1.0


@njit
def _issue(SF, C, CI, D, N, c, t):
    """``fwd`` sent at ``t``: the client's forward and upload of its next micro-batch."""
    n = CI[_NEXT, c]
    CI[_NEXT, c], CI[_MB, c] = n + 1, n
    x = _size(D, N, c, n)
    start = max(C[_FREE, c], _down(SF, C, D, c, t, 0.0, 0.0))
    C[_FREE, c] = _device(SF, C, c, start, D[_F, c] * x + (D[_WARM, c] if n == 0 else 0.0))
    C[_ARRIVAL, c] = _up(SF, C, D, c, C[_FREE, c], D[_UP_S, c] * x, D[_UP_BYTES, c] * x)


@njit
def _server_step(SF, SI):
    if SI[_WINDOW]:
        SF[_SFREE] = _op(SF, SF[_SFREE], SF[_SSTEP])
        SI[_STEPS] += 1
        SI[_WINDOW] = 0


@njit
def _client_step(SF, C, CI, D, c):
    C[_FREE, c] = _device(SF, C, c, C[_FREE, c], D[_STEP, c])
    CI[_SINCE, c] = 0


@njit
def _serve(SF, SI, C, CI, D, N, c, M, T, share, counts, touched):
    """Server F, B (gradient down), W, maybe its step; the client's B, W, maybe its step."""
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
    mixing.add(M, T, share, counts, touched, c)
    got = _down(SF, C, D, c, t_grad, D[_DOWN_S, c] * x, D[_DOWN_BYTES, c] * x)
    t = _device(SF, C, c, max(C[_FREE, c], got), D[_B, c] * x)
    C[_FREE, c] = _device(SF, C, c, t, D[_W, c] * x)
    CI[_SINCE, c] += 1
    if CI[_SINCE, c] == SI[_ACC]:
        _client_step(SF, C, CI, D, c)
    SI[_WINDOW] += 1
    if SI[_WINDOW] == SI[_ACC]:
        _server_step(SF, SI)


# -- adapters: Server._upload_adapters, _fedavg ----------------------------------------------------------
@njit
def _upload(SF, C, CI, D, c):
    """``sync`` sent now: the client steps on a partial window and uploads (C[_ARRIVAL]: at the server)."""
    C[_FREE, c] = max(C[_FREE, c], _down(SF, C, D, c, SF[_SFREE], 0.0, 0.0))
    if CI[_SINCE, c]:
        _client_step(SF, C, CI, D, c)
    C[_ARRIVAL, c] = _up(SF, C, D, c, C[_FREE, c], D[_SYNC_UP, c], D[_SYNC_BYTES, c])


@njit
def _fedavg(SF, C, CI, D):
    m = D.shape[1]
    for c in range(m):
        _upload(SF, C, CI, D, c)
    t = SF[_SFREE]
    for c in range(m):
        t = max(t, C[_ARRIVAL, c])
    SF[_SFREE] = _op(SF, t, SF[_AGG] * m)
    for c in range(m):
        _down(SF, C, D, c, SF[_SFREE], D[_SYNC_DOWN, c], D[_SYNC_BYTES, c])


# -- segments and epochs: Server._fixed_segment, _arrival_segment, _interleaved, _sequential ---------------
@njit
def _count_down(CI, c):
    CI[_LEFT, c] -= 1
    return 1 if CI[_LEFT, c] == 0 else 0


@njit
def _fixed_segment(SF, SI, C, CI, D, N, order, lo, hi, M, T, share, counts, touched):
    """Serve ``order[lo:hi]`` in its order, waiting for each named client's micro-batch; returns clients emptied."""
    emptied = 0
    for p in range(lo, hi):
        CI[_TODO, order[p]] += 1
    for c in range(D.shape[1]):
        if CI[_LEFT, c] > 0 and CI[_TODO, c]:
            _issue(SF, C, CI, D, N, c, SF[_SFREE])
    for p in range(lo, hi):
        c = order[p]
        _serve(SF, SI, C, CI, D, N, c, M, T, share, counts, touched)
        CI[_TODO, c] -= 1
        emptied += _count_down(CI, c)
        if CI[_TODO, c]:
            _issue(SF, C, CI, D, N, c, SF[_SFREE])
    return emptied


@njit
def _arrival_segment(SF, SI, C, CI, D, N, quota, M, T, share, counts, touched):
    """Serve ``quota`` micro-batches in arrival order (ties: device order); returns clients emptied."""
    emptied = issued = 0
    out = [(0.0, 0)]
    out.pop()
    for c in range(D.shape[1]):
        CI[_UNISSUED, c] = CI[_LEFT, c]
    for c in range(D.shape[1]):
        if CI[_LEFT, c] > 0 and issued < quota:
            _issue(SF, C, CI, D, N, c, SF[_SFREE])
            CI[_UNISSUED, c] -= 1
            issued += 1
            heapq.heappush(out, (C[_ARRIVAL, c], c))
    served = 0
    while served < quota and len(out):
        c = heapq.heappop(out)[1]
        _serve(SF, SI, C, CI, D, N, c, M, T, share, counts, touched)
        emptied += _count_down(CI, c)
        served += 1
        if issued < quota and CI[_UNISSUED, c]:
            _issue(SF, C, CI, D, N, c, SF[_SFREE])
            CI[_UNISSUED, c] -= 1
            issued += 1
            heapq.heappush(out, (C[_ARRIVAL, c], c))
    return emptied


@njit
def _order_key(kind, j, k):
    """:func:`sfsim.engine.pacing.server_order`'s sort key of a client's ``j``-th of ``k`` micro-batches."""
    return (j + 0.5) / k if kind == PROPORTIONAL else float(j)


@njit
def _interleaved(SF, SI, C, CI, D, N, left, kind, seg, M, T, share, counts, touched):
    """One epoch of interleaved clients (``left`` of them have micro-batches) in arrival or ``kind``'s fixed order.

    A fixed order is drawn lazily, one segment at a time into ``seg``, by merging the clients' sorted
    keys on a heap of (key, client): the order of ``sorted()`` in server_order, in memory per client.
    """
    every, acc = SI[_EVERY], SI[_ACC]
    m = D.shape[1]
    order = [(0.0, 0)]
    order.pop()
    epoch = CI[_LEFT].copy()  # each client's micro-batches this epoch
    taken = np.zeros(m, np.int64)
    if kind != ARRIVAL:
        for c in range(m):
            if epoch[c] > 0:
                heapq.heappush(order, (_order_key(kind, 0, epoch[c]), c))
    while left:
        quota = (every - SI[_STEPS] % every) * acc
        if kind != ARRIVAL:
            hi = 0
            while hi < quota and len(order):
                c = heapq.heappop(order)[1]
                seg[hi] = c
                hi += 1
                taken[c] += 1
                if taken[c] < epoch[c]:
                    heapq.heappush(order, (_order_key(kind, taken[c], epoch[c]), c))
            left -= _fixed_segment(SF, SI, C, CI, D, N, seg, 0, hi, M, T, share, counts, touched)
        else:
            left -= _arrival_segment(SF, SI, C, CI, D, N, quota, M, T, share, counts, touched)
        _server_step(SF, SI)
        if SI[_STEPS] % every == 0 and left:
            _fedavg(SF, C, CI, D)
    _fedavg(SF, C, CI, D)


@njit
def _sequential(SF, SI, C, CI, D, N, M, T, share, counts, touched):
    """One epoch of sequential clients: client after client, each handing its adapters to the next."""
    for c in range(D.shape[1]):
        k = CI[_LEFT, c]
        if k <= 0:
            continue
        if SI[_RELAY]:
            _down(SF, C, D, c, SF[_SFREE], D[_SYNC_DOWN, c], D[_SYNC_BYTES, c])
        _issue(SF, C, CI, D, N, c, SF[_SFREE])
        for j in range(k):
            _serve(SF, SI, C, CI, D, N, c, M, T, share, counts, touched)
            CI[_LEFT, c] -= 1
            if j + 1 < k:
                _issue(SF, C, CI, D, N, c, SF[_SFREE])
        _server_step(SF, SI)
        _upload(SF, C, CI, D, c)
        SF[_SFREE] = max(SF[_SFREE], C[_ARRIVAL, c])
        SI[_RELAY] = 1


@njit
def replay_server(D, N, SF, SI, sequential, kind, M, T, share, counts, touched):
    """Replay one server's clients (every one has micro-batches); returns C (their float state: busy, bytes).

    ``kind``: :data:`ARRIVAL`, :data:`PROPORTIONAL` or :data:`ROUND_ROBIN` (interleaved clients' server
    order). The server's end and busy time are left in ``SF``.
    """
    m = D.shape[1]
    C = np.zeros((7, m))
    CI = np.zeros((6, m), np.int64)
    seg = np.zeros(max(1, min(SI[_EVERY] * SI[_ACC], N[_N].sum())), np.int64)  # one segment of a fixed order
    epochs = 0
    for c in range(m):
        per = N[_PER_EPOCH, c] if N[_PER_EPOCH, c] else N[_N, c]
        epochs = max(epochs, -(-N[_N, c] // per))
    for e in range(epochs):
        left = 0
        for c in range(m):
            per = N[_PER_EPOCH, c] if N[_PER_EPOCH, c] else N[_N, c]
            CI[_LEFT, c] = max(0, min(per, N[_N, c] - e * per))
            left += CI[_LEFT, c] > 0
        if sequential:
            _sequential(SF, SI, C, CI, D, N, M, T, share, counts, touched)
        else:
            _interleaved(SF, SI, C, CI, D, N, left, kind, seg, M, T, share, counts, touched)
    return C


def layout(clients: list) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's rows for a server's clients: D (18 x clients, seconds and bytes) and N (n, per_epoch)."""
    D = np.array([[getattr(d, k) for d in clients] for k in _ROWS], np.float64).reshape(len(_ROWS), -1)
    N = np.array([[d.n for d in clients], [d.per_epoch for d in clients]], np.int64).reshape(2, -1)
    return D, N


def replay(job, cfg) -> tuple[dict, dict, float]:
    """Replay a SplitLoRA job on constant links.

    Returns:
        per-device figures (``busy``, ``up``, ``down``: every device of a server that has devices),
        per-server figures (``busy``, ``mixing``, ``total``: servers that have devices) and the makespan.
    """
    devices: dict[str, dict] = {}
    servers: dict[str, dict] = {}
    sequential = cfg.client_order == "sequential"
    kind = FIXED_ORDERS.get(cfg.policy)
    makespan = 0.0
    for k in dict.fromkeys(d.server for d in job.devices):  # the SimPy schedule's order (groups())
        srv, mine = job.servers[k], [d for d in job.devices if d.server == k]
        clients = [d for d in mine if d.n]
        D, N = layout(clients)
        M, T, share, counts, touched = mixing.start(N[_N])
        SF = np.array([0.0, 0.0, 0.0, srv.step, srv.aggregate])
        SI = np.array([0, 0, cfg.accumulate, cfg.fedavg_every, bool(cfg.decompose), 0], np.int64)
        C = replay_server(D, N, SF, SI, sequential, _KINDS[kind], M, T, share, counts, touched)
        for d in mine:
            devices[d.name] = {"busy": 0.0, "up": 0.0, "down": 0.0}
        for c, d in enumerate(clients):
            devices[d.name] = {"busy": float(C[_BUSY, c]), "up": float(C[_UP, c]), "down": float(C[_DOWN, c])}
        servers[srv.name] = {"busy": float(SF[_SBUSY]), "mixing": mixing.value(M, T), "total": int(N[_N].sum())}
        makespan = max(makespan, float(SF[_END]))
    return devices, servers, makespan
