"""A SplitFrozen server that waits only for a visitor answers the backhaul rounds others open (issue 21).

Server b holds no device at the start; it keeps a place for ``mover``, whose second leg is on b, and waits for it
(``EpochBooks.open``; the runtime's ``server_epoch``: a placeholder in ``left``, then ``recv_up`` until the
visitor's ``join`` or its epoch's ``join`` of 0). Until issue 21's fix it answered no round meanwhile: with
``training.sync`` ``every: 1`` in ``sync`` mode server a's first round (before its first step) then waited for b, a
took no more micro-batches, mover got no more credits and its next send (which carries its handover and its ``join``
to b) never started: a deadlock in both halves. Now, as SplitLoRA's and FedLoRA's waiting servers
(``ServerRounds.idle``; the runtime's ``ServerSync.idle``), b joins every round another server opens, with zeros,
when server 0 invites it (:meth:`sfsim.network.backhaul.PoolRounds.wait_for_visitor`), and the runs below end with
the round counts their docstrings explain.
"""

from __future__ import annotations

import dataclasses

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
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


def _sends(engine: Engine) -> dict[str, list[float]]:
    return {n: sorted(e.start for e in engine.events if e.lane == f"backhaul:{n}" and e.op == "sync-send") for n in "ab"}


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_waiting_server_answers_the_rounds_another_opens(epochs):
    """The one idle-server round rule (sync, every 1): mover's handover is due at 4.5 s; a takes mb 0 at 2 (mover
    forwards mb 2 from then and waits for mb 1's credit), trains it to 3 and opens round 1 then (before its step). b,
    waiting only for mover, is invited when a's vector arrives (4 s) and joins with zeros (4 to 5); the average is
    back at 6, both step (6 to 6.5). mover's credit wait ends at its handover (4.5): it sends mb 2 to b (4.5 to 5.5),
    which b takes after its round and step (6.5). Round 2: a's last step (mb 1) and b's (mb 2), 7.5 to 9.5; both
    ended, so no closing round: 2 rounds, makespan 10. Two epochs: epoch 2 has mover on b for all of it (3 more
    rounds: b's steps on mb 3 and 4, a answering with zeros, then the last on mb 5), 5 rounds, makespan 22.5."""
    engine = _visitor_run(1, 4.5, epochs)
    on_b = sorted(e.mb for e in engine.events if e.lane == "b" and e.op == "F")
    assert on_b == ([2] if epochs == 1 else [2, 3, 4, 5])  # mover is on b for all of epoch 2
    sends = _sends(engine)
    assert len(sends["a"]) == len(sends["b"]) == engine.sync.rounds == (2 if epochs == 1 else 5)
    assert sends["b"][:2] == [4.0, 7.5] and sends["a"][:2] == [3.0, 7.5]
    assert engine.makespan == (10.0 if epochs == 1 else 22.5)
    assert engine.sync.bytes == ({"a": 4.0, "b": 4.0} if epochs == 1 else {"a": 10.0, "b": 10.0})
    steps = sorted(e.start for e in engine.events if e.lane == "b" and e.op == "step")
    assert steps[:2] == [6.0, 9.5]  # b steps with a on round 1's mean gradient while it waits, then on its own


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_waiting_server_answers_an_async_round_too(epochs):
    """Async mode (every 1), 4 micro-batches an epoch, handover due at 6.5 s: a's round 1 is in flight from 3.5 (its
    first step); b, waiting, is invited at 4.5 and joins it with zeros in the background (back at 6.5); a's round 2
    (6.5, after its second step) waited for it; mover's credit wait ends at 6.5, it sends mb 3 to b, which trains it
    and opens its own round (9 s, joined with a's round 2); then the drain round (11) and the closing round (13,
    2 bytes): 4 rounds, makespan 17. Two epochs: 9 rounds, makespan 32.5."""
    engine = _visitor_run(1, 6.5, epochs, per=4, mode="async")
    sends = _sends(engine)
    assert len(sends["a"]) == len(sends["b"]) == engine.sync.rounds == (4 if epochs == 1 else 9)
    assert sends["b"][:4] == [4.5, 9.0, 11.0, 13.0] and sends["a"][:4] == [3.5, 6.5, 11.0, 13.0]
    assert engine.makespan == (17.0 if epochs == 1 else 32.5)
    on_b = sorted(e.mb for e in engine.events if e.lane == "b" and e.op == "F")
    assert on_b == ([3] if epochs == 1 else [3, 4, 5, 6, 7])


