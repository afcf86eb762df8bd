"""The baselines' closing backhaul rounds on the fast path (no ``training.sync``, servers with backhaul links).

``sfsim run`` ends each epoch with one closing round over the servers' backhaul links
(:mod:`sfsim.network.backhaul`). SplitLoRA's SimPy servers wait for it before their next epoch
(``Server.run``: ``ServerRounds.finish`` between epochs), which couples the servers: :func:`replay_closing`
replays epoch ``e`` of every server once the rounds before it are known. With handovers between servers the rounds
are events of the servers' joint loop (:mod:`sfsim.fast.splitclose`).
"""

from __future__ import annotations

import numpy as np

from sfsim.fast import cenlora as cl
from sfsim.fast import fedlora as fed
from sfsim.fast import mixing, splitlora
from sfsim.fast import splitops as sl
from sfsim.network.backhaul import Closed, closing_round
from sfsim.schedules import fedlora as fl


def replay_closing(job, cfg, epoch_end: dict[str, float] | None = None) -> tuple[dict, dict, float, dict]:
    """:func:`sfsim.fast.splitlora.replay` of a job whose servers end each epoch with a closing backhaul round (no ``training.sync``,
    no handover): the SimPy schedule's servers wait for it between epochs, so epoch ``e`` of every server is
    replayed once the rounds before it are known (each server replayed again from the start, one epoch further;
    on the dynamic network from what the clients' motions held, and the last replay leaves its figures on them).
    ``epoch_end``: server name -> its wait after each epoch's round but the last's (``Server._epoch_end``).
    Returns :func:`sfsim.fast.splitlora.replay`'s figures (every server) and ``{"bytes", "rounds"}`` of the rounds."""
    spec, n_srv = job.sync, len(job.servers)
    clients = {k: [i for i, d in enumerate(job.devices) if d.server == k and d.n] for k in range(n_srv)}
    release = {k: np.zeros(spec.epochs) for k in range(n_srv)}
    out: dict[int, tuple] = {}
    motions = job.network.motions if getattr(job, "network", None) is not None else {}
    held = {i: _held(m) for i, m in motions.items()}  # each replay starts from what the motions held
    for e in range(spec.epochs):
        ends = {}
        for k, srv in enumerate(job.servers):
            if clients[k]:
                for i in clients[k] if motions else ():
                    motions[i].done, motions[i].sent, motions[i].gone, motions[i].send_s, motions[i].recv_s = held[i]
                at = np.zeros(e + 1)
                wait = (epoch_end or {}).get(srv.name, 0.0)
                out[k] = splitlora._server(job, cfg, k, clients[k], spec.epochs, release[k], at, wait)
                ends[srv.name] = float(at[e])
            else:  # no client: its free time is the last round's return (and its wait after it)
                ends[srv.name] = float(release[k][e - 1]) + (epoch_end or {}).get(srv.name, 0.0) if e else 0.0
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


def _held(m) -> tuple:
    """What :func:`sfsim.fast.splitlora.fill_motions` writes on a motion."""
    return m.done, m.sent, m.gone, m.send_s, m.recv_s


def _closed(job) -> dict:
    """The rounds' bytes per server (summed as :class:`sfsim.network.backhaul.Rounds` sums them: up, then down,
    round after round) and their count."""
    sent = 0.0
    for _ in range(2 * job.sync.epochs):
        sent += job.sync.closing
    return {"bytes": {srv.name: sent for srv in job.servers}, "rounds": job.sync.epochs}


def replay_cenlora(job, cfg, waits: dict[str, float] | None = None) -> tuple[dict, float, dict]:
    """CenLoRA with each epoch's closing round (``sfsim.schedules.cenlora._synced``: an epoch's micro-batches, the
    round once the server's workers are done, the next epoch when it is back, after its epoch-end wait in ``waits``
    when it has one). Returns the per-server figures (:func:`sfsim.fast.cenlora.replay`'s), the makespan and
    ``{"bytes", "rounds"}`` of the rounds."""
    waits = waits or {}
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
        if e + 1 < spec.epochs:  # Engine.at(now + wait): exactly the return plus the wait
            free = {n: t + waits[n] if waits.get(n, 0.0) > 0 else t for n, t in free.items()}
    out = {job.servers[k].name: {"busy": busy[0], "mixing": mixing.value(mix[0], mix[1]), "total": int(N[cl._N].sum())}
           for k, (D, N, busy, mix) in state.items()}
    return out, max(free.values(), default=0.0), _closed(job)


