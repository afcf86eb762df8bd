"""The dynamic network on the engine, with hand-made stage times: every timeline in closed form.

One device, micro-batches with forward ``f`` and a server with forward ``srv`` (fused backward of 0
seconds), so that send starts, arrivals and the makespan follow by hand.
"""

from __future__ import annotations

import dataclasses

import pytest

from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.availability import Windows
from sfsim.network.legs import Leg, Motion
from sfsim.network.linkrate import Constant, Product, Steps, finish
from sfsim.schedules import Job, ReplayConfig, splitfrozen
from sfsim.schedules.splitfrozen import Network

INF = float("inf")


def run(device: DeviceTimes, motion: Motion, srv=(1.0, 1.0), buffer: int = 16):
    """Replay one moving device over servers ``a`` and ``b`` (forward ``srv[k]`` s each); trace kept."""
    servers = [ServerTimes("a"), ServerTimes("b")]
    lat = min(leg.up_l for leg in motion.legs)
    views = [[dataclasses.replace(device, server=motion.legs[0].server, srv_f=s, up_s=0.0, up_l=lat)] for s in srv]
    engine = Engine(trace=True)
    job = Job([device], servers, network=Network({0: motion}, views))
    splitfrozen.run(engine, job, ReplayConfig(buffer=buffer, decompose=False))
    return engine, engine.run()


def ops(engine, lane: str, op: str) -> list[tuple[float, float, int]]:
    """``(start, dur, mb)`` of ``op`` on ``lane``, in time order."""
    return sorted((e.start, e.dur, e.mb) for e in engine.events if e.lane == lane and e.op == op)


# -- rates ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rate", "t", "amount", "end"), [
    (Constant(4.0), 1.0, 8.0, 3.0),
    (Steps([0.0, 2.0], [2.0, 1.0]), 1.0, 8.0, 8.0),          # 2 bits by t = 2, then 6 at 1 bit/s
    (Steps([0.0, 1.0], [8.0, 2.0], period=2.0), 0.5, 10.0, 2.5),  # 4 + 2 in the first period, 4 at 8/s
    (Steps([0.0, 1.0], [0.0, 4.0]), 0.0, 4.0, 2.0),            # nothing until t = 1
    (Steps([0.0, 1.0], [4.0, 0.0]), 0.0, 8.0, INF),            # the rate stops before it is done
    (Product(Constant(8.0), Windows([(0.0, 1.0), (3.0, 4.0)])), 0.5, 8.0, 3.5),
])
def test_a_transfer_takes_exactly_the_integral_of_the_rate(rate, t, amount, end):
    assert finish(rate, t, amount) == end


def test_a_send_across_a_rate_change_arrives_at_the_integral_plus_latency():
    dev = DeviceTimes("d", n=1, f=1.0, up_bytes=1.0)  # 8 bits
    leg = Leg(0.0, 0, 2.0, 4.0, 0.5, Steps([0.0, 2.0], [2.0, 1.0]))
    engine, makespan = run(dev, Motion([leg]))
    assert ops(engine, "link:d", "send") == [(1.0, 7.0, 0)]  # 2 bits in [1, 2), 6 bits in [2, 8)
    assert ops(engine, "a", "F") == [(8.5, 1.0, 0)]
    assert makespan == 9.5


# -- handover ------------------------------------------------------------------------------------
@pytest.mark.parametrize("at", [0.5, 3.5, 4.0, 6.0, 6.5, 100.0])
def test_a_handover_at_t_moves_exactly_the_micro_batches_sent_after_t(at):
    # f = 1 and instant sends: micro-batch n starts sending at n + 1
    dev = DeviceTimes("d", n=6, f=1.0)
    m = Motion([Leg(0.0, 0, 1.0, 0.0, 0.0), Leg(at, 1, 1.0, 0.0, 0.0)])
    engine, makespan = run(dev, m, srv=(0.25, 0.25))
    after = [n for n in range(6) if n + 1 >= at]
    assert [mb for _, _, mb in ops(engine, "b", "F")] == after
    assert [mb for _, _, mb in ops(engine, "a", "F")] == [n for n in range(6) if n not in after]
    assert m.switched_at == [6 - len(after)] and m.sent == 6
    assert makespan == 6.25
    marks = [e for e in engine.events if e.op == "handover"]
    assert [(e.lane, e.start, e.dur) for e in marks] == ([("d", at, 0.0)] if at <= makespan else [])


