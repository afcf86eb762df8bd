"""Handovers of every method with device links between server processes (trainer.transport.handover).

The runs launch 2 server + 3 device processes on loopback with a tiny random GPT-2 through ``sfsim
validate`` (``tests/fixtures/runtime_handover_drop.yaml``: ``mover`` hands over from mec-a to mec-b,
``stay-b`` is never online, so mec-b waits for its visitor while it answers mec-a's backhaul rounds), and
compare what the runtime did with what the simulator predicts on the same (validated) scenario.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.emulation_guard import timed
from trainer.transport.handover import Legs

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scenario(tmp_path: Path, method: str) -> Path:
    """The fixture; for FedLoRA (rounds of 2 micro-batches) faster devices and the handover between the mover's
    two uploads (~1.2 s and ~2.5 s), so that its first round is averaged on mec-a and its second on mec-b."""
    data = yaml.safe_load((FIXTURES / "runtime_handover_drop.yaml").read_text())
    for d in data["devices"]:
        if "availability" in d:
            d["availability"]["file"] = str(FIXTURES / d["availability"]["file"])
        if method == "fedlora":
            d["flops"] = "100 MFLOPS"
    if method == "fedlora":
        data["devices"][0]["handover"][0]["at"] = "1.6 s"
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(out / "adapter" / "adapter_model.safetensors")
    tensors.update({f"head.{k}": v for k, v in load_file(out / "adapter" / "head.safetensors").items()})
    return tensors


@pytest.mark.parametrize(("method", "before"), [("splitlora", 1), ("fedlora", 2)])
def test_splitlora_and_fedlora_hand_over_as_the_simulator_says(tiny_gpt2, tmp_path, method, before):
    from click.testing import CliRunner

    from sfsim.cli import main
    from sfsim.outputs.trace import read_chrome_trace

    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(_scenario(tmp_path, method)), "--model", tiny_gpt2,
                                    "--method", method, "--split", "1", "--max-len", "48", "--train-samples", "32",
                                    "--data-dir", str(FIXTURES / "data"), "--out", str(out), "--server-order", "fifo"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    m = json.loads((out / "run" / "metrics.json").read_text())
    # SplitLoRA: mover's first micro-batch goes up before 0.8 s, the other three after, to mec-b; FedLoRA: its first
    # round's upload (2 micro-batches) before 1.6 s, its second after
    (pred,), (meas,) = rep["handovers"]["predicted"], rep["handovers"]["measured"]
    assert (meas["device"], meas["from"], meas["to"], meas["sent_before"]) == \
        (pred["device"], pred["from"], pred["to"], pred["sent_before"]) == ("mover", "mec-a", "mec-b", before)
    assert m["samples_not_trained"] == rep["samples_not_trained"]["predicted"] == {"stay-b": 8}
    assert m["lost_devices"] == {} and m["missing_reports"] == []
    # both servers end as one model
    a, b = _adapter(out / "run"), _adapter(out / "run" / "servers" / "mec-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    events = read_chrome_trace(out / "run" / "trace.json")
    if method == "splitlora":  # the server that trained each of mover's micro-batches
        trained = sorted((e.lane, e.device) for e in events if e.op == "F" and e.lane.startswith("mec-"))
        assert trained.count(("mec-a", "mover")) == 1 and trained.count(("mec-b", "mover")) == 3
        assert ("mec-b", "stay-b") not in trained
    sends = sorted((e for e in events if e.lane == "link:mover" and e.op == "send"), key=lambda e: e.start)
    assert sends[-1].dur < 0.75 * sends[0].dur  # the new leg's uplink is twice as fast


def _validate(tiny_gpt2: str, tmp_path: Path, method: str, data: dict, *extra: str) -> tuple[dict, dict, Path]:
    """``sfsim validate`` on ``data`` (a scenario): (report.json, the run's metrics.json, the run's folder)."""
    from click.testing import CliRunner

    from sfsim.cli import main

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(tmp_path / "s.yaml"), "--model", tiny_gpt2, "--method",
                                    method, "--split", "1", "--max-len", "48", "--train-samples", "32", "--data-dir",
                                    str(FIXTURES / "data"), "--out", str(out), "--server-order", "fifo", *extra])
    assert res.exit_code == 0, res.output
    return (json.loads((out / "report.json").read_text()), json.loads((out / "run" / "metrics.json").read_text()),
            out / "run")


@pytest.mark.parametrize(("legs", "before", "trained_on_b"), [
    ([("mec-b", 0.7), ("mec-a", 2.0)], [1, 2], [1]),  # A -> B -> A
    ([("mec-b", 0.7), ("mec-a", 2.0), ("mec-b", 3.2)], [1, 2, 3], [1, 3]),  # A -> B -> A -> B
])
def test_a_splitlora_client_goes_back_to_a_server_it_left(tiny_gpt2, tmp_path, legs, before, trained_on_b):
    """SplitLoRA's mover sends at ~0.35, 1.5, 2.7 and 3.85 s; its server releases it when a leg ends while it is idle,
    and it lands on the leg holding then (a join only there: a join per leg passed through let the server of a leg
    already over command it too, which trained a micro-batch twice and another never, or hung the run). stay-b is
    never online, so mec-b holds no device of its own and waits for the visitor while it answers mec-a's rounds."""
    from sfsim.outputs.trace import read_chrome_trace

    data = yaml.safe_load(_scenario(tmp_path, "splitlora").read_text())
    data["devices"][0]["handover"] = [{"at": f"{at} s", "to": to} for to, at in legs]
    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitlora", data)
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert [b for *_, b in moves["measured"]] == before
    assert m["samples_not_trained"] == rep["samples_not_trained"]["predicted"] == {"stay-b": 8}
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
    trained = sorted((e.device, e.mb, e.lane) for e in read_chrome_trace(run / "trace.json")
                     if e.op == "F" and e.lane.startswith("mec-"))
    # every micro-batch trained once, on the server of the leg holding when its upload started
    assert trained == sorted([("mover", j, "mec-b" if j in trained_on_b else "mec-a") for j in range(4)]
                             + [("stay-a", j, "mec-a") for j in range(2)])
    a, b = _adapter(run), _adapter(run / "servers" / "mec-b")  # both servers end as one model
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fedlora_goes_back_and_forth_as_the_simulator_says(tiny_gpt2, tmp_path):
    """FedLoRA A -> B -> A -> B, a round per micro-batch: mover uploads at ~0.6, 1.35, 2.1 and 2.85 s, each to the
    server of the leg holding when the upload starts (0.3 s: B, 1.0 s: A, 2.5 s: B).

    Without ``training.sync`` (the closing round only, after each server's end), so that the uploads come at these
    times: with the fixture's ``sync: {every: 2, mode: sync}`` mec-b holds mover's second round until mec-a's second
    round (~1.5 s), so its third upload starts after 2.5 s (the simulator models that wait too, with each server's
    rounds: tests/test_fedlora_sync.py)."""
    data = yaml.safe_load(_scenario(tmp_path, "fedlora").read_text())
    data["training"]["local_steps"] = 1
    del data["training"]["sync"]
    data["devices"][0]["handover"] = [{"at": "0.3 s", "to": "mec-b"}, {"at": "1.0 s", "to": "mec-a"},
                                      {"at": "2.5 s", "to": "mec-b"}]
    rep, m, run = _validate(tiny_gpt2, tmp_path, "fedlora", data)
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert moves["predicted"] == [("mec-a", "mec-b", 0), ("mec-b", "mec-a", 1), ("mec-a", "mec-b", 3)]
    assert m["samples_not_trained"] == rep["samples_not_trained"]["predicted"] == {"stay-b": 8}
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
    # every local step reached one server's round once: mover's 4 and stay-a's 2
    assert sum(len(s["train_loss_history"]) for s in m["servers"].values()) == 4 + 2
    a, b = _adapter(run), _adapter(run / "servers" / "mec-b")  # the closing round makes one model
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("method", "legs", "before", "untrained"), [
    # sends at ~0.3, 0.7, 1.1, 1.5 s; epoch 1 on mec-b, which holds it (not a handover in epoch 1: both halves end
    # epoch 0 with a barrier, but the runtime's epoch-end wait (evaluation, adapter) is not simulated without
    # training.eval_samples, so their epoch-1 clocks differ)
    ("splitfrozen", [("mec-b", 0.8)], [2], {}),
    # sends at ~0.35, 1.5, 2.7, 3.85 s, then (epoch 1) ~5.1, 6.3, 7.5 and 8.6 s
    ("splitlora", [("mec-b", 0.7), ("mec-a", 5.6)], [1, 5], {"stay-b": 16}),
    # uploads (2 micro-batches each) at ~1.2 and 2.5 s, then (epoch 1) ~3.8 and 5.1 s
    ("fedlora", [("mec-b", 0.3), ("mec-a", 4.5)], [0, 6], {"stay-b": 16}),
])
def test_handovers_over_two_epochs(tiny_gpt2, tmp_path, method, legs, before, untrained):
    """A -> B in epoch 0, back to A in epoch 1 (SplitFrozen: A -> B in epoch 0): the server holding a device at an epoch's end starts it in the next
    (SplitFrozen's old server started it too, and its second ``start`` made it send its epoch again), and
    ``sent_before`` counts over the run, as the simulator's (SplitFrozen counted within the epoch)."""
    from sfsim.outputs.trace import read_chrome_trace

    data = yaml.safe_load(((FIXTURES / "runtime_handover.yaml") if method == "splitfrozen"
                           else _scenario(tmp_path, method)).read_text())
    if method == "fedlora":  # no training.sync, as above (its rounds with handovers: tests/test_fedlora_sync.py)
        del data["training"]["sync"]
    data["devices"][0]["handover"] = [{"at": f"{at} s", "to": to} for to, at in legs]
    rep, m, run = _validate(tiny_gpt2, tmp_path, method, data, "--epochs", "2")
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    path = ["mec-a"] + [to for to, _ in legs]
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert moves["predicted"] == list(zip(path[:-1], path[1:], before, strict=True))
    assert m["samples_not_trained"] == rep["samples_not_trained"]["predicted"] == untrained
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
    if method == "fedlora":  # every local step reached one server's round once: mover's 4 and stay-a's 2, twice
        assert sum(len(s["train_loss_history"]) for s in m["servers"].values()) == 2 * (4 + 2)
    else:  # every micro-batch trained once per epoch
        from collections import Counter

        trained = Counter((e.device, e.mb) for e in read_chrome_trace(run / "trace.json")
                          if e.op == "F" and e.lane.startswith("mec-"))
        devices = {"mover": 4, "stay-a": 2} if untrained else {"mover": 4, "stay-a": 2, "stay-b": 2}
        assert trained == {(d, j): 2 for d, n in devices.items() for j in range(n)}
    a, b = _adapter(run), _adapter(run / "servers" / "mec-b")  # both servers end as one model
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_splitfrozen_micro_batch_waiting_for_the_uplink_goes_to_the_leg_holding_when_its_send_starts(tiny_gpt2,
                                                                                                      tmp_path):
    """On a 0.25 Mbps uplink mover's activations (0.8 s each) queue: its third forward ends at ~1.4 s and its send
    starts when the link frees, at ~1.9 s, after the handover at 1.6 s: it goes to mec-b, as in the simulator (the
    runtime chose the leg when the forward ended, and sent it to mec-a)."""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["devices"][0]["uplink"]["bandwidth"] = "0.25 Mbps"
    data["devices"][0]["handover"][0]["at"] = "1.6 s"
    rep, m, _ = _validate(tiny_gpt2, tmp_path, "splitfrozen", data)
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert moves["predicted"] == [("mec-a", "mec-b", 2)]
    assert m["lost_devices"] == {} and m["missing_reports"] == []


