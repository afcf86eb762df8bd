"""FedScale client_behave_trace pickles as availability (sfsim.network.fedscale): format, mapping, refusal, results.

The trace is written by :func:`write_trace` in the test (FedScale's format: a pickled dict client id
-> {'active', 'inactive', 'finish_time', 'duration', 'model'}), never downloaded.
"""

from __future__ import annotations

import copy
import os
import pickle

import pytest

import sfsim
from sfsim.errors import ConfigError
from sfsim.network.fedscale import availability, client_rate
from sfsim.scenario.config import scenario_from_dict

LINK = {"bandwidth": "100 Mbps", "latency": "5 ms"}
BASE = {
    "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
    "training": {"micro_batch": 4, "buffer": 4, "split": 2, "server_policy": "fifo"},
    "servers": [{"name": "a", "flops": "10 TFLOPS", "memory": "24 GiB"}],
    "devices": [{"name": "pi", "count": 3, "flops": "50 GFLOPS", "memory": "4 GiB", "samples": 400,
                 "uplink": dict(LINK), "downlink": dict(LINK)}],
}
CLIENTS = {  # FedScale's own unit-test client first (fedscale/tests/cloud/internal/test_client_metadata.py)
    101: {"active": [1, 3, 6, 9], "inactive": [1, 4, 7, 10], "finish_time": 10},
    205: {"active": [0, 20], "inactive": [5, 30], "finish_time": 1000},
    307: {"active": [2], "inactive": [1000], "finish_time": 1000},
    409: {"active": [], "inactive": [], "finish_time": 500},
}


def write_trace(path, clients=CLIENTS) -> str:
    """A tiny client_behave_trace pickle in FedScale's format (with its 'duration' and 'model' keys)."""
    data = {k: {**v, "duration": v.get("finish_time", 0), "model": "Pixel 3"} for k, v in clients.items()}
    path.write_bytes(pickle.dumps(data))
    return str(path)


def scenario(tmp_path, availability_spec: dict, **device):
    data = copy.deepcopy(BASE)
    data["devices"][0].update(availability=availability_spec, **device)
    return scenario_from_dict(data, source=str(tmp_path / "s.yaml"))


def online(rate, times) -> list[int]:
    return [int(rate.segment(t)[0]) for t in times]


def test_a_client_is_online_as_fedscale_says_and_its_trace_repeats():
    rate = client_rate(CLIENTS[101], 101, "s.yaml", "k", "t.pkl")
    # FedScale: is_active(2) False, (6) True, (8) False, (9) True, (15) False; [1, 1] is an instant: dropped
    assert online(rate, [2, 3.5, 6, 8, 9, 9.99, 15, 13.5, 16.5]) == [0, 1, 1, 0, 1, 1, 0, 1, 1]
    never = client_rate(CLIENTS[409], 409, "s.yaml", "k", "t.pkl")
    assert never.segment(123.0) == (0.0, float("inf"))


def test_devices_take_distinct_clients_from_the_named_one_or_by_a_seeded_draw(tmp_path):
    path = tmp_path / "t.pkl"
    write_trace(path)
    probe = [0.5, 2.5, 3.5, 10.0, 25.0]
    named = [online(availability(path, 205, f"pi-{i}", "pi", 0, "s.yaml", "k"), probe) for i in range(3)]
    assert named == [[1, 1, 1, 0, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]]  # clients 205, 307, 409: the file's order
    drawn = [online(availability(path, None, f"pi-{i}", "pi", 0, "s.yaml", "k"), probe) for i in range(4)]
    assert sorted(map(tuple, drawn)) == sorted(map(tuple, [online(client_rate(c, k, None, "", ""), probe)
                                                           for k, c in CLIENTS.items()]))  # each client once
    again = [online(availability(path, None, f"pi-{i}", "pi", 0, "s.yaml", "k"), probe) for i in range(4)]
    assert drawn == again


def test_a_fedscale_availability_simulates_as_the_same_windows_from_a_file(tmp_path):
    write_trace(tmp_path / "t.pkl")
    (tmp_path / "w.yaml").write_text("pi-0: [[0, 5], [20, 30]]\npi-1: [[2, 1000]]\npi-2: []\n")
    a = sfsim.simulate(scenario(tmp_path, {"fedscale": "t.pkl", "client": 205, "churn": "pause"}), trace=True)
    b = sfsim.simulate(scenario(tmp_path, {"file": "w.yaml", "churn": "pause"}), trace=True)
    assert a.makespan_s == b.makespan_s and a.samples_not_trained == b.samples_not_trained
    assert a.samples_not_trained["pi-2"] == 400 and a.samples_not_trained["pi-1"] == 0


@pytest.mark.parametrize(("spec", "problem"), [
    ({"fedscale": "t.pkl", "client": 999}, "devices[0].availability.client: t.pkl has no client 999 (its first ones "
                                           "are 101, 205, 307)"),
    ({"fedscale": "t.pkl", "client": 307}, "devices[0].availability.client: device 'pi-2' would take client number "
                                           "5 from 307 on, but t.pkl has 4: pick an earlier client"),
    ({"fedscale": "none.pkl"}, "devices[0].availability.fedscale: no such file"),
    ({"fedscale": "t.pkl", "mean_on": "1 s", "mean_off": "1 s"},
     "devices[0].availability: give one source of availability: file, mean_on and mean_off, or fedscale"),
    ({"mean_on": "1 s", "mean_off": "1 s", "client": 3},
     "devices[0].availability: client picks a client of a FedScale trace: give fedscale (the trace file) or drop client"),
])
def test_a_bad_mapping_is_one_line(tmp_path, spec, problem):
    write_trace(tmp_path / "t.pkl")
    with pytest.raises(ConfigError) as exc:
        scenario(tmp_path, spec)
    assert problem in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("clients", "problem"), [
    ({1: {"active": [5, 1], "inactive": [6, 2], "finish_time": 10}},
     "t.pkl: client 1: window [1, 2] is not in time order within [0, finish_time = 10]"),
    ({1: {"active": [5], "inactive": [6]}}, "t.pkl: client 1: expected a dict with 'active', 'inactive' and "
                                            "'finish_time'"),
    ({1: {"active": [5], "inactive": [6, 7], "finish_time": 10}}, "must be lists of the same length"),
    ({1: {"active": ["5"], "inactive": [6], "finish_time": 10}}, "times must be numbers >= 0"),
])
def test_a_bad_trace_entry_is_one_line(tmp_path, clients, problem):
    write_trace(tmp_path / "t.pkl", clients)
    with pytest.raises(ConfigError) as exc:
        scenario(tmp_path, {"fedscale": "t.pkl"}, count=1)
    assert problem in str(exc.value)


class _Payload:
    """Unpickled by plain pickle.load, this would run a shell command."""

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_names_any_class_is_refused_without_running_it(tmp_path):
    payload = _Payload()
    payload.marker = tmp_path / "ran"
    (tmp_path / "t.pkl").write_bytes(pickle.dumps({1: payload}))
    with pytest.raises(ConfigError) as exc:
        scenario(tmp_path, {"fedscale": "t.pkl"}, count=1)
    assert str(exc.value) == (f"{tmp_path / 's.yaml'}: devices[0].availability.fedscale: t.pkl is not a FedScale "
                              f"client_behave_trace pickle: it names {os.system.__module__}.system, and only dicts, "
                              "lists, numbers and strings are read")
    assert not payload.marker.exists()
    (tmp_path / "t.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="t.pkl is not a FedScale client_behave_trace pickle"):
        scenario(tmp_path, {"fedscale": "t.pkl"}, count=1)
