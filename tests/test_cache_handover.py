"""The activation cache with handovers (issue 21): a cached micro-batch is replayed by the server that received it.

A device that hands over during its first epoch leaves what it sent to the old server cached there and sends the
rest to the new one; every later epoch each server replays its own cache, with no device compute and no uplink
(``trainer.transport.cache``, ``trainer.methods.splitfrozen._from_cache``; the simulator's pools:
``sfsim.engine.cacheparts``). Both halves used to refuse the combination with one line.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sfsim.outputs.trace import read_chrome_trace
from tests.test_splitfrozen_moves import _same, cached_fleet

FIXTURES = Path(__file__).parent / "fixtures"


def _real(tiny_gpt2: str, tmp_path: Path, data: dict, samples: int, epochs: int, **over) -> tuple[dict, object]:
    """A real SplitFrozen run of scenario ``data`` over ``epochs`` (fifo, every process emulated) and the
    simulator's prediction of it (its trace in ``tmp_path/run``)."""
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=path, train_samples=samples, epochs=epochs, emulate="all",
                 server_order="fifo", **over))
    vc = ValidateConfig(devices=str(path), model=tiny_gpt2, method="splitfrozen", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=samples, server_order="fifo", epochs=epochs)
    return m, predict(vc, m)


def _trained(events, prefix: str = "mec-") -> Counter:
    """(server, device) -> micro-batches the server trained (its ``F`` ops)."""
    return Counter((e.lane, e.device) for e in events if e.op == "F" and e.lane.startswith(prefix))


def _sends(events) -> dict[str, list[int]]:
    """Device -> the micro-batches it sent (each once; a pause splits a send's trace)."""
    out: dict[str, set[int]] = {}
    for e in events:
        if e.op == "send" and e.lane.startswith("link:"):
            out.setdefault(e.device, set()).add(e.mb)
    return {n: sorted(v) for n, v in sorted(out.items())}


def _caches(tmp_path: Path, servers: list[str]) -> dict[str, dict]:
    """Each server's ``activation_cache`` (metrics.json): per device the digests held and replayed."""
    out = {}
    for s in servers:
        path = tmp_path / "run" / "servers" / s / "metrics.json"
        if not path.is_file():
            path = tmp_path / "run" / "metrics.json"
        out[s] = json.loads(path.read_text())["activation_cache"]["devices"]
    return out


def _replayed_bit_for_bit(caches: dict[str, dict], epochs: int) -> None:
    """Every server replayed each micro-batch it holds once a later epoch, bit for bit (equal digests)."""
    for server, devices in caches.items():
        for name, c in devices.items():
            assert c["held"], (server, name)
            assert sorted(c["replayed"]) == sorted(c["held"] * (epochs - 1)), (server, name)


def _handover_fleet(sync: bool) -> dict:
    """runtime_handover.yaml with the cache over 3 epochs: mover (4 micro-batches an epoch) hands over from mec-a
    to mec-b at 0.8 s, after 2 sends; stay-a on mec-a, stay-b on mec-b (2 each); sync every 2 or none (a closing
    round an epoch)."""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["training"].update(cache_activations=True, epochs=3)
    if not sync:
        del data["training"]["sync"]
    return data


