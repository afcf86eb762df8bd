"""SplitLoRA on the fast path: :class:`sfsim.schedules.splitlora.Server` on constant links and on the dynamic network, compiled.

The SimPy schedule computes each server's whole run by arithmetic over three primitives (a
client's compute, a message on its uplink, one on its downlink) and waits once, so the fast path
is the same arithmetic in numba, step for step and in the same order (every float is summed as the
schedule sums it): interleaved clients in arrival order (a heap by arrival, then device) or in a
fixed order per epoch (:func:`sfsim.engine.pacing.server_order`, drawn lazily from a heap of the
clients' keys), segments of ``fedavg_every`` server steps closed by a FedAvg, or sequential
clients relaying their adapters. Servers share nothing. Memory: a few numbers per client and one
segment's order (``fedavg_every`` x ``accumulate`` at most), never one per micro-batch (the SimPy
schedule holds each epoch's order).

On the dynamic network without handovers (:func:`uncovered`: one leg per client) the three
primitives follow :mod:`sfsim.network.legs` as ``Server._device_net``, ``_up_net`` and ``_down_net``
do: every transfer integrates its leg's rate (:mod:`sfsim.fast.rates`, the same floats); under
``churn: pause`` compute and links progress only while the client is online; a client that drops,
or whose windows end with work left, is gone from the first op that would outlast it (its later
turns are skipped, FedAvg averages the uploads that arrive). The clients' motions are left as the
SimPy run leaves them (``done``, ``sent``, radio seconds, ``gone``). With handovers between servers the
servers' loops run jointly in time (:mod:`sfsim.fast.splitmoves`, on these primitives and each client's legs).
The primitives, one micro-batch and FedAvg are :mod:`sfsim.fast.splitops`'; here the segments and epochs.

State in arrays (numba passes them to helpers): ``D`` (float per client, :data:`_ROWS`), ``N``
(n, per_epoch), ``C`` (float client state: free, up_free, down_free, arrival, busy, up and down
bytes), ``CI`` (int client state: next, mb, since_step, left, unissued, todo), ``R`` (the rates and the
clients' network state, :func:`network_arrays`: the rates' program, NC and NI), ``SF`` (server free,
end, busy, step, aggregate) and ``SI`` (steps, window, accumulate, fedavg_every, decompose, relay).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from sfsim.engine.pacing import FIXED_ORDERS
from sfsim.fast import mixing, rates
from sfsim.fast.jit import njit
from sfsim.fast.splitops import (
    _ACC,
    _ARRIVAL,
    _END,
    _EVERY,
    _KINDS,
    _LEFT,
    _N,
    _PER_EPOCH,
    _RELAY,
    _SBUSY,
    _SFREE,
    _STEPS,
    _SYNC_BYTES,
    _SYNC_DOWN,
    _TODO,
    _UNISSUED,
    ARRIVAL,
    _count_down,
    _down,
    _fedavg,
    _issue,
    _order_key,
    _passed,
    _serve,
    _server_step,
    _upload,
    client_figures,
    fill_motions,
    layout,
    network_arrays,
)
from sfsim.schedules.splitlora.moves import hands_over


# -- segments and epochs: Server._fixed_segment, _arrival_segment, _interleaved, _sequential ---------------
@njit
def _fixed_segment(SF, SI, C, CI, D, N, R, order, lo, hi, M, T, share, counts, touched):
    """Serve ``order[lo:hi]`` in its order, waiting for each named client's micro-batch; returns clients emptied."""
    emptied = 0
    for p in range(lo, hi):
        CI[_TODO, order[p]] += 1
    for c in range(D.shape[1]):
        if CI[_LEFT, c] > 0 and CI[_TODO, c]:
            _issue(SF, C, CI, D, N, R, c, SF[_SFREE])
    for p in range(lo, hi):
        c = order[p]
        _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched)
        CI[_TODO, c] -= 1
        emptied += _count_down(CI, c)
        if CI[_TODO, c]:
            _issue(SF, C, CI, D, N, R, c, SF[_SFREE])
    return emptied


@njit
def _arrival_segment(SF, SI, C, CI, D, N, R, quota, M, T, share, counts, touched):
    """Serve ``quota`` micro-batches in arrival order (ties: device order); returns clients emptied."""
    emptied = issued = 0
    out = [(0.0, 0)]
    out.pop()
    for c in range(D.shape[1]):
        CI[_UNISSUED, c] = CI[_LEFT, c]
    for c in range(D.shape[1]):
        if CI[_LEFT, c] > 0 and issued < quota:
            _issue(SF, C, CI, D, N, R, c, SF[_SFREE])
            CI[_UNISSUED, c] -= 1
            issued += 1
            heapq.heappush(out, (C[_ARRIVAL, c], c))
    served = 0
    while served < quota and len(out):
        c = heapq.heappop(out)[1]
        skipped = C[_ARRIVAL, c] == -math.inf
        _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched)
        emptied += _count_down(CI, c)
        served += 0 if skipped else 1
        issued -= 1 if skipped else 0
        if issued < quota and CI[_UNISSUED, c]:
            _issue(SF, C, CI, D, N, R, c, SF[_SFREE])
            CI[_UNISSUED, c] -= 1
            issued += 1
            heapq.heappush(out, (C[_ARRIVAL, c], c))
    return emptied