def test_a_device_waiting_for_the_old_servers_credit_sends_to_the_new_server_at_the_handover():
    # buffer 1; a is slow (10 s a micro-batch), b fast (1 s). mb0 sent at 1 (a starts it: credit back),
    # mb1 sent at 2 and waits at a holding the credit, mb2 ready at 3 waits for it ... until the
    # handover at 5 sends it to b; mb3 follows at 6. a runs mb1 from 11 to 21.
    dev = DeviceTimes("d", n=4, f=1.0)
    m = Motion([Leg(0.0, 0, 1.0, 0.0, 0.0), Leg(5.0, 1, 1.0, 0.0, 0.0)])
    engine, makespan = run(dev, m, srv=(10.0, 1.0), buffer=1)
    assert [s for s, _, _ in ops(engine, "d", "F")] == [0.0, 1.0, 2.0, 5.0]  # F of n + 1 starts at n's send
    assert ops(engine, "d", "wait") == [(3.0, 2.0, 2)]
    assert ops(engine, "a", "F") == [(1.0, 10.0, 0), (11.0, 10.0, 1)]
    assert ops(engine, "b", "F") == [(5.0, 1.0, 2), (6.0, 1.0, 3)]
    assert m.switched_at == [2] and makespan == 21.0


def test_a_handover_after_the_run_neither_moves_anything_nor_extends_the_run():
    # the same fleet with the handover at 100 s: the device waits for a's credits (a timer for 100 s is
    # pending meanwhile); sends at 1, 2, 11 and 21 (as a starts mb0..mb2); a ends mb3 at 41.
    dev = DeviceTimes("d", n=4, f=1.0)
    m = Motion([Leg(0.0, 0, 1.0, 0.0, 0.0), Leg(100.0, 1, 1.0, 0.0, 0.0)])
    engine, makespan = run(dev, m, srv=(10.0, 1.0), buffer=1)
    assert [s for s, _, _ in ops(engine, "d", "F")] == [0.0, 1.0, 2.0, 11.0]
    assert ops(engine, "a", "F") == [(1.0, 10.0, 0), (11.0, 10.0, 1), (21.0, 10.0, 2), (31.0, 10.0, 3)]
    assert makespan == 41.0 and m.switched_at == [4] and ops(engine, "b", "F") == []


def test_a_handover_can_change_the_link():
    # 8 bits at 8 bit/s on a, at 2 bit/s (and 1 s latency) on b from t = 1.5
    dev = DeviceTimes("d", n=2, f=1.0, up_s=1.0, up_bytes=1.0)
    m = Motion([Leg(0.0, 0, 8.0, 1.0, 0.0), Leg(1.5, 1, 2.0, 4.0, 1.0)])
    engine, makespan = run(dev, m, srv=(0.5, 0.5))
    # mb0: F [0,1], send [1,2] on a, runs [2, 2.5]; mb1: F [1,2], send [2,6] on b, arrives 7, runs [7, 7.5]
    assert ops(engine, "link:d", "send") == [(1.0, 1.0, 0), (2.0, 4.0, 1)]
    assert ops(engine, "a", "F") == [(2.0, 0.5, 0)] and ops(engine, "b", "F") == [(7.0, 0.5, 1)]
    assert makespan == 7.5