@pytest.mark.slow
@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.usefixtures("one_torch_thread")
def test_a_handover_in_the_cached_epoch_equals_a_real_run(tiny_gpt2, tmp_path, sync):
    """3 epochs, cache on: mover sends 2 micro-batches to mec-a and 2 to mec-b in epoch 1; epochs 2 and 3 send
    nothing up (every device's uplink bytes are its epoch-1 sends, in both halves), and each server replays its own
    cache bit for bit: mec-a mover's first 2 and stay-a's, mec-b mover's last 2 and stay-b's. Both halves: the same
    micro-batches per server and device, rounds, backhaul bytes and order of steps and rounds."""
    m, sim = _real(tiny_gpt2, tmp_path, _handover_fleet(sync), 32, 3)
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == [("mec-a", "mec-b", 2)]
    assert [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers] == [("mec-a", "mec-b", 2)]
    one = sim.uplink_bytes_by_device["stay-a"] / 2
    assert sim.uplink_bytes_by_device == {"mover": 4 * one, "stay-a": 2 * one, "stay-b": 2 * one}
    # the real micro-batches are padded per batch: mover's 4 differ in size from the simulator's one size
    assert {n: v for n, v in m["uplink_bytes_by_device"].items() if n != "mover"} == {"stay-a": 2 * one,
                                                                                      "stay-b": 2 * one}
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    assert _sends(measured) == _sends(sim.events) == {"mover": [0, 1, 2, 3], "stay-a": [0, 1], "stay-b": [0, 1]}
    second = min(e.start for e in measured if e.op == "epoch_end")
    assert not [e for e in measured if e.op in ("send", "F") and not e.lane.startswith("mec-") and e.start > second]
    want = {("mec-a", "mover"): 6, ("mec-a", "stay-a"): 6, ("mec-b", "mover"): 6, ("mec-b", "stay-b"): 6}
    assert _trained(measured) == _trained(sim.events) == want
    assert sim.micro_batches == 24
    caches = _caches(tmp_path, ["mec-a", "mec-b"])
    _replayed_bit_for_bit(caches, 3)
    assert {s: {n: len(c["held"]) for n, c in d.items()} for s, d in caches.items()} == {
        "mec-a": {"mover": 2, "stay-a": 2}, "mec-b": {"mover": 2, "stay-b": 2}}
    assert not set(caches["mec-a"]["mover"]["held"]) & set(caches["mec-b"]["mover"]["held"])
    _same(m, sim, tmp_path, m["servers"]["mec-a"]["sync_rounds"] if sync else 3)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_the_cache_with_pause_churn_on_one_server_equals_a_real_run(tiny_gpt2, tmp_path):
    """One server, 3 devices, cache on over 2 epochs; a-1 is offline 0.5-1.5 s (churn pause) in epoch 1, so its
    second send waits: it still sends its whole epoch and its cache is replayed in epoch 2, bit for bit. Both
    halves: the same uplink bytes (one epoch each), micro-batches per device, no untrained samples, the same order
    of steps."""
    from tests.test_sync_order import server_ops

    (tmp_path / "w.yaml").write_text("a-1: [[0, 0.5], [1.5, 1000]]\n")
    data = cached_fleet("1 server, cached activations, a device pauses",
                        [{"name": n, "server": "mec-a"} for n in ("a-0", "a-1", "a-2")], False)
    data["servers"] = data["servers"][:1]
    del data["servers"][0]["backhaul"]
    data["devices"][1]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "pause"}
    m, sim = _real(tiny_gpt2, tmp_path, data, 24, 2)
    assert m["samples_not_trained"] == sim.samples_not_trained == {"a-1": 0}
    one = sim.uplink_bytes_by_device["a-0"] / 2
    assert m["uplink_bytes_by_device"] == sim.uplink_bytes_by_device == {n: 2 * one for n in ("a-0", "a-1", "a-2")}
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    assert [e for e in sim.events if e.op == "offline" and e.lane == "a-1"]
    for events in (measured, sim.events):  # its second send waits for the end of the pause in both halves
        assert max(e.start + e.dur for e in events if e.op == "send" and e.lane == "link:a-1") > 1.5
    assert _trained(measured) == _trained(sim.events) == {("mec-a", n): 4 for n in ("a-0", "a-1", "a-2")}
    _replayed_bit_for_bit(_caches(tmp_path, ["mec-a"]), 2)
    assert server_ops(measured, "mec-a") == server_ops(sim.events, "mec-a")


