"""Handovers in a distributed run: which server holds a device when, and the messages that move it.

A device's *legs* are ``(at s, server rank, server name)``, the first from time 0 on its resolved server,
then one per ``handover`` of the scenario (``trainer.run.launch`` builds them from
:func:`trainer.transport.dynamics.legs`, the simulator's own). Every process of the run holds every
device's legs, so a server can tell from the run's clock whether it still holds a device, and which
devices may come to it.

The messages (:mod:`trainer.transport.wire`), whatever the method:

* ``moved`` to the old server, after everything the device sent it (``aux``: the leg it moves to), so
  that it stops waiting for the device (and waits again only if a later leg brings it back);
* ``join`` to the new server: ``aux`` micro-batches of this epoch still to come there (``mb``: the
  index of the next one the server may ask for), or ``aux`` 0: "not this epoch any more", which the
  device sends to every other server of its legs when its epoch is over (:meth:`Mover.close`);
* ``release`` from a server-driven method's old server (SplitLoRA) to an idle device once its leg there
  has ended: the device then joins the server of the leg holding when it gets the release.

A device that passes through several legs at once (a release after more than one handover, a forward
spanning a short leg) tells only the server it lands on (:meth:`Mover.move`): a server whose leg is over
never holds it, so no two servers command one device, and a device may come back to a server it left.

A server keeps a *placeholder* for each visitor that may still come to it this epoch (a later leg on it)
until the visitor joins or says it will not; a server whose own devices are done then answers the
other servers' backhaul rounds while it waits (``trainer.transport.backhaul.ServerSync.idle``), so that
no server blocks the others.
"""

from __future__ import annotations

import sys

from sfsim.outputs.trace import TraceEvent
from trainer.transport.runtime import Message


class Legs:
    """Every device's legs (module docstring); devices that never change server have one leg or none.

    Args:
        legs: device name -> ``[(at s, server rank, server name), ...]`` in time order.
    """

    def __init__(self, legs: dict[str, list[tuple[float, int, str]]]):
        self.legs = {n: list(lg) for n, lg in legs.items()}

    def moving(self) -> bool:
        """True when some device's legs go to more than one server."""
        return any(len({r for _, r, _ in lg}) > 1 for lg in self.legs.values())

    def leg_at(self, name: str, t: float) -> int:
        """The index of device ``name``'s leg holding at ``t`` (a leg starting exactly at ``t`` holds)."""
        lg = self.legs.get(name, [])
        return max((j for j, (at, _, _) in enumerate(lg) if at <= t or j == 0), default=0)

    def holds(self, name: str, server: str, t: float) -> bool:
        """Whether ``server``'s leg of device ``name`` holds at ``t`` (a device without legs stays where it is)."""
        lg = self.legs.get(name)
        return not lg or lg[self.leg_at(name, t)][2] == server

    def comes_back(self, name: str, server: str, after: int) -> bool:
        """Whether a leg of device ``name`` after leg ``after`` is on ``server``."""
        return any(srv == server for _, _, srv in self.legs.get(name, [])[after + 1:])

    def visitors(self, server: str) -> set[str]:
        """Devices that may join ``server`` mid-run (a leg after their first on it)."""
        return {n for n, lg in self.legs.items() if any(srv == server for _, _, srv in lg[1:])}