def test_legs_say_who_holds_a_device_and_who_may_come():
    legs = Legs({"m": [(0.0, 0, "a"), (1.0, 1, "b"), (2.0, 0, "a"), (3.0, 1, "b")], "s": [(0.0, 1, "b")]})
    assert legs.moving() and not Legs({"s": [(0.0, 1, "b")]}).moving()
    assert [legs.leg_at("m", t) for t in (0.0, 0.99, 1.0, 2.5, 9.0)] == [0, 0, 1, 2, 3]
    assert [legs.holds("m", "a", t) for t in (0.5, 1.5, 2.5, 3.5)] == [True, False, True, False]
    assert legs.holds("s", "b", 5.0) and legs.holds("x", "a", 5.0)  # no legs: it stays where it is
    assert legs.comes_back("m", "a", 1) and not legs.comes_back("m", "a", 2) and legs.comes_back("m", "b", 2)
    assert legs.visitors("a") == {"m"} and legs.visitors("b") == {"m"}


def test_a_device_passing_through_several_legs_at_once_only_joins_the_one_it_lands_on():
    """The messages of :meth:`Mover.move` (whose double joins made two servers command one SplitLoRA client)."""
    from types import SimpleNamespace

    from trainer.transport.handover import Mover

    class Wire:
        def __init__(self):
            self.home, self.sent = 0, []

        def send_up(self, msg):
            self.sent.append((self.home, msg.kind, msg.mb, msg.aux))

        def send_to(self, rank, msg):
            self.sent.append((rank, msg.kind, msg.mb, msg.aux))

        def move(self, name, rank):
            self.home = rank

    clock = [0.0]
    legs = Legs({"m": [(0.0, 0, "a"), (1.0, 1, "b"), (2.0, 2, "c"), (3.0, 0, "a"), (4.0, 1, "b")]})
    wire, meter = Wire(), SimpleNamespace(now=lambda: clock[0], events=[])
    mover = Mover(legs, wire, meter)
    assert not mover.move("m", 0, 1, 3, 1, 4) and wire.sent == []  # nothing due
    clock[0] = 3.5  # legs b, c and a are due: it lands on a, where it was; c never sees it again
    assert mover.move("m", 0, 1, 3, 1, 4) and mover.leg["m"] == 3
    assert wire.sent == [(2, "join", -1, 0)]  # (not forced: a, which commands it, never knew it had gone)
    assert [(h["from"], h["to"], h["sent_before"]) for h in mover.moves] == [("a", "b", 1), ("b", "c", 1), ("c", "a", 1)]
    wire.sent.clear()
    assert mover.move("m", 1, 2, 2, 2, 4, force=True)  # released by a before its leg b holds: one leg on
    assert wire.sent == [(0, "moved", 2, 4), (1, "join", 2, 2)] and mover.leg["m"] == 4
    assert mover.moves[-1]["sent_before"] == 4 + 2  # in epoch 1: counted over the run, as the simulator
    assert not mover.move("m", 1, 2, 2, 2, 4, force=True)  # no leg left
    mover = Mover(legs, wire, meter)
    wire.home, wire.sent = 0, []
    clock[0] = 2.5  # released by a after b's leg: lands on c; b comes later (leg 4), so it keeps waiting
    assert mover.move("m", 0, 1, 3, 1, 4, force=True)
    assert wire.sent == [(0, "moved", 1, 2), (2, "join", 1, 3)]


