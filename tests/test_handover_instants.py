"""A mover's ``join`` and ``moved`` against the backhaul rounds, decided by instants, not by arrival (issue 21).

The simulator delivers a mover's ``join`` (to its new server) and ``moved`` (to its old one) when the device's send
starts; the runtime's arrive one uplink latency later. A round opened in that gap by a server that has not read the
``moved`` carries no announcement of the join (``tests/test_splitfrozen_idle.py``'s mechanism), so the waiting server
used to answer it with zeros, where the simulator's, which had the join, joins it from its own step. Now the messages
carry the instant their send started (``Message.at``), each round vector its arrival at server 0 and each invitation
the round's invitation instant; the waiting server reads a join stamped by that instant first, and waits for one that
may still come (its visitor's leg on it has begun) one uplink latency. The race is forced with a test hook that holds a
handover's ``moved`` and ``join`` back (``trainer.transport.distributed.HANDOVER_DELAY_S``, set in every role's process,
so the servers know the longer latency as they know a link's).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _delayed_role(cfg_json: str, delay: float, role: str, master: str, world: int, rank: int, log: str) -> None:
    """A normal role whose handover messages take ``delay`` seconds more than the link's latency."""
    import os

    from trainer.run import launch
    from trainer.transport import distributed, secure

    distributed.HANDOVER_DELAY_S = delay
    encrypt = "off" if secure.encrypt_default(multi_host=False) is False else "on"
    launch._role_process(cfg_json, role, rank, world, master, False, log, os.environ[secure.SECRET_FILE_ENV], encrypt)


def _hold_handovers(monkeypatch, delay: float) -> None:
    """Every local launch from now on runs each role with :func:`_delayed_role`."""
    from sfsim.scenario.config import load_scenario
    from trainer.run import launch

    real = launch.launch_local

    def hooked(cfg, resume=False, **kw):
        scenario = load_scenario(cfg.devices)
        n_srv, world = len(scenario.servers), len(scenario.servers) + len(scenario.devices)
        cfg_json = json.dumps(dataclasses.asdict(cfg))
        targets = {r: functools.partial(_delayed_role, cfg_json, delay, "server" if r < n_srv else "device")
                   for r in range(world)}
        return real(cfg, resume=resume, targets=targets)

    monkeypatch.setattr(launch, "launch_local", hooked)


def test_a_join_sent_before_a_round_opened_by_a_server_that_has_not_read_the_move(tiny_gpt2, tmp_path, monkeypatch):
    """runtime_handover.yaml without stay-b (mec-b waits for mover only), 2 epochs, sync every 1; mover's handover to
    mec-b at 2.0 s falls after its epoch-0 sends, so it moves when its first send of epoch 1 starts (~2.7 s); its
    ``moved`` and ``join`` are held back 0.6 s. mec-a, which has not read the ``moved``, opens rounds from stay-a's steps
    meanwhile; the invitations reach mec-b before the join. In the simulator the join came first (at the send's start),
    so mec-b joins those rounds from its own steps: 12 rounds. With arrival order deciding, mec-b answered one with zeros
    as a waiting server: 13 rounds a server (the fix's checks removed: 13). Now the invitation instant and the join's
    stamp decide: 12 rounds a server, the same backhaul bytes and order of sends, receives and steps on each server."""
    from tests.test_splitfrozen_moves import _fixture, _real, _same

    _hold_handovers(monkeypatch, 0.6)
    data = _fixture("runtime_handover.yaml")
    data["devices"] = [d for d in data["devices"] if d["name"] != "stay-b"]
    data["devices"][1]["samples"] = 16
    data["devices"][0]["handover"][0]["at"] = "2.0 s"
    data["training"]["sync"] = {"every": 1, "mode": "sync"}
    m, sim = _real(tiny_gpt2, tmp_path, data, 32)
    assert [(h["from"], h["to"], h["sent_before"]) for h in m["handovers"]] == [("mec-a", "mec-b", 4)]
    assert [(h["from"], h["to"], h["sent_before"]) for h in sim.handovers] == [("mec-a", "mec-b", 4)]
    _same(m, sim, tmp_path, 12)
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}


