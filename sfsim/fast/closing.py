"""The baselines' closing backhaul rounds on the fast path (no ``training.sync``, servers with backhaul links).

``sfsim run`` ends each epoch with one closing round over the servers' backhaul links
(:mod:`sfsim.network.backhaul`). SplitLoRA's SimPy servers wait for it before their next epoch
(``Server.run``: ``ServerRounds.finish`` between epochs), which couples the servers: :func:`replay_closing`
replays epoch ``e`` of every server once the rounds before it are known. With handovers the rounds follow
each server's end after the replay (:func:`sfsim.network.backhaul.close_epochs`, in :mod:`sfsim.fast.replay`).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast import cenlora as cl
from sfsim.fast import mixing
from sfsim.fast import splitlora as sl
from sfsim.network.backhaul import closing_round


def replay_closing(job, cfg) -> tuple[dict, dict, float, dict]:
    """:func:`sfsim.fast.splitlora.replay` of a job whose servers end each epoch with a closing backhaul round (no ``training.sync``,
    constant links): the SimPy schedule's servers wait for it between epochs, so epoch ``e`` of every server is
    replayed once the rounds before it are known (each server replayed again from the start, one epoch further).
    Returns :func:`sfsim.fast.splitlora.replay`'s figures (every server) and ``{"bytes", "rounds"}`` of the rounds."""
    spec, n_srv = job.sync, len(job.servers)
    clients = {k: [i for i, d in enumerate(job.devices) if d.server == k and d.n] for k in range(n_srv)}
    release = {k: np.zeros(spec.epochs) for k in range(n_srv)}
    out: dict[int, tuple] = {}
    for e in range(spec.epochs):
        ends = {}
        for k, srv in enumerate(job.servers):
            if clients[k]:
                at = np.zeros(e + 1)
                out[k] = sl._server(job, cfg, k, clients[k], spec.epochs, release[k], at)
                ends[srv.name] = float(at[e])
            else:  # no client: its free time is the last round's return
                ends[srv.name] = float(release[k][e - 1]) if e else 0.0
        back = closing_round(spec, ends)
        for k, srv in enumerate(job.servers):
            release[k][e] = back[srv.name]
    devices = {d.name: {"busy": 0.0, "up": 0.0, "down": 0.0} for d in job.devices}
    servers = {srv.name: {"busy": 0.0, "mixing": None, "total": 0} for srv in job.servers}
    makespan = max((float(r[-1]) for r in release.values()), default=0.0)
    for k, (C, SF, M, T, N) in out.items():
        for c, i in enumerate(clients[k]):
            devices[job.devices[i].name] = sl.client_figures(C, c)
        servers[job.servers[k].name] = {"busy": float(SF[sl._SBUSY]), "mixing": mixing.value(M, T),
                                        "total": int(N[sl._N].sum())}
        makespan = max(makespan, float(SF[sl._END]))
    return devices, servers, makespan, _closed(job)


def _closed(job) -> dict:
    """The rounds' bytes per server (summed as :class:`sfsim.network.backhaul.Rounds` sums them: up, then down,
    round after round) and their count."""
    sent = 0.0
    for _ in range(2 * job.sync.epochs):
        sent += job.sync.closing
    return {"bytes": {srv.name: sent for srv in job.servers}, "rounds": job.sync.epochs}


def replay_cenlora(job, cfg) -> tuple[dict, float, dict]:
    """CenLoRA with each epoch's closing round (``sfsim.schedules.cenlora._synced``: an epoch's micro-batches, the
    round once the server's workers are done, the next epoch when it is back). Returns the per-server figures
    (:func:`sfsim.fast.cenlora.replay`'s), the makespan and ``{"bytes", "rounds"}`` of the rounds."""
    spec, free, state = job.sync, {}, {}
    for k, srv in enumerate(job.servers):
        mine = [d for d in job.devices if d.server == k]
        free[srv.name] = 0.0
        if mine:
            D, N = cl.layout(mine)
            state[k] = (D, N, [0.0], mixing.start(N[cl._N]))
    for e in range(spec.epochs):
        ends = dict(free)
        for k, (D, N, busy, mix) in state.items():
            srv = job.servers[k]
            per = np.where(N[cl._PER_EPOCH] > 0, N[cl._PER_EPOCH], N[cl._N])
            lo, hi = np.minimum(e * per, N[cl._N]), np.minimum((e + 1) * per, N[cl._N])
            ends[srv.name], busy[0] = cl.epoch(D, N, lo, hi - lo, int(srv.count), float(srv.step),
                                               int(cfg.accumulate), bool(cfg.decompose), free[srv.name], busy[0],
                                               True, *mix)
        free = closing_round(spec, ends)
    out = {job.servers[k].name: {"busy": busy[0], "mixing": mixing.value(mix[0], mix[1]), "total": int(N[cl._N].sum())}
           for k, (D, N, busy, mix) in state.items()}
    return out, max(free.values(), default=0.0), _closed(job)
