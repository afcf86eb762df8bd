"""SplitFrozen over several epochs on several servers with a device that hands over and then waits for a credit of
its new server (issue 19). One epoch at a time the servers keep the runtime's books of each epoch
(:class:`sfsim.engine.epochs.EpochBooks`); the runtime's device sends ``moved`` and ``join`` when it hands over, before
any credit of its new server (``trainer.methods.splitfrozen._move_if_due``), and so does the simulator's now
(:func:`sfsim.schedules.splitfrozen._take_credit`). Before, it told them only when its next send started: with
``training.credits: server`` it first waited for a credit of the new server's shared pool, that server waited for a
backhaul round, and the old server, still counting the device's micro-batches, never joined it: "sync round N waited
for ever" (``/work/tools/fresh/f3_four_srv_sync.yaml``: 4 servers, sync every 1, 2 epochs, one van handing over)."""

from __future__ import annotations

import random

import pytest

import sfsim
from sfsim.scenario.config import scenario_from_dict
from tests.test_splitfrozen_moves import _epochs, moving_run

F3 = {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
      "training": {"micro_batch": 4, "epochs": 2, "accumulate": 1, "buffer": 2, "credits": "server",
                   "sync": {"every": 1, "mode": "sync"}, "lora": {"rank": 4, "alpha": 8}},
      "servers": [{"name": n, "flops": f"{f} TFLOPS", "memory": "16 GiB",
                   "backhaul": {"bandwidth": f"{b} Mbps", "latency": f"{lat} ms"}}
                  for n, f, b, lat in (("a", 4, 500, 3), ("b", 4, 500, 3), ("c", 9, 900, 2), ("d", 2, 200, 6))],
      "devices": [{"name": "van", "count": 1, "flops": "150 GFLOPS", "memory": "8 GiB", "samples": 64, "server": "a",
                   "uplink": {"bandwidth": "25 Mbps", "latency": "12 ms"},
                   "downlink": {"bandwidth": "60 Mbps", "latency": "12 ms"}, "handover": [{"at": "0.4 s", "to": "c"}]},
                  {"name": "node", "count": 7, "flops": "80 GFLOPS", "memory": "4 GiB", "samples": 32,
                   "uplink": {"bandwidth": "20 Mbps", "latency": "10 ms"},
                   "downlink": {"bandwidth": "50 Mbps", "latency": "10 ms"}},
                  {"name": "watch", "count": 2, "flops": "10 GFLOPS", "memory": "1 GiB", "samples": 8, "server": "d",
                   "uplink": {"bandwidth": "2 Mbps", "latency": "30 ms"},
                   "downlink": {"bandwidth": "5 Mbps", "latency": "30 ms"}}]}


def fleet(seed: int, churn: bool = False) -> dict:
    """A random fleet: 2-4 servers with backhaul links, ``training.sync`` every 1-3 steps (sync or async), credits on
    the server or the device, 2-3 epochs, 2-4 device types, the first (and others at random) of ``count: 1`` handing
    over 1-3 times between the servers; micro-batches of 4 samples, every device's samples a multiple of 4.
    ``churn``: some device types pause or drop (availability), and some fleets have no ``training.sync`` (each
    epoch's closing round alone)."""
    data = _fleet(seed)
    if churn:
        rng = random.Random(seed + 777)
        for d in data["devices"]:
            if rng.random() < 0.3:
                d["availability"] = {"mean_on": f"{rng.choice([1, 3, 10])} s",
                                     "mean_off": f"{rng.choice([0.3, 1])} s", "churn": rng.choice(["pause", "drop"])}
        if rng.random() < 0.3:
            del data["training"]["sync"]
    return data