class Mover:
    """A device's side of its handovers: the leg it is on, the moves it made (``metrics.json`` ``handovers``).

    Args:
        legs: the run's :class:`Legs`.
        transport: the device's transport (``send_up`` goes to its current server, ``send_to`` to a rank,
            ``move`` switches).
        meter: the device's meter (its clock; a ``handover`` trace event per move).
    """

    def __init__(self, legs: Legs, transport, meter):
        self.legs, self.transport, self.meter = legs, transport, meter
        self.leg: dict[str, int] = {}
        self.moves: list[dict] = []
        self.sent: dict[str, tuple[int, int]] = {}  # device -> (epoch, micro-batches sent over the run): :meth:`note`

    def note(self, name: str, epoch: int, sent: int, per_epoch: int) -> None:
        """Device ``name`` has sent ``sent`` micro-batches of epoch ``epoch`` (of ``per_epoch``) so far."""
        self.sent[name] = (epoch, epoch * per_epoch + sent)

    def finish(self, name: str) -> None:
        """The device's process ends: record the handovers due by now that no send took (:func:`late_moves`)."""
        epoch, sent = self.sent.get(name, (0, 0))
        self.leg[name] = late_moves(self.legs.legs.get(name, []), self.leg.get(name, 0), name, self.meter, epoch,
                                    sent, self.moves)

    def due(self, name: str) -> bool:
        """Whether a handover of device ``name`` is due by now."""
        lg, k = self.legs.legs.get(name, []), self.leg.get(name, 0)
        return k + 1 < len(lg) and lg[k + 1][0] <= self.meter.now()

    def move(self, name: str, epoch: int, nxt: int, left: int, sent: int, per_epoch: int, force: bool = False) -> bool:
        """Take every handover of ``name`` due by now (at least one when ``force``: its old server released it).

        Every handover is recorded, but only the leg the device lands on hears from it: ``moved`` to the server
        it leaves and ``join`` to the one it lands on (both the same server when the legs it passed through took
        it back there), and a ``join`` of 0 to a server of a leg it passed through without sending anything,
        unless a later leg brings it there. A join per leg passed through would let a server whose leg is
        already over command the device, or release it into a later leg early (two servers commanding one
        device: a micro-batch trained twice, another never, or a server waiting forever).

        Args:
            epoch: the device's epoch.
            nxt: the index of the next micro-batch the new server may ask for (``join``'s mb).
            left: micro-batches of this epoch still to come to the new server, one in flight included.
            sent: micro-batches (or, FedLoRA, micro-batches in uploads) sent before the move, this epoch.
            per_epoch: the device's micro-batches per epoch (a move's ``sent_before`` counts over the run, as the
                simulator's, and whatever a resumed run sent before it started).

        Returns:
            True when the device moved.
        """
        lg, k = self.legs.legs.get(name, []), self.leg.get(name, 0)
        to = max((j for j in range(k + 1, len(lg)) if lg[j][0] <= self.meter.now()), default=k)
        if force and to == k and k + 1 < len(lg):
            to = k + 1
        if to == k:
            return False
        for j in range(k + 1, to + 1):
            self.meter.events.append(TraceEvent(name, "handover", lg[j][0], 0.0, -1, name))
            self.moves.append({"device": name, "at_s": lg[j][0], "from": lg[j - 1][2], "to": lg[j][2], "epoch": epoch,
                               "sent_before": epoch * per_epoch + sent})
        self.leg[name] = to
        old, new = lg[k][1], lg[to][1]
        if force or old != new:  # (not forced and back where it was: its server never knew it had gone)
            self.transport.send_up(Message(name, min(nxt, sent), kind="moved", aux=to, epoch=epoch))
            self.transport.move(name, new)
            self.transport.send_up(Message(name, nxt, kind="join", aux=left, epoch=epoch))
        for rank in sorted({lg[j][1] for j in range(k + 1, to)} - {old, new}):
            if not any(r == rank for _, r, _ in lg[to + 1:]):
                self.transport.send_to(rank, Message(name, -1, kind="join", aux=0, epoch=epoch))
        return True

    def close(self, name: str, epoch: int) -> None:
        """Device ``name``'s epoch is over (sent, or it left): every other server of its legs stops waiting for
        it this epoch (``join`` of 0)."""
        lg = self.legs.legs.get(name, [])
        if len({r for _, r, _ in lg}) < 2:
            return
        home = lg[self.leg.get(name, 0)][1]
        for rank in sorted({r for _, r, _ in lg} - {home}):
            self.transport.send_to(rank, Message(name, -1, kind="join", aux=0, epoch=epoch))


def late_moves(legs: list[tuple], k: int, name: str, meter, epoch: int, sent: int, moves: list[dict]) -> int:
    """The handovers of device ``name`` due by its process's end (``meter.now()``) after its last send: recorded
    (trace event, ``moves``) with every micro-batch ``sent`` before them, as the simulator lists them (``sent_after``
    0); no message, since nothing more goes up. Returns the index of the leg it ends on (``k``: the one it was on)."""
    while k + 1 < len(legs) and legs[k + 1][0] <= meter.now():
        at, to = legs[k + 1][0], legs[k + 1][2]
        meter.events.append(TraceEvent(name, "handover", at, 0.0, -1, name))
        moves.append({"device": name, "at_s": at, "from": legs[k][2], "to": to, "epoch": epoch, "sent_before": sent})
        k += 1
    return k


