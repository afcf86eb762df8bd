"""The distributed runtime under the dynamic network: time-varying uplinks and availability (trainer.transport.dynamics).

The unit tests drive :class:`trainer.transport.dynamics.Presence` on a fake clock; the runs launch 1 server + 2
device processes on loopback with a tiny random GPT-2 and compare ``sfsim validate``'s measured
timeline with the simulator's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sfsim.errors import SfsimError
from sfsim.network.availability import Windows
from sfsim.network.linkrate import Steps, finish, read_trace
from sfsim.scenario.overrides import load_scenario_with
from tests.emulation_guard import timed
from trainer.transport import dynamics
from trainer.transport.distributed import LinkShape
from trainer.transport.runtime import DeviceLeft

FIXTURES = Path(__file__).parent / "fixtures"
INF = math.inf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Clock:
    """A fake run clock that sleeping advances."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt > 0
        self.t += dt


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(dynamics, "_sleep", lambda dt: c.sleep(dt) if dt > 0 else None)
    return c


# -- presence and links on a fake clock --------------------------------------------------------------------
def test_a_pausing_device_waits_for_its_window_and_sleeps_through_an_outage(clock):
    p = dynamics.Presence(Windows([(1.0, 2.0), (3.0, 5.0)]), "pause", clock.now)
    p.wait("d")
    assert clock.t == 1.0 and p.leave == INF
    clock.t = 1.5  # 0.5 s of work done; 1 s more to do, across the outage [2, 3)
    assert p.finish("d", 1.0, 1.5) == 3.5 and clock.t == 3.5
    assert p.online_parts(1.0, 3.5) == [(1.0, 2.0), (3.0, 3.5)]
    clock.t = 4.5
    with pytest.raises(DeviceLeft, match="never online again"):
        p.finish("d", 4.5, 1.0)  # the windows end at 5 with 0.5 s left
    clock.t = 5.0
    with pytest.raises(DeviceLeft):
        p.wait("d")


def test_a_dropping_device_joins_late_and_is_gone_at_its_first_outage(clock):
    p = dynamics.Presence(Windows([(1.0, 2.0), (3.0, 5.0)]), "drop", clock.now)
    assert (p.join, p.leave) == (1.0, 2.0)
    p.wait("d")
    assert clock.t == 1.0
    assert p.finish("d", 1.0, 0.5) == 1.5  # no pause: the work takes its own time
    with pytest.raises(DeviceLeft, match="dropped out"):
        p.finish("d", 1.5, 0.75)  # would end at 2.25: it sleeps until it leaves, then leaves
    assert clock.t == 2.0
    with pytest.raises(DeviceLeft):
        p.wait("d")  # and never comes back, though it is online again at 3
    assert dynamics.Presence(Windows([]), "drop", clock.now).leave == 0.0


def test_a_shaped_link_takes_the_integral_of_its_rate():
    rate = Steps([0.0, 1.0], [8.0, 2.0])  # bit/s
    assert LinkShape(8.0, 0.1, rate).end(0.5, 1) == 3.0  # 8 bits: 4 by t = 1, 4 more at 2/s
    assert LinkShape(8.0, 0.1, rate).end(0.5, 0) == 0.5  # a control message takes no link time
    assert LinkShape(8.0, 0.1).end(0.5, 2) == 2.5  # constant: bytes * 8 / bandwidth


def test_link_rates_are_the_simulators_with_the_same_seed(tmp_path):
    sc = load_scenario_with(str(FIXTURES / "runtime_trace.yaml"), [
        ("devices[phone].downlink", {"bandwidth": "2 Mbps", "fading": {"sigma_db": 4, "coherence": "1 s"}})])
    up, down = dynamics.link_rates(sc, sc.devices[1])
    assert [up.segment(t)[0] for t in (0.0, 0.99, 1.0, 500.0)] == [0.5e6, 0.5e6, 0.25e6, 0.25e6]
    again = dynamics.link_rates(sc, sc.devices[1])[1]
    assert [down.segment(t) for t in range(5)] == [again.segment(t) for t in range(5)]  # seeded: it repeats
    other = dynamics.link_rates(sc, sc.devices[0])[1]
    assert [down.segment(t)[0] for t in range(5)] != [other.segment(t)[0] for t in range(5)]


def test_a_pausing_devices_uplink_carries_only_online():
    sc = load_scenario_with(str(FIXTURES / "runtime_churn.yaml"), [])
    up, down = dynamics.link_rates(sc, sc.devices[0])  # phone-0: 0.5 Mbps, offline in [0.5, 1.5)
    assert down is None and finish(up, 0.4, 0.1e6) == 1.6
    assert dynamics.link_rates(sc, sc.devices[1])[0] is None  # phone-1 drops: its link does not pause