def test_a_join_stamped_ahead_of_the_servers_clock_drops_that_device_alone():
    """A ``join``'s stamp (its send's start) is checked on receipt against the server's clock: one stamped 100 s ahead
    (more than the clocks' 1 s sync slack) costs its sender, in one line; one stamped now is taken with its instant.
    (The header's range, 0..2**50 us or -1, is checked on decode: tests/test_runtime.py.)"""
    import socket
    import time

    from trainer.run.measure import Meter
    from trainer.transport import wire
    from trainer.transport.distributed import DistTransport
    from trainer.transport.secure import Channel
    from trainer.transport.wire import Kind, Limits, Packet

    lines = []
    for ahead, ok in ((0.0, True), (100.0, False)):
        a, b = socket.socketpair()
        meter = Meter(count_flops=False)
        tr = DistTransport(0, ["mover"], {1: Channel(a)}, meter, Limits(hidden=32, max_batch=4, max_len=8), servers=1,
                           log=lines.append, heartbeat_s=0.05)
        at = meter.now() + ahead
        Channel(b).send(wire.encode_header(Packet(Kind.JOIN, 0, 3, 0, 2, at=round(at * 1e6))).numpy().tobytes())
        end = time.monotonic() + 5
        while time.monotonic() < end and not tr.inbox.arrivals and not tr.dropped:
            time.sleep(0.01)
        if ok:
            msg = tr.recv_up("mover", {"join"})
            assert (msg.kind, msg.mb, msg.aux, msg.at) == ("join", 3, 2, round(at * 1e6) / 1e6) and not tr.dropped
        else:
            why = tr.dropped["mover"]
            assert why.startswith("bad message: a JOIN stamped ") and "after this server's clock" in why, why
            assert len(lines) == 1 and lines[0].startswith("bad message from rank 1 (mover): a JOIN stamped "), lines
            assert set(tr.lost) == {"mover"}
        tr.close(wait_s=0.1)
        b.close()


def _old_server(stamp_delay: float | None, kind: str = "moved"):
    """SplitFrozen's server ``a`` holding only ``mover`` (2 micro-batches of its epoch left here), whose leg on ``a``
    ended at 1 ms by the run's clock (to ``b``), about to step; a thread delivers mover's ``kind`` 30 ms later, stamped
    ``stamp_delay`` seconds after the step's instant (None: nothing comes). Returns (the server, left, the stamp)."""
    import threading
    import time
    from types import SimpleNamespace

    from trainer.methods.splitfrozen import SplitFrozen
    from trainer.run.measure import Meter
    from trainer.transport.distributed import DistTransport
    from trainer.transport.runtime import Message
    from trainer.transport.wire import Limits

    tr = DistTransport(0, ["mover"], {}, Meter(count_flops=False), Limits(hidden=32, max_batch=4, max_len=8), servers=1,
                       visits={"mover": [1]})  # (no peer of its own here: no threads)
    sf = SplitFrozen.__new__(SplitFrozen)
    sf.legs = {"mover": [(0.0, 0, "a"), (0.001, 1, "b")]}
    sf._places, sf._ahead, sf._epoch, sf._seen, sf.taken = set(), {}, 0, {"mover": 2}, {}
    sf.sync = SimpleNamespace(announce=lambda name, ranks: None)
    sf.setup = SimpleNamespace(server="a", server_order="fifo", devices=[], meter=tr.meter, transport=tr)
    time.sleep(0.01)
    step_at = tr.meter.now()
    if stamp_delay is not None:
        msg = Message("mover", 2, kind=kind, aux=1, epoch=0, at=step_at + stamp_delay)
        threading.Timer(0.03, tr.inbox.put, (msg,)).start()
    return sf, {"mover": 2}, step_at


def test_a_moved_stamped_before_the_step_is_awaited_and_makes_it_the_last():
    """Item 2 of issue 21: the handover falls after mover's last send to ``a`` ended but before ``a`` steps on it; the
    simulator's ``a`` knows of the move from its instant (its step is its last: no drain and closing rounds more), the
    runtime's ``moved`` arrives one uplink latency later, after the step. Now ``a`` awaits it before the step (at most
    the latency + 50 ms) and applies it when stamped by the step's instant: nothing is left, the step is the last."""
    sf, left, _ = _old_server(-0.005)
    sf._await_move(left)
    assert left == {"mover": 0} and sf.taken == {"mover": 1}


@pytest.mark.parametrize(("stamp", "kind"), [(0.2, "moved"), (None, "moved"), (-0.005, "act")])
def test_a_moved_after_the_step_or_none_or_an_activation_first_leaves_the_step_as_it_was(stamp, kind):
    """A moved stamped after the step's instant (the device moved later: the simulator's step still had it to come), no
    message within the latency + 50 ms, or an activation first (the device still sent here): the step is not the last,
    and whatever came stays unread for the server's loop."""
    import time

    sf, left, _ = _old_server(stamp, kind)
    t0 = time.monotonic()
    sf._await_move(left)
    assert left == {"mover": 2} and sf.taken == {}
    assert time.monotonic() - t0 < 1.0
    time.sleep(0.05)
    assert len(sf.setup.transport.inbox.arrivals) == (0 if stamp is None else 1)