def replay_fedlora(job, cfg, waits: dict[str, float] | None = None) -> tuple[dict, dict, float, Closed]:
    """FedLoRA (constant links) whose servers end each epoch with a closing round (``sfsim.schedules.fedlora.EpochClose``,
    :func:`sfsim.fast.fedlora.closing_epochs`). Returns :func:`sfsim.fast.fedlora.replay`'s figures and the rounds
    (:func:`fed_closed`)."""
    per = int(cfg.local_steps)
    slots = fl.width(job.devices, per)
    servers = {k: _FedServer(job, cfg, k, slots) for k in dict.fromkeys(d.server for d in job.devices)}
    makespan = fed.closing_epochs(job, servers, slots, waits)  # waits: each server's epoch-end wait
    devices: dict[str, dict] = {}
    for s in servers.values():
        makespan = max(makespan, s.last)
        for d, n in zip(s.mine, s.steps, strict=True):
            devices[d.name] = fed.figures(d, int(n), per)
    return devices, {job.servers[k].name: s.busy for k, s in servers.items()}, makespan, fed_closed(job.sync)


def fed_uncovered(job, cfg) -> str | None:
    """Why FedLoRA's closing rounds stay on the SimPy engine (one line), or None: covered on every network the fast
    path covers (:func:`replay_fedlora`, :func:`sfsim.fast.fedlora.replay_varying`, :mod:`sfsim.fast.fedmoves`) when
    the devices' epochs fill the run's FedAvg slots (as a scenario's do: every device trains every epoch); with
    handovers between servers a server's epoch waits for the visitors a later leg may bring (``fedgroup.awaited``)."""
    per = int(cfg.local_steps)
    plans = fl.plans(job.devices, per)
    most = max((p[-1][0] + 1 for p in plans if p), default=0)  # the FedAvg slots the SimPy schedule forms
    if job.sync.epochs * max(fl.width(job.devices, per), 1) > most:
        return "fedlora's closing backhaul rounds when the devices' epochs are not the run's are replayed by SimPy only"
    return None


C_BUSY, C_LAT, C_FREE = range(3)  # CF: per server, its closing round's seconds, latency, its last return
C_STATE, C_HEAD, C_TAIL = range(3)  # CI: per server and epoch, its closes event (1 triggered, 2 processed), waiters
E_EPOCHS, E_CLOSING, E_DEVICES = range(3)  # EP: the run's epochs, closing rounds or not, devices (then servers)


def fed_arrays(job, n: int) -> tuple:
    """FedLoRA's closing rounds in :mod:`sfsim.fast.fedmoves`' loop (its ``S[6:]``, ``n`` devices): per server its
    round's seconds, latency and last return (CF) and its ``closes`` events (CI: state, waiting devices); per epoch
    the latest upload arrival (AR) and the servers waiting on ``ready`` (RW: count, then servers); EP."""
    spec, n_srv = job.sync, len(job.servers)
    epochs = spec.epochs if spec is not None else 0
    CF = np.zeros((n_srv, 3))
    for k, (_, bw, lat) in enumerate(spec.servers if spec is not None else ()):
        CF[k, C_BUSY], CF[k, C_LAT] = spec.closing * 8.0 / bw, lat
    CI = np.full((3, n_srv, max(1, epochs)), -1, np.int64)
    CI[C_STATE] = 0
    return (CF, CI, np.full(max(1, epochs), -np.inf), np.zeros((max(1, epochs), n_srv + 1), np.int64),
            np.array([epochs, spec is not None, n], np.int64))


def fed_closed(spec) -> Closed:
    """FedLoRA's closing rounds as ``EpochClose`` counts them: ``2 x closing`` bytes an epoch per server."""
    return Closed({n: 2.0 * spec.closing * spec.epochs for n, _, _ in spec.servers}, spec.epochs)


class _FedServer:
    """A server's static FedAvg rounds (:func:`sfsim.fast.fedlora.rounds`) for :func:`sfsim.fast.fedlora.closing_epochs`."""

    def __init__(self, job, cfg, k: int, slots: int):
        self.mine = [d for d in job.devices if d.server == k]
        self.D, self.N = fed.layout(self.mine)
        self.epochs = np.array([-(-d.n // (d.per_epoch or d.n)) if d.n else 0 for d in self.mine], np.int64)
        self.start, self.steps, self.acc = fed.first_download(self.D), np.zeros(len(self.mine), np.int64), np.zeros(3)
        self.knobs = (int(cfg.local_steps), int(cfg.accumulate), float(job.servers[k].aggregate), slots)

    def run(self, lo: int, hi: int, closing: bool) -> float:
        """The rounds of slots ``lo..hi-1``; when the last ended (-inf: none)."""
        per, acc, aggregate, slots = self.knobs
        return fed.rounds(self.D, self.N, per, acc, aggregate, slots, lo, hi, self.start, self.steps, self.acc)

    def resume(self, e: int, back: float) -> None:
        """Epoch ``e``'s closing round is back at ``back``: devices with rounds in the next epoch download then."""
        nxt = self.epochs > e + 1
        self.start[nxt] = back + (self.D[fed._DOWN, nxt] + self.D[fed._DOWN_L, nxt])
        self.acc[fed._LASTT] = max(self.acc[fed._LASTT], self.start[nxt].max(initial=-np.inf))

    @property
    def last(self) -> float:
        return float(self.acc[fed._LASTT])

    @property
    def busy(self) -> float:
        return float(self.acc[fed._BUSY])
