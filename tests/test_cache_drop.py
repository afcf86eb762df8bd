"""The activation cache with a device that leaves for good: the remaining devices' later epochs train from the
server's cache in both halves (trainer.methods.splitfrozen's ``_from_cache``, the simulator's pool replaying every
device but those gone, ``sfsim.engine.worker``), and the device that left trains nothing more. The runtime used to
empty every cache and have every device send its epoch again when one device's cache was short."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_splitfrozen_moves import _real, _same

FIXTURES = Path(__file__).parent / "fixtures"


def _fleet(tmp_path: Path, sync: bool) -> dict:
    """mec-a with a-0 and a-1, mec-b with b-0 (8 samples each: 2 micro-batches an epoch, ~0.65 s a send), the cache,
    sync every 2 (or none: a closing round an epoch); a-1 drops for good at 1.0 s, during its second send of epoch 1."""
    (tmp_path / "w.yaml").write_text("a-1: [[0, 1.0]]\n")
    dev = {"flops": "20 MFLOPS", "memory": "4 GiB", "samples": 8,
           "uplink": {"bandwidth": "0.5 Mbps", "latency": "5 ms"}, "downlink": {"bandwidth": "2 Mbps", "latency": "5 ms"}}
    data = {"description": "2 servers, cached activations, a device drops",
            "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "epochs": 2, "cache_activations": True, "accumulate": 1, "buffer": 2,
                         "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}, "server_policy": "fifo",
                         "sync": {"every": 2, "mode": "sync"}},
            "servers": [{"name": f"mec-{x}", "flops": "10 TFLOPS", "memory": "16 GiB",
                         "backhaul": {"bandwidth": "100 Mbps", "latency": "5 ms"}} for x in "ab"],
            "devices": [{"name": n, "server": f"mec-{n[0]}", **dev} for n in ("a-0", "a-1", "b-0")]}
    data["devices"][1]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "drop"}
    if not sync:
        del data["training"]["sync"]
    return data


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.usefixtures("one_torch_thread")
def test_a_device_that_drops_leaves_the_others_caches_in_use(tiny_gpt2, tmp_path, sync):
    """Epoch 1 on the wire (a-1 sends 1 of its 2 micro-batches), epoch 2 from the caches of a-0 and b-0: every
    device's uplink bytes are its epoch-1 sends in both halves (a-0 and b-0: 2 micro-batches, a-1: 1), nothing goes up
    after epoch 1's end, a-1 leaves 4 + 8 samples untrained; the same rounds, backhaul bytes and order of steps and
    rounds on each server."""
    from sfsim.outputs.trace import read_chrome_trace

    m, sim = _real(tiny_gpt2, tmp_path, _fleet(tmp_path, sync), 24)
    assert m["samples_not_trained"] == sim.samples_not_trained == {"a-1": 4 + 8}
    assert m["uplink_bytes_by_device"] == sim.uplink_bytes_by_device
    one = sim.uplink_bytes_by_device["a-1"]
    assert sim.uplink_bytes_by_device == {"a-0": 2 * one, "a-1": one, "b-0": 2 * one}
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    second = min(e.start for e in measured if e.op == "epoch_end")
    assert not [e for e in measured if e.op in ("send", "F") and e.lane.startswith("link:") and e.start > second]
    trained = sorted((e.lane, e.device) for e in measured if e.op == "F" and e.lane.startswith("mec-"))
    assert trained == sorted([("mec-a", "a-0")] * 4 + [("mec-a", "a-1")] + [("mec-b", "b-0")] * 4)
    _same(m, sim, tmp_path, m["servers"]["mec-a"]["sync_rounds"] if sync else 2)


@pytest.mark.parametrize("epochs", [2, 3])
def test_one_server_replays_every_cache_but_the_left_devices(tmp_path, epochs):
    """One server (no backhaul), the same fleet, a-1 never sends (it drops at 1 s, before its first send ends at
    the scenario's gpt2 costs): a-0 and b-0 send their first epoch and replay it; a-1's every sample is untrained
    (before, its later epochs' replays stayed counted and the pool stopped with "micro-batches never processed").
    The fast path sends the run to SimPy with one line."""
    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    data = _fleet(tmp_path, False)
    data["training"]["epochs"] = epochs
    data["servers"] = data["servers"][:1]
    for d in data["devices"]:
        d["server"] = "mec-a"
    sc = scenario_from_dict(data, source=str(tmp_path / "s.yaml"))
    res = sfsim.simulate(sc, "splitfrozen", splits=1, engine="simpy")
    one = res.uplink_bytes_by_device["a-0"] / 2
    assert res.uplink_bytes_by_device == {"a-0": 2 * one, "a-1": 0.0, "b-0": 2 * one}
    assert res.samples_not_trained == {"a-1": 8 * epochs} and res.micro_batches == 2 * 2 * epochs
    auto = sfsim.simulate(sc, "splitfrozen", splits=1)
    assert auto.engine == "simpy" and auto.engine_note == ("the dynamic network's availability with cached "
                                                           "activations is replayed by the SimPy engine only")
    assert (auto.makespan_s, auto.samples_not_trained) == (res.makespan_s, res.samples_not_trained)
