"""FedLoRA with ``training.sync``: the simulator forms each server's rounds as the runtime does (sfsim.schedules.fedsync,
trainer.methods.fedlora): per server, with handovers and drops, the drain and closing rounds at each epoch's end. Real
2-server runs (tiny GPT-2 on loopback, everything emulated) and the simulator on the same run hold the same rounds, the
same backhaul bytes and the same order of backhaul sends, receives and FedAvg aggregates on each server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import sfsim

FIXTURES = Path(__file__).parent / "fixtures"
ORDERED = ("sync-send", "sync-recv", "aggregate")


def server_ops(events, server: str) -> str:
    """``server``'s backhaul sends (S), receives (R) and FedAvg aggregates (A) in time order."""
    mine = sorted((e for e in events if e.op in ORDERED and e.lane in (server, f"backhaul:{server}")),
                  key=lambda e: (e.start, ORDERED.index(e.op)))
    return "".join("SRA"[ORDERED.index(e.op)] for e in mine)


def handover_scenario(tmp_path: Path, every: int, drop: bool = False) -> Path:
    """tests/test_handover.py's FedLoRA run (runtime_handover_drop.yaml: stay-b never online, so mec-b's only own
    device drops at once and mec-b waits for the visitor; mover's first round goes to mec-a, its second, after the
    handover at 1.6 s, to mec-b), with ``sync: {every, mode: sync}``; ``drop``: stay-a drops at 0.9 s, during its
    first round."""
    data = yaml.safe_load((FIXTURES / "runtime_handover_drop.yaml").read_text())
    for d in data["devices"]:
        d["flops"] = "100 MFLOPS"
        if "availability" in d:
            d["availability"]["file"] = str(FIXTURES / d["availability"]["file"])
    data["devices"][0]["handover"][0]["at"] = "1.6 s"
    data["training"]["sync"] = {"every": every, "mode": "sync"}
    if drop:
        (tmp_path / "stay_a.yaml").write_text("stay-a: [[0, 0.9]]\n")
        data["devices"][1]["availability"] = {"file": str(tmp_path / "stay_a.yaml"), "churn": "drop"}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- the real runtime and the simulator -----------------------------------------------------------------------