class Visits:
    """A server's side of the handovers: whom it holds now, and the visitors that may still come this epoch.

    Args:
        legs: the run's :class:`Legs`.
        setup: the server's method setup (``server``: its name; ``devices`` and ``samples`` change as devices
            come and go).
        roles: device name -> its ``DeviceRole`` for every device that may come here.
        lost: the method's lost devices (never waited for).
    """

    def __init__(self, legs: Legs, setup, roles: dict, lost: dict):
        self.legs, self.setup, self.roles, self.lost = legs, setup, roles, lost
        self.waiting: set[str] = set()  # visitors that may still join this epoch

    def start_epoch(self, now: float | None = None) -> None:
        """Wait this epoch for every visitor not held here (it may join, or say it will not); given the run's clock
        ``now``, only for those whose leg holding now or a later one is on this server (FedLoRA, as the simulator's
        ``Membership.awaited``: a visitor whose legs here are all over can never send here again)."""
        held, me = {d.name for d in self.setup.devices}, self.setup.server
        self.waiting = {v for v in self.legs.visitors(me) if v not in held and v not in self.lost
                        and (now is None or self.legs.comes_back(v, me, self.legs.leg_at(v, now) - 1))}

    def holds(self, name: str, t: float) -> bool:
        """Whether this server's leg of ``name`` holds at ``t``."""
        return self.legs.holds(name, self.setup.server, t)

    def gone(self, name: str, leg: int) -> None:
        """``name`` left for its leg ``leg`` (``moved``, or released here): forget it, and wait for it again only
        if a later leg brings it back (the ``moved`` of a release names the leg the device landed on: it decides)."""
        self.setup.devices = [r for r in self.setup.devices if r.name != name]
        if self.legs.comes_back(name, self.setup.server, leg):
            self.waiting.add(name)
        else:
            self.waiting.discard(name)

    def joined(self, msg: Message, epoch: int) -> int:
        """A ``join`` of this epoch: the visitor's micro-batches still to come here (0: it will not come);
        a ``join`` left over from an earlier epoch counts for nothing. None from a later epoch is read here: the
        servers close every epoch together (the closing round of ``ServerSync.finish``, ``training.sync`` or not), a
        device starts its next epoch only after its server's, and a server reads only the kinds it asks for, so such a
        join waits unread for this server's next epoch (tests/test_join_later_epoch.py)."""
        if msg.epoch != epoch:
            return 0
        name = msg.device
        self.waiting.discard(name)
        if msg.aux and name in self.roles and all(r.name != name for r in self.setup.devices):
            self.setup.devices.append(self.roles[name])
            self.setup.samples[name] = self.roles[name].n_samples
        return msg.aux if name in self.roles else 0

    def announced(self, name: str, to: int | None = None) -> list[int]:
        """The servers (ranks) that device ``name`` sends a ``join`` to, by :class:`Mover`'s rules, once this server
        has read its ``moved`` to leg ``to`` (the new server unless it is this one, and those of the legs it passed
        through that no later leg brings it to), or, ``to`` None, the end of its epoch here (its last upload or its
        ``leave``: :meth:`Mover.close`, every other server of its legs)."""
        lg, me = self.legs.legs.get(name, []), self.setup.server
        if len({r for _, r, _ in lg}) < 2:
            return []
        if to is None:
            return sorted({r for _, r, srv in lg if srv != me})
        if not 0 <= to < len(lg):
            return []
        k = max((j for j in range(to) if lg[j][2] == me), default=to)  # the leg it left here
        new = lg[to][1]
        passed = {lg[j][1] for j in range(k + 1, to)} - {lg[k][1], new}
        return ([new] if lg[to][2] != me else []) + sorted(r for r in passed if all(x != r for _, x, _ in lg[to + 1:]))


def visits_of(method) -> Visits | None:
    """A server method's :class:`Visits` when the run has handovers (``method.legs``), else None."""
    legs = Legs(getattr(method, "legs", {}) or {})
    if not legs.moving():
        return None
    return Visits(legs, method.setup, getattr(method, "visitors", {}), method.lost)


def mover_of(method) -> Mover | None:
    """A device method's :class:`Mover` when the run has handovers (``method.legs``), else None."""
    legs = Legs(getattr(method, "legs", {}) or {})
    return Mover(legs, method.setup.transport, method.setup.meter) if legs.moving() else None