@pytest.mark.usefixtures("one_torch_thread")
def test_the_cache_on_two_servers_without_a_backhaul_equals_a_real_run(tiny_gpt2, tmp_path):
    """mec-a (a-0, a-1) and mec-b (b-0) with no backhaul link and no training.sync: each epoch's closing round
    alone, over unshaped links; epoch 2 from each server's cache with no uplink, bit for bit. Both halves: the same uplink bytes,
    micro-batches per server and device and steps per server (accumulate 1), and the closing rounds (2)."""
    from tests.test_sync_order import server_ops

    data = cached_fleet("2 servers, no backhaul, cached activations",
                        [{"name": n, "server": f"mec-{n[0]}"} for n in ("a-0", "a-1", "b-0")], False)
    for s in data["servers"]:
        del s["backhaul"]
    m, sim = _real(tiny_gpt2, tmp_path, data, 24, 2)
    one = sim.uplink_bytes_by_device["a-0"] / 2
    assert m["uplink_bytes_by_device"] == sim.uplink_bytes_by_device == {n: 2 * one for n in ("a-0", "a-1", "b-0")}
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    second = min(e.start for e in measured if e.op == "epoch_end")
    assert not [e for e in measured if e.op in ("send", "F") and not e.lane.startswith("mec-") and e.start > second]
    want = {("mec-a", "a-0"): 4, ("mec-a", "a-1"): 4, ("mec-b", "b-0"): 4}
    assert _trained(measured) == _trained(sim.events) == want
    # the runtime makes the servers one model at each epoch's end over unshaped links; the simulator models that
    # round as a barrier taking no time (sfsim.schedules.frozennet.closing_barrier, gate21)
    assert sim.sync_rounds == m["sync_rounds"] == 2
    _replayed_bit_for_bit(_caches(tmp_path, ["mec-a", "mec-b"]), 2)
    for server in ("mec-a", "mec-b"):
        steps = [op for op in server_ops(measured, server) if op == "step"]
        assert steps == [op for op in server_ops(sim.events, server) if op == "step"] == ["step"] * sum(
            c for (srv, _), c in want.items() if srv == server), server


# -- the simulator alone ----------------------------------------------------------------------------------------
def _simulate(data: dict, tmp_path: Path, engine: str = "simpy", trace: bool = True, schedule: str = "splitfrozen"):
    import sfsim
    from sfsim.scenario.config import scenario_from_dict

    return sfsim.simulate(scenario_from_dict(data, source=str(tmp_path / "s.yaml")), schedule, splits=1,
                          engine=engine, trace=trace)


@pytest.mark.parametrize("mode", ["sync", "closing", "no backhaul"])
def test_each_server_replays_its_part_of_a_movers_first_epoch(tmp_path, mode):
    """gpt2 on 20 MFLOPS (~91 s a forward): mover hands over at 200 s, after 2 of its 4 sends; 3 epochs, cache on.
    Epochs 2 and 3 replay mover's micro-batches 0-1 on mec-a and 2-3 on mec-b (by index: each epoch's 4 + j and
    8 + j), and nothing but epoch 1 goes up; with training.sync, each epoch's closing round, or (no backhaul)
    that round over links that take no time (a barrier, as the runtime's). The fast path leaves the case to SimPy in one line with the same figures."""
    data = _handover_fleet(mode == "sync")
    data["devices"][0]["handover"][0]["at"] = "200 s"
    if mode == "no backhaul":
        for s in data["servers"]:
            del s["backhaul"]
    res = _simulate(data, tmp_path)
    mbs = sorted((e.lane, e.mb) for e in res.events if e.op == "F" and e.device == "mover" and e.lane.startswith("mec"))
    assert mbs == sorted([("mec-a", j) for j in (0, 1, 4, 5, 8, 9)] + [("mec-b", j) for j in (2, 3, 6, 7, 10, 11)])
    sends = sorted((e.device, e.mb) for e in res.events if e.op == "send")  # epoch 1's only
    assert sends == [("mover", j) for j in range(4)] + [("stay-a", 0), ("stay-a", 1), ("stay-b", 0), ("stay-b", 1)]
    assert res.micro_batches == 24 and [(h["sent_before"], h["sent_after"]) for h in res.handovers] == [(2, 2)]
    one = res.uplink_bytes_by_device["stay-a"] / 2
    assert res.uplink_bytes_by_device == {"mover": 4 * one, "stay-a": 2 * one, "stay-b": 2 * one}
    assert res.sync_rounds == {"sync": res.sync_rounds, "closing": 3, "no backhaul": 3}[mode]  # no link: no time
    fast = _simulate(data, tmp_path, "auto", trace=False)
    assert fast.engine == "simpy" and "handover with cached activations" in fast.engine_note
    assert fast.makespan_s == res.makespan_s and fast.micro_batches == res.micro_batches


