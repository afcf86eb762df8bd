"""A cached device's departure in a distributed run: its ``gone`` message, and its servers' replays around it (issue 21).

With ``training.cache_activations`` the server that received a micro-batch replays it in every later epoch
(``trainer.transport.cache``), so a device that hands over leaves part of its first epoch on each server it sent to.
The rule is the simulator's (``sfsim.engine.cacheparts``): **a replay trains only if its server starts it before the
device's departure**, on every server that holds a part; the replays from then on are the device's untrained samples.
The departure is its drop instant (``availability`` with ``churn: drop``), or the instant it finds, in its first
epoch, that its next micro-batch cannot be sent in full while present (its ``leave``).

Who tells the servers: the device itself, with a ``gone`` message (``trainer.transport.wire.Kind.GONE``, stamped with
its departure) to every server it sent a micro-batch to and to the one holding it (:class:`Goodbye`). A device keeps a
connection to every server of its legs (a handover's ``join`` and ``moved`` use them), so it reaches each directly.
Relaying from its last server over the server links was the other way: but only that server would hear of it (a
server it left hears nothing until a relay), the backhaul's links carry the rounds whose timing the simulator models,
and a relay would be one more hop with its own latency before a server knew. So the device sends it: in its first
epoch right after its ``leave`` and before its joins of 0 (a server that has read those, as every server has before
the epoch's closing round, has its ``gone`` too), in a cached epoch at its drop instant (a timer).

Deterministic, not arrival-order luck (:class:`Departures`): before each replay of a device a server reads every
``gone`` that has come; one stamped at or before the replay's start stops it. One that may still be on its way is
waited for: when the scenario says the device is gone by now (:func:`drop_instants`, the drop instant every
process knows, as the servers know each leg's instant for a ``join``), the server waits for its ``gone`` (it comes one uplink
latency after the drop instant; at most :data:`GONE_WAIT_S`) and compares its stamp with the replay's start.

Every field of a ``gone`` is checked before use (one line; only that device is dropped): the wire checks its stamp's
range (0..``MAX_AT_US``, not ahead of the server's clock) and that ``mb`` and ``aux`` are unused; here, that it comes
from a device this server holds or holds a part of (:meth:`Departures.check`) and says one departure only.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable

from trainer.transport.dynamics import presence
from trainer.transport.runtime import Message

GONE_WAIT_S = 5.0  # at most this long a server waits for a gone the scenario says is due (then drops the device)
POLL_S = 0.002  # how often a waiting server looks for it
AT_RESOLUTION_S = 1e-6  # the wire's stamps are whole microseconds: two departures closer than this are one


class Goodbye:
    """A device's side: the servers it sent to, a timer at its drop instant, and its one ``gone`` (module docstring).

    Args:
        setup: the method's setup (its transport and meter; ``meter.presence`` holds the device's availability).
    """

    def __init__(self, setup):
        self.setup = setup
        self.sent_to: dict[str, set[int | None]] = {}  # device -> server ranks it sent to (None: its one server)
        self.said: set[str] = set()
        self.armed: set[str] = set()

    def sent(self, name: str, rank: int | None) -> None:
        """Device ``name`` sent a micro-batch to server ``rank`` (None: its only server)."""
        self.sent_to.setdefault(name, set()).add(rank)

    def arm(self, name: str, epoch: int) -> None:
        """Once per device: a timer at its drop instant puts a local ``depart`` in its inbox (:meth:`say` then). None
        for a device that dropped before this attempt (a resumed run): its servers have its ``gone`` from the
        checkpoint, or take its drop instant (:meth:`Departures.gone`)."""
        presence = self.setup.meter.presence.get(name)
        inbox = getattr(self.setup.transport, "inbox", None)
        if name in self.armed or presence is None or presence.churn != "drop" or inbox is None or presence.leave < 0:
            return
        self.armed.add(name)
        if presence.leave < math.inf:
            timer = threading.Timer(max(0.0, presence.leave - self.setup.meter.now()), inbox.put,
                                    (Message(name, -1, kind="depart", epoch=epoch),))
            timer.daemon = True
            timer.start()

    def resumed(self, name: str, ranks: set[int | None]) -> None:
        """A resumed attempt (``--resume``), cache on: device ``name`` sent its cached micro-batches in an earlier
        attempt, to servers among ``ranks`` (every server of its legs; None: its only server), and gets no ``start``
        in a cached epoch: its timer is armed now and its ``gone`` goes to each of them (they accept it from a
        device with a leg there)."""
        self.sent_to.setdefault(name, set()).update(ranks)
        self.arm(name, 0)  # the gone's epoch is not read: its stamp says when

    def drop_instant(self, name: str) -> float:
        """The device's drop instant on this attempt's clock (``inf``: none)."""
        presence = self.setup.meter.presence.get(name)
        return math.inf if presence is None else presence.leave

    def say(self, name: str, at: float, home: int | None, epoch: int, skip: int | None = -1) -> None:
        """Send ``gone`` stamped ``at`` (its departure, the run's clock) to every server device ``name`` sent to and to
        ``home``, the one holding it (None: its only server), but ``skip`` (the one its ``leave`` went to); once."""
        if name in self.said:
            return
        self.said.add(name)
        tr = self.setup.transport
        for rank in sorted(self.sent_to.get(name, set()) | {home}, key=lambda r: -1 if r is None else r):
            if rank == skip:
                continue
            msg = Message(name, -1, kind="gone", epoch=epoch, at=at)
            tr.send_up(msg) if rank is None else tr.send_to(rank, msg)


class Departures:
    """A server's side: the ``gone`` messages read so far, and whether a device's replay starting now trains.

    Args:
        setup: the method's setup (transport, meter, server name, held devices).
        knows: ``name -> bool``: whether device ``name`` sent here or is held here (a ``gone`` from any other costs it).
        lose: ``(name, why)``: go on without a device whose ``gone`` broke the rules (already dropped by the transport).
    """

    def __init__(self, setup, knows: Callable[[str], bool], lose: Callable[[str, str], None]):
        self.setup, self.knows, self.lose = setup, knows, lose
        self.at: dict[str, float] = {}  # device -> its departure (the gone's stamp)
        # a resumed attempt (trainer.run.resume.restore_cache): a device connects only to the servers of its legs from
        # the checkpoint on, so one that handed over before it cannot reach a server holding an earlier part of its
        # cache; a drop's gone is stamped with its drop instant, which that server takes when due, not waiting
        self.resumed = False

    def read(self) -> None:
        """Take every ``gone`` that has come (none waits)."""
        inbox = getattr(self.setup.transport, "inbox", None)
        if inbox is None:
            return
        with inbox.cv:
            msgs = [(n, sum(m.kind == "gone" for m in q)) for n, q in inbox.by_device.items()]
        for n in (n for n, k in msgs for _ in range(k)):
            if n in inbox.lost:
                continue
            msg = self.setup.transport.recv_up(n, {"gone"})
            why = self.check(msg)
            if why is not None:
                print(f"bad message from {n}: {why}; dropping {n}", file=sys.stderr, flush=True)
                self.setup.transport.drop(n, why)
                self.lose(n, why)
                continue
            self.at[n] = msg.at

    def check(self, msg: Message) -> str | None:
        """Why a ``gone`` cannot be used (None: it can): no stamp, a device that never sent here nor is held here, or
        a second departure of the device at another instant. (The wire checked the stamp's range and the clock.)"""
        n = msg.device
        if msg.at is None or not math.isfinite(msg.at) or msg.at < 0:
            return f"a gone without a departure instant (at {msg.at})"
        if not self.knows(n):
            return "a gone from a device that never sent to this server and is not held here"
        if n in self.at and abs(self.at[n] - msg.at) > AT_RESOLUTION_S:  # (a resumed server may hold its drop instant)
            return f"a second gone (at {msg.at:.6f} s, after one at {self.at[n]:.6f} s)"
        return None

    def gone(self, name: str, now: float) -> bool:
        """Whether device ``name``'s replay starting ``now`` must not train: its ``gone`` is stamped by ``now``. When
        the scenario says it is gone by ``now`` and its ``gone`` has not come, wait for it (module docstring)."""
        self.read()
        if name not in self.at:
            tr = self.setup.transport
            drop = getattr(tr, "drops", {}).get(name, math.inf)
            if now < drop:
                return False
            if drop < 0 or self.resumed:  # its gone is stamped with its drop instant (which every process knows):
                self.at[name] = drop  # before this attempt it was sent then; in it the device may reach only its own
        if name not in self.at:
            until = time.monotonic() + GONE_WAIT_S  # it normally comes one uplink latency after the drop instant
            while name not in self.at and time.monotonic() < until and name not in getattr(tr, "lost", {}):
                time.sleep(POLL_S)
                self.read()
            if name not in self.at:
                if name not in getattr(tr, "lost", {}):
                    why = f"no gone by {GONE_WAIT_S:g} s after its drop instant"
                    print(f"warning: {name}: {why}; dropping {name}", file=sys.stderr, flush=True)
                    tr.drop(name, why)
                    self.lose(name, why)
                return True
        return self.at[name] <= now


def drop_instants(scenario, names: list[str], origin: float = 0.0) -> dict[str, float]:
    """Device -> its drop instant on this attempt's clock (``origin``: the run's clock at its 0), for each device of
    ``names`` with ``churn: drop`` (a server's ``DistTransport.drops``: when a ``gone`` is due)."""
    out = {}
    for n in names:
        p = presence(scenario, n, time.monotonic, origin)
        if p is not None and p.churn == "drop":
            out[n] = p.leave
    return out


def stop_at_epoch_start(departures: Departures, cache, names, now: float) -> None:
    """A cached epoch opens at ``now``: each of ``names`` whose departure has come replays nothing in it (nor later):
    the server holding it counts its whole epoch untrained (``SplitFrozen._from_cache``), the others nothing."""
    for n in dict.fromkeys(names):
        if n not in cache.left and departures.gone(n, now):
            cache.stop(n)
