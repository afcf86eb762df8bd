"""The server's op time split into its thread's CPU and the wait for a core (trainer.run.measure.Meter.server_cpu_s,
trainer.validate.corewait): what tells a validate row's error from the machine's load."""

from __future__ import annotations

import time

import pytest

from trainer.run.measure import Meter
from trainer.validate.corewait import format_server_cpu, server_cpu


def _spin(seconds: float) -> None:
    """Burn this thread's CPU for ``seconds`` of its CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_meter_counts_the_server_threads_cpu_apart_from_its_waits():
    """A server op that computes 20 ms and sleeps 60 ms (a wait for a core, as the thread sees it): 80 ms or more of
    phase time, 20-35 ms of CPU; a device's op is not counted, and the summary carries the server's phases."""
    m = Meter("srv", count_flops=False)
    with m.compute("srv", "F", "server_forward"):
        _spin(0.02)
        time.sleep(0.06)
    with m.compute("dev", "F", "device_forward"):
        _spin(0.01)
    assert m.phase_s["server_forward"] >= 0.08
    assert 0.02 <= m.server_cpu_s["server_forward"] < 0.035
    assert set(m.server_cpu_s) == {"server_forward"}
    assert m.summary(["dev"])["server_cpu_s"] == {"server_forward": round(m.server_cpu_s["server_forward"], 6)}


def _report():
    stages = {"server_F": {"predicted_s": 0.1}, "server_B": {"predicted_s": 0.06}, "server_step": {"predicted_s": 0.01},
              "uplink": {"predicted_s": 5.0}, "epoch_end": {"predicted_s": 0.03}}
    return {"stages": stages}


def test_the_row_sums_the_server_ops_only():
    metrics = {"server_flops": {"srv": 0}, "server_cpu_s": {"server_forward": 0.1, "server_B": 0.07},
               "phase_s": {"server_forward": 0.25, "server_B": 0.2, "uplink": 9.0, "device_forward": 3.0}}
    row = server_cpu(_report(), metrics, threads=1)
    assert row == {"predicted_s": 0.17, "measured_s": 0.45, "cpu_s": 0.17, "core_wait_s": 0.28}
    assert format_server_cpu(row) == ["server ops: predicted 0.170 s, measured 0.450 s, of which 0.170 s the server "
                                      "thread's CPU and 0.280 s waiting for a core"]


@pytest.mark.parametrize("change", [{"threads": 2}, {"servers": 2}, {"cpu": {}}])
def test_no_row_where_the_threads_cpu_is_not_the_ops_compute(change):
    metrics = {"server_flops": {f"s{i}": 0 for i in range(change.get("servers", 1))},
               "server_cpu_s": change.get("cpu", {"server_forward": 0.1}), "phase_s": {"server_forward": 0.2}}
    assert server_cpu(_report(), metrics, threads=change.get("threads", 1)) is None
    assert format_server_cpu(None) == []
