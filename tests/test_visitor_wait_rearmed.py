"""A server waiting only for visitors answers the others' rounds again after news that was undone at once (issue 19,
semfuzz s1780, ``splitfrozen-sequential``: "sync round 3 waited for ever").

A visitor passing through two legs at once (its send starts after both handovers) reaches the waiting server and
leaves it at one instant: the first news ended its round answering (:meth:`WorkerLoop._visit_rounds`), the second
found that answering already ending and did not start it again. The server, still waiting only for its other
visitor, then answered no round; the other server's next round waited for it for ever, holding the credit the
other visitor needed to come. The runtime's server checks whether it waits only for visitors at every message
(``SplitFrozen._waits_only``): the simulator's now checks again when the answering ends.
"""

from __future__ import annotations

import dataclasses

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.backhaul import PoolRounds, SyncSpec
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf


def _device(name: str, n: int, f: float) -> DeviceTimes:
    return DeviceTimes(name, 0, n, per_epoch=n, f=f, up_s=0.125, srv_f=0.125, srv_b=0.125, srv_w=0.125,
                       up_bytes=15_625.0, act_bytes=1e5)  # 125 000 bits at 1 Mbit/s: 0.125 s


def _run() -> tuple[Engine, float, Job]:
    """Sequential, two servers synchronised before every step. ``a`` is at s1 from 0.5 s and back on s0 from 1 s: its
    first send (2 s) passes through both handovers, decided at 0 s. ``c`` (4 micro-batches on s0) goes to s1 at 1.5 s.
    s1 has no device of its own: it waits only for them."""
    a, c = _device("a", 2, 2.0), _device("c", 4, 0.125)
    job = Job([a, c], [ServerTimes("s0", 1, 0.0625), ServerTimes("s1", 1, 0.0625)])
    legs = {0: [Leg(0.0, 0, 1e6, 0.125, 0.0), Leg(0.5, 1, 1e6, 0.125, 0.0), Leg(1.0, 0, 1e6, 0.125, 0.0)],
            1: [Leg(0.0, 0, 1e6, 0.125, 0.0), Leg(1.5, 1, 1e6, 0.125, 0.0)]}
    view = [dataclasses.replace(a, up_s=0.0), dataclasses.replace(c, up_s=0.0)]
    job.network = sf.Network({i: Motion(lg) for i, lg in legs.items()}, [view, view])
    job.sync = SyncSpec((("s0", 1e9, 0.0), ("s1", 1e9, 0.0)), 1, "sync", 1000.0, 1000.0, 1)
    engine = Engine()
    PoolRounds(engine, job.sync, job.servers)
    sf.run(engine, job, ReplayConfig(buffer=1, accumulate=1, decompose=True, policy="fifo", credits="device"),
           sequential=True)
    return engine, engine.run(), job


def test_the_waiting_server_answers_rounds_after_a_visitor_passed_through():
    engine, makespan, job = _run()
    assert [job.network.moving[i].sent for i in (0, 1)] == [2, 4]
    assert job.network.moving[1].switched_at == [3]  # c's last micro-batch went to s1
    assert {k: m.total for k, m in engine.mixing.items()} == {"s0": 5, "s1": 1}  # every one trained once
    assert engine.server_busy == {"s0": 5 * 0.4375, "s1": 0.4375}  # F + B + W 0.375 s and a 0.0625 s step each
    assert makespan == 5.500032  # the rounds' 8 us transfers (1000 B at 1 Gbit/s) included