def _fleet(seed: int) -> dict:
    rng = random.Random(seed)
    n_srv = rng.randint(2, 4)
    servers = [{"name": f"s{k}", "flops": f"{rng.choice([2, 4, 9])} TFLOPS", "memory": "16 GiB",
                "backhaul": {"bandwidth": f"{rng.choice([200, 500, 900])} Mbps",
                             "latency": f"{rng.choice([2, 3, 6])} ms"}} for k in range(n_srv)]
    devices = []
    for t in range(rng.randint(2, 4)):
        d = {"name": f"t{t}", "count": 1 if t == 0 or rng.random() < 0.5 else rng.randint(2, 4),
             "flops": f"{rng.choice([10, 80, 150])} GFLOPS", "memory": "4 GiB", "samples": rng.choice([8, 16, 32, 64]),
             "server": f"s{rng.randrange(n_srv)}",
             "uplink": {"bandwidth": f"{rng.choice([2, 20, 25])} Mbps", "latency": f"{rng.choice([10, 12, 30])} ms"},
             "downlink": {"bandwidth": "50 Mbps", "latency": "10 ms"}}
        if d["count"] == 1 and (t == 0 or rng.random() < 0.5):
            at, legs = 0.0, []
            for _ in range(rng.randint(1, 3)):
                at += rng.uniform(0.05, 2.0)
                legs.append({"at": f"{at:.3f} s", "to": f"s{rng.randrange(n_srv)}"})
            d["handover"] = legs
        devices.append(d)
    return {"model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "epochs": rng.randint(2, 3), "accumulate": rng.randint(1, 2),
                         "buffer": rng.randint(1, 3), "credits": rng.choice(["server", "device"]),
                         "sync": {"every": rng.randint(1, 3), "mode": rng.choice(["sync", "async"])}},
            "servers": servers, "devices": devices}


def finishes(data: dict, schedule: str = "splitfrozen") -> None:
    """SimPy's run of ``data`` ends, having trained every micro-batch of every epoch but those of devices that
    dropped (none without availability)."""
    res = sfsim.simulate(scenario_from_dict(data, source="fleet.yaml"), schedule, engine="simpy")
    epochs, lost = data["training"]["epochs"], sum(res.samples_not_trained.values())
    assert res.micro_batches * 4 + lost == sum(d["count"] * d["samples"] * epochs for d in data["devices"])
    assert res.sync_rounds > 0
    if not any(d.get("availability") for d in data["devices"]):
        assert lost == 0


def test_the_reported_fleet_finishes():
    """f3_four_srv_sync.yaml: the van hands over from a to c at 0.4 s and waits for a credit of c."""
    finishes(F3)


def test_random_moving_fleets_over_epochs_finish():
    """300 random fleets (credits on the server and on the device, sync and async, 2-3 epochs) all finish; without
    the fix 15 of them (all with ``credits: server``) stop with "waited for ever"."""
    seen = set()
    for seed in range(300):
        data = fleet(seed)
        seen.add((data["training"]["credits"], data["training"]["sync"]["mode"], data["training"]["epochs"]))
        finishes(data)
    assert len(seen) == 8


def test_random_churning_moving_fleets_over_epochs_finish():
    """300 fleets whose device types may also pause or drop, some without training.sync, pipelined and sequential,
    all finish. Three more fixes (found by scanning such fleets) keep them going; without each, the fleets that stop
    with "waited for ever":

    * a credit that a device leaving mid-send gives back when it leaves (a soft timer) while another device waits
      for it, after everything else is done (:meth:`sfsim.engine.core.Engine.hold_open`): seed 0, both schedules;
    * a server that waited only for a visitor, and saw it join and move away at one instant, answered no more
      rounds (:meth:`sfsim.engine.worker.WorkerLoop._visit_rounds`): seeds 10 and 173, sequential."""
    for seed in range(300):
        data = fleet(seed, churn=True)
        for schedule in ("splitfrozen", "splitfrozen-sequential"):
            finishes(data, schedule)


@pytest.mark.parametrize(("seed", "closing"), [(288, False), (320, False), (840, True)])
def test_moving_job_fleets_that_stopped_train_each_micro_batch_once(seed, closing):
    """Fleets of tests/test_splitfrozen_moves.py (handovers, pause, drop, varying uplinks) that stopped with "waited
    for ever": 288, a device that moved between epochs, started by the server it left, sent its next epoch to a server
    that had not opened it yet, which trained it in the epoch before (:meth:`sfsim.engine.worker.WorkerLoop.arrives`
    now holds it until the opening, as the runtime's queue); 320, the visitor's rounds as above; 840 (each epoch's
    closing round), the credit given back by a device that left."""
    engine, job = moving_run(seed, closing)
    assert engine is not None
    moving = job.network.moving
    sent = {d.name: (moving[i].sent if i in moving else d.sent) for i, d in enumerate(job.devices)}
    assert _epochs(engine, job)[2] == {(n, j): 1 for n, k in sent.items() for j in range(k)}


@pytest.mark.slow
@pytest.mark.parametrize("start", [300, 1300])
def test_many_random_moving_fleets_over_epochs_finish(start):
    """1,000 more fleets each, and as many that churn."""
    for seed in range(start, start + 1000):
        finishes(fleet(seed))
        data = fleet(seed, churn=True)
        for schedule in ("splitfrozen", "splitfrozen-sequential"):
            finishes(data, schedule)
