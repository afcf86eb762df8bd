"""FedLoRA on the fast path: the static schedule of :mod:`sfsim.schedules.fedlora`, round by round, compiled.

With constant links every device of a server runs round ``r`` from the end of its download of the average
of round ``r - 1`` (of the initial adapters, from time 0, for the first; none after its last round): its
micro-batches by arithmetic, its adapter upload, then the server's FedAvg, which starts when the last expected
upload has arrived and the server's lane is free and lasts ``aggregate`` seconds per participant. So a round closes at the latest arrival
(a max-plus step) whatever the order of arrivals, and each float is computed as the SimPy processes
compute it (``now + (t - now)`` for a timeout to ``t``). Device busy time, bytes and steps follow
the static schedule's formulas. Memory: a few floats per device.

On the dynamic network with time-varying links only (no handover, no availability: every device
one leg, :func:`varying_only`) the rounds are the same; each adapter transfer integrates its leg's
rate (:func:`sfsim.network.legs.span`, in Python), the local work stays compiled, and the devices'
:class:`~sfsim.network.legs.Motion` get what the SimPy processes leave on them (what
:func:`sfsim.schedules.network.report` reads).

With handovers or availability a round's membership changes in time (a device leaves every
barrier it has not uploaded to when it drops; its rounds move to the new server's FedAvg group at a
handover): :mod:`sfsim.fast.fedmoves` replays the SimPy run's events in their order, compiled, each
round's local work being :func:`_local_net` (every op integrates the device's availability with
:mod:`sfsim.fast.rates`).
"""

from __future__ import annotations

import math

import numpy as np

from sfsim.fast import rates
from sfsim.fast.draws import compile_draws
from sfsim.fast.jit import njit
from sfsim.fast.rates import may_stall
from sfsim.fast.splitlora import DYNAMIC, STALLS
from sfsim.network.backhaul import closing_round
from sfsim.network.legs import span
from sfsim.schedules import fedlora as fl

# float rows of D
_F, _B, _W, _STEP, _WARM, _LAST, _UP, _UP_L, _DOWN, _DOWN_L = range(10)
_ROWS = ("f", "b", "w", "step", "warmup", "last", "sync_up_s", "up_l", "sync_down_s", "down_l")
_N, _PER_EPOCH = range(2)  # int rows of N


def layout(devices: list) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's rows for a server's devices: D (10 x devices, seconds) and N (n, per_epoch)."""
    D = np.array([[getattr(d, k) for d in devices] for k in _ROWS], np.float64).reshape(len(_ROWS), -1)
    N = np.array([[d.n for d in devices], [d.per_epoch for d in devices]], np.int64).reshape(2, -1)
    return D, N


@njit
def _local(D, N, i, first, last, accumulate, t):
    """Device ``i``'s micro-batches ``first..last-1`` from ``t``; returns (end, optimizer steps)."""
    steps = 0
    lst = D[_LAST, i]
    for n in range(first, last):
        x = lst if lst < 1.0 and (n + 1) % N[_PER_EPOCH, i] == 0 else 1.0
        t = t + (D[_F, i] * x + (D[_WARM, i] if n == 0 else 0.0))
        t = t + D[_B, i] * x
        t = t + D[_W, i] * x
        if (n - first + 1) % accumulate == 0 or n + 1 == last:
            t = t + D[_STEP, i]
            steps += 1
    return t, steps


@njit
def _span(N, i, r, per, slots):
    """Micro-batches ``[first, last)`` of device ``i``'s round in FedAvg slot ``r`` (``first == last``: none), as
    :func:`sfsim.schedules.fedlora.round_plan` forms them; ``per_epoch`` 0 is one epoch."""
    pe = N[_PER_EPOCH, i] if N[_PER_EPOCH, i] > 0 else N[_N, i]
    e, q = r // slots, r % slots
    first = e * pe + q * per
    if pe == 0 or first >= min(N[_N, i], (e + 1) * pe):
        return 0, 0
    return first, min(first + per, (e + 1) * pe, N[_N, i])


