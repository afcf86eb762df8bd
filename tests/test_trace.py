"""The shared trace record: lane order and a Chrome/Perfetto round trip."""

import json

from sfsim.outputs.trace import TraceEvent, lane_order, read_chrome_trace, to_chrome, write_chrome_trace

EVENTS = [
    TraceEvent("a", "F", 0.0, 1.0, 0, "a"),
    TraceEvent("link:a", "send", 1.0, 0.5, 0, "a"),
    TraceEvent("srv", "F", 1.5, 0.25, 0, "a"),
    TraceEvent("b", "F", 0.0, 2.0, 0, "b"),
    TraceEvent("link:b", "send", 2.0, 0.5, 0, "b"),
    TraceEvent("srv", "step", 2.0, 0.1),
    TraceEvent("downlink:a", "send", 2.1, 0.2, -1, "a"),
]


def test_lane_order_groups_device_links_then_servers():
    assert lane_order(EVENTS) == ["a", "link:a", "downlink:a", "b", "link:b", "srv"]


def test_chrome_trace_round_trip(tmp_path):
    path = tmp_path / "t.json"
    write_chrome_trace(EVENTS, path, metadata={"schedule": "x"})
    data = json.loads(path.read_text())
    names = {e["pid"]: e["args"]["name"] for e in data["traceEvents"] if e["name"] == "process_name"}
    assert names == {1: "a", 2: "link:a", 3: "downlink:a", 4: "b", 5: "link:b", 6: "srv"}
    first = [e for e in data["traceEvents"] if e["ph"] == "X"][0]
    assert first == {"ph": "X", "name": "F", "cat": "F", "pid": 1, "tid": 0, "ts": 0.0, "dur": 1e6,
                     "args": {"lane": "a", "device": "a", "mb": 0}}
    assert data["otherData"] == {"schedule": "x"}
    assert read_chrome_trace(path) == EVENTS


def test_step_has_no_micro_batch():
    ev = [e for e in to_chrome(EVENTS)["traceEvents"] if e["name"] == "step"][0]
    assert "mb" not in ev["args"] and ev["ts"] == 2e6


def test_lane_order_follows_given_device_order():
    assert lane_order(EVENTS, devices=["b", "a"]) == ["b", "link:b", "a", "link:a", "downlink:a", "srv"]
    # A device named in the order but with no link lane still counts as a device.
    events = [TraceEvent("srv", "F", 0, 1), TraceEvent("c", "F", 0, 1)]
    assert lane_order(events, devices=["c"]) == ["c", "srv"]