def test_each_join_brings_credits_again_after_the_device_moved_away_within_its_budget():
    """A -> B -> A -> B in one epoch: B's transport gives the window on each join that follows a ``moved``, never
    twice for one visit, and never more than the device's budget over the epoch."""
    from trainer.run.measure import Meter
    from trainer.transport import wire
    from trainer.transport.distributed import DistTransport
    from trainer.transport.wire import Kind, Limits, Packet, WireError

    lim = Limits(hidden=32, max_batch=4, max_len=8, budget=(5,), epochs=2)
    tr = DistTransport(0, [], {}, Meter(count_flops=False), lim, window=2)

    def send(kind: Kind, epoch: int = 0, aux: int = 0, mb: int = 3) -> None:
        p = Packet(kind, 0, mb, epoch, aux)
        if kind != Kind.ACT:  # an activation's header names its codec: not what this test is about
            wire.check_specs(p, [], lim)
        tr._permit("d", p)

    def acts(n: int) -> None:
        for _ in range(n):
            send(Kind.ACT)
        with pytest.raises(WireError, match="without a credit"):
            send(Kind.ACT)

    send(Kind.JOIN, aux=4)  # first visit to B: the window
    acts(2)
    send(Kind.JOIN, aux=4)  # the same visit again: nothing
    acts(0)
    send(Kind.MOVED, aux=2)  # to A ...
    send(Kind.JOIN, aux=2)  # ... and back: the window again
    acts(2)
    send(Kind.MOVED, aux=4)
    send(Kind.JOIN, aux=2)  # a third visit: only 1 left of the epoch's budget of 5
    acts(1)
    send(Kind.MOVED, aux=6)
    send(Kind.JOIN, aux=2)  # the budget is spent for epoch 0
    acts(0)
    send(Kind.JOIN, epoch=1, aux=1)  # a new epoch: one micro-batch left, one credit
    acts(1)
    send(Kind.MOVED, epoch=1, aux=2)
    acts(0)  # moved takes the credits it held here away
    with pytest.raises(WireError, match="a moved to leg -1"):
        send(Kind.MOVED, aux=-1)


