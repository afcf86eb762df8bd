"""SplitLoRA handovers: the servers' loops run jointly in time, and a client moves from one to another.

Without handovers each SplitLoRA server computes its whole run ahead by arithmetic
(:class:`~sfsim.schedules.splitlora.server.Server`). With them, the same class runs the same loop
(``Server.run_in_time``) (arrival order, ``fwd`` commands, a server step every ``accumulate``
micro-batches, FedAvg every ``fedavg_every`` server steps and at each epoch's end) as a SimPy
process that waits until each decision's instant before taking it (which client to serve, who is in
a FedAvg round), so that a client that joins from another server by then is taken into account. The
primitives (compute, uplink, downlink) are the same too: a transfer
uses the leg holding when it starts (a handover's ``uplink`` / ``downlink`` from its ``at`` on).

Rules, for a client whose handover at ``at`` moves it from server A to server B:

* **Micro-batches.** A micro-batch goes to the server of the leg holding when its activation upload
  starts: one whose ``fwd`` came from A but whose upload starts at or after ``at`` goes to B over
  B's leg, and B serves it in arrival order (it counts toward B's segment). A sends ``fwd`` only
  while it holds the client: not at or after ``at``. A micro-batch uploaded to A before ``at`` is
  served by A, its gradient coming down over the leg holding when the gradient starts.
* **Holding.** A holds the client until ``at``, or, when a micro-batch of it is out at A then, until A
  has served it; at that instant the client joins B (``since``). A client whose micro-batches were all
  sent does not move: nothing of it is left to train, and it stays in A's FedAvg group. An idle client that A counts
  in its epoch (A waits for another's micro-batch with the segment's quota full, or is in a step and its backhaul
  round, or between segments) stays A's until A next looks at it, as the runtime's ``may_issue``: at the end of the
  serve A is in, else after A's next serve, or at A's next segment's start; A's ``release`` goes then (issue 21,
  :meth:`~sfsim.schedules.splitlora.intime.InTime.look_at`). A FedAvg round between takes it, and one whose legs took
  it back to A by then never leaves. With ``training.sync`` B reads a visitor's ``join`` only while it waits for a
  micro-batch: a ``join`` that arrives after the last micro-batch B read in a segment is not in B's FedAvg round
  between (:meth:`~sfsim.schedules.splitlora.intime.InTime._read_join`).
* **Epochs.** A server's epoch trains, for each client it holds, the rest of that client's own epoch;
  a client that joins mid-epoch brings the rest of its current epoch into B's current epoch (its next
  epochs go into B's next ones). A server with nothing left waits while a client may still join it, and a server
  whose clients are done with an epoch keeps it open while a visitor may still come in it (its epoch not over
  elsewhere), as the runtime's ``while sum(left.values()) > 0 or waiting``: no FedAvg round closes its clients' part
  before the visitor has joined and trained (issue 21, :meth:`~sfsim.schedules.splitlora.intime.InTime._visitor`).
  B sends a joining client its first ``fwd`` once it is free and the segment has room (``issued <
  quota``), never before ``since``. With backhaul rounds (each epoch ends with them, a barrier) B counts a
  visitor only while it holds it: one that left while B waited for its ``join`` is not counted, and B does
  not end its epoch while it holds a client with work left in it whose leg ends before B could send it a
  ``fwd`` (the runtime's server waits for its ``join``, then releases it): it waits for the handover's instant.
  A client that A served just before A's step waited on the others' round, and that went to B and came back
  meanwhile, is counted anew by its ``join`` to A: A sends it no ``fwd`` while one is out (issue 19).
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
import math

from sfsim.network.backhaul import ServerRounds
from sfsim.outputs.mixing import StreamMixing
from sfsim.schedules.splitlora.server import Client, Received, Server


def hands_over(motions) -> bool:
    """True when some client's legs go to more than one server."""
    return any(len({leg.server for leg in m.legs}) > 1 for m in motions.values())


class Moves:
    """Every client of the run, who holds each when, and the servers' processes (to wake on a change)."""

    def __init__(self, engine, devices, motions):
        self.engine, self.motions = engine, motions
        self.clients = [Client(i, d) for i, d in enumerate(devices) if d.n]
        self.servers: list[Server] = []
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
        k = bisect.bisect_right(c.history, (t, math.inf)) - 1
        return c.history[k][1]

    def tick(self, c) -> None:
        """A handover's instant: the client leaves its server now if it is idle there and not counted in the server's
        epoch; one counted there the runtime's server ``release``-s when it next looks at it (``InTime.look_at``)."""
        srv = self.servers[c.home]
        if c.i in self.lost or c.next >= c.d.n or c in srv.out or srv.leave(c) > self.engine.env.now or srv.closing:
            return
        if c in srv.left:  # counted in its epoch: released when it next looks at the client (InTime.look_at)
            srv.look_at(c)
            return
        srv.hand_over(c, self.engine.env.now)

    def may_join(self, k: int, epoch: int | None = None) -> bool:
        """True while some client with work left (in ``epoch``, when given) may still come to server ``k``."""
        for c in self.clients:
            per = c.d.per_epoch or c.d.n
            if c.i in self.lost or c.next >= (c.d.n if epoch is None else min((epoch + 1) * per, c.d.n)):
                continue
            legs = self.motions[c.i].legs
            if any(legs[j].server == k and legs[j - 1].server != k for j in range(c.hold + 1, len(legs))):
                return True
        return False

    def changed(self) -> None:
        """Wake every server waiting for something to change."""
        for s in self.servers:
            s.poke()


def run_jointly(engine, job, cfg, net) -> None:
    """Run SplitLoRA with handovers: one :class:`~sfsim.schedules.splitlora.server.Server` process per server."""
    engine.soft_timers = True  # handover instants must not extend the run
    moves = Moves(engine, job.devices, net.motions)
    for d in job.devices:
        engine.device_busy[d.name] = engine.up_bytes[d.name] = engine.down_bytes[d.name] = 0.0
    rounds = job.sync.start(engine) if job.sync is not None else None  # training.sync, or each epoch's closing round
    for k, srv in enumerate(job.servers):
        s = Server(engine, srv, [], cfg, Received(), moves.motions, moves.lost, k, moves)
        if rounds is not None:  # a server waiting for a visitor answers the others' rounds (ServerRounds.idle)
            s.sync = ServerRounds(rounds, k, job.sync.payload, job.sync.closing, always_close=True, step=s.drained_step)
            s.epochs = job.sync.epochs
        moves.servers.append(s)
    for s in moves.servers:
        engine.env.process(s.run_in_time())

    def finish():
        for s in moves.servers:
            if not s.finished:
                raise RuntimeError(f"splitlora handover: server {s.srv.name}'s loop did not finish")
            totals = [0] * len(job.devices)
            for i in s.mix.stream:
                totals[i] += 1
            if s.mix.stream or any(d.server == s.k for d in job.devices):
                mix = engine.mixing[s.srv.name] = StreamMixing(totals)
                for i in s.mix.stream:
                    mix.add(i)
        starts = {c.i: c.starts for c in moves.clients}
        for i, m in net.motions.items():  # micro-batches whose upload started before each handover
            m.switched_at = [bisect.bisect_left(starts.get(i, []), leg.at) for leg in m.legs[1:]]
    engine.on_finish(finish)