@njit
def _interleaved(SF, SI, C, CI, D, N, R, left, kind, seg, M, T, share, counts, touched):
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
        if _passed(R):
            return
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
            left -= _fixed_segment(SF, SI, C, CI, D, N, R, seg, 0, hi, M, T, share, counts, touched)
        else:
            left -= _arrival_segment(SF, SI, C, CI, D, N, R, quota, M, T, share, counts, touched)
        _server_step(SF, SI)
        if SI[_STEPS] % every == 0 and left:
            _fedavg(SF, C, CI, D, R)
    _fedavg(SF, C, CI, D, R)


@njit
def _sequential(SF, SI, C, CI, D, N, R, M, T, share, counts, touched):
    """One epoch of sequential clients: client after client, each handing its adapters to the next."""
    for c in range(D.shape[1]):
        k = CI[_LEFT, c]
        if k <= 0 or _passed(R):
            continue
        if SI[_RELAY]:
            _down(SF, C, D, R, c, SF[_SFREE], D[_SYNC_DOWN, c], D[_SYNC_BYTES, c])
        _issue(SF, C, CI, D, N, R, c, SF[_SFREE])
        for j in range(k):
            _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched)
            CI[_LEFT, c] -= 1
            if j + 1 < k:
                _issue(SF, C, CI, D, N, R, c, SF[_SFREE])
        _server_step(SF, SI)
        _upload(SF, C, CI, D, R, c)
        SF[_SFREE] = max(SF[_SFREE], C[_ARRIVAL, c])
        SI[_RELAY] = 1