# -- availability ----------------------------------------------------------------------------------
def test_pause_stops_compute_and_sends_while_offline_and_resumes_where_they_stopped():
    # f = 2 s, 8 bits at 8 bit/s, online [0,1) [3,4.5) [6,10): mb0 F 0-1 and 3-4; send 4-4.5 and 6-6.5;
    # mb1 F 4-4.5 and 6-7.5, send 7.5-8.5; the server (0.5 s) runs them at 6.5 and 8.5.
    dev = DeviceTimes("d", n=2, f=2.0, up_s=1.0, up_bytes=1.0)
    m = Motion([Leg(0.0, 0, 8.0, 1.0, 0.0)], Windows([(0.0, 1.0), (3.0, 4.5), (6.0, 10.0)]), "pause")
    engine, makespan = run(dev, m, srv=(0.5, 0.5))
    assert ops(engine, "d", "F") == [(0.0, 1.0, 0), (3.0, 1.0, 0), (4.0, 0.5, 1), (6.0, 1.5, 1)]
    assert ops(engine, "link:d", "send") == [(4.0, 0.5, 0), (6.0, 0.5, 0), (7.5, 1.0, 1)]
    assert ops(engine, "a", "F") == [(6.5, 0.5, 0), (8.5, 0.5, 1)]
    assert ops(engine, "d", "offline") == [(1.0, 2.0, -1), (4.5, 1.5, -1)]
    assert makespan == 9.0 and m.sent == 2 and m.busy == 4.0 and m.send_s == 2.0


def test_drop_loses_every_micro_batch_not_sent_by_the_first_outage():
    # f = 1, instant sends at 1, 2, 3; mb3's forward would end at 4, after the outage at 3.5
    dev = DeviceTimes("d", n=6, f=1.0)
    m = Motion([Leg(0.0, 0, 1.0, 0.0, 0.0)], Windows([(0.0, 3.5), (5.0, 100.0)]), "drop")
    engine, makespan = run(dev, m, srv=(1.0, 1.0))
    assert ops(engine, "a", "F") == [(1.0, 1.0, 0), (2.0, 1.0, 1), (3.0, 1.0, 2)]
    assert m.sent == 3 and makespan == 4.0
    assert ops(engine, "d", "offline") == [(3.5, 0.5, -1)]


@pytest.mark.parametrize("churn", ["drop", "pause"])
def test_a_send_cut_off_for_good_is_lost_and_its_credit_comes_back(churn):
    # online [0, 2.5) only: mb0 F [0,1], send [1,2]; mb1's send from 2 would need 3 > 2.5
    dev = DeviceTimes("d", n=3, f=1.0, up_s=1.0, up_bytes=1.0)
    m = Motion([Leg(0.0, 0, 8.0, 1.0, 0.0)], Windows([(0.0, 2.5)]), churn)
    engine, makespan = run(dev, m, srv=(0.5, 0.5), buffer=1)
    assert ops(engine, "a", "F") == [(2.0, 0.5, 0)] and m.sent == 1 and makespan == 2.5


def test_periodic_steps_at_a_rounded_period_boundary_move_on():
    """t / period can round just below a whole number: the step returned must still end after t.

    Before the fix ``segment`` returned an end equal to t here, and a transfer's ``finish`` looped
    forever (found by the fast path's random fleets).
    """
    from sfsim.network.linkrate import Steps

    steps = Steps([0.0, 1.0], [1e6, 2e6], period=71.09373711634781)
    t = 1421.874742326956
    rate, end = steps.segment(t)
    assert end > t and rate == 1e6
    assert steps.segment(1.5) == (2e6, 71.09373711634781)


def test_a_send_cut_off_for_good_on_a_repeating_trace_never_ends():
    """Offline for good mid-send on a repeating trace: ``inf`` at once (finish used to step through periods for ever)."""
    rate = Product(Steps([0.0, 1.0], [8.0, 16.0], period=2.0), Windows([(0.0, 3.0)]))
    assert rate.segment(3.5) == (0.0, INF) and finish(rate, 2.5, 100.0) == INF
    assert finish(rate, 2.5, 4.0) == 3.0  # 0.5 s at 8 bit/s, before the window ends
    d = DeviceTimes("d", n=4, f=1.0, up_s=20.0, up_bytes=20.0, srv_f=1.0)  # 160 bits: 24 sent by the window's end
    m = Motion([Leg(0.0, 0, 8.0, 20.0, 0.0, rate.a)], Windows([(0.0, 3.0)]), "pause")
    engine, makespan = run(d, m)
    assert makespan == 1.0 and m.sent == 0 and ops(engine, "link:d", "send") == []  # the send is lost