def test_the_rounds_of_a_run_whose_visitor_never_stalls():
    """The control: every 2. a's first step (3 s) opens no round; mover's mb 2 is sent to a at 3.5 (before its
    handover at 4.5), so its epoch is over and b's place goes (b drains, its zeros from 3.5): 3 rounds (a's step
    at 4.5, b's drain rounds, the closing round of 2 bytes), makespan 14.5 s."""
    engine = _visitor_run(2, 4.5)
    assert engine.sync.rounds == 3 and engine.makespan == 14.5
    assert sorted(e.start for e in engine.events if e.lane == "backhaul:b" and e.op == "sync-send") == [3.5, 7.0, 10.5]


def test_the_fast_path_leaves_it_to_simpy():
    """The fast path does not replay a server that answers rounds while it waits for a visitor: every SplitFrozen
    case with ``training.sync`` and a handover between servers goes to SimPy (:func:`sfsim.fast.synced.covers`), with
    one line; its "waited for ever" stop is no longer reachable for these cases."""
    from sfsim.fast.replay import uncovered

    mover = DeviceTimes("mover", 0, n=3, per_epoch=3, f=1.0, up_s=1.0, srv_f=0.5, srv_b=0.5, up_bytes=1.0)
    job = Job([mover], [ServerTimes("a", 1, 0.5), ServerTimes("b", 1, 0.5)])
    legs = [Leg(0.0, 0, 8.0, 1.0, 0.0), Leg(4.5, 1, 8.0, 1.0, 0.0)]
    job.network = sf.Network({0: Motion(legs)}, [[dataclasses.replace(mover, up_s=0.0)]] * 2)
    job.sync = SyncSpec((("a", 8.0, 0.0), ("b", 8.0, 0.0)), 1, "sync", 1.0, 2.0, 1)
    cfg = ReplayConfig(buffer=1, accumulate=1)
    assert uncovered(object(), "splitfrozen", cfg, job) == (
        "training.sync with a handover between servers (a server waiting for its visitor answers rounds) is replayed "
        "by the SimPy engine only")


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.usefixtures("one_torch_thread")
def test_a_waiting_server_answers_rounds_in_a_real_run(tiny_gpt2, tmp_path, mode):
    """The pinned case for real (2 servers on loopback, 2 epochs, every process emulated): mec-b holds no device and
    waits for mover, whose handover to it is due at 1.25 s (after its 3rd send to mec-a, when it waits for a credit
    there); stay-a (4 micro-batches) stays on mec-a; ``training.sync`` every 1 (sync: gradients averaged before each
    step; async: a round after each). Before the fix mec-a's first round waited for mec-b until the backhaul timeout
    and mover never sent again; now mec-b answers it with zeros (stepping with mec-a in sync mode), the run ends,
    and both halves make the same rounds (sync 11, async 12) and send the same backhaul bytes; in sync mode each
    server runs the same order of steps, sends and receives (async rounds overlap the steps: their order is timing)."""
    from tests.test_splitfrozen_moves import _fixture, _real, _same

    data = _fixture("runtime_handover.yaml")
    data["devices"] = [d for d in data["devices"] if d["name"] != "stay-b"]
    data["devices"][1]["samples"] = 16
    data["devices"][0]["handover"][0]["at"] = "1.25 s"
    data["training"]["sync"] = {"every": 1, "mode": mode}
    m, sim = _real(tiny_gpt2, tmp_path, data, 32)
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == [("mec-a", "mec-b", 3)]
    _same(m, sim, tmp_path, 11 if mode == "sync" else 12, order=mode == "sync")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_join_held_back_is_read_before_the_round_it_leads_to(tiny_gpt2, tmp_path, monkeypatch):
    """The race of the design (sync mode as above): mover's ``join`` to mec-b goes straight from the device, while
    mec-a learns of the move when it reads ``moved``. A hook holds the join back 1.5 s after the ``moved`` has left
    (``tests/test_peer_joins.py``'s fault-injection role), so mec-a reads the move and opens its next round while
    mec-b, still waiting, has not read the join. mec-a announces the join in that round's vector; mec-b, invited,
    answers only once it has read it (then from its own step, as in the simulator, where a join comes at once): the
    same 11 rounds and bytes as the simulator predicts. Without the announcement mec-b would answer with zeros as a
    waiting server and the rounds would differ."""
    from tests.test_peer_joins import _hook_mover
    from tests.test_splitfrozen_moves import _fixture, _real, _same

    _hook_mover(monkeypatch, "1.5")
    data = _fixture("runtime_handover.yaml")
    data["devices"] = [d for d in data["devices"] if d["name"] != "stay-b"]
    data["devices"][1]["samples"] = 16
    data["devices"][0]["handover"][0]["at"] = "1.25 s"
    data["training"]["sync"] = {"every": 1, "mode": "sync"}
    m, sim = _real(tiny_gpt2, tmp_path, data, 32)
    _same(m, sim, tmp_path, 11, order=False)
