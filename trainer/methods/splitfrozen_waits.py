"""SplitFrozen's servers with handovers and backhaul rounds: a server waiting only for a visitor, and the instants
that decide whether a visitor's ``join`` (or a mover's ``moved``) comes before a round (issue 21).

A server whose only work left this epoch is a visitor that may still come answers the rounds other servers open
while it waits (:meth:`WaitingServer._idle`). Whether the visitor's ``join`` precedes a round must be decided as the
simulator decides it, where a join (and a ``moved``) takes effect when the device's send starts, while the runtime's
arrives one uplink latency later: so the join and the moved carry that instant (``Message.at``), the rounds carry
theirs (``trainer.transport.backhaul``: each vector its arrival at server 0, each invitation the round's invitation
instant), and a server compares instants, not arrival order (:meth:`WaitingServer._answers`,
:meth:`WaitingServer._await_move`).
"""

from __future__ import annotations

import time

from sfsim.outputs.trace import TraceEvent
from trainer.transport.backhaul import IDLE_POLL_S
from trainer.transport.handover import Legs

JOIN_SLACK_S = 0.05  # a message sent by an instant is read by then + its link's latency + this (threads, polling)


class WaitingServer:
    """What :class:`trainer.methods.splitfrozen.SplitFrozen`'s server does around a visitor and the rounds (a mixin:
    it reads the method's ``setup``, ``sync``, ``legs``, ``_places``, ``opt`` and ``math``)."""

    # -- a server waiting only for a visitor (the one idle-server round rule, issue 21) ----------------------------
    # A server whose only work left this epoch is a visitor that may still come (``left`` holds placeholders only)
    # answers the rounds other servers open while it waits (``ServerSync.idle``: with zeros, when server 0 invites
    # it), as SplitLoRA's and FedLoRA's: else a round before another server's step would wait for it, that server
    # would return no credit, and the visitor's next send (which brings its ``join``) would never start.
    # The race: a mover's ``join`` goes straight from the device to its new server, while the old server learns of
    # the move only when it reads ``moved``. The simulator delivers a join at once, before any round the move leads
    # to; so the server that reads a ``moved`` (or a device's last micro-batch of the epoch, or its ``leave``, after
    # which the device sends its joins of 0) announces the joins it knows the device sends (``ServerSync.announce``),
    # its next round vector carries the counts, and a waiting server answers a round only once it has read as many
    # of that device's joins as announced to it (``ServerSync._unread``): SplitLoRA's mechanism, reused.
    def _track_joins(self) -> None:
        """Count the joins of every device whose legs go to several servers (the same list on every server)."""
        if self.sync is not None and Legs(self.legs).moving():
            self.sync.track(sorted(n for n, lg in self.legs.items() if len({r for _, r, _ in lg}) > 1), self.lost)

    def _announce(self, name: str, to: int | None) -> None:
        """The joins device ``name`` sends, now that this server read its ``moved`` to leg ``to`` (one, to that leg's
        server: :meth:`_hand_over`) or (None) the end of its epoch here (one of 0 to every other server of its legs:
        :meth:`_close_epoch`), go with this server's next round."""
        lg = self.legs.get(name, [])
        if self.sync is None or len({r for _, r, _ in lg}) < 2:
            return
        if to is None:
            self.sync.announce(name, sorted({r for _, r, srv in lg if srv != self.setup.server}))
        elif 0 <= to < len(lg):
            self.sync.announce(name, [lg[to][1]])

    def _answers(self, at: float) -> bool:
        """Whether this waiting server may answer, now, the round whose invitation instant is ``at`` (the run's clock).

        The simulator delivers a visitor's ``join`` when the device's send starts (its credit wait ends), before any
        round invited later; the runtime's arrives one uplink latency later. So the join's stamp (``Message.at``), not
        its arrival, decides: one stamped by ``at`` that is here is read first (no: this server then trains its visitor
        and joins that round from its own step); else, while a visitor whose leg on this server began by ``at`` may still
        send one (its join cannot be stamped before its leg here begins), it waits until such a join has had time to come
        (``at`` + its uplink latency here + :data:`JOIN_SLACK_S`)."""
        tr = self.setup.transport
        if not hasattr(tr, "stamped_by"):
            return True
        if tr.stamped_by(at, {"join"}):
            return False
        me = self.setup.server
        due = [v for v in self._places if any(srv == me and h <= at for h, _, srv in self.legs.get(v, [])[1:])]
        return not due or self.setup.meter.now() >= at + max(tr.uplink_latency(v) for v in due) + JOIN_SLACK_S

    def _waits_only(self, left: dict[str, int]) -> bool:
        """Whether this server's only work left this epoch is a visitor that may still come (with rounds to answer)."""
        return (self.sync is not None and self.sync.every is not None and any(left.get(v) for v in self._places)
                and all(k == 0 or n in self._places for n, k in left.items()))

    def _idle(self) -> None:
        """Answer one round another server opens, if any (``ServerSync.idle``; joint mode: step with the others on
        their mean gradient); the gradients of a partial window (fused backward) are kept for its own next step."""
        params = [p for g in self.opt.param_groups for p in g["params"]]
        kept = [p.grad for p in params]

        def step() -> None:  # as every step, traced (the simulator's drained step too)
            with self.setup.meter.compute(self.setup.server, "step", "server_step", count=False):
                self.math.step(self.opt)
        self.sync.idle(self.sync_state(), params, step)
        for p, g in zip(params, kept, strict=True):
            p.grad = g

    def _await_move(self, left: dict[str, int]) -> None:
        """Before a step that a mover's ``moved`` would make this server's last (the mover is all that is left here, and
        by the run's clock its leg here is over): the simulator's server knows of the move from the instant the device
        takes its next leg, the runtime's one uplink latency later. So the server waits (at most that latency +
        :data:`JOIN_SLACK_S`) for the moved, and applies it before the step when it is stamped by now (the move came
        first, as in the simulator: the step is the server's last); an activation or a later stamp means the device still
        sent here or moved after the step. A handover due between the end of the mover's send and its arrival needs it:
        the step after that micro-batch otherwise said this server still trains (a drain and a closing round more)."""
        s, tr = self.setup, self.setup.transport
        inbox = getattr(tr, "inbox", None)
        if self.sync is None or inbox is None or not hasattr(tr, "uplink_latency") or s.server_order == "pool":
            return
        rest = [n for n, k in left.items() if k]
        now = s.meter.now()
        if len(rest) != 1 or rest[0] in self._places or rest[0] in self._ahead or rest[0] not in self.legs:
            return
        n, legs = rest[0], Legs(self.legs)
        if legs.holds(n, s.server, now) or legs.comes_back(n, s.server, legs.leg_at(n, now)):
            return  # no move away is due by now (or the device comes back: a placeholder stays, the step is not last)
        until = now + tr.uplink_latency(n) + JOIN_SLACK_S
        while True:
            with inbox.cv:
                first = next((m for m in inbox.by_device.get(n, ()) if m.kind in ("act", "leave", "moved", "join")), None)
            if first is not None:
                if first.kind == "moved" and (first.at is None or first.at <= now):
                    self._visit(tr.recv_up(n, {"moved"}), left)
                    # traced on the server's lane (a ``wait``: not work, in no stage), from the step's instant to the read
                    s.meter.events.append(TraceEvent(s.server, "wait", now, s.meter.now() - now, -1, n))
                return
            if s.meter.now() >= until:
                return
            time.sleep(IDLE_POLL_S)
