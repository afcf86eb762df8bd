"""A device handing over to a server still an epoch behind waits for that server's next epoch (issue 19, semfuzz
s744 and s1227: no backhaul, several epochs, ``training.eval_samples``).

Without backhaul rounds each server opens its next epoch when its own ends (and its epoch-end wait). A device whose
epoch ended on a fast server starts its next epoch there, then hands over to a slow server still in the last one:
its micro-batches were counted in that server's old epoch ("-60 micro-batches never processed"), or that server
ended its epoch early and its own devices found their next epoch's start already past (an AttributeError in
``_Pipelined._send``). The runtime's servers close every epoch together, so its device never sends there before
the server opens the epoch: the simulator's device now waits for that opening before its send.
"""

from __future__ import annotations

import dataclasses

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf


def _job() -> Job:
    """``mover``: 2 epochs of 2 on s0, handing over to s1 at 1.3 s (s0 opened its epoch 1 at 1.25 s);
    ``slow``: 2 epochs of 1 on s1, 2 s of server forward each (s1 opens its epoch 1 at 2.5 s)."""
    mover = DeviceTimes("mover", 0, 4, per_epoch=2, f=0.125, up_s=0.125, srv_f=0.125, srv_b=0.125, srv_w=0.125,
                        up_bytes=15_625.0, act_bytes=1e5)  # 125 000 bits at 1 Mbit/s: 0.125 s
    slow = DeviceTimes("slow", 1, 2, per_epoch=1, f=0.125, up_s=0.125, srv_f=2.0, up_bytes=1e5, act_bytes=1e5)
    legs = [Leg(0.0, 0, 1e6, 0.125, 0.0), Leg(1.3, 1, 1e6, 0.125, 0.0)]
    job = Job([mover, slow], [ServerTimes("s0", 1, 0.0), ServerTimes("s1", 1, 0.0)])
    view = [dataclasses.replace(mover, up_s=0.0), slow]
    job.network = sf.Network({0: Motion(legs)}, [view, view])
    return job


def _run(sequential: bool = False) -> tuple[Engine, float, Job]:
    job = _job()
    engine = Engine(trace=True)
    engine.epoch_end = {"s0": 0.25, "s1": 0.25}
    sf.run(engine, job, ReplayConfig(buffer=2, accumulate=1, decompose=False, policy="fifo", credits="device"),
           sequential=sequential)
    return engine, engine.run(), job


def test_the_mover_waits_for_its_new_servers_epoch():
    """s1 ends its epoch 0 at 2.25 s and opens epoch 1 at 2.5 s; the mover sends its epoch 1 there from 2.5 s (not
    at 1.375 s): s1 trains it from 2.625 s, then slow's (arrived 2.75 s) until 5.375 s."""
    engine, makespan, job = _run()
    assert makespan == 5.375
    assert engine.server_busy == {"s0": 0.75, "s1": 4.75}
    assert engine.server_end == {"s0": 1.0, "s1": 5.375}
    assert job.network.moving[0].sent == 4
    sends = [(e.start, e.mb) for e in engine.events if e.lane == "link:mover" and e.op == "send"]
    assert sends == [(0.125, 0), (0.25, 1), (2.5, 2), (2.625, 3)]
    assert {k: m.total for k, m in engine.mixing.items()} == {"s0": 2, "s1": 4}
