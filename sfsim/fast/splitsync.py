"""SplitLoRA with ``training.sync`` on the fast path: the servers' loops and their backhaul rounds, exact.

The SimPy schedule (:class:`sfsim.schedules.splitlora.Server` with a :class:`sfsim.network.backhaul.ServerRounds`)
plays each server's loop ahead by arithmetic and waits only at its optimizer steps (``every: 1`` in ``sync`` mode:
a round before each step; else a round after every ``every``-th, a barrier in ``sync`` mode, in flight in ``async``
mode) and at each epoch's end (rounds of zeros until no server trains, then the closing round). Here each server's
loop is a compiled generator (:func:`server_run`: :mod:`sfsim.fast.splitlora`'s arithmetic, step for step) that
stops where the SimPy process would wait and says why (:data:`BEFORE`, :data:`AFTER`, :data:`FINISH`; its time in
``X[0]``, the time it goes on in ``X[1]``); :func:`replay` forms the rounds from the servers' ``k``-th joins, as
:class:`sfsim.network.backhaul.Rounds` pairs them, in its arithmetic (a server's backhaul sends and receives
alternate, so its lane never queues: the send ends ``bytes x 8 / bandwidth`` after the join, the average is ready
when the last upload has arrived, and comes back the same way). On the dynamic network without handovers between
servers each client's primitives follow its legs as in :mod:`sfsim.fast.splitlora` (:func:`uncovered`).
A generator passes another's stops on with ``for code in ...: yield code`` (numba compiles no ``yield from``).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from sfsim.engine.pacing import FIXED_ORDERS
from sfsim.fast import closing, lockstep, mixing, rates, splitlora
from sfsim.fast import splitops as sl
from sfsim.fast.jit import njit
from sfsim.schedules.splitlora.moves import hands_over

DONE, BEFORE, AFTER, FINISH = lockstep.DONE, lockstep.BEFORE, lockstep.AFTER, lockstep.FINISH
_JOINT, _EVERY = range(2)  # Y: the sync knobs (gradients averaged before each step; steps between rounds)


@njit
def _step(SF, SI, X, Y):
    """``Server._server_step`` with its rounds: the step on what the server accumulated (nothing: no step)."""
    if SI[sl._WINDOW]:
        if Y[_JOINT]:
            X[0] = SF[sl._SFREE]
            yield BEFORE
            SF[sl._SFREE] = X[1]
        SF[sl._SFREE] = sl._op(SF, SF[sl._SFREE], SF[sl._SSTEP])
        SI[sl._STEPS] += 1
        SI[sl._WINDOW] = 0
        if not Y[_JOINT] and SI[sl._STEPS] % Y[_EVERY] == 0:
            X[0] = SF[sl._SFREE]
            yield AFTER
            SF[sl._SFREE] = X[1]


@njit
def _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched, X, Y):
    """``Server._serve``: the micro-batch, next in the server's stream, then the step its window may be due for."""
    if sl.served(SF, SI, C, CI, D, N, R, c):
        mixing.add(M, T, share, counts, touched, c)
        if SI[sl._WINDOW] == SI[sl._ACC]:
            for code in _step(SF, SI, X, Y):  # noqa: UP028
                yield code