@pytest.mark.parametrize("method", ["splitfrozen"])
def test_a_device_that_goes_back_and_forth_trains_everything_where_the_simulator_says(tiny_gpt2, tmp_path, method):
    """A -> B -> A -> B in one epoch (mover sends at ~0.3, 0.7, 1.1 and 1.5 s; handovers at 0.5, 0.9 and 1.3 s):
    each join opens credits again, each server waits while the device may come back, nothing is left untrained."""
    from click.testing import CliRunner

    from sfsim.cli import main

    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["devices"][0]["handover"] = [{"at": "0.5 s", "to": "mec-b"}, {"at": "0.9 s", "to": "mec-a"},
                                      {"at": "1.3 s", "to": "mec-b"}]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(tmp_path / "s.yaml"), "--model", tiny_gpt2, "--method",
                                    method, "--split", "1", "--max-len", "48", "--train-samples", "32", "--data-dir",
                                    str(FIXTURES / "data"), "--out", str(out), "--server-order", "fifo"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    m = json.loads((out / "run" / "metrics.json").read_text())
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert [(a, b) for a, b, _ in moves["measured"]] == [("mec-a", "mec-b"), ("mec-b", "mec-a"), ("mec-a", "mec-b")]
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
    assert sum(s["steps"] for s in m["servers"].values()) == 4 + 2 + 2  # every micro-batch of every device


def test_a_handover_after_the_devices_last_send_is_recorded_as_the_simulator_lists_it(tiny_gpt2, tmp_path):
    """SplitFrozen, 32 samples over the fleet: mover sends its 3 micro-batches by ~0.9 s (2 before its handover to
    mec-b at 0.8 s); its move back to mec-a at 1.5 s comes after its last send but before its process ends (stay-a
    sends 7 micro-batches, the run ends at ~2.2 s): the simulator lists it (``sent_after`` 0), and the device now
    records it at its end with every micro-batch before it (the runtime left it out)."""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["devices"][1]["samples"] = 32
    data["devices"][0]["handover"].append({"at": "1.5 s", "to": "mec-a"})
    rep, m, run = _validate(tiny_gpt2, tmp_path, "splitfrozen", data)
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert moves["predicted"] == [("mec-a", "mec-b", 2), ("mec-b", "mec-a", 3)]
    assert [h["sent_after"] for h in rep["handovers"]["predicted"]] == [1, 0]
    assert [h["at_s"] for h in m["handovers"]] == [0.8, 1.5]
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