@njit
def replay_server(D, N, per, accumulate, aggregate, slots):
    """Replay one server's FedAvg rounds (``slots`` a epoch, :func:`sfsim.schedules.fedlora.width`); returns
    (time of its last event, busy seconds, steps per device)."""
    m = N.shape[1]
    start, steps, acc = first_download(D), np.zeros(m, np.int64), np.zeros(3)
    rounds(D, N, per, accumulate, aggregate, slots, 0, np.iinfo(np.int64).max, start, steps, acc)
    return acc[_LASTT], acc[_BUSY], steps


@njit
def first_download(D):
    """When each device has the initial adapters: the first round's download from time 0 (``0 + (secs + latency)``,
    the SimPy timeout's arithmetic)."""
    return 0.0 + (D[_DOWN] + D[_DOWN_L])


_FREE, _BUSY, _LASTT = range(3)  # acc of rounds(): the server's lane free at, its busy seconds, its last event


@njit
def rounds(D, N, per, accumulate, aggregate, slots, lo, hi, start, steps, acc):
    """A server's FedAvg rounds in slots ``lo..hi-1`` (one epoch's, or all); ``start``: when each device's next round
    starts, ``steps`` its steps, ``acc`` the lane's free time, busy seconds and the last event, all carried from
    the slots before. Returns when the slots' last round ended (-inf: none)."""
    m = N.shape[1]
    end_at = np.zeros(m, np.int64)  # each device's slot after its last round
    for i in range(m):
        pe = N[_PER_EPOCH, i] if N[_PER_EPOCH, i] > 0 else N[_N, i]
        if N[_N, i] > 0:
            end_at[i] = (-(-N[_N, i] // pe) - 1) * slots + -(-(N[_N, i] - (-(-N[_N, i] // pe) - 1) * pe) // per)
    most = min(hi, end_at.max() if m else 0)
    free, busy, last, ended = acc[_FREE], acc[_BUSY], acc[_LASTT], -np.inf
    for r in range(lo, most):
        close = -np.inf
        need = 0
        for i in range(m):
            first, stop = _span(N, i, r, per, slots)
            if first == stop:
                continue
            s = start[i]
            t, k = _local(D, N, i, first, stop, accumulate, s)
            steps[i] += k
            sent = s + (t - s)  # the timeout to the local work's end
            arrival = sent + (D[_UP, i] + D[_UP_L, i])
            close = max(close, arrival)
            need += 1
        if need == 0:
            continue
        dur = aggregate * need
        end = max(close, free) + dur
        busy += dur
        free = ended = end
        last = max(last, end)
        for i in range(m):  # its next round's download; one whose epoch's rounds are done waits for the epoch's end
            if r + 1 < end_at[i]:
                start[i] = end + (D[_DOWN, i] + D[_DOWN_L, i])
                last = max(last, start[i])
    acc[_FREE], acc[_BUSY], acc[_LASTT] = free, busy, last
    return ended


def replay(job, cfg, waits: dict[str, float] | None = None) -> tuple[dict, dict, float]:
    """Replay a static FedLoRA job: per-device figures (``busy``, ``up``, ``down``), server busy, makespan.
    ``waits``: server name -> its epoch-end wait (:func:`sfsim.cost.epochend.epoch_end_seconds`; :func:`waited`)."""
    devices: dict[str, dict] = {}
    busy: dict[str, float] = {}
    makespan, slots = 0.0, fl.width(job.devices, int(cfg.local_steps))
    for k in dict.fromkeys(d.server for d in job.devices):  # the SimPy schedule's order (groups())
        srv, mine = job.servers[k], [d for d in job.devices if d.server == k]
        D, N = layout(mine)
        knobs = (int(cfg.local_steps), int(cfg.accumulate), float(srv.aggregate), slots)
        wait = (waits or {}).get(srv.name, 0.0)
        end, busy[srv.name], steps = _waiting_server(D, N, *knobs, wait) if wait > 0 else replay_server(D, N, *knobs)
        makespan = max(makespan, end)
        for d, s in zip(mine, steps, strict=True):
            devices[d.name] = figures(d, int(s), int(cfg.local_steps))
    return devices, busy, makespan


def _waiting_server(D, N, per: int, accumulate: int, aggregate: float, slots: int, wait: float):
    """:func:`replay_server` epoch by epoch with the server's epoch-end wait of ``wait`` seconds
    (``sfsim.schedules.fedlora.FedGroup.evaluated``): it starts when the epoch's last round has ended, and the devices
    with rounds in the next epoch download the average when it is over."""
    m = N.shape[1]
    start, steps, acc = first_download(D), np.zeros(m, np.int64), np.zeros(3)
    epochs = device_epochs(N)
    for e in range(int(epochs.max(initial=0))):
        ended = rounds(D, N, per, accumulate, aggregate, slots, e * slots, (e + 1) * slots, start, steps, acc)
        nxt = epochs > e + 1
        if nxt.any():
            start[nxt] = (ended + wait) + (D[_DOWN, nxt] + D[_DOWN_L, nxt])
            acc[_LASTT] = max(acc[_LASTT], start[nxt].max())
    return acc[_LASTT], acc[_BUSY], steps


def device_epochs(N) -> np.ndarray:
    """Each device's epochs (0: no micro-batch)."""
    pe = np.where(N[_PER_EPOCH] > 0, N[_PER_EPOCH], np.maximum(N[_N], 1))
    return np.where(N[_N] > 0, -(-N[_N] // pe), 0)


def waited(job, waits: dict[str, float]) -> set[str]:
    """The servers that wait at an epoch's end (``sfsim.schedules.fedlora.FedGroup.evaluated``: a positive wait and a
    device with rounds in a later epoch), whose busy time then counts the waits (``Engine.epoch_end_waited``)."""
    out = set()
    for d in job.devices:
        name = job.servers[d.server].name
        if waits.get(name, 0.0) > 0 and d.n > (d.per_epoch or d.n):
            out.add(name)
    return out


def figures(d, steps: int, per: int) -> dict:
    """A static device's busy seconds and adapter bytes (one upload and one download a round) after ``steps``."""
    n_rounds = fl.count(d.n, d.per_epoch, per)
    return {"busy": d.units(d.n) * (d.f + d.b + d.w) + steps * d.step + d.first_extra(d.n),
            "up": n_rounds * d.sync_bytes, "down": n_rounds * d.sync_bytes}


def varying_only(net, job) -> bool:
    """True when a FedLoRA network only varies link rates: one leg per device (on its server), no availability,
    and no link that may stall for good."""
    motions = getattr(net, "motions", None)
    if motions is None:
        return False
    return all(len(m.legs) == 1 and m.avail is None and m.legs[0].server == job.devices[i].server
               and not may_stall(m.legs[0].rate) and not may_stall(m.legs[0].down) for i, m in motions.items())


def uncovered(net, job) -> str | None:
    """Why the fast path cannot replay this FedLoRA network (one line), or None: :func:`replay_varying` for
    varying links only (:func:`varying_only`), else :func:`sfsim.fast.fedmoves.replay` (handover, availability)."""
    motions = getattr(net, "motions", None)
    if motions is None:
        return DYNAMIC
    if any(may_stall(leg.rate) or may_stall(leg.down) for m in motions.values() for leg in m.legs):
        return STALLS
    if varying_only(net, job):
        return None
    if not all(rates.knows(r) for m in motions.values() for leg in m.legs
               for r in (leg.up_rate(m.pause), leg.down_rate(m.pause), m.avail)):
        return DYNAMIC
    return None


def wait_uncovered(job) -> str | None:
    """Why FedLoRA's epoch-end wait (``training.eval_samples``, several epochs) stays on the SimPy engine (one line), or
    None: covered on constant and time-varying links (:func:`replay`, :func:`replay_varying`), with availability and
    handovers on the device's own server (:func:`sfsim.fast.fedmoves.replay`), and with ``training.sync`` in each
    server's loop (:func:`sfsim.fast.fedsync.server_run`)."""
    net = getattr(job, "network", None)
    motions = getattr(net, "motions", None) or {}
    if any(leg.server != job.devices[i].server for i, m in motions.items() for leg in m.legs):
        return ("fedlora's epoch-end wait (training.eval_samples, several epochs) with handovers between servers is "
                "replayed by the SimPy engine only")
    return None


def replay_varying(job, cfg, waits: dict[str, float] | None = None) -> tuple[dict, dict, float]:
    """:func:`replay` on time-varying links (:func:`varying_only`); fills the motions as the SimPy run does.
    ``waits``: as :func:`replay`'s.

    With each epoch's closing round (``job.sync``, no ``training.sync``) the servers go epoch by epoch
    (:func:`closing_epochs`).
    """
    servers = {k: Rounds(job, cfg, k) for k in dict.fromkeys(d.server for d in job.devices)}
    makespan, slots = 0.0, fl.width(job.devices, int(cfg.local_steps))
    if job.sync is not None:
        makespan = closing_epochs(job, servers, slots, waits)
    for k, s in servers.items() if job.sync is None else ():
        wait = (waits or {}).get(job.servers[k].name, 0.0)
        if wait <= 0:
            s.run(0, math.inf, False)
            continue
        for e in range(max((p[-1][0] // max(slots, 1) + 1 for p in s.plan if p), default=0)):
            s.resume(e, s.run(e * slots, (e + 1) * slots, True) + wait)  # the epoch-end wait, then the downloads
    devices: dict[str, dict] = {}
    for s in servers.values():
        makespan = max(makespan, s.last)
        for i in s.members:
            d, m = job.devices[i], job.network.motions[i]
            devices[d.name] = {"busy": d.units(m.done) * (d.f + d.b + d.w) + m.steps * d.step + d.first_extra(m.done),
                               "up": m.syncs_sent * d.sync_bytes, "down": m.downloads * d.sync_bytes}
            m.switched_at = []
    return devices, {job.servers[k].name: s.busy for k, s in servers.items()}, makespan


def closing_epochs(job, servers: dict, slots: int, waits: dict[str, float] | None = None) -> float:
    """FedLoRA's servers epoch by epoch, each epoch ending with the closing round (``EpochClose``).

    A server's epoch ends when its epoch's last FedAvg round has (at once without one); it sends on its backhaul
    from then, or from its previous round's return when later (:func:`sfsim.network.backhaul.closing_round`); its
    devices with rounds in the next epoch download the average once the round is back. ``servers``: server index
    -> its rounds (``run(lo, hi, closing)``, ``resume(e, back)``: :class:`Rounds`); ``waits``: server name -> its
    epoch-end wait, from the round's return (:func:`replay`). Returns when the last round was back."""
    spec = job.sync
    free = {srv.name: 0.0 for srv in job.servers}  # when each server's last closing round was back
    for e in range(spec.epochs):
        ends = dict(free)
        for k, s in servers.items():
            name = job.servers[k].name
            ends[name] = max(ends[name], s.run(e * slots, (e + 1) * slots, True))
        free = closing_round(spec, ends)
        for k, s in servers.items():
            wait = (waits or {}).get(job.servers[k].name, 0.0)
            back = free[job.servers[k].name]
            s.resume(e, back + wait if wait > 0 else back)
    return max(free.values(), default=0.0)


class Rounds:
    """One server's FedAvg rounds on varying links (:func:`replay_varying`), a range of slots at a time.

    ``last``: its last event so far; ``busy``: its FedAvg seconds.
    """

    def __init__(self, job, cfg, k: int):
        self.job, self.acc, self.per = job, int(cfg.accumulate), int(cfg.local_steps)
        self.members = [i for i, d in enumerate(job.devices) if d.server == k]
        self.D, self.N = layout([job.devices[i] for i in self.members])
        self.aggregate, self.slots = float(job.servers[k].aggregate), fl.width(job.devices, self.per)
        self.plan = [fl.round_plan(job.devices[i].n, job.devices[i].per_epoch, self.per, self.slots)
                     for i in self.members]
        self.busy_slots = sorted({r for p in self.plan for r, _, _ in p})  # the server's rounds (its epochs' slots)
        self.pos = [0] * len(self.members)  # each device's next round in its plan
        self.start = [0.0] * len(self.members)
        self.free = self.busy = self.last = 0.0
        for i in self.members:
            job.network.motions[i].done = 0
        legs = [leg for i in self.members for leg in job.network.motions[i].legs]
        compile_draws(r for leg in legs for r in (leg.rate, leg.down))  # the same steps, drawn compiled
        for c, plan in enumerate(self.plan):  # the first round's download: the initial adapters, from time 0
            if plan:
                self.download(c, 0.0)

    def run(self, lo: float, hi: float, closing: bool) -> float:
        """The rounds in slots ``lo..hi-1``; ``closing``: a device whose next round is in a later epoch downloads
        after the epoch's closing round (:meth:`resume`). Returns when the last of them ended (-inf: none)."""
        motions, ended = self.job.network.motions, -math.inf
        for j, r in enumerate(self.busy_slots):
            if not lo <= r < hi:
                continue
            close, need = -math.inf, 0
            after = self.busy_slots[j + 1] if j + 1 < len(self.busy_slots) else -1
            for c, i in enumerate(self.members):
                plan = self.plan[c]
                if self.pos[c] >= len(plan) or plan[self.pos[c]][0] != r:
                    continue
                _, first, stop = plan[self.pos[c]]
                self.pos[c] += 1
                d, m, s = self.job.devices[i], motions[i], self.start[c]
                t, steps = _local(self.D, self.N, c, first, stop, self.acc, s)
                m.done, m.steps = m.done + (stop - first), m.steps + int(steps)
                t0 = s + (t - s)  # the timeout to the local work's end
                m.uploads.append(t0)
                leg = m.legs[0]
                up = span(leg.up_rate(None), t0, d.sync_bytes * 8.0)
                m.send_s += (t0 + up) - t0
                m.syncs_sent, m.sent = m.syncs_sent + 1, stop
                close, need = max(close, t0 + (up + leg.up_l)), need + 1
            end = ended = max(close, self.free) + self.aggregate * need
            self.busy, self.free, self.last = self.busy + self.aggregate * need, end, max(self.last, end)
            for c, plan in enumerate(self.plan):  # its next round's download: after its server's round before it
                nxt = plan[self.pos[c]][0] if self.pos[c] < len(plan) else None
                if closing and nxt is not None and nxt // self.slots != r // self.slots:
                    continue  # after the epoch's closing round
                if nxt is not None and nxt == after:
                    self.download(c, end)
        return ended

    def resume(self, e: int, back: float) -> None:
        """Epoch ``e``'s closing round is back at ``back``: the devices with rounds left download the average."""
        for c, plan in enumerate(self.plan):
            if self.pos[c] < len(plan):
                self.download(c, back)

    def download(self, c: int, t: float) -> None:
        """Member ``c`` downloads the average from ``t``; its next round starts when it has it."""
        d, m = self.job.devices[self.members[c]], self.job.network.motions[self.members[c]]
        leg = m.legs[0]
        down = span(leg.down_rate(None), t, d.sync_bytes * 8.0)
        m.recv_s += (t + down) - t
        m.downloads += 1
        self.start[c] = t + (down + leg.down_l)
        self.last = max(self.last, self.start[c])


# -- availability and handover: the SimPy schedule's rounds and membership, each round's local work compiled --
@njit
def _local_net(D, N, P, pause, i, first, last, accumulate, t, stop):
    """:func:`_local` for a device that pauses offline (node ``pause`` of program ``P``, -1: none) or leaves at ``stop``.

    Returns (end, micro-batches done, steps done, start of the op that outlasts the device, or -1.0 when none
    does); each op is ``sfsim.schedules.fedlora._compute``.
    """
    done = steps = 0
    lst = D[_LAST, i]
    plain = pause < 0 and stop == math.inf
    for n in range(first, last):
        x = lst if lst < 1.0 and (n + 1) % N[_PER_EPOCH, i] == 0 else 1.0
        for k in range(4):
            if k == 3 and not ((n - first + 1) % accumulate == 0 or n + 1 == last):
                break
            if k == 0:
                dur = D[_F, i] * x + (D[_WARM, i] if n == 0 else 0.0)
            elif k == 1:
                dur = D[_B, i] * x
            elif k == 2:
                dur = D[_W, i] * x
            else:
                dur = D[_STEP, i]
            if plain:
                t = t + dur
            else:
                end = t + rates.span(P, pause, t, dur, 1.0)
                if end > stop or end == math.inf:
                    return t, done, steps, t
                t = end
            if k == 2:
                done += 1
            elif k == 3:
                steps += 1
    return t, done, steps, -1.0