@njit
def _arrival_segment(SF, SI, C, CI, D, N, R, quota, M, T, share, counts, touched, X, Y, E):
    """:func:`sfsim.fast.splitlora._arrival_segment` with the rounds; ``E[0]``: clients emptied."""
    issued = 0
    out = [(0.0, 0)]
    out.pop()
    for c in range(D.shape[1]):
        CI[sl._UNISSUED, c] = CI[sl._LEFT, c]
    for c in range(D.shape[1]):
        if CI[sl._LEFT, c] > 0 and issued < quota:
            sl._issue(SF, C, CI, D, N, R, c, SF[sl._SFREE])
            CI[sl._UNISSUED, c] -= 1
            issued += 1
            heapq.heappush(out, (C[sl._ARRIVAL, c], c))
    served = 0
    while served < quota and len(out):
        c = heapq.heappop(out)[1]
        skipped = C[sl._ARRIVAL, c] == -math.inf  # the client is gone: its turn does not count
        for code in _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched, X, Y):  # noqa: UP028
            yield code
        E[0] += sl._count_down(CI, c)
        served += 0 if skipped else 1
        issued -= 1 if skipped else 0
        if issued < quota and CI[sl._UNISSUED, c]:
            sl._issue(SF, C, CI, D, N, R, c, SF[sl._SFREE])
            CI[sl._UNISSUED, c] -= 1
            issued += 1
            heapq.heappush(out, (C[sl._ARRIVAL, c], c))


@njit
def _fixed_segment(SF, SI, C, CI, D, N, R, order, hi, M, T, share, counts, touched, X, Y, E):
    """:func:`sfsim.fast.splitlora._fixed_segment` with the rounds; ``E[0]``: clients emptied."""
    for p in range(hi):
        CI[sl._TODO, order[p]] += 1
    for c in range(D.shape[1]):
        if CI[sl._LEFT, c] > 0 and CI[sl._TODO, c]:
            sl._issue(SF, C, CI, D, N, R, c, SF[sl._SFREE])
    for p in range(hi):
        c = order[p]
        for code in _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched, X, Y):  # noqa: UP028
            yield code
        CI[sl._TODO, c] -= 1
        E[0] += sl._count_down(CI, c)
        if CI[sl._TODO, c]:
            sl._issue(SF, C, CI, D, N, R, c, SF[sl._SFREE])


@njit
def _interleaved(SF, SI, C, CI, D, N, R, left, kind, seg, M, T, share, counts, touched, X, Y):
    """:func:`sfsim.fast.splitlora._interleaved` with the rounds: one epoch in arrival or ``kind``'s fixed order."""
    every, acc = SI[sl._EVERY], SI[sl._ACC]
    m = D.shape[1]
    order = [(0.0, 0)]
    order.pop()
    epoch = CI[sl._LEFT].copy()
    taken = np.zeros(m, np.int64)
    E = np.zeros(1, np.int64)
    if kind != sl.ARRIVAL:
        for c in range(m):
            if epoch[c] > 0:
                heapq.heappush(order, (sl._order_key(kind, 0, epoch[c]), c))
    while left:
        if sl._passed(R):  # drawn too short: the replay is void (replay() draws further)
            return
        quota = (every - SI[sl._STEPS] % every) * acc
        E[0] = 0
        if kind != sl.ARRIVAL:
            hi = 0
            while hi < quota and len(order):
                c = heapq.heappop(order)[1]
                seg[hi] = c
                hi += 1
                taken[c] += 1
                if taken[c] < epoch[c]:
                    heapq.heappush(order, (sl._order_key(kind, taken[c], epoch[c]), c))
            stops = _fixed_segment(SF, SI, C, CI, D, N, R, seg, hi, M, T, share, counts, touched, X, Y, E)
            for code in stops:  # noqa: UP028
                yield code
        else:
            stops = _arrival_segment(SF, SI, C, CI, D, N, R, quota, M, T, share, counts, touched, X, Y, E)
            for code in stops:  # noqa: UP028
                yield code
        left -= E[0]
        for code in _step(SF, SI, X, Y):  # noqa: UP028 (a partial window at the segment's end)
            yield code
        if SI[sl._STEPS] % every == 0 and left:
            sl._fedavg(SF, C, CI, D, R)
    sl._fedavg(SF, C, CI, D, R)