@njit
def replay_server(D, N, R, SF, SI, sequential, kind, M, T, share, counts, touched, epochs, release, ends, wait):
    """Replay one server's clients (every one has micro-batches); returns C (their float state: busy, bytes).

    ``kind``: :data:`ARRIVAL`, :data:`PROPORTIONAL` or :data:`ROUND_ROBIN` (interleaved clients' server
    order). ``R``: the clients' rates and network state (:func:`network_arrays`; None: constant
    links, and the compiled code has no network branch). The server's end and busy time are left in ``SF``.
    ``epochs``: the run's epochs (-1: the clients' own). Backhaul closing rounds (:func:`sfsim.fast.closing.replay_closing`): the
    server is free again at ``release[e]`` after epoch ``e``; ``ends[e]``: its free time at epoch ``e``'s end,
    and the replay stops after epoch ``len(ends) - 1`` (empty: no closing rounds, every epoch). ``wait``: the server's
    wait between two epochs (``Server._epoch_end``, :mod:`sfsim.cost.epochend`; 0: none), after the closing round.
    """
    m = D.shape[1]
    C = np.zeros((8, m))
    CI = np.zeros((6, m), np.int64)
    seg = np.zeros(max(1, min(SI[_EVERY] * SI[_ACC], N[_N].sum())), np.int64)  # one segment of a fixed order
    if epochs < 0:
        epochs = 0
        for c in range(m):
            per = N[_PER_EPOCH, c] if N[_PER_EPOCH, c] else N[_N, c]
            epochs = max(epochs, -(-N[_N, c] // per))
    for e in range(epochs):
        if e > 0:
            if len(ends):  # the previous epoch's closing round came back
                SF[_SFREE] = release[e - 1]
            SF[_SFREE] += wait  # Server._epoch_end: the next epoch's first commands go after it
        left = 0
        for c in range(m):
            per = N[_PER_EPOCH, c] if N[_PER_EPOCH, c] else N[_N, c]
            CI[_LEFT, c] = max(0, min(per, N[_N, c] - e * per))
            left += CI[_LEFT, c] > 0
        if sequential:
            _sequential(SF, SI, C, CI, D, N, R, M, T, share, counts, touched)
        else:
            _interleaved(SF, SI, C, CI, D, N, R, left, kind, seg, M, T, share, counts, touched)
        if len(ends):
            ends[e] = SF[_SFREE]
            if e + 1 == len(ends):
                break
    return C



def uncovered(net, job) -> str | None:
    """Why the fast path cannot replay this dynamic network (one line), or None: with handovers to other servers
    the joint loop (:mod:`sfsim.fast.splitmoves`), else every device's legs on its server (handovers that keep it
    there: new links from each); rates the kernels know (:func:`sfsim.fast.rates.knows`), no link that may stall
    for good."""
    if getattr(net, "motions", None) is None:
        return DYNAMIC
    joint = hands_over(net.motions)
    for i, m in net.motions.items():
        if not joint and any(leg.server != job.devices[i].server for leg in m.legs):
            return MOVES
        if any(rates.may_stall(leg.rate) or rates.may_stall(leg.down) for leg in m.legs):
            return STALLS
        if not all(rates.knows(r) for leg in m.legs for r in (leg.up_rate(m.pause), leg.down_rate(m.pause))) \
                or not rates.knows(m.avail):
            return DYNAMIC
    return None


_NONE = np.zeros(0)  # no closing rounds
GUESS = 1.5
"""Drawn processes are first drawn to this many times a server's run on constant links."""
DYNAMIC = "the dynamic network (handover, varying links, availability) is replayed by the SimPy engine only"
MOVES = "splitlora: a device whose legs are all on another server than its own is replayed by the SimPy engine only"
STALLS = "a link that may stall for good (a trace ending at 0) is replayed by the SimPy engine only"


def _server(job, cfg, k: int, clients: list[int], epochs: int = -1, release=_NONE, ends=_NONE,
            wait: float = 0.0) -> tuple:
    """Replay server ``k``'s clients (job indices); on the dynamic network, drawing the drawn processes further
    until no transfer passes what was drawn (first guess: 1.5 x the run on constant links). Returns (C, SF, M, T, N).
    ``epochs``, ``release``, ``ends``: the closing rounds', ``wait``: the epoch-end wait (:func:`replay_server`)."""
    net = getattr(job, "network", None)
    D, N = layout([job.devices[i] for i in clients])
    srv, kind = job.servers[k], _KINDS[FIXED_ORDERS.get(cfg.policy)]
    horizon = 0.0  # drawn processes are drawn to GUESS x the run on constant links first (doubled while too short)
    while True:
        R = None
        if net is not None and horizon:
            R = network_arrays([net.motions[i] for i in clients], horizon)
        M, T, share, counts, touched = mixing.start(N[_N])
        SF = np.array([0.0, 0.0, 0.0, srv.step, srv.aggregate])
        SI = np.array([0, 0, cfg.accumulate, cfg.fedavg_every, bool(cfg.decompose), 0], np.int64)
        C = replay_server(D, N, R, SF, SI, cfg.client_order == "sequential", kind, M, T, share, counts, touched,
                          epochs, release, ends, float(wait))
        if net is None or (R is not None and not rates.stuck(R[0])):
            break
        horizon = 2.0 * horizon if horizon else max(rates.HORIZON, GUESS * SF[_END])
    if net is not None:
        fill_motions([net.motions[i] for i in clients], R)
    return C, SF, M, T, N



def replay(job, cfg, epoch_end: dict[str, float] | None = None) -> tuple[dict, dict, float]:
    """Replay a SplitLoRA job on constant links or on a dynamic network it :func:`covers`; ``epoch_end``: server name ->
    its wait between two epochs (:func:`sfsim.cost.epochend.epoch_end_seconds`; a server waits it after each of its
    clients' epochs but the last, :func:`waited`).

    Returns:
        per-device figures (``busy``, ``up``, ``down``: every device of a server that has devices),
        per-server figures (``busy``, ``mixing``, ``total``: servers that have devices) and the makespan.
        On the dynamic network the clients' motions hold what the SimPy run leaves on them.
    """
    devices: dict[str, dict] = {}
    servers: dict[str, dict] = {}
    makespan = 0.0
    for k in dict.fromkeys(d.server for d in job.devices):  # the SimPy schedule's order (groups())
        mine = [i for i, d in enumerate(job.devices) if d.server == k]
        clients = [i for i in mine if job.devices[i].n]
        C, SF, M, T, N = _server(job, cfg, k, clients, wait=(epoch_end or {}).get(job.servers[k].name, 0.0))
        for i in mine:
            devices[job.devices[i].name] = {"busy": 0.0, "up": 0.0, "down": 0.0}
        for c, i in enumerate(clients):
            devices[job.devices[i].name] = client_figures(C, c)
        servers[job.servers[k].name] = {"busy": float(SF[_SBUSY]), "mixing": mixing.value(M, T),
                                        "total": int(N[_N].sum())}
        makespan = max(makespan, float(SF[_END]))
    return devices, servers, makespan


def waited(job, epoch_end: dict[str, float]) -> set[str]:
    """The servers that wait ``epoch_end`` between epochs without backhaul rounds (``Server.run``: a server whose
    clients train more than one epoch, with a wait above 0)."""
    out = set()
    for d in job.devices:
        name = job.servers[d.server].name
        if d.n and d.n > (d.per_epoch or d.n) and epoch_end.get(name, 0.0) > 0:
            out.add(name)
    return out
