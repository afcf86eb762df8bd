"""The baselines' backhaul rounds (``training.sync``) between servers whose loops stop where they join one.

:class:`sfsim.network.backhaul.Rounds` pairs the ``k``-th join of every server into round ``k``, and
:class:`sfsim.network.backhaul.ServerRounds` says when a server joins (after a step or a FedAvg round, before
a step in joint mode, at its epoch's end: rounds of zeros until none trains, then the closing round). Here each
server is a *loop* that runs until it would join a round and says so (:func:`lockstep`'s ``go``); the rounds are
formed one after another, in :class:`~sfsim.network.backhaul.Rounds`' arithmetic. A server's sends and receives
alternate on its backhaul (it joins its next round only once the last is back), so its lane never queues: a join
at ``t`` arrives at ``t + bytes x 8 / bandwidth + latency``; the average is ready at the latest arrival and is back
at server ``j`` ``bytes x 8 / bandwidth + latency`` later. Event order cannot change a figure: no round waits for
a time another process sets but through these sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sfsim.errors import SfsimError
from sfsim.network.backhaul import Closed

DONE, BEFORE, AFTER, FINISH = range(4)
"""What a loop's ``go`` says: its run is over; a round before its step (joint mode: it steps on the average); a
round after a step or FedAvg round; its epoch is trained (it drains and closes with the others)."""
_MID, _DRAIN, _CLOSE, _OVER = range(4)


@dataclass(slots=True)
class _Side:
    """One server in the rounds: where its loop stopped and what :class:`~sfsim.network.backhaul.ServerRounds` holds."""

    loop: object
    mode: int = _MID
    at: float = 0.0  # its time: the join's (its loop stopped there), or its finish's clock
    active: bool = True
    stepping: bool = False
    pending: float | None = None  # an async round in flight: when it is back
    ended: bool | None = None  # no server trains: whether a closing round is due (None: some trains)
    end: float = 0.0  # when its run ends


def lockstep(spec, loops: list, always_close: bool) -> tuple[Closed, list[float]]:
    """Run ``loops`` (one per server, in server order) through the rounds of ``spec`` (a
    :class:`~sfsim.network.backhaul.SyncSpec` with ``every``); returns the rounds and each server's last instant.

    A loop has ``go(t) -> (code, time, active)``: it goes on from ``t`` (ignored at its first call) until it
    stops with a code of :data:`BEFORE`, :data:`AFTER`, :data:`FINISH` or :data:`DONE`, its time then and whether
    it still trains; and ``drained(t) -> t``: the step a drained server takes with the others in joint mode (its
    end), or None when the method has none. ``always_close``: every epoch ends with the closing round (SplitLoRA).
    A round that every server joins mid-epoch (most of them) takes :func:`_mid_round`'s short way.
    """
    joint = spec.mode == "sync" and spec.every == 1
    sync = spec.mode == "sync"
    bw = [b for _, b, _ in spec.servers]
    lat = [la for _, _, la in spec.servers]
    lanes = [(spec.payload * 8.0 / b, la) for _, b, la in spec.servers]  # a mid-epoch round's send (_join's sum)
    sides = [_Side(loop) for loop in loops]
    for side in sides:
        _settle(side, side.loop.go(0.0), always_close)
    sent = [0.0] * len(sides)
    rounds = 0
    while True:
        modes = {s.mode for s in sides}
        if modes == {_MID}:
            rounds += 1
            _mid_round(sides, lanes, sent, spec.payload, sync, always_close)
            continue
        if modes <= {_OVER}:
            break
        if _OVER in modes:
            raise SfsimError(f"backhaul: sync round {rounds + 1} waited for ever on the fast path, please report it")
        joins = [_join(side, spec, joint) for side in sides]
        arrivals = []
        for j, (t, nbytes, *_) in enumerate(joins):
            sent[j] += nbytes
            arrivals.append(t + nbytes * 8.0 / bw[j] + lat[j])
        ready = max(arrivals)
        rounds += 1
        ended, differ = not any(e[2] for e in joins), not all(e[3] for e in joins)
        stepping = any(e[4] for e in joins)
        for j, (side, (t, nbytes, *_)) in enumerate(zip(sides, joins, strict=True)):
            sent[j] += nbytes
            back = ready + nbytes * 8.0 / bw[j] + lat[j]
            if ended:
                side.ended = differ
            _back(side, t, back, stepping, joint, sync, always_close)
    names = [name for name, _, _ in spec.servers]
    return Closed(dict(zip(names, sent, strict=True)), rounds), [s.end for s in sides]


def _mid_round(sides: list, lanes: list, sent: list, payload: float, sync: bool, always_close: bool) -> None:
    """A round every side joins mid-epoch (:func:`_join`, :func:`_back` and :func:`_settle` for that case, with the
    same arithmetic): each sends ``payload``, and goes on once the average is back (``async``: from its join)."""
    ready = -math.inf
    joins = []
    for j, side in enumerate(sides):
        t = side.at
        if side.pending is not None:  # the async round in flight first
            t, side.pending = max(t, side.pending), None
        joins.append(t)
        sent[j] += payload
        ready = max(ready, t + lanes[j][0] + lanes[j][1])
    ended = not any(side.active for side in sides)
    for j, side in enumerate(sides):
        sent[j] += payload
        back = ready + lanes[j][0] + lanes[j][1]
        if ended:
            side.ended = False  # every side adopts: no closing round is due for a difference
        if not sync:
            side.pending, back = back, joins[j]
        code, t, active = said = side.loop.go(back)
        if code == BEFORE or code == AFTER:
            side.at, side.active, side.stepping = t, active, code == BEFORE
        else:
            _settle(side, said, always_close)


def _join(side: _Side, spec, joint: bool) -> tuple[float, float, bool, bool, bool]:
    """The side's join of the next round: (time, bytes, active, adopt, stepping)."""
    t = side.at
    if side.pending is not None:  # the async round in flight first (ServerRounds._wait)
        t, side.pending = max(t, side.pending), None
    if side.mode == _MID:
        return t, spec.payload, side.active, True, side.stepping
    if side.mode == _DRAIN:
        return t, spec.payload, False, joint, False
    return t, spec.closing, False, True, False