def random_base(rng: random.Random) -> tuple[dict, list[str], int]:
    """The draws every random cached fleet starts with: (scenario, servers, epochs). 2-3 servers with a backhaul
    (training.sync every 1-3 or not) or none, 2-4 devices pinned at random, 2-3 epochs, buffer 1-3, fifo or
    round-robin."""
    servers = [f"mec-{x}" for x in "abc"[:rng.randint(2, 3)]]
    names = [f"d{k}" for k in range(rng.randint(2, 4))]
    link = rng.random() < 0.7
    data = cached_fleet("random", [{"name": n, "server": rng.choice(servers)} for n in names], link and rng.random() < 0.5)
    data["servers"] = [{"name": s, "flops": "10 TFLOPS", "memory": "16 GiB",
                        **({"backhaul": {"bandwidth": "100 Mbps", "latency": "5 ms"}} if link else {})} for s in servers]
    if "sync" in data["training"]:
        data["training"]["sync"]["every"] = rng.randint(1, 3)
    epochs = rng.randint(2, 3)
    data["training"].update(epochs=epochs, buffer=rng.randint(1, 3), server_policy=rng.choice(["fifo", "round-robin"]))
    return data, servers, epochs


def random_moves(rng: random.Random, d: dict, servers: list[str], p: float) -> None:
    """With probability ``p``, 1-3 handovers of device ``d`` at random times, each to another server."""
    if rng.random() < p:
        at, where, moves = 0.0, d["server"], []
        for _ in range(rng.randint(1, 3)):
            at += round(rng.uniform(5, 250), 1)
            where = rng.choice([s for s in servers if s != where])
            moves.append({"at": f"{at} s", "to": where})
        d["handover"] = moves


def random_fleet(seed: int, tmp_path: Path) -> tuple[dict, dict[str, int], int]:
    """Seeded fleet ``seed`` of :func:`test_random_cached_fleets_with_handovers_finish`: (scenario, micro-batches an
    epoch per device, epochs)."""
    rng = random.Random(seed)
    data, servers, epochs = random_base(rng)
    windows, per = {}, {}
    for d in data["devices"]:
        per[d["name"]] = rng.randint(1, 3)
        d["samples"] = 4 * per[d["name"]]
        random_moves(rng, d, servers, 0.7)
        if rng.random() < 0.3:
            windows[d["name"]] = [[0, round(rng.uniform(10, 200), 1)], [round(rng.uniform(250, 400), 1), 10000]]
            d["availability"] = {"file": str(tmp_path / f"w{seed}.yaml"), "churn": "pause"}
    (tmp_path / f"w{seed}.yaml").write_text(yaml.safe_dump(windows))
    return data, per, epochs


def test_random_cached_fleets_with_handovers_finish(tmp_path):
    """120 seeded fleets (2-3 servers with a backhaul (training.sync or not) or none, 2-4 devices of 1-3
    micro-batches an epoch, 2-3 epochs, handovers at random times, some back and forth, pause churn, fifo or
    round-robin, buffer 1-3; every fourth one splitfrozen-sequential): SimPy ends each run; every device sends exactly its first epoch; the servers train
    every device's every epoch (micro-batches = epochs x its epoch), each cached micro-batch on the server it was
    sent to, every epoch."""
    for seed in range(120):
        data, per, epochs = random_fleet(seed, tmp_path)
        schedule = "splitfrozen-sequential" if seed % 4 == 3 else "splitfrozen"
        res = _simulate(data, tmp_path, trace=True, schedule=schedule)
        assert res.micro_batches == epochs * sum(per.values()), seed
        sends = {(e.device, e.mb): e.lane for e in res.events if e.op == "send"}  # (a pause splits a send's trace)
        assert set(sends) == {(n, j) for n in per for j in range(per[n])}, seed
        got = {(e.device, e.mb): e.lane for e in res.events if e.op == "F" and e.lane.startswith("mec-")}
        assert len(got) == res.micro_batches, seed
        trained: dict[tuple[str, int], set[str]] = {}
        for (n, mb), server in got.items():
            trained.setdefault((n, mb % per[n]), set()).add(server)
        assert all(len(s) == 1 for s in trained.values()), seed  # each cached micro-batch on one server, every epoch


