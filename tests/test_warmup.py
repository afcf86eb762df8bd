"""A device's first-forward warm-up (``warmup``): exactly that much on micro-batch 0's forward, nothing else."""

from __future__ import annotations

import pytest

from sfsim import scenario_from_dict, simulate


def _scenario(warmup: str | None) -> dict:
    dev = {"name": "d", "flops": "2 GFLOPS", "memory": "4 GiB", "samples": 32,
           "uplink": {"bandwidth": "1 Gbps", "latency": "1 ms"}, "downlink": {"bandwidth": "1 Gbps", "latency": "1 ms"}}
    if warmup is not None:
        dev["warmup"] = warmup
    return {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 8, "lora": {"rank": 4, "alpha": 8}, "buffer": 2, "local_steps": 2,
                         "fedavg_every": 2},
            "servers": [{"name": "s", "flops": "100 TFLOPS", "memory": "16 GiB"}], "devices": [dev]}


@pytest.mark.parametrize("schedule", ["splitfrozen", "splitfrozen-sequential", "splitlora", "fedlora"])
def test_warmup_delays_a_device_bound_run_by_exactly_itself(schedule):
    cold = simulate(scenario_from_dict(_scenario("250 ms")), schedule, splits=2, trace=True)
    warm = simulate(scenario_from_dict(_scenario(None)), schedule, splits=2, trace=True)
    assert cold.makespan_s == pytest.approx(warm.makespan_s + 0.25, abs=1e-9)
    assert cold.device_busy_s["d"] == pytest.approx(warm.device_busy_s["d"] + 0.25, abs=1e-9)
    assert cold.device_flops == warm.device_flops
    f_cold = [e.dur for e in cold.events if e.lane == "d" and e.op == "F"]
    f_warm = [e.dur for e in warm.events if e.lane == "d" and e.op == "F"]
    assert f_cold[0] == pytest.approx(f_warm[0] + 0.25, abs=1e-12) and f_cold[1:] == f_warm[1:]


def test_warmup_must_be_a_time():
    from sfsim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"devices\[0\]\.warmup"):
        scenario_from_dict(_scenario("-1 s"))
