"""SplitLoRA handovers: the servers' loops run jointly in time, and a client moves from one to another.

Without handovers each SplitLoRA server computes its whole run ahead by arithmetic
(:mod:`sfsim.schedules.splitlora.server`, :mod:`sfsim.schedules.splitlora.server`). With them, :class:`MovingServer`
runs the same loop (arrival order, ``fwd`` commands, a server step every ``accumulate``
micro-batches, FedAvg every ``fedavg_every`` server steps and at each epoch's end) as a SimPy
process that waits until each decision's instant before taking it (which client to serve, who is in
a FedAvg round), so that a client that joins from another server by then is taken into account. The
primitives (compute, uplink, downlink) are :class:`~sfsim.schedules.splitlora.server.Server`'s: a transfer
uses the leg holding when it starts (a handover's ``uplink`` / ``downlink`` from its ``at`` on).

Rules, for a client whose handover at ``at`` moves it from server A to server B:

* **Micro-batches.** A micro-batch goes to the server of the leg holding when its activation upload
  starts: one whose ``fwd`` came from A but whose upload starts at or after ``at`` goes to B over
  B's leg, and B serves it in arrival order (it counts toward B's segment). A sends ``fwd`` only
  while it holds the client: not at or after ``at``. A micro-batch uploaded to A before ``at`` is
  served by A, its gradient coming down over the leg holding when the gradient starts.
* **Holding.** A holds the client until ``at``, or, when a micro-batch of it is out at A then, until A
  has served it; at that instant the client joins B (``since``). A client whose micro-batches were all
  sent does not move: nothing of it is left to train, and it stays in A's FedAvg group.
* **Epochs.** A server's epoch trains, for each client it holds, the rest of that client's own epoch;
  a client that joins mid-epoch brings the rest of its current epoch into B's current epoch (its next
  epochs go into B's next ones). A server with nothing left waits while a client may still join it.
  B sends a joining client its first ``fwd`` once it is free and the segment has room (``issued <
  quota``), never before ``since``.
* **FedAvg.** A round sent at ``T`` (the server's ``sync``) takes the clients the server holds at
  ``T``: the client is in A's rounds sent before it joins B and in B's after. Its adapter upload
  goes to the round's server over the leg holding when the upload starts. Nothing is sent at the
  handover itself (the client brings its adapters; B's next round averages them).

Availability (pause, drop) keeps :mod:`sfsim.schedules.splitlora.server`'s rules; a gone client never moves.
The result's ``handovers`` count micro-batches by their upload's start (``sent_before``); server
FLOPs follow the server that trained each micro-batch; a server's stream mixing is measured over the
micro-batches it actually served. Refused in one line (:func:`sfsim.schedules.network.check_supported`):
handovers with the ``sequential`` client order (a client-after-client order over whole epochs has no
place for a client arriving mid-run) and with the fixed orders (``proportional``, ``round-robin``,
paced): their order is drawn per epoch over the starting clients, and a joining client has no turn
in it. Without handovers none of this runs: those runs stay the arithmetic loop, bit for bit.
"""

from __future__ import annotations

import bisect

from sfsim.network.legs import INF
from sfsim.outputs.mixing import StreamMixing
from sfsim.schedules.splitlora.server import Client, Server


def hands_over(motions) -> bool:
    """True when some client's legs go to more than one server."""
    return any(len({leg.server for leg in m.legs}) > 1 for m in motions.values())


class Moves:
    """Every client of the run, who holds each when, and the servers' processes (to wake on a change)."""

    def __init__(self, engine, devices, motions):
        self.engine, self.motions = engine, motions
        self.clients = [Client(i, d) for i, d in enumerate(devices) if d.n]
        self.servers: list[MovingServer] = []
        self.lost: set[int] = set()
        for c in self.clients:
            m = motions[c.i]
            c.home = m.legs[0].server
            c.history.append((0.0, m.legs[0].server))
            for j in range(1, len(m.legs)):
                if m.legs[j].server != m.legs[j - 1].server:
                    engine.soft_at(m.legs[j].at, lambda c=c: self.tick(c))

    def holder(self, c, t: float) -> int:
        """The server holding client ``c`` at ``t`` (a join at exactly ``t`` holds)."""
        k = bisect.bisect_right(c.history, (t, INF)) - 1
        return c.history[k][1]

    def tick(self, c) -> None:
        """A handover's instant: the client leaves its server now if it is idle there."""
        srv = self.servers[c.home]
        if c.i in self.lost or c.next >= c.d.n or c in srv.out or srv.leave(c) > self.engine.env.now:
            return
        srv.hand_over(c, self.engine.env.now)

    def may_join(self, k: int) -> bool:
        """True while some client with work left may still come to server ``k``."""
        for c in self.clients:
            if c.i in self.lost or c.next >= c.d.n:
                continue
            legs = self.motions[c.i].legs
            if any(legs[j].server == k and legs[j - 1].server != k for j in range(c.hold + 1, len(legs))):
                return True
        return False

    def changed(self) -> None:
        """Wake every server waiting for something to change."""
        for s in self.servers:
            s.poke()