def _back(side: _Side, t: float, back: float, stepping: bool, joint: bool, sync: bool, always_close: bool) -> None:
    """The round the side joined at ``t`` is back at it at ``back``: it goes on."""
    if side.mode == _MID:
        if not sync:  # in flight: the side goes on from its join
            side.pending, back = back, t
        _settle(side, side.loop.go(back), always_close)
    elif side.mode == _DRAIN:
        side.at = back
        if joint and stepping:  # the others stepped on the average: so does it
            step = side.loop.drained(back)
            if step is not None:
                side.at = max(back, step)
        if side.ended is not None:
            _ends(side, always_close)
    else:
        side.ended = None
        _settle(side, side.loop.go(back), always_close)


def _settle(side: _Side, said: tuple, always_close: bool) -> None:
    """What the loop said: a join mid-epoch, its epoch's end (drain, close, or on without a round), or its end."""
    while True:
        code, t, active = said
        if code == DONE:
            side.mode, side.end = _OVER, t
            return
        side.at = t
        if code != FINISH:
            side.mode, side.active, side.stepping = _MID, active, code == BEFORE
            return
        if side.pending is not None:  # ServerRounds.finish: the async round in flight first
            side.at, side.pending = max(t, side.pending), None
        if side.ended is None:
            side.mode = _DRAIN
            return
        if _ends(side, always_close, settle=False):
            return
        said = side.loop.go(side.at)


def _ends(side: _Side, always_close: bool, settle: bool = True) -> bool:
    """No server trains: the closing round when one is due (True), else the side goes on (``settle``: its loop now)."""
    if side.ended or always_close:
        side.mode = _CLOSE
        return True
    side.ended = None
    if settle:
        _settle(side, side.loop.go(side.at), always_close)
    return False
