"""A SplitFrozen server that waits for a visitor answers no backhaul round (issue 21, found by moves21).

Server b holds no device at the start; it keeps a place for ``mover``, whose second leg is on b, and waits for it
(``EpochBooks.open``; the runtime's ``server_epoch``: a placeholder in ``left``, then ``recv_up`` until the
visitor's ``join`` or its epoch's ``join`` of 0). Unlike SplitLoRA and FedLoRA (``ServerRounds.idle``; the runtime's
``ServerSync.idle``: a waiting server joins every round another server opens, with zeros, when server 0 invites
it) it answers no round meanwhile. With ``training.sync`` ``every: 1`` in ``sync`` mode server a's first round
(before its first step) then waits for b, a takes no more micro-batches, mover gets no more credits, its next
send (which would carry its handover and its ``join`` to b) never starts: a deadlock. The simulator's
:class:`~sfsim.network.backhaul.Rounds` says so at the run's end ("waited for ever"); the runtime's server a
waits in its round until the backhaul timeout (``max(600 s, 4 x peer_timeout)``, ``trainer.run.launch``) and fails.
"""

from __future__ import annotations

import dataclasses

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.errors import SfsimError
from sfsim.network.backhaul import PoolRounds, SyncSpec
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf


def _visitor_run(every: int, move_at: float, epochs: int = 1, per: int = 3, mode: str = "sync") -> Engine:
    """mover: ``per`` micro-batches an epoch, 1 s forward, 1 s uplink, on a until ``move_at``, then on b; server F+B 1 s,
    step 0.5 s; buffer 1 (one micro-batch in flight), accumulate 1; backhaul 8 bit/s, 1 byte a round (1 s each
    way), closing round 2 bytes; training.sync ``every`` in ``mode``. Returns the engine after its run."""
    mover = DeviceTimes("mover", 0, n=per * epochs, per_epoch=per, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5, up_bytes=1.0)
    job = Job([mover], [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    legs = [Leg(0.0, 0, 8.0, 1.0, 0.0), Leg(move_at, 1, 8.0, 1.0, 0.0)]
    job.network = sf.Network({0: Motion(legs)}, [[dataclasses.replace(mover, up_s=0.0)]] * 2)
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), every, mode, 1.0, 2.0, epochs)
    engine = Engine(trace=True)
    PoolRounds(engine, job.sync, job.servers)
    sf.run(engine, job, ReplayConfig(buffer=1, accumulate=1))
    engine.makespan = engine.run()
    return engine


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_waiting_server_deadlocks_a_sync_round_today(epochs):
    """The deadlock as it stands (module docstring), one epoch and two: mover's handover is due at 4.5 s; a takes
    mb 0 at 2 (mover forwards mb 2 from then and waits for mb 1's credit), trains it to 3 and joins round 1 then
    (every 1: before its step); b, waiting for mover, never joins it. The engine stops with its modelling error;
    the last op is a's round-1 send at 3 s."""
    with pytest.raises(SfsimError, match=r"sync round 1 waited for ever \(only a joined it\)"):
        _visitor_run(1, 4.5, epochs)


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_waiting_server_deadlocks_an_async_round_too(epochs):
    """Async mode (every 1), 4 micro-batches an epoch, handover due at 6.5 s: a's round 1 is in flight (b never
    joins it) and a's next round waits for it (the runtime joins its thread), so a takes no more micro-batches
    and mover's handover never comes: the same deadlock one step later."""
    with pytest.raises(SfsimError, match=r"sync round 1 waited for ever \(only a joined it\)"):
        _visitor_run(1, 6.5, epochs, per=4, mode="async")


@pytest.mark.xfail(strict=True, raises=SfsimError, reason="issue 21 (idle21): a SplitFrozen server waiting for a "
                   "visitor does not yet answer the rounds another server opens (the one idle-server round rule)")
@pytest.mark.parametrize("epochs", [1, 2])
def test_a_waiting_server_answers_the_rounds_another_opens(epochs):
    """With the one idle-server round rule b would join a's round 1 with zeros when invited, a would step and take
    mb 1, mover would send mb 2 after its handover at 4.5 s, to b, which trains it: the run ends, b trains mb 2 of
    each epoch and both servers take every round."""
    engine = _visitor_run(1, 4.5, epochs)
    on_b = sorted(e.mb for e in engine.events if e.lane == "b" and e.op == "F")
    assert on_b == ([2] if epochs == 1 else [2, 3, 4, 5])  # mover is on b for all of epoch 2
    sends = {n: sum(e.op == "sync-send" for e in engine.events if e.lane == f"backhaul:{n}") for n in "ab"}
    assert sends["a"] == sends["b"] == engine.sync.rounds


def test_the_rounds_of_a_run_whose_visitor_never_stalls():
    """The control: every 2. a's first step (3 s) opens no round; mover's mb 2 is sent to a at 3.5 (before its
    handover at 4.5), so its epoch is over and b's place goes (b drains, its zeros from 3.5): 3 rounds (a's step
    at 4.5, b's drain rounds, the closing round of 2 bytes), makespan 14.5 s."""
    engine = _visitor_run(2, 4.5)
    assert engine.sync.rounds == 3 and engine.makespan == 14.5
    assert sorted(e.start for e in engine.events if e.lane == "backhaul:b" and e.op == "sync-send") == [3.5, 7.0, 10.5]


def test_the_fast_path_stops_with_the_same_one_line_error():
    """The fast path takes the every-1 case (:func:`sfsim.fast.synced.covers`) and stops as the SimPy engine does:
    an :class:`SfsimError` saying why and what to do (``sfsim simulate`` prints it in one line, exit 2)."""
    from sfsim.fast.replay import replay, uncovered

    mover = DeviceTimes("mover", 0, n=3, per_epoch=3, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5, up_bytes=1.0)
    job = Job([mover], [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    legs = [Leg(0.0, 0, 8.0, 1.0, 0.0), Leg(4.5, 1, 8.0, 1.0, 0.0)]
    job.network = sf.Network({0: Motion(legs)}, [[dataclasses.replace(mover, up_s=0.0)]] * 2)
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), 1, "sync", 1.0, 2.0, 1)
    cfg = ReplayConfig(buffer=1, accumulate=1)
    assert uncovered(object(), "splitfrozen", cfg, job) is None
    with pytest.raises(SfsimError, match=r"waited for ever; a SplitFrozen server waiting only for a visitor"):
        replay(job, cfg, schedule="splitfrozen")