@njit
def _sequential(SF, SI, C, CI, D, N, R, M, T, share, counts, touched, X, Y):
    """:func:`sfsim.fast.splitlora._sequential` with the rounds: client after client, relaying their adapters."""
    for c in range(D.shape[1]):
        k = CI[sl._LEFT, c]
        if k <= 0 or sl._passed(R):
            continue
        if SI[sl._RELAY]:
            sl._down(SF, C, D, R, c, SF[sl._SFREE], D[sl._SYNC_DOWN, c], D[sl._SYNC_BYTES, c])
        sl._issue(SF, C, CI, D, N, R, c, SF[sl._SFREE])
        for j in range(k):
            for code in _serve(SF, SI, C, CI, D, N, R, c, M, T, share, counts, touched, X, Y):  # noqa: UP028
                yield code
            CI[sl._LEFT, c] -= 1
            if j + 1 < k:
                sl._issue(SF, C, CI, D, N, R, c, SF[sl._SFREE])
        for code in _step(SF, SI, X, Y):  # noqa: UP028
            yield code
        sl._upload(SF, C, CI, D, R, c)
        SF[sl._SFREE] = max(SF[sl._SFREE], C[sl._ARRIVAL, c])
        SI[sl._RELAY] = 1


@njit
def server_run(D, N, R, SF, SI, C, CI, sequential, kind, seg, M, T, share, counts, touched, epochs, X, Y, wait):
    """One server's loop over the run's ``epochs`` (``Server.run``), stopping where it joins a round: yields
    :data:`BEFORE`, :data:`AFTER` or :data:`FINISH` with its time in ``X[0]``, and goes on from ``X[1]``; ``wait``
    after each epoch's rounds but the last's (``Server._epoch_end``)."""
    m = D.shape[1]
    for e in range(epochs):
        for c in range(m):
            per = N[sl._PER_EPOCH, c] if N[sl._PER_EPOCH, c] else N[sl._N, c]
            CI[sl._LEFT, c] = max(0, min(per, N[sl._N, c] - e * per))
        left = np.count_nonzero(CI[sl._LEFT] > 0)
        if sequential:
            for code in _sequential(SF, SI, C, CI, D, N, R, M, T, share, counts, touched, X, Y):  # noqa: UP028
                yield code
        else:
            stops = _interleaved(SF, SI, C, CI, D, N, R, left, kind, seg, M, T, share, counts, touched, X, Y)
            for code in stops:  # noqa: UP028
                yield code
        X[0] = SF[sl._SFREE]
        yield FINISH
        SF[sl._SFREE] = X[1]
        if e + 1 < epochs:
            SF[sl._SFREE] += wait
    X[0] = SF[sl._SFREE]
    yield DONE


class _Loop:
    """Server ``k``'s loop for :func:`sfsim.fast.lockstep.lockstep`: its compiled generator and its state arrays.
    ``horizon``: the dynamic network's processes drawn to then (0: constant links)."""

    def __init__(self, job, cfg, k: int, joint: bool, horizon: float = 0.0, wait: float = 0.0):
        self.clients = [i for i, d in enumerate(job.devices) if d.server == k and d.n]
        D, N = sl.layout([job.devices[i] for i in self.clients])
        srv, m = job.servers[k], len(self.clients)
        self.R = None
        if horizon and self.clients:
            self.R = sl.network_arrays([job.network.motions[i] for i in self.clients], horizon)
        self.N = N
        self.mix = mixing.start(N[sl._N])
        self.SF = np.array([0.0, 0.0, 0.0, srv.step, srv.aggregate])
        SI = np.array([0, 0, cfg.accumulate, cfg.fedavg_every, bool(cfg.decompose), 0], np.int64)
        self.C, CI = np.zeros((8, m)), np.zeros((6, m), np.int64)
        seg = np.zeros(max(1, min(cfg.fedavg_every * cfg.accumulate, int(N[sl._N].sum()))), np.int64)
        self.X = np.zeros(2)
        Y = np.array([joint, job.sync.every], np.int64)
        kind = sl._KINDS[FIXED_ORDERS.get(cfg.policy)]
        self.gen = server_run(D, N, self.R, self.SF, SI, self.C, CI, cfg.client_order == "sequential", kind, seg,
                              *self.mix, int(job.sync.epochs), self.X, Y, float(wait))

    def go(self, t: float) -> tuple[int, float, bool]:
        """Go on from ``t`` to the next round the server joins (it always trains until its epoch's end)."""
        self.X[1] = t
        return int(next(self.gen)), float(self.X[0]), True

    def drained(self, t: float) -> float:
        """``Server.drained_step``: the step a server whose epoch is trained takes with the others; its end."""
        SF = self.SF
        start = max(t, float(SF[sl._SFREE]))
        SF[sl._SBUSY] += SF[sl._SSTEP]
        SF[sl._END] = max(SF[sl._END], start + SF[sl._SSTEP])
        SF[sl._SFREE] = start + SF[sl._SSTEP]
        return float(SF[sl._SFREE])

    @property
    def stuck(self) -> bool:
        """A rate was asked past what was drawn: the run is void."""
        return self.R is not None and rates.stuck(self.R[0])