# (every, epochs, stay-a drops) -> FedAvg rounds with uploads on mec-a and mec-b. mec-b's only own device (stay-b) drops
# at once, so its first round ends empty; it waits for mover, whose second round it averages (mover stays on mec-b in
# epoch 2: 2 rounds there, while stay-b's round of epoch 2 ends empty again; with stay-a gone, mec-a's only FedAvg
# is mover's first round, and its round of epoch 2 ends empty too: a device that left answers with a leave). Between them the backhaul rounds: after
# every (every 1) or every second FedAvg round, a waiting server's answers, each epoch's drain and closing round (the
# simulator used to count 0 rounds here: its rounds were per device, left out with handovers). How many a waiting
# server answers is the backhaul's rule (sfsim.network.backhaul.ServerRounds.idle, the runtime's ServerSync.idle):
# both halves follow it, so they are compared with each other, op for op.
CASES = {(1, 1, False): (1, 1), (2, 2, True): (1, 3), (1, 2, True): (1, 3), (2, 1, False): (1, 1)}
SLOW = [(1, 2, True), (2, 1, False)]  # the other two combinations, ~10 s each


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(("every", "epochs", "drop"),
                         [pytest.param(*c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_rounds_with_a_handover_and_a_drop_equal_the_runtimes(tiny_gpt2, tmp_path, every, epochs, drop):
    from sfsim.outputs.trace import read_chrome_trace
    from tests.test_multiserver import _cfg
    from trainer.run.launch import run
    from trainer.validate.compare import ValidateConfig, predict

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dev = handover_scenario(tmp_path, every, drop)
    m = run(_cfg(tiny_gpt2, tmp_path / "run", devices=dev, method="fedlora", train_samples=32, epochs=epochs,
                 emulate="all", server_order="fifo"))
    vc = ValidateConfig(devices=str(dev), model=tiny_gpt2, method="fedlora", out=str(tmp_path / "v"), max_len=48,
                        data_dir=str(FIXTURES / "data"), train_samples=32, server_order="fifo", epochs=epochs)
    sim = predict(vc, m)
    measured = read_chrome_trace(tmp_path / "run" / "trace.json")
    for server, fedavg in zip(("mec-a", "mec-b"), CASES[every, epochs, drop], strict=True):
        ops = server_ops(measured, server)
        assert ops == server_ops(sim.events, server) and ops.count("A") == fedavg
    rounds = ops.count("S")
    assert {k: v["sync_rounds"] for k, v in m["servers"].items()} == dict.fromkeys(["mec-a", "mec-b"], rounds)
    assert sim.sync_rounds == rounds and m["backhaul_bytes_by_server"] == sim.backhaul_bytes_by_server
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == \
        [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers] == [("mec-a", "mec-b", 2)]
    gone = ["stay-a", "stay-b"] if drop else ["stay-b"]
    assert m["samples_not_trained"] == sim.samples_not_trained == dict.fromkeys(gone, 8 * epochs)
    # per device: mover's downloads came from both servers (summed: merge_servers); uploads carry the runtime's loss
    # record too (3 floats an optimizer step, one a micro-batch). A round sent to a device that has left (stay-b is
    # never online; stay-a in epoch 2) reaches no device: neither half counts it (trainer.transport.dynamics.departed).
    # Both count what the server sends: the average once per round a device is in, stay-a's round it drops in (sent
    # at 0 s, online until 0.9 s) included; the simulator times its downloads after every upload (none before the
    # first, one after the last) but counts them as the runtime's (sfsim.schedules.fedsync.present).
    assert m["downlink_bytes_by_device"] == sim.downlink_bytes_by_device
    assert m["downlink_bytes_by_device"]["stay-b"] == 0
    steps = {"mover": 4, "stay-a": 0 if drop else 2, "stay-b": 0}
    assert m["uplink_bytes_by_device"] == {n: b + 12 * steps[n] * epochs for n, b in sim.uplink_bytes_by_device.items()}


# -- the simulator alone -----------------------------------------------------------------------------------------
def test_each_epoch_drains_and_closes_before_the_next_starts():
    """tests/test_baseline_sync.py's 2 servers, one device each (2 FedAvg rounds an epoch), sync every 3, 2 epochs:
    epoch 1 ends with a drain round (no round was due) and the closing round, at once after each server's second
    aggregate and before its device's next download (the runtime's ``finish_sync`` after every epoch); epoch 2
    has a round after its first FedAvg round (the third), then the drain and closing rounds end the run. A device
    downloads at each round's start (the initial adapters at 0), none after its last FedAvg."""
    from tests.test_baseline_sync import backhaul_events, scenario, sizes

    sc = scenario({"every": 3}, epochs=2)
    res = sfsim.simulate(sc, "fedlora", trace=True)
    f = sizes(sc)[2]
    assert res.sync_rounds == 5 and res.backhaul_bytes_by_server == {"a": 10 * f, "b": 10 * f}
    busy, lat = f * 8 / 1e9, 5e-3
    aggregates = [e.start + e.dur for e in res.events if e.lane == "a" and e.op == "aggregate"]
    sends = [e.start for e in backhaul_events(res) if e.lane == "backhaul:a" and e.op == "sync-send"]
    downloads = [e.start for e in res.events if e.lane == "downlink:da"]
    assert len(aggregates) == len(downloads) == 4 and len(sends) == 5
    assert sends[0] == aggregates[1] and sends[1] == pytest.approx(sends[0] + 2 * (busy + lat), rel=1e-12)
    assert downloads[0] == 0.0 and downloads[1] == aggregates[0]  # the initial adapters; then the first average
    assert downloads[2] == pytest.approx(sends[1] + 2 * (busy + lat), rel=1e-12)  # epoch 2 waits for the closing
    assert sends[2] == aggregates[2] and downloads[3] == pytest.approx(sends[2] + 2 * (busy + lat), rel=1e-12)
    assert sends[3] == aggregates[3] and res.makespan_s == pytest.approx(sends[4] + 2 * (busy + lat), rel=1e-12)
    assert server_ops(res.events, "a") == server_ops(res.events, "b") == "AAS" + "RSR" + "ASRA" + "SRSR"


@pytest.mark.parametrize(("every", "rounds"), [(1, (2, 2)), (2, (1, 2))])
def test_a_server_that_holds_no_device_answers_the_others_rounds(every, rounds):
    """A third server without devices (and no visitor) trains nothing: its epoch has no round, so it drains at once
    (the runtime's ``fed_finish``) and answers every round of the others. Every 1 (joint) its drain rounds take the
    average: the rounds are the two-server run's; every 2 they do not, so after the others' one round (the last of
    both) a closing round is due, as in the runtime."""
    from tests.test_baseline_sync import scenario, sizes

    two = sfsim.simulate(scenario({"every": every}), "fedlora")
    three = sfsim.simulate(scenario({"every": every}, servers=("a", "b", "c")), "fedlora")
    f = sizes(scenario())[2]
    assert (two.sync_rounds, three.sync_rounds) == rounds
    assert three.backhaul_bytes_by_server == dict.fromkeys("abc", 2 * f * rounds[1])


# -- the runtime's per-device counts of a device that moved -----------------------------------------------------
def test_a_device_that_moved_is_counted_on_every_server_it_talked_to():
    """Each server counts its downlink to a device (and the device's own report, flops and uplink, reaches the server
    it ends on, the others saying 0): merged, a device that handed over has the sum. One server's count used to win
    (the last server's: mover's downlink read 0 after mec-a had sent it two rounds), and a malformed count is one
    line naming the server."""
    from sfsim.errors import SfsimError
    from tests.test_runtime_peer_fields import _part
    from trainer.run.fleet import Fleet
    from trainer.run.merge import merge_servers

    fl = Fleet(["mec-a", "mec-b"], ["d", "e"], {"d": 0, "e": 1})
    a = _part("d", "mec-a", downlink_bytes_by_device={"d": 3, "e": 0}, uplink_bytes_by_device={"d": 2, "e": 0})
    b = _part("e", "mec-b", downlink_bytes_by_device={"d": 7, "e": 3}, uplink_bytes_by_device={"d": 0, "e": 2})
    m = merge_servers([a, b], fl)
    assert m["downlink_bytes_by_device"] == {"d": 10, "e": 3} and m["uplink_bytes_by_device"] == {"d": 2, "e": 2}
    assert m["samples_by_device"] == {"d": 4, "e": 4} and m["device_flops"] == {"d": 1, "e": 1}
    with pytest.raises(SfsimError, match="^backhaul: server mec-b's end-of-run part: malformed downlink_bytes_by_dev"):
        merge_servers([a, _part("e", "mec-b", downlink_bytes_by_device={"e": "3"})], fl)


# -- random fleets -----------------------------------------------------------------------------------------------------
def _random_fleet(seed: int, folder: Path):
    """2 or 3 servers, 1 to 4 devices, each maybe handing over (1 to 3 times) and maybe pausing or dropping, 1 or 2
    epochs, ``training.sync`` every 1 to 3 rounds in sync or async mode."""
    import random

    rng = random.Random(seed)
    servers = [f"s{k}" for k in range(rng.choice([2, 2, 3]))]
    devices = []
    for i in range(rng.randint(1, 4)):
        d = {"name": f"d{i}", "flops": f"{rng.choice([50, 100, 400])} MFLOPS", "memory": "4 GiB",
             "samples": rng.choice([4, 8, 12, 20]), "server": rng.choice(servers),
             "uplink": {"bandwidth": f"{rng.choice([0.5, 2, 10])} Mbps", "latency": "5 ms"},
             "downlink": {"bandwidth": "5 Mbps", "latency": "5 ms"}}
        if rng.random() < 0.5:
            at = 0.0
            d["handover"] = [{"at": f"{(at := at + rng.uniform(0.2, 3.0)):.2f} s", "to": rng.choice(servers)}
                             for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.4:
            windows, t = [], rng.choice([0.0, 0.5])
            for _ in range(rng.randint(1, 3)):
                end = t + rng.uniform(0.3, 4.0)
                windows.append([round(t, 2), round(end, 2)])
                t = end + rng.uniform(0.2, 2.0)
            if rng.random() < 0.5:
                windows[-1][1] = 1000
            (folder / f"d{i}.yaml").write_text(f"d{i}: {windows}\n")
            d["availability"] = {"file": str(folder / f"d{i}.yaml"), "churn": rng.choice(["pause", "drop"])}
        devices.append(d)
    training = {"micro_batch": 4, "epochs": rng.choice([1, 2]), "local_steps": rng.choice([1, 2, 3]),
                "accumulate": rng.choice([1, 2]), "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                "sync": {"every": rng.choice([1, 2, 3]), "mode": rng.choice(["sync", "async"])}}
    return sfsim.scenario_from_dict({
        "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2}, "training": training,
        "servers": [{"name": s, "flops": "10 TFLOPS", "memory": "16 GiB",
                     "backhaul": {"bandwidth": "100 Mbps", "latency": "5 ms"}} for s in servers],
        "devices": devices})


def _check_fleets(seeds, folder: Path) -> None:
    """Every fleet's run ends (no backhaul round waits for ever: a device that left answers every later round with a
    ``leave`` of that round's epoch, so a server waiting for it stops), every server joins every round, and every
    device's bytes are its adapter uploads and downloads."""
    from sfsim.cost.model import CostModel

    for seed in seeds:
        sc = _random_fleet(seed, folder)
        res = sfsim.simulate(sc, "fedlora")
        adapter = CostModel(sc).adapter_bytes(range(sc.arch.n_layers), head=True)
        assert res.backhaul_bytes_by_server == {s.name: 2 * adapter * res.sync_rounds for s in sc.servers}, seed
        assert all(b % adapter == 0 for b in [*res.uplink_bytes_by_device.values(),
                                              *res.downlink_bytes_by_device.values()]), seed


def test_random_fleets_end_and_every_server_joins_every_round(tmp_path):
    """300 seeded random fleets (handovers, pauses and drops, several epochs, sync and async)."""
    _check_fleets(range(300), tmp_path)


@pytest.mark.slow
def test_many_random_fleets_end_and_every_server_joins_every_round(tmp_path):
    _check_fleets(range(300, 3300), tmp_path)