def test_the_cache_with_a_handover_and_drop_churn_runs_in_both_halves(tmp_path):
    """runtime_handover.yaml with the cache and mover on drop churn (after the run's end): simulate and the runtime's
    wire settings take it (both used to refuse it in one line; the rule: tests/test_cache_handover_drop.py)."""
    from types import SimpleNamespace

    import sfsim
    from sfsim.scenario.config import scenario_from_dict
    from trainer.run.honour import wire_settings

    data = _handover_fleet(True)
    (tmp_path / "w.yaml").write_text("mover: [[0, 1000]]\n")
    data["devices"][0]["availability"] = {"file": str(tmp_path / "w.yaml"), "churn": "drop"}
    path = str(tmp_path / "s.yaml")
    sc = scenario_from_dict(data, source=path)
    cfg = SimpleNamespace(wire_dtype=None, method="splitfrozen", emulate="all", devices=path, cache_memory="1 GiB")
    assert wire_settings(cfg, sc)[1] == 2 ** 30
    res = sfsim.simulate(sc, "splitfrozen", splits=1)
    assert res.micro_batches == 3 * 8 and res.samples_not_trained == {"mover": 0}


def test_the_cache_replays_what_this_server_received_once_an_epoch_was_sent_whole(tmp_path):
    """``ActivationCache``: an epoch from the wire (``fill``) makes the next ones replay every device it holds,
    the part a mover sent here included, in the given order (others after), without devices gone or lost; a resumed
    epoch does not fill it; the digests of what was read back equal those put, from memory or from the file, and
    differ when one bit does."""
    import torch

    from trainer.transport.cache import ActivationCache, digest

    def mb(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"hidden": torch.randn(2, 3, 4, generator=g), "attention_mask": torch.ones(2, 3, dtype=torch.uint8),
                "labels": torch.randint(0, 2, (2,), generator=g)}

    cache = ActivationCache(memory=sum(t.nbytes for t in mb(0).values()), folder=tmp_path)  # one in memory
    assert cache.replays(0) is None
    cache.fill(0, resumed=False)
    assert cache.replays(0) is None  # the epoch that fills it comes from the wire
    for name, seed in (("stay", 0), ("mover", 1), ("stay", 2), ("gone", 3), ("lost", 4)):
        cache.put(name, mb(seed))
    cache.leave("gone")
    assert cache.replays(1, lost={"lost": {}}, order=["mover"]) == {"mover": 1, "stay": 2}
    assert cache.rows("stay") == 4 and cache.file_bytes > 0
    for name, j in (("stay", 1), ("mover", 0), ("stay", 0)):
        cache.get(name, j)
    rep = cache.report()["devices"]
    assert rep["stay"]["held"] == [digest(mb(0)), digest(mb(2))] and sorted(rep["stay"]["replayed"]) == sorted(
        rep["stay"]["held"]) and rep["mover"]["replayed"] == rep["mover"]["held"] == [digest(mb(1))]
    flipped = mb(0)
    flipped["hidden"].view(torch.int32)[0, 0, 0] ^= 1
    assert digest(flipped) != digest(mb(0))
    cache.fill(2, resumed=True)  # a resumed epoch: sent again, not a whole epoch
    assert cache.count("stay") == 0 and cache.replays(3) is None
    cache.close()
