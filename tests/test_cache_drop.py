"""The activation cache with a device that leaves for good: the remaining devices' later epochs train from the
server's cache in both halves (trainer.methods.splitfrozen's ``_from_cache``, the simulator's pool replaying every
device but those gone, ``sfsim.engine.worker``), and the device that left trains nothing more. The runtime used to
empty every cache and have every device send its epoch again when one device's cache was short."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sfsim.outputs.trace import read_chrome_trace
from tests.test_splitfrozen_moves import _real, _same, cached_fleet
from tests.test_sync_order import server_ops

FIXTURES = Path(__file__).parent / "fixtures"


def _fleet(tmp_path: Path, sync: bool) -> dict:
    """mec-a with a-0 and a-1, mec-b with b-0 (8 samples each: 2 micro-batches an epoch, ~0.65 s a send), the cache,
    sync every 2 (or none: a closing round an epoch); a-1 drops for good at 1.0 s, during its second send of epoch 1."""
    (tmp_path / "w.yaml").write_text("a-1: [[0, 1.0]]\n")
    data = cached_fleet("2 servers, cached activations, a device drops",
                        [{"name": n, "server": f"mec-{n[0]}"} for n in ("a-0", "a-1", "b-0")], sync)
    data["devices"][1]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "drop"}
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


def _one_server(tmp_path: Path) -> dict:
    """The same three devices on mec-a alone (no backhaul: no rounds end its epochs); a-1 drops at 1.0 s, during its
    second send of epoch 1."""
    data = _fleet(tmp_path, False)
    data["servers"] = data["servers"][:1]
    del data["servers"][0]["backhaul"]
    for d in data["devices"]:
        d["server"] = "mec-a"
    return data


@pytest.mark.usefixtures("one_torch_thread")
def test_one_server_a_device_that_drops_leaves_the_others_caches_in_use(tiny_gpt2, tmp_path):
    """One server: a-1 sends 1 of its 2 micro-batches of epoch 1 and drops; a-0 and b-0 send epoch 1 and train epoch
    2 from mec-a's cache. Both halves: the same uplink bytes per device (a-1: one send), a-1 leaves 4 + 8 samples
    untrained, no rounds, and the same order of steps. The simulator's pool used to keep a-1's replays counted and
    stop with "micro-batches never processed" (both halves refused the combination)."""
    m, sim = _real(tiny_gpt2, tmp_path, _one_server(tmp_path), 24)
    assert m["samples_not_trained"] == sim.samples_not_trained == {"a-1": 4 + 8}
    assert m["uplink_bytes_by_device"] == sim.uplink_bytes_by_device
    one = sim.uplink_bytes_by_device["a-1"]
    assert one > 0 and sim.uplink_bytes_by_device == {"a-0": 2 * one, "a-1": one, "b-0": 2 * one}
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    trained = sorted(e.device for e in measured if e.op == "F" and e.lane == "mec-a")
    assert trained == sorted(["a-0"] * 4 + ["a-1"] + ["b-0"] * 4)
    assert sim.sync_rounds == 0 and not sim.backhaul_bytes_by_server
    assert server_ops(measured, "mec-a") == server_ops(sim.events, "mec-a")


def test_one_server_simulates_the_cache_with_a_drop_on_either_engine(tmp_path):
    """``simulate`` of the one-server fleet (gpt2 on 20 MFLOPS: ~91 s a forward): a-1 drops at 100 s, during its second forward; its
    replays are withdrawn with its unsent micro-batch (it trains 1 of its 4), the fast path sends the case to SimPy
    (the same figures), and a drop after its whole first epoch keeps its replays."""
    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    def simulate(drop: float, engine: str = "simpy"):
        data = _one_server(tmp_path)
        (tmp_path / "w.yaml").write_text(f"a-1: [[0, {drop}]]\n")
        return sfsim.simulate(scenario_from_dict(data, source=str(tmp_path / "s.yaml")), "splitfrozen", splits=1,
                              engine=engine)

    sim = simulate(100.0)
    assert sim.samples_not_trained == {"a-1": 4 + 8} and sim.micro_batches == 4 + 1 + 4
    assert sim.uplink_bytes_by_device["a-0"] == 2 * sim.uplink_bytes_by_device["a-1"]
    fast = simulate(100.0, "auto")
    assert fast.samples_not_trained == sim.samples_not_trained and fast.makespan_s == sim.makespan_s
    assert fast.engine_note and "availability with cached activations" in fast.engine_note
    late = simulate(1000.0)
    assert late.samples_not_trained == {"a-1": 0} and late.micro_batches == 3 * 4


def test_random_one_server_cached_fleets_with_drops_train_what_was_sent(tmp_path):
    """150 seeded fleets on one server (2–4 devices, 2–3 epochs, random drops and pauses, buffer 1–3, fifo or round-robin,
    with or without the epoch-end wait): SimPy ends each run, and a device trains its later epochs from the cache
    exactly when it sent its whole first epoch, up to its drop instant with drop churn (the replays started before it:
    sfsim.engine.cacheparts); else only what it sent (its untrained samples follow from its uplink bytes)."""
    import random

    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    for seed in range(150):
        rng = random.Random(seed)
        names = [f"d{k}" for k in range(rng.randint(2, 4))]
        data = cached_fleet("random", [{"name": n, "server": "mec-a"} for n in names], False)
        data["servers"] = data["servers"][:1]
        del data["servers"][0]["backhaul"]
        epochs, per = rng.randint(2, 3), rng.randint(1, 3)
        data["training"].update(epochs=epochs, buffer=rng.randint(1, 3), server_policy=rng.choice(["fifo", "round-robin"]))
        if rng.random() < 0.5:
            data["training"]["eval_samples"] = 4
        windows = {}
        for d in data["devices"]:
            d["samples"] = 4 * per
            if rng.random() < 0.7:
                windows[d["name"]] = [[0, round(rng.uniform(10, 400), 1)]] + ([[500, 5000]] if rng.random() < 0.3 else [])
                d["availability"] = {"file": str(tmp_path / f"w{seed}.yaml"), "churn": rng.choice(["drop", "pause"])}
        (tmp_path / f"w{seed}.yaml").write_text(yaml.safe_dump(windows))
        res = sfsim.simulate(scenario_from_dict(data, source=str(tmp_path / "s.yaml")), "splitfrozen", splits=1,
                             engine="simpy", trace=True)
        drops = {d["name"]: windows[d["name"]][0][1] for d in data["devices"]
                 if d.get("availability", {}).get("churn") == "drop"}
        for d in data["devices"]:
            d.pop("availability", None)
        static = sfsim.simulate(scenario_from_dict(data), "splitfrozen", splits=1, engine="simpy")
        one = static.uplink_bytes_by_device[names[0]] / per  # one micro-batch's bytes
        trained = 0
        for n in names:
            sent = round(res.uplink_bytes_by_device[n] / one)
            mbs = epochs * per if sent == per else sent
            if sent == per and n in drops:  # its replays started before its drop instant
                replays = [e.start for e in res.events if e.op == "F" and e.lane == "mec-a" and e.device == n
                           and e.mb >= per]
                assert all(t < drops[n] for t in replays), (seed, n)
                mbs = per + len(replays)
            assert res.samples_not_trained.get(n, 0) == 4 * (epochs * per - mbs), (seed, n)
            trained += mbs
        assert res.micro_batches == trained, seed
