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