class MovingServer(Server):
    """SplitLoRA's arrival-order server loop as a process in time, taking clients that move (see module)."""

    def __init__(self, engine, k: int, srv, cfg, moves: Moves):
        super().__init__(engine, srv, [], cfg, self, moves.motions, moves.lost)  # its stream: self.add
        self.k, self.moves = k, moves
        self.mix_stream: list[int] = []
        self.left: dict = {}  # micro-batches each client has still to train this epoch
        self.out: list = []  # clients with a micro-batch out to this server
        self.unissued: dict = {}
        self.pending: list = []  # clients that joined mid-segment, waiting for a fwd
        self.issued = self.quota = 0
        self.wake = None
        self.finished = False

    def add(self, i: int) -> None:
        """Record that client ``i``'s micro-batch is next in this server's stream."""
        self.mix_stream.append(i)

    # -- time ----------------------------------------------------------------------------------------
    def poke(self) -> None:
        """Wake the process if it waits (a client joined, left, finished or was lost)."""
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def until(self, t: float):
        """Wait until time ``t``; True when woken earlier (the state changed: decide again)."""
        env = self.engine.env
        if t <= env.now:
            return False
        self.wake = env.event()
        timer = self.engine.at(t)  # <= some server's end: it does not lengthen the run
        yield env.any_of([timer, self.wake])
        self.wake, woke = None, env.now < t
        return woke

    # -- holding -------------------------------------------------------------------------------------
    def leave(self, c) -> float:
        """When ``c`` leaves this server: its next handover to another server (``inf``: never)."""
        legs = self.motions[c.i].legs
        for j in range(c.hold + 1, len(legs)):
            if legs[j].server != self.k:
                return legs[j].at
        return INF

    def hand_over(self, c, since: float, outstanding: bool = False) -> None:
        """``c`` leaves this loop; from ``since`` on it is held by the server of the leg holding then."""
        m = self.motions[c.i]
        j = m.leg_at(since)
        dest = m.legs[j].server
        c.hold, c.since = j, since
        if dest == self.k and not outstanding:  # back here already (A -> B -> A): nothing moves
            return
        self._drop(c)
        c.home = dest
        c.history.append((since, dest))
        self.moves.servers[dest].join(c, outstanding)
        self.moves.changed()

    def _drop(self, c) -> None:
        self.left.pop(c, None)
        self.unissued.pop(c, None)
        if c in self.pending:
            self.pending.remove(c)

    def join(self, c, outstanding: bool) -> None:
        """Client ``c`` joins this loop (with a micro-batch on its way here when ``outstanding``)."""
        if outstanding:
            self.out.append(c)
            self.issued += 1
        if self.left:  # mid-epoch: the rest of its own epoch joins this one
            self.left[c] = self.rest(c) + outstanding
            self.unissued[c] = self.rest(c)
            if self.unissued[c] and not outstanding:
                self.pending.append(c)
            if not self.left[c]:
                del self.left[c]
        self.poke()

    def rest(self, c) -> int:
        """Micro-batches of ``c``'s current epoch not yet issued."""
        per = c.d.per_epoch or c.d.n
        base = c.mb if c in self.out else c.next
        return min((base // per + 1) * per, c.d.n) - c.next

    # -- the loop --------------------------------------------------------------------------------------
    def run(self):
        """The SimPy process: epochs over the clients it holds, waiting for joiners while they may come."""
        env = self.engine.env
        while True:
            counts = {}
            for c in self.moves.clients:
                if c.home == self.k and (c in self.out or max(self.free, c.since) < self.leave(c)):
                    if (k := self.rest(c) + (c in self.out)) > 0:
                        counts[c] = k
            if counts:
                yield from self._interleaved(counts)
                continue
            if not self.moves.may_join(self.k):
                break
            self.wake = env.event()
            yield self.wake
            self.wake = None
        self.engine.server_busy[self.srv.name] = self.busy
        self.finished = True
        yield self.engine.at(max(self.end, env.now))

    def _interleaved(self, counts):
        every, acc = self.cfg.fedavg_every, self.cfg.accumulate
        self.left = dict(counts)
        while self.left:
            yield from self._segment((every - self.steps % every) * acc)
            self._server_step()  # a partial window at the segment's end
            if self.steps % every == 0 and self.left:
                yield from self._round()
        yield from self._round()

    def _segment(self, quota: int):
        """Serve ``quota`` micro-batches in arrival order (skipped turns of gone clients do not count)."""
        self.quota, self.issued, self.pending = quota, len(self.out), []
        self.unissued = {c: k - (c in self.out) for c, k in self.left.items()}
        for c in list(self.left):
            if self.issued < quota and self.unissued.get(c) and c not in self.out:
                self._give(c)
        served = 0
        while served < quota and self.out:
            c = min(self.out, key=lambda c: (c.arrival, c.i))
            if (yield from self.until(max(self.free, c.arrival))):
                self._fill()
                continue
            self.out.remove(c)
            skipped = c.arrival == -INF
            self._serve(c)
            self._count_down(self.left, c)
            served, self.issued = served + (not skipped), self.issued - skipped
            now = self.engine.env.now
            if c.next >= c.d.n:
                self.moves.changed()  # no more work of it: servers waiting for it may end
            elif c.i not in self.lost and self.leave(c) <= now:
                self.hand_over(c, now)  # its handover passed while a micro-batch was out here
            elif self.issued < quota and self.unissued.get(c):
                self._give(c)
            self._fill()

    def _fill(self) -> None:
        """Send ``fwd`` to clients that joined mid-segment, while the segment has room."""
        for c in list(self.pending):
            if self.issued >= self.quota:
                break
            self.pending.remove(c)
            if self.unissued.get(c):
                self._give(c)

    def _give(self, c) -> None:
        """Send ``c`` its next ``fwd`` if this server still holds it then; route its upload."""
        t = max(self.free, c.since)
        if t >= self.leave(c):  # gone by then: out of this loop (the handover's instant moves it)
            self._drop(c)
            if self.engine.env.now >= self.leave(c):
                self.hand_over(c, self.engine.env.now)
            return
        self.unissued[c] -= 1
        self.issued += 1
        self._issue(c, t)
        if c.arrival != -INF:
            m = self.motions[c.i]
            j = m.leg_at(c.sent_at)
            c.starts.append(c.sent_at)
            if m.legs[j].server != self.k:  # uploaded after the handover: it goes to the new server
                self.issued -= 1
                self.hand_over(c, max(self.engine.env.now, m.legs[j].at), outstanding=True)
                return
        self.out.append(c)

    def _round(self):
        """FedAvg over the clients held when ``sync`` goes out (see module)."""
        while (yield from self.until(self.free)):
            pass
        self.clients = [c for c in self.moves.clients if self.moves.holder(c, self.free) == self.k]
        if self.clients:
            # a member may have a micro-batch on its way to its next server already: keep its arrival
            flying = {c: c.arrival for c in self.clients if c.arrival is not None}
            self._fedavg()
            for c, t in flying.items():
                c.arrival = t

    def _outlasts(self, c, t: float, end: float) -> bool:
        gone = super()._outlasts(c, t, end)
        if gone:
            self.moves.changed()
        return gone


def run_jointly(engine, job, cfg, net) -> None:
    """Run SplitLoRA with handovers: one :class:`MovingServer` process per server."""
    engine.soft_timers = True  # handover instants must not extend the run
    moves = Moves(engine, job.devices, net.motions)
    for d in job.devices:
        engine.device_busy[d.name] = engine.up_bytes[d.name] = engine.down_bytes[d.name] = 0.0
    for k, srv in enumerate(job.servers):
        moves.servers.append(MovingServer(engine, k, srv, cfg, moves))
    for s in moves.servers:
        engine.env.process(s.run())

    def finish():
        for s in moves.servers:
            if not s.finished:
                raise RuntimeError(f"splitlora handover: server {s.srv.name}'s loop did not finish")
            totals = [0] * len(job.devices)
            for i in s.mix_stream:
                totals[i] += 1
            if s.mix_stream or any(d.server == s.k for d in job.devices):
                mix = engine.mixing[s.srv.name] = StreamMixing(totals)
                for i in s.mix_stream:
                    mix.add(i)
        starts = {c.i: c.starts for c in moves.clients}
        for i, m in net.motions.items():  # micro-batches whose upload started before each handover
            m.switched_at = [bisect.bisect_left(starts.get(i, []), leg.at) for leg in m.legs[1:]]
    engine.on_finish(finish)
