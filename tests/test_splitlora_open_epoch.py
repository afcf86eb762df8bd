"""SplitLoRA: a server whose own clients are done keeps its epoch open while a visitor may still come (issue 21).

The runtime's server (``trainer.methods.splitlora``, ``while sum(left.values()) > 0 or waiting``) ends its epoch only
once every device that will train on it this epoch is done, visitors included: a visitor that may still come (a later
leg on it, its epoch not over elsewhere) holds the epoch open, and no FedAvg round closes the server's own clients' part
before it (the round then would leave out a client that trains this epoch on this server). The simulator closed that
part with a round and opened another for the visitor (``InTime._visitor`` now waits; the fast path's joint loop replays
the wait, ``sfsim.fast.splitmoves._visit``). Engine-level fleets are hand-made on links of one byte a second."""

from __future__ import annotations

import yaml

import sfsim
from sfsim.engine.pool import DeviceTimes, Engine, ServerTimes
from sfsim.network.legs import Leg, Motion
from sfsim.schedules import Job, ReplayConfig, splitlora
from sfsim.schedules.network import FedNetwork


def leg(server: int, at: float = 0.0) -> Leg:
    """A leg on ``server`` from ``at``: 1 s per upload and per download (8 bit/s, one byte), no latency."""
    return Leg(at, server, 8.0, 1.0, 0.0, None, 8.0, 0.0)


def device(name: str, server: int, n: int, srv_f: float = 1.0) -> DeviceTimes:
    """``n`` micro-batches (one epoch): F 1 s, an activation, a gradient or an adapter 1 s each way; server F ``srv_f``."""
    return DeviceTimes(name, server=server, n=n, per_epoch=n, f=1.0, srv_f=srv_f, up_s=1.0, down_s=1.0,
                       sync_up_s=1.0, sync_down_s=1.0, up_bytes=1.0, down_bytes=1.0, sync_bytes=1.0)


def replay(devices: list[DeviceTimes], legs: dict[int, list[Leg]], servers: int) -> tuple[Engine, float]:
    """SplitLoRA without ``training.sync`` or backhaul (FedAvg every 100 steps: at each epoch's end), aggregate 0.5 s
    per client; returns the engine (its trace) and the makespan."""
    motions = {i: Motion(lg) for i, lg in legs.items()}
    for m in motions.values():
        m.done = 0
    engine = Engine(trace=True)
    job = Job(devices, [ServerTimes(f"s{k}", aggregate=0.5) for k in range(servers)],
              network=FedNetwork(motions, motions))
    splitlora.run(engine, job, ReplayConfig())
    return engine, engine.run()


def rounds(engine) -> list[tuple]:
    """Each FedAvg round: (server, aggregate start, aggregate seconds), in time order."""
    return sorted((e.lane, e.start, e.dur) for e in engine.events if e.op == "aggregate")


def uploads(engine) -> list[tuple[float, str]]:
    """Every adapter upload (start, device): the rounds' members."""
    return sorted((e.start, e.device) for e in engine.events if e.lane.startswith("link:") and e.mb == -1)


def forwards(engine, server: str) -> list[tuple[float, str, int]]:
    """``server``'s forwards (start, device, micro-batch)."""
    return sorted((e.start, e.device, e.mb) for e in engine.events if e.lane == server and e.op == "F")


def test_two_servers_the_visitors_server_rounds_once_with_it():
    """v (2 micro-batches) on s0 hands over to s1 at 2.5 s; b (1 micro-batch, server F 0.5 s) on s1.

    b: F 0-1, up 1-2, s1's F 2-2.5, its gradient 2.5-3.5: s1's own client is done at 2.5. v: F 0-1, up 1-2, s0's F 2-3
    (out at s0 when its leg ended: s0 serves it, then v joins s1 at 3); its gradient 3-4. s1 keeps its epoch open: fwd
    at 3, v's F 4-5 (after its gradient), up 5-6, s1's F 6-7, gradient 7-8. The one round on s1 at 7: b's adapters up
    7-8, v's 8-9 (after its gradient), aggregate 2 x 0.5 s 9-10, the average down 10-11: makespan 11. s0 holds nobody
    at its epoch's end: no round. Before: s1's round at 2.5 with b alone (up 3.5-4.5, aggregate 4.5-5, down 5-6), then
    v's micro-batch 1 and a second round (makespan 14 s with v in that first round)."""
    engine, end = replay([device("v", 0, 2), device("b", 1, 1, srv_f=0.5)], {0: [leg(0), leg(1, 2.5)], 1: [leg(1)]}, 2)
    assert forwards(engine, "s0") == [(2.0, "v", 0)] and forwards(engine, "s1") == [(2.0, "b", 0), (6.0, "v", 1)]
    assert rounds(engine) == [("s1", 9.0, 1.0)]
    assert uploads(engine) == [(7.0, "b"), (8.0, "v")]
    assert end == 11.0


