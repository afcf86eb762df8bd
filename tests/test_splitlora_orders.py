"""SplitLoRA in the simulator as the trainer runs it: client orders, accumulate, FedAvg rounds (by hand)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

import sfsim
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.errors import ConfigError, SfsimError
from sfsim.schedules import Job, ReplayConfig, splitlora

# b + w + step = 2 on the client; server F, B, W 1 each; up 1 + 0.5; down 0.5 + 0.5; adapters 1 each way
COMMON = dict(b=1, w=0.5, step=0.5, up_s=1, up_l=0.5, down_s=0.5, down_l=0.5, sync_up_s=1, sync_down_s=1,
              srv_f=1, srv_b=1, srv_w=1)
SERVER = ServerTimes("srv", step=0.25, aggregate=0.25)


def replay(devices, **cfg):
    engine = Engine(trace=True)
    splitlora.run(engine, Job(list(devices), [SERVER]), ReplayConfig(**cfg))
    makespan = engine.run()
    return makespan, sorted(engine.events, key=lambda e: (e.start, e.lane, e.op)), engine


def lane(events, name, op=None):
    return [(e.op, e.start) for e in events if e.lane == name and (op is None or e.op == op)]


def test_sequential_makespan_is_the_sum_of_the_clients_chains():
    """Client after client: nothing overlaps between clients, so the run is the sum of their chains.

    A micro-batch of a client with forward ``f``, from its ``F`` to the next ``F``: ``f`` + up 1.5 +
    server F, B 2 + the client's path after B (gradient 0.5 + 0.5, B 1, W 0.5, step 0.5: 3), which
    beats the server's (W 1 + step 0.25, then the ``fwd`` command's 0.5: 1.75). After the last B the
    client needs 3 more, then ``sync`` has long arrived and its adapters go up (1 + 0.5): 4.5. So a chain
    of ``k`` micro-batches is ``lead + k f + (k - 1) 6.5 + 3.5 + 4.5``, with ``lead`` the first
    ``fwd``'s 0.5 for the first client and 1 + 0.5 (the adapters handed down, the command behind them)
    for the next: x (k=2, f=1) 0.5 + 2 + 6.5 + 8 = 17, y (k=1, f=2) 1.5 + 2 + 8 = 11.5.
    """
    x, y = DeviceTimes("x", n=2, f=1, **COMMON), DeviceTimes("y", n=1, f=2, **COMMON)
    makespan, events, engine = replay([x, y], client_order="sequential")
    assert makespan == 17 + 11.5
    assert [e.device for e in events if e.lane == "srv" and e.op == "F"] == ["x", "x", "y"]
    assert lane(events, "srv", "aggregate") == []  # no FedAvg: the adapters are handed on
    assert lane(events, "x") == [("F", 0.5), ("B", 6), ("W", 7), ("step", 7.5), ("F", 8), ("B", 13.5),
                                 ("W", 14.5), ("step", 15)]
    # x's gradients, no adapters down (it starts from the initial ones); y gets x's at 17 before its fwd
    assert [(e.start, e.dur) for e in events if e.lane == "downlink:x"] == [(5, 0.5), (12.5, 0.5)]
    assert [(e.start, e.dur) for e in events if e.lane == "downlink:y"] == [(17, 1), (24, 0.5)]
    assert [(e.start, e.dur) for e in events if e.lane == "link:x"] == [(1.5, 1), (9, 1), (15.5, 1)]
    assert lane(events, "y", "F") == [("F", 18.5)]
    assert engine.up_bytes == engine.down_bytes == {"x": 0.0, "y": 0.0}  # no sizes given


@pytest.mark.parametrize("srv_w, saved", [(1, 2 * 0.5), (4, 2 * 0.25)])
def test_accumulate_halves_the_steps_and_saves_exactly_their_time(srv_w, saved):
    """Accumulate 2 over 4 micro-batches: 2 steps instead of 4 on each side (after micro-batches 1 and
    3). The two steps saved (after 0 and 2) shorten the run by exactly their time on the critical side:
    the client's (0.5 each) when its backward path is longer, the server's (0.25 each) when its W is."""
    x = DeviceTimes("x", n=4, f=1, **{**COMMON, "srv_w": srv_w})
    one, ev1, _ = replay([x], accumulate=1, client_order="sequential")
    two, ev2, _ = replay([x], accumulate=2, client_order="sequential")
    assert len(lane(ev1, "x", "step")) == len(lane(ev1, "srv", "step")) == 4
    assert [e.mb for e in ev2 if e.lane == "x" and e.op == "step"] == [1, 3]
    assert len(lane(ev2, "srv", "step")) == 2
    assert one - two == pytest.approx(saved, abs=1e-12)


def test_a_partial_window_steps_at_the_end_on_both_sides():
    x = DeviceTimes("x", n=5, f=1, **COMMON)
    _, events, _ = replay([x], accumulate=2, client_order="sequential")
    assert [e.mb for e in events if e.lane == "x" and e.op == "step"] == [1, 3, -1]  # -1: at the sync
    assert len(lane(events, "srv", "step")) == 3


def test_fixed_order_waits_for_the_named_client():
    """paced-proportional (the trainer's default order): x first even though y arrives first."""
    x, y = DeviceTimes("x", n=1, f=6, **COMMON), DeviceTimes("y", n=1, f=1, **COMMON)
    _, fifo, _ = replay([x, y], policy="fifo")
    _, paced, _ = replay([x, y], policy="paced-proportional")
    assert [e.device for e in fifo if e.lane == "srv" and e.op == "F"] == ["y", "x"]
    served = [(e.device, e.start) for e in paced if e.lane == "srv" and e.op == "F"]
    # x: fwd 0.5, F 6, up 1 + 0.5: at 8; then y, whose micro-batch has waited since 3
    assert served == [("x", 8), ("y", 8 + 3 + 0.25)]


@pytest.mark.parametrize("every, rounds", [(1, 3), (2, 2), (100, 1)])
def test_interleaved_fedavg_every_server_steps_and_at_the_epoch_end(every, rounds):
    """3 micro-batches (x 2, y 1): a FedAvg after every ``every`` server steps while work is left, and one
    at the end of the epoch; every client uploads and downloads in each, y too once it has no data left."""
    x, y = DeviceTimes("x", n=2, f=1, **COMMON), DeviceTimes("y", n=1, f=2, **COMMON)
    _, events, _ = replay([x, y], fedavg_every=every)
    assert len(lane(events, "srv", "aggregate")) == rounds
    assert len([e for e in events if e.lane == "link:y" and e.mb == -1]) == rounds
    assert len([e for e in events if e.lane == "downlink:y" and e.mb == -1]) == rounds


# ------------------------------------------------------------------ the scenario key and the CLI
def _scenario(tmp_path, **training) -> str:
    dev = {"memory": "4 GiB", "uplink": {"bandwidth": "100 Mbps", "latency": "10 ms"},
           "downlink": {"bandwidth": "200 Mbps", "latency": "10 ms"}}
    data = {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            # pi: 14 samples = 4 micro-batches (the last of 2); phone: 9 = 3 micro-batches; 2 epochs
            "training": {"micro_batch": 4, "epochs": 2, "accumulate": 2, "fedavg_every": 2, **training},
            "servers": [{"name": "gpu", "flops": "5 TFLOPS", "memory": "24 GiB"}],
            "devices": [{"name": "pi", "count": 2, "flops": "40 GFLOPS", "samples": 14, **dev},
                        {"name": "phone", "flops": "300 GFLOPS", "samples": 9, **dev}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_cli_sequential_trace_counts_steps_per_client_window(tmp_path):
    from sfsim.cli import main

    path = _scenario(tmp_path)
    trace, out = tmp_path / "t.json", tmp_path / "r.json"
    res = CliRunner().invoke(main, ["simulate", "--devices", path, "--schedule", "splitlora", "--client-order",
                                    "sequential", "--trace", str(trace), "--json", str(out)])
    assert res.exit_code == 0, res.output
    steps: dict[str, int] = {}
    for e in json.loads(trace.read_text())["traceEvents"]:
        if e.get("ph") == "X" and e["name"] == "step":
            steps[e["args"]["lane"]] = steps.get(e["args"]["lane"], 0) + 1
    # per epoch each client steps after 2 of its micro-batches and on the rest: pi 4 -> 2, phone 3 -> 2
    assert steps == {"pi-0": 4, "pi-1": 4, "phone": 4, "gpu": 12}
    seq = json.loads(out.read_text())
    assert seq["policy"] is None and seq["client_order"] == "sequential"  # no server order: one client at a time
    assert "clients sequential (one after another, each over its whole epoch)" in res.output
    sc = sfsim.load_scenario(path)
    assert sfsim.simulate(sc, "splitlora", client_order="sequential").makespan_s == seq["makespan_s"]
    inter = sfsim.simulate(sc, "splitlora")
    assert inter.policy == "fifo" and inter.client_order == "interleaved" and inter.makespan_s < seq["makespan_s"]
    assert sfsim.simulate(sc, "fedlora").client_order is None
    key = sfsim.load_scenario(_scenario(tmp_path, client_order="sequential"))
    assert sfsim.simulate(key, "splitlora").makespan_s == seq["makespan_s"]


def test_client_order_errors_are_one_line(tmp_path):
    from sfsim.cli import main

    with pytest.raises(ConfigError, match=r"training\.client_order: Input should be 'interleaved' or 'sequential'"):
        sfsim.load_scenario(_scenario(tmp_path, client_order="zigzag"))
    with pytest.raises(SfsimError, match="unknown client order 'zigzag'; choose one of: interleaved, sequential"):
        sfsim.simulate(sfsim.load_scenario(_scenario(tmp_path)), "splitlora", client_order="zigzag")
    res = CliRunner().invoke(main, ["simulate", "--devices", _scenario(tmp_path), "--schedule", "fedlora",
                                    "--client-order", "sequential"])
    assert res.exit_code != 0 and res.output.strip().splitlines()[-1] == (
        "error: fedlora takes no client_order (--client-order): only SplitLoRA has clients that take turns "
        "(training.client_order is ignored elsewhere); drop it")
    res = CliRunner().invoke(main, ["simulate", "--devices", _scenario(tmp_path), "--schedule", "all",
                                    "--client-order", "sequential"])
    assert res.exit_code == 0, res.output  # 'all': only splitlora takes it


@pytest.mark.parametrize("order, accumulate", [("interleaved", 1), ("sequential", 2)])
def test_validate_simulates_the_order_and_accumulate_that_ran(tmp_path, order, accumulate):
    """``sfsim validate``'s prediction takes the run's client order and accumulate (from its metrics)."""
    from pathlib import Path

    from trainer.validate.compare import ValidateConfig, predict

    fleet = str(Path(__file__).parent / "fixtures" / "runtime_tiny.yaml")
    names = ["big", "small-0", "small-1"]
    metrics = {"method": "splitlora", "client_order": order, "accumulate": accumulate, "micro_batch": 4, "buffer": 2,
               "cuts": dict.fromkeys(names, 1), "lora_targets": ["c_attn"],
               "samples_by_device": {"big": 16, "small-0": 8, "small-1": 8},
               "microbatch_shapes": {"big": [[4, 32]] * 4, "small-0": [[4, 32]] * 2, "small-1": [[4, 32]] * 2}}
    vc = ValidateConfig(devices=fleet, model="gpt2", method="splitlora", out=str(tmp_path), emulate="all",
                        accumulate=accumulate, client_order=order)
    res = predict(vc, metrics)
    assert res.policy == ("paced-proportional" if order == "interleaved" else None)
    server_steps = [e for e in res.events if e.lane == "srv" and e.op == "step"]
    # 8 micro-batches; sequential: big 4 -> 2 steps, each small 2 -> 1
    assert len(server_steps) == (8 if order == "interleaved" else 4)
    served = [e.device for e in res.events if e.lane == "srv" and e.op == "F"]
    if order == "sequential":
        assert served == ["big"] * 4 + ["small-0"] * 2 + ["small-1"] * 2
    else:  # the trainer's proportional order (tests/test_baselines.py: big s0 s1 big big s0 s1 big)
        assert served == ["big", "small-0", "small-1", "big", "big", "small-0", "small-1", "big"]