@pytest.mark.parametrize(("over", "method", "message"), [
    ([("servers.count", 2), ("devices[phone].handover", [{"at": "1 s", "to": "srv-2"}]),
      ("training.client_order", "sequential")], "splitlora",
     "x.yaml: --emulate all: device phone-0 hands over to another server; SplitLoRA's sequential client order "
     "(client after client, each over its whole epoch) has no place for a client arriving mid-run: use "
     "training.client_order interleaved"),
    ([("servers.count", 2), ("devices[phone].handover", [{"at": "1 s", "to": "srv-2"}])], "splitfrozen",
     "x.yaml: --emulate all: device phone-0 hands over to another server; a server takes a visiting device's "
     "micro-batches in arrival order only (--server-order proportional is a schedule of turns fixed before the "
     "run): use --server-order fifo"),
])
def test_what_the_runtime_cannot_emulate_is_one_line(over, method, message):
    sc = load_scenario_with(str(FIXTURES / "runtime_trace.yaml"), over)
    with pytest.raises(SfsimError) as exc:
        dynamics.check(sc, method, "all", "x.yaml: --emulate all", "proportional")
    assert str(exc.value) == message
    dynamics.check(sc, method, "none", "x.yaml")  # nothing emulated: nothing refused
    dynamics.check(sc, "fedlora", "all", "x.yaml", "proportional")  # FedLoRA's rounds take any order
    dynamics.check(sc, "cenlora", "all", "x.yaml", "proportional")  # no device links: nothing moves


@pytest.mark.parametrize("method", ["splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora", "cenlora"])
def test_availability_is_emulated_for_every_method_with_device_links(method):
    sc = load_scenario_with(str(FIXTURES / "runtime_trace.yaml"),
                            [("devices[phone].availability", {"mean_on": "1 s", "mean_off": "1 s"})])
    dynamics.check(sc, method, "all", "x.yaml: --emulate all")  # nothing refused
    assert dynamics.emulates_availability(method) == (method != "cenlora")  # CenLoRA: data at the server


