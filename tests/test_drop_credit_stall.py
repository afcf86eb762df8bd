"""A device cut off mid-send by its drop holds its server credit until it leaves (issue 19, semfuzz s1229 and s1445).

With ``credits: server`` the credit comes back at the drop, a soft timer (it must not make a run last that ended
earlier). When every other device waits for that credit, nothing but soft timers is left before it: the run
ended there and the server reported its waiting micro-batches as "never processed", on both engines. A server
with work left keeps the run going on its soft timers (``Engine.hold_open``; the fast path's loop likewise).
"""

from __future__ import annotations

import dataclasses

from sfsim.engine.pool import DeviceTimes, ServerTimes
from sfsim.network.availability import Windows
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig
from sfsim.schedules import splitfrozen as sf
from tests.test_fast_dynamic import fast_figures, simpy_figures


def _job() -> tuple[Job, ReplayConfig]:
    """One server, one credit. ``cut`` takes it at 0.125 s and its 1 s send is cut off by its drop at 0.5 s;
    ``wait`` (static) is ready at 0.25 s and gets the credit only at 0.5 s."""
    cut = DeviceTimes("cut", 0, 2, per_epoch=2, f=0.125, up_s=1.0, up_l=0.0, srv_f=0.125, srv_b=0.125, srv_w=0.125,
                      up_bytes=125_000.0, act_bytes=1e5)  # 1e6 bits at 1 Mbit/s: 1 s
    wait = DeviceTimes("wait", 0, 3, per_epoch=3, f=0.25, up_s=0.125, up_l=0.0, srv_f=0.125, srv_b=0.125, srv_w=0.125,
                       up_bytes=1e5, act_bytes=1e5)
    motion = Motion([Leg(0.0, 0, 1e6, 1.0, 0.0)], Windows([(0.0, 0.5)]), "drop")
    job = Job([cut, wait], [ServerTimes("s0", 1, 0.0)])
    job.network = sf.Network({0: motion}, [[dataclasses.replace(cut, up_s=0.0), wait]])
    cfg = ReplayConfig(buffer=1, accumulate=1, decompose=False, policy="fifo", credits="server")
    return job, cfg


def test_a_credit_held_by_a_dropped_device_comes_back_at_its_drop():
    """``wait``'s micro-batches: sends at 0.5, 0.75 and 1.0 s (the credit back at 0.5, 0.625 and 1.0), the server's
    F + BW (0.375 s each) from 0.625, 1.0 and 1.375 s: done at 1.75 s; ``cut`` sent nothing."""
    job, cfg = _job()
    got = simpy_figures(job, cfg, False)
    assert got["makespan"] == 1.75
    assert got["busy"] == {"s0": 1.125}
    assert got["end"] == {"s0": 1.75}
    assert got["motions"][0][0] == 0  # cut off: nothing of it reached the server
    assert got["mixing"]["s0"][1] == 3  # the stream it received: wait's three


def test_the_fast_path_gives_the_same_figures():
    job, cfg = _job()
    want = simpy_figures(job, cfg, False)
    assert fast_figures(_job()[0], cfg, False) == want


def _with_handover() -> Job:
    """The same fleet, ``cut`` with a handover to s1 at 5 s that it never reaches, and ``other`` on s1: the fast path's
    handover loop (:mod:`sfsim.fast.handover`)."""
    job, _ = _job()
    cut, wait = job.devices
    other = dataclasses.replace(wait, name="other", server=1, n=2, sent=2, per_epoch=2)
    job = Job([cut, wait, other], [ServerTimes("s0", 1, 0.0), ServerTimes("s1", 1, 0.0)])
    motion = Motion([Leg(0.0, 0, 1e6, 1.0, 0.0), Leg(5.0, 1, 1e6, 1.0, 0.0)], Windows([(0.0, 0.5)]), "drop")
    view = [dataclasses.replace(cut, up_s=0.0), wait, other]
    job.network = sf.Network({0: motion}, [view, view])
    return job


def test_with_a_handover_on_both_engines():
    _, cfg = _job()
    want = simpy_figures(_with_handover(), cfg, False)
    assert want["makespan"] == 1.75  # s0 as above; s1 trains other's two by 1.0 s
    assert want["busy"] == {"s0": 1.125, "s1": 0.75}
    assert fast_figures(_with_handover(), cfg, False) == want
