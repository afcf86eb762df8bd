"""SplitLoRA handovers (:mod:`sfsim.schedules.splitlora.moves`) and a handover's downlink, by hand.

Scenario-level tests use ``tests.test_dynamic_baselines``'s two-server fleet (``car`` on ``a``, two
``pi`` on ``b``); engine-level ones hand-make one client on links of a few bit/s.
"""

from __future__ import annotations

import pytest

import sfsim
from sfsim.errors import ConfigError
from sfsim.network.legs import Leg, Motion
from sfsim.schedules.network import Unsupported
from tests.test_dynamic_baselines import scenario
from tests.test_dynamic_split import ops, split


def _served(res) -> dict[int, str]:
    """car's micro-batch -> the server lane whose F trained it."""
    return {e.mb: e.lane for e in res.events if e.device == "car" and e.op == "F" and e.lane in ("a", "b")}


def _sends(res) -> dict[int, float]:
    """car's micro-batch -> when its activation upload started."""
    return {e.mb: e.start for e in res.events if e.lane == "link:car" and e.op == "send" and e.mb >= 0}


@pytest.mark.parametrize("at", [0.05, 0.3, 1.0, 2.0, 3.0])
def test_a_handover_moves_exactly_the_micro_batches_uploaded_at_or_after_it(tmp_path, at):
    res = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": f"{at} s", "to": "b"}]), "splitlora", trace=True)
    sends, served = _sends(res), _served(res)
    assert len(sends) == 31 and served == {mb: "b" if t >= at else "a" for mb, t in sends.items()}
    after = sum(t >= at for t in sends.values())
    assert 0 < after < 31 and res.handovers == [{"device": "car", "at_s": at, "from": "a", "to": "b",
                                                  "sent_before": 31 - after, "sent_after": after}]
    static = sfsim.simulate(scenario(tmp_path), "splitlora")
    per_mb = static.server_flops["a"] * 4 / 122  # car's (its only client) per full micro-batch of 4 of 122 samples
    assert res.server_flops["a"] == pytest.approx((31 - after) * per_mb, rel=1e-12)  # the last, half one moved
    assert res.micro_batches == static.micro_batches and res.device_flops == static.device_flops


@pytest.mark.parametrize("at", [0.3, 1.0, 2.0])
def test_a_handover_there_and_back_routes_by_the_leg_holding_at_each_upload(tmp_path, at):
    back = at + 0.7
    res = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": f"{at} s", "to": "b"}, {"at": f"{back} s", "to": "a"}]),
                         "splitlora", trace=True)
    sends, served = _sends(res), _served(res)
    assert served == {mb: "b" if at <= t < back else "a" for mb, t in sends.items()}
    assert [h["sent_before"] for h in res.handovers] == [sum(t < at for t in sends.values()),
                                                          sum(t < back for t in sends.values())]


def test_a_handover_after_the_last_send_changes_nothing_bit_for_bit(tmp_path):
    static = sfsim.simulate(scenario(tmp_path), "splitlora", trace=True)
    last = max(e.start for e in static.events if e.lane == "link:car" and e.op == "send")  # its last adapter upload
    for at in (last + 1e-9, 1000.0):
        res = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": f"{at} s", "to": "b"}]), "splitlora", trace=True)
        mine, theirs = res.to_dict(), static.to_dict()
        # one due after the run's end did not happen (the device's process had ended: the runtime does not list it)
        assert mine.pop("handovers") == ([{"device": "car", "at_s": at, "from": "a", "to": "b", "sent_before": 31,
                                           "sent_after": 0}] if at < static.makespan_s else [])
        assert mine.pop("dynamic_network") == "simulated" and theirs.pop("handovers") == []
        assert theirs.pop("dynamic_network") is None and mine == theirs
        key = lambda e: (e.start, e.lane, e.op, e.mb, e.device)  # noqa: E731
        assert sorted((e for e in res.events if e.op != "handover"), key=key) == sorted(static.events, key=key)


@pytest.mark.parametrize(("change", "why"), [
    ({"client_order": "sequential"}, "the sequential client order"),
    ({"policy": "round-robin"}, "server policy 'round-robin' is a fixed order"),
])
def test_splitlora_handovers_refuse_orders_without_a_turn_for_a_joiner(tmp_path, change, why):
    with pytest.raises(Unsupported, match=f"^splitlora: car hands over, and {why}"):
        sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": "1 s", "to": "b"}]), "splitlora", **change)


# -- a handover's downlink -------------------------------------------------------------------------
@pytest.mark.parametrize(("at", "end"), [(5.0, 14.0), (7.0, 8.0)])
def test_a_handover_downlink_carries_the_gradients_that_start_after_it(at, end):
    # F 0..1, 8 bits up at 2 bit/s until 5, server F 5..6; the gradient (8 bits, nominal 4 bit/s: 2 s)
    # starts at 6: over the handover's 1 bit/s downlink (8 s, to 14) when it holds by then, else as before
    from sfsim.engine.pool import DeviceTimes

    dev = DeviceTimes("d", n=1, f=1, up_s=4.0, down_s=2.0, srv_f=1)
    m = Motion([Leg(0.0, 0, 2.0, 4.0, 0.0, None, 4.0, 0.0), Leg(at, 0, 2.0, 4.0, 0.0, None, 1.0, 0.0)])
    engine, makespan = split(dev, m)
    assert ops(engine, "downlink:d", "send") == [(6.0, end - 6.0, 0)] and makespan == end


@pytest.mark.parametrize("schedule", ["fedlora", "splitlora"])
def test_a_handover_downlink_slows_only_what_comes_down_after_it(tmp_path, schedule):
    slow = {"bandwidth": "1 Mbps", "latency": "5 ms"}
    same = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": "1 s", "to": "b"}]), schedule)
    res = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": "1 s", "to": "b", "downlink": slow}]), schedule)
    assert res.downlink_recv_s["car"] > 50 * same.downlink_recv_s["car"] and res.makespan_s > same.makespan_s
    late = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": "1000 s", "to": "b", "downlink": slow}]), schedule)
    assert late.makespan_s == sfsim.simulate(scenario(tmp_path), schedule).makespan_s


@pytest.mark.parametrize(("link", "message"), [
    ({"bandwidth": "fast"}, "devices[0].handover[0].downlink.bandwidth: 'fast' is not a bandwidth"),
    ({"bandwith": "1 Mbps"}, "devices[0].handover[0].downlink.bandwith: unknown key"),
])
def test_a_handover_downlink_is_validated_in_one_line(tmp_path, link, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        scenario(tmp_path, d0_handover=[{"at": "1 s", "to": "b", "downlink": link}])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("at", [0.3, 2.0])
def test_a_handover_to_the_same_server_counts_the_uploads_before_it(tmp_path, at):
    """A leg that keeps car on ``a`` (a new link only) used to fail in the report (no counts were kept)."""
    res = sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": f"{at} s", "to": "a"}]), "splitlora", trace=True)
    sends = _sends(res)
    before = sum(t < at for t in sends.values())
    assert set(_served(res).values()) == {"a"} and 0 < before < len(sends) == 31
    assert res.handovers == [{"device": "car", "at_s": at, "from": "a", "to": "a",
                              "sent_before": before, "sent_after": 31 - before}]
    assert sfsim.simulate(scenario(tmp_path, d0_handover=[{"at": f"{at} s", "to": "a"}]), "splitlora").handovers == res.handovers