# -- runs -------------------------------------------------------------------------------------------------
def _validate(tiny_gpt2, out: Path, devices: str, *extra: str) -> dict:
    from click.testing import CliRunner

    from sfsim.cli import main

    res = CliRunner().invoke(main, ["validate", "--devices", str(FIXTURES / devices), "--model", tiny_gpt2,
                                    "--method", "splitfrozen", "--split", "1", "--max-len", "48", "--train-samples",
                                    "32", "--data-dir", str(FIXTURES / "data"), "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())


def _events(out: Path, lane: str) -> list:
    from sfsim.outputs.trace import read_chrome_trace

    return sorted((e for e in read_chrome_trace(out / "run" / "trace.json") if e.lane == lane), key=lambda e: e.start)


def test_validate_agrees_on_an_uplink_whose_rate_halves_mid_run(tiny_gpt2, tmp_path):
    rep = _validate(tiny_gpt2, tmp_path / "val", "runtime_trace.yaml")
    # link-bound: 4 sends per device of ~0.4 s at 0.5 Mbps: one before the halving at t = 1 s, one across it
    # and two after (~0.8 s each; ~2.7 s in all)
    timed(abs(rep["stages"]["uplink"]["error"]) < 0.1, rep["emulation"], f"error {rep['stages']['uplink']['error']} not within 0.1: {rep}")
    timed(abs(rep["total"]["error"]) < 0.15, rep["emulation"], f"error {rep['total']['error']} not within 0.15: {rep}")
    for dev in ("phone-0", "phone-1"):
        sends = _events(tmp_path / "val", f"link:{dev}")
        before = [e.dur for e in sends if e.end < 1.0]
        after = [e.dur for e in sends if e.start >= 1.0]
        assert before and len(after) >= 2 and min(after) > 1.6 * max(before), sends  # twice as long per byte


def test_availability_pauses_one_device_and_drops_the_other(tiny_gpt2, tmp_path):
    rep = _validate(tiny_gpt2, tmp_path / "val", "runtime_churn.yaml", "--server-order", "fifo")
    m = json.loads((tmp_path / "val" / "run" / "metrics.json").read_text())
    # phone-1 leaves at 1.3 s having sent 2 of its 4 micro-batches (each ~0.4 s on the wire after a
    # 0.3 s forward); the server stops waiting for it and trains the rest: the simulator says the same
    assert m["samples_not_trained"] == {"phone-0": 0, "phone-1": 8}
    assert len(m["train_loss_history"]) == 4 + 2 and m["missing_reports"] == [] and m["lost_devices"] == {}
    timed(abs(rep["total"]["error"]) < 0.15, rep["emulation"], f"error {rep['total']['error']} not within 0.15: {rep}")
    busy = _events(tmp_path / "val", "phone-0") + _events(tmp_path / "val", "link:phone-0")
    assert all(e.end <= 0.5 + 1e-6 or e.start >= 1.5 - 1e-6 for e in busy if e.op in ("F", "send")), busy
    gone = _events(tmp_path / "val", "phone-1") + _events(tmp_path / "val", "link:phone-1")
    assert max(e.end for e in gone if e.op == "send") <= 1.3 + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize(("method", "extra", "untrained"), [
    # FedLoRA: phone-1's only round (its 4 micro-batches) ends after it is gone at 1.3 s: the round is lost
    ("fedlora", (), {"phone-0": 0, "phone-1": 16}),
    # SplitLoRA (cut 1): phone-1 sends its first micro-batch before 1.3 s, not the other three
    ("splitlora", ("--split", "1"), {"phone-0": 0, "phone-1": 12}),
])
def test_availability_leaves_what_the_simulator_says_untrained(tiny_gpt2, tmp_path, method, extra, untrained):
    from click.testing import CliRunner

    from sfsim.cli import main

    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(FIXTURES / "runtime_churn.yaml"), "--model",
                                    tiny_gpt2, "--method", method, "--max-len", "48", "--train-samples", "32",
                                    "--data-dir", str(FIXTURES / "data"), "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["samples_not_trained"] == {"predicted": untrained, "measured": untrained}
    timed(abs(rep["total"]["error"]) < 0.15, rep["emulation"], f"error {rep['total']['error']} not within 0.15: {rep}")


def test_validate_agrees_on_two_servers_with_backhaul_sync_and_a_pausing_device(tiny_gpt2, tmp_path):
    rep = _validate(tiny_gpt2, tmp_path / "val", "runtime_two_servers_churn.yaml", "--server-order", "fifo")
    m = json.loads((tmp_path / "val" / "run" / "metrics.json").read_text())
    # each server: 4 steps, rounds after steps 2 and 4 (~0.15 s each on the 1 Mbps backhaul), as the simulator
    assert [(s["steps"], s["sync_rounds"]) for s in m["servers"].values()] == [(4, 2), (4, 2)]
    assert rep["samples_not_trained"] == {"predicted": {"phone-0": 0}, "measured": {"phone-0": 0}}
    timed(abs(rep["total"]["error"]) < 0.1, rep["emulation"], f"error {rep['total']['error']} not within 0.1: {rep}")
    for srv in ("mec-a", "mec-b"):
        assert [e.op for e in _events(tmp_path / "val", f"backhaul:{srv}")] == ["sync-send", "sync-recv"] * 2


def test_a_device_hands_over_between_server_processes_as_the_simulator_says(tiny_gpt2, tmp_path):
    rep = _validate(tiny_gpt2, tmp_path / "val", "runtime_handover.yaml", "--server-order", "fifo")
    m = json.loads((tmp_path / "val" / "run" / "metrics.json").read_text())
    # mover sends 2 micro-batches to mec-a before 0.8 s and its other 2 to mec-b, which trains them
    (pred,), (meas,) = rep["handovers"]["predicted"], rep["handovers"]["measured"]
    assert (meas["device"], meas["from"], meas["to"], meas["at_s"], meas["sent_before"]) == \
        (pred["device"], pred["from"], pred["to"], pred["at_s"], pred["sent_before"]) == ("mover", "mec-a", "mec-b", 0.8, 2)
    # 4 steps each; mec-a learns that mover is gone only from its 'moved': its last step may not know it
    # is the last, and then a drain and a closing round follow (2 or 4 rounds, as the timing falls)
    assert [s["steps"] for s in m["servers"].values()] == [4, 4]
    rounds = {s["sync_rounds"] for s in m["servers"].values()}
    assert len(rounds) == 1 and rounds <= {2, 4}, rounds
    timed(abs(rep["total"]["error"]) < 0.1, rep["emulation"], f"error {rep['total']['error']} not within 0.1: {rep}")
    srv_b = [e for e in _events(tmp_path / "val", "mec-b") if e.op == "F"]
    assert sorted(e.device for e in srv_b) == ["mover", "mover", "stay-b", "stay-b"]
    assert [e.op for e in _events(tmp_path / "val", "mover") if e.op == "handover"] == ["handover"]
    sends = [e for e in _events(tmp_path / "val", "link:mover") if e.op == "send"]
    assert sends[-1].dur < 0.75 * sends[0].dur  # the new leg's uplink is twice as fast


def test_validate_scales_each_devices_trace_by_its_own_token_load(tmp_path):
    from trainer.validate.compare import ValidateConfig, _expand_counts, _scale_link

    data = {"devices": [{"name": "phone", "count": 2, "uplink": {"trace": "uplink_halves.csv"},
                         "downlink": {"gilbert_elliott": {"good": "4 Mbps", "bad": "1 Mbps"}}}]}
    _expand_counts(data)
    vc = ValidateConfig(devices=str(FIXTURES / "runtime_trace.yaml"), model="m", method="splitfrozen",
                        out=str(tmp_path))
    for d, r in zip(data["devices"], (0.5, 2.0), strict=True):  # each device its own copy of the links
        _scale_link(d["uplink"], r, vc, f"{d['name']}-uplink")
        _scale_link(d["downlink"], r, vc, f"{d['name']}-downlink")
    fast, slow = (read_trace(Path(d["uplink"]["trace"])) for d in data["devices"])
    assert (fast.rates, slow.rates, fast.period) == ([1e6, 0.5e6, 0.5e6], [0.25e6, 0.125e6, 0.125e6], 1999.0)
    assert [d["downlink"]["gilbert_elliott"]["good"] for d in data["devices"]] == [8e6, 2e6]