def replay(job, cfg, epoch_end: dict[str, float] | None = None) -> tuple[dict, dict, float, object]:
    """SplitLoRA with ``training.sync`` (:func:`uncovered`): every server's loop and the rounds (``epoch_end``: server
    name -> its wait after each epoch's rounds but the last's). On the dynamic
    network the clients' processes are drawn to 1.5 x the run on constant links first, further while too short,
    and the clients' motions are left as the SimPy run leaves them.

    Returns :func:`sfsim.fast.splitlora.replay`'s figures (every server) and the rounds
    (:class:`sfsim.network.backhaul.Closed`).
    """
    joint = job.sync.mode == "sync" and job.sync.every == 1
    net = getattr(job, "network", None)
    held = {i: closing._held(m) for i, m in net.motions.items()} if net is not None else {}
    horizon = 0.0
    while True:
        for i, state in held.items():  # each replay starts from what the motions held
            m = net.motions[i]
            m.done, m.sent, m.gone, m.send_s, m.recv_s = state
        loops = [_Loop(job, cfg, k, joint, horizon, (epoch_end or {}).get(srv.name, 0.0))
                 for k, srv in enumerate(job.servers)]
        closed, ends = lockstep.lockstep(job.sync, loops, always_close=True)
        if net is None or (horizon and not any(loop.stuck for loop in loops)):
            break
        last = max(float(loop.SF[sl._END]) for loop in loops)
        horizon = 2.0 * horizon if horizon else max(rates.HORIZON, splitlora.GUESS * last)
    devices = {d.name: {"busy": 0.0, "up": 0.0, "down": 0.0} for d in job.devices}
    servers, makespan = {}, 0.0
    for srv, loop, end in zip(job.servers, loops, ends, strict=True):
        if loop.R is not None:
            sl.fill_motions([net.motions[i] for i in loop.clients], loop.R)
        for c, i in enumerate(loop.clients):
            devices[job.devices[i].name] = sl.client_figures(loop.C, c)
        servers[srv.name] = {"busy": float(loop.SF[sl._SBUSY]), "mixing": mixing.value(loop.mix[0], loop.mix[1]),
                             "total": int(loop.N[sl._N].sum())}
        makespan = max(makespan, float(loop.SF[sl._END]), end)
    return devices, servers, makespan, closed


def uncovered(job) -> str | None:
    """Why SplitLoRA's ``training.sync`` stays on the SimPy engine (one line), or None: covered on constant links
    and on the dynamic network :func:`sfsim.fast.splitlora.uncovered` covers without handovers between servers."""
    net = getattr(job, "network", None)
    if net is None:
        return None
    if getattr(net, "motions", None) is not None and hands_over(net.motions):
        return "splitlora's backhaul sync with handovers between servers is replayed by the SimPy engine only"
    return splitlora.uncovered(net, job)