def hold_weight(method) -> None:
    """With handovers, a server's weight in the backhaul's averages is the samples of the devices it holds at the
    epoch's start (at launch: those assigned to it), so that it follows the devices from epoch to epoch and a run
    resumed at an epoch's end (each device on the server of its leg then) weighs as the uninterrupted one. The
    rounds of :class:`Handovers` methods count the joins of the devices that move
    (:meth:`trainer.transport.backhaul.ServerSync.track`)."""
    legs = Legs(getattr(method, "legs", {}) or {})
    if method.sync is not None and legs.moving():
        method.sync.weight = float(sum(r.n_samples for r in method.setup.devices))
        if isinstance(method, Handovers):  # (SplitFrozen's servers read no joins while they wait)
            movers = sorted(n for n, lg in legs.legs.items() if len({r for _, r, _ in lg}) > 1)
            method.sync.track(movers, method.lost, method.dead_visitors)


__all__ = ["Legs", "Mover", "Visits", "hold_weight", "late_moves", "mover_of", "visits_of"]


class Handovers:
    """What a method that hands devices over between server processes holds (FedLoRA, SplitLoRA).

    ``trainer.run.launch`` sets :attr:`legs` (every device's ``(at s, server rank, server name)``) with several
    servers and, on a server, :attr:`visitors` (the roles of the devices that may come); the :class:`Mover`
    and :class:`Visits` are made on first use (:func:`mover_of`, :func:`visits_of`)."""

    def init_handovers(self) -> None:
        """No legs, no visitors (a run without handovers)."""
        self.legs: dict[str, list[tuple[float, int, str]]] = {}
        self.visitors: dict = {}
        self._mover: Mover | None = None
        self._visits: Visits | None = None
        self.dead_visitors: dict[str, str] = {}  # visitors lost before they came here (:meth:`lose_peer`): name -> why

    @property
    def moves(self) -> list[dict]:
        """The handovers this device made (its report's ``handovers``)."""
        return self._mover.moves if self._mover is not None else []

    def lose_peer(self, name: str, reason: str, left: dict | None = None) -> None:
        """Go on without device ``name`` (its connection closed, or it broke the protocol): no longer awaited as a
        visitor, nor any join of it (:meth:`trainer.transport.backhaul.ServerSync.track`). A visitor that never came
        here (its samples unknown here) is reported by the servers that trained it, not here with none trained."""
        if self._visits is not None:
            self._visits.waiting.discard(name)
            if not self.setup.samples.get(name):
                if left is not None:
                    left.pop(name, None)
                if name not in self.dead_visitors:
                    self.dead_visitors[name] = reason
                    print(f"warning: lost device {name} ({reason}) before it came to {self.setup.server}; not waiting "
                          "for it", file=sys.stderr, flush=True)
                return
        self.lose(name, reason, left)

    def lose_movers(self) -> None:
        """At an epoch's end: a device that trained here this epoch, moved away and then died is lost on this server's
        transport with nothing here waiting on it (no ``PeerLost`` came): it is reported here, where it trained
        (``Method.lose`` counts what it trained here), unless it is already."""
        if self._visits is None:
            return
        held = {d.name for d in self.setup.devices}
        for name, why in dict(getattr(self.setup.transport, "lost", {})).items():
            if name not in held and name not in self.lost and self.cursor.get(name):
                self.lose(name, why)

    def announce_joins(self, name: str, to: int | None = None) -> None:
        """The joins ``name`` sends to other servers, now that this server has its ``moved`` to leg ``to`` or (None) the
        end of its epoch here (:meth:`Visits.announced`), go with the next backhaul round
        (:meth:`trainer.transport.backhaul.ServerSync.announce`)."""
        if self.sync is not None and self._visits is not None:
            self.sync.announce(name, self._visits.announced(name, to))

    def count_join(self, name: str) -> bool:
        """A ``join`` of ``name`` was read: counted (:meth:`trainer.transport.backhaul.ServerSync.joined`); True."""
        if self.sync is not None:
            self.sync.joined(name)
        return True

    def finish_moves(self, name: str) -> None:
        """Device ``name``'s process ends: record its handovers due since its last send (:meth:`Mover.finish`)."""
        if self._mover is not None:
            self._mover.finish(name)