def test_three_servers_each_keeps_its_epoch_open_for_the_visitor_that_comes():
    """v (3 micro-batches) goes s0 -> s1 at 2.5 s -> s2 at 6.5 s; b1 on s1 and b2 on s2 as b above (done at 2.5).

    v's micro-batch 0 on s0 (served 2-3, joins s1 at 3), 1 on s1 (F 4-5, up 5-6, s1's F 6-7: out when its leg ended at
    6.5, so it joins s2 at 7; gradient 7-8), 2 on s2 (fwd at 7, F 8-9, up 9-10, s2's F 10-11, gradient 11-12). s1's round
    at 7 takes b1 alone (v is s2's from 7): up 7-8, aggregate 8-8.5, down 8.5-9.5. s2 waits for v: one round at 11, b2
    up 11-12, v up 12-13, aggregate 13-14, down 14-15."""
    devices = [device("v", 0, 3), device("b1", 1, 1, srv_f=0.5), device("b2", 2, 1, srv_f=0.5)]
    engine, end = replay(devices, {0: [leg(0), leg(1, 2.5), leg(2, 6.5)], 1: [leg(1)], 2: [leg(2)]}, 3)
    assert [forwards(engine, s) for s in ("s0", "s1", "s2")] == [
        [(2.0, "v", 0)], [(2.0, "b1", 0), (6.0, "v", 1)], [(2.0, "b2", 0), (10.0, "v", 2)]]
    assert rounds(engine) == [("s1", 8.0, 0.5), ("s2", 13.0, 1.0)]
    assert uploads(engine) == [(7.0, "b1"), (11.0, "b2"), (12.0, "v")]
    assert end == 15.0


def typed_fleet(epochs: int) -> dict:
    """Two servers without ``training.sync`` or backhaul, FedAvg every 2 server steps: a ``mover`` type (``count: 1``,
    16 samples) on mec-a that hands over to mec-b at 150 s, after mec-b's ``stay`` type (``count: 2``, 4 samples each)
    is done with its epoch (~52 s)."""
    link = {"bandwidth": "0.5 Mbps", "latency": "5 ms"}
    down = {"bandwidth": "2 Mbps", "latency": "5 ms"}
    return {"description": "a visitor after its new server's own clients",
            "model": {"name": "gpt2", "seq_len": 32, "task": "classification", "num_labels": 2},
            "training": {"micro_batch": 4, "epochs": epochs, "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                         "accumulate": 1, "server_policy": "fifo", "fedavg_every": 2},
            "servers": [{"name": "mec-a", "flops": "10 TFLOPS", "memory": "16 GiB"},
                        {"name": "mec-b", "flops": "10 TFLOPS", "memory": "16 GiB"}],
            "devices": [{"name": "mover", "count": 1, "server": "mec-a", "flops": "20 MFLOPS", "memory": "4 GiB",
                         "samples": 16, "uplink": link, "downlink": down,
                         "handover": [{"at": "150 s", "to": "mec-b",
                                       "uplink": {"bandwidth": "1 Mbps", "latency": "5 ms"}}]},
                        {"name": "stay", "count": 2, "server": "mec-b", "flops": "40 MFLOPS", "memory": "4 GiB",
                         "samples": 4, "uplink": link, "downlink": down}]}


def test_a_count_one_type_visits_a_server_whose_two_stayers_are_done(tmp_path):
    """gpt2, cut 1, 2 epochs. mec-b's stayers train epoch 0 by ~52 s (two server steps: a FedAvg is due, but no client
    has work left in the segment's epoch, so the runtime makes none) and mec-b waits for mover, which joins after
    micro-batch 0 on mec-a (~263 s): its 3 micro-batches there, a round after 2 (all three members), its epoch's round
    after the third. Only then does mec-b's epoch 1 start, the stayers' and mover's. Before the fix mec-b averaged the
    stayers alone at ~52 s and ran their epoch 1 while mover trained its epoch 0 (makespan 1331.604 s). The fast path's
    joint loop replays it (``auto``: fast, the same figures)."""
    from sfsim.scenario.config import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(typed_fleet(2)))
    res = sfsim.simulate(load_scenario(path), "splitlora", splits=1, trace=True, engine="simpy")
    auto = sfsim.simulate(load_scenario(path), "splitlora", splits=1, engine="auto")
    assert (auto.engine, auto.engine_note) == ("fast", None)
    mine, fast = res.to_dict(), auto.to_dict()
    for key in ("engine", "engine_note"):
        mine.pop(key, None), fast.pop(key, None)
    assert mine == fast and res.makespan_s == 1332.2039630390282
    lane = [(e.op, e.device, e.mb) for e in sorted(res.events, key=lambda e: e.start) if e.lane == "mec-b"
            and e.op in ("F", "aggregate")]
    assert lane == [("F", "stay-0", 0), ("F", "stay-1", 0), ("F", "mover", 1), ("F", "mover", 2), ("aggregate", "", -1),
                    ("F", "mover", 3), ("aggregate", "", -1),  # epoch 0: one round with mover, one to close it
                    ("F", "mover", 4), ("aggregate", "", -1), ("F", "stay-0", 1), ("F", "mover", 5),
                    ("aggregate", "", -1), ("F", "stay-1", 1), ("F", "mover", 6), ("aggregate", "", -1),
                    ("F", "mover", 7), ("aggregate", "", -1)]
    joined = min(e.start for e in res.events if e.lane == "mec-b" and e.device == "mover")  # its micro-batch 1 there
    first = min(e.start for e in res.events if e.lane == "mec-b" and e.op == "aggregate")
    members = sorted(e.device for e in res.events if e.lane.startswith("link:") and e.mb == -1
                     and joined < e.start < first)
    assert (round(joined, 3), round(first, 3)) == (263.296, 500.961) and members == ["mover", "stay-0", "stay-1"]
