"""A SplitFrozen ``moved`` sent ahead of its leg's last micro-batch (``SplitFrozen._moved_ahead``): the device sends it
when the next handover is due by the end of the send now starting, so that the old server reads the move before it
trains that micro-batch (its step after it is then its last, as the simulator's). What the peer sends is checked
before use: the transport keeps one credit for that micro-batch only when ``mb`` counts exactly one more than came,
and the server applies the move when that one is read; a ``moved`` naming more costs its sender alone. The real runs
are in tests/test_handover_epoch2.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from trainer.methods.splitfrozen import SplitFrozen
from trainer.run.measure import Meter
from trainer.transport.distributed import DistTransport
from trainer.transport.runtime import Message
from trainer.transport.wire import Kind, Packet, WireError


def _transport() -> DistTransport:
    """A server's transport with no peers (only its credit books are used here)."""
    tr = DistTransport(0, ["mover"], {}, Meter(), None, servers=1, visits={"mover": [1]})
    tr.moves_ahead = True  # as SplitFrozen's server sets it
    return tr


def _act(tr: DistTransport, mb: int, epoch: int = 0) -> None:
    tr._permit("mover", Packet(Kind.ACT, 0, mb, epoch, 0, {"hidden": torch.zeros(1)}))


def test_a_moved_ahead_of_one_micro_batch_keeps_one_credit_for_it_and_no_more():
    tr = _transport()
    tr._permits["mover"], tr._next["mover"] = 2, (0, 0)  # its start: 2 credits from micro-batch 0
    _act(tr, 0)
    tr._permit("mover", Packet(Kind.MOVED, 0, 2, 0, 1))  # sent 2 (the second still to come): one credit stays
    assert tr._permits["mover"] == 1
    _act(tr, 1)
    try:
        _act(tr, 2)
    except WireError as err:
        assert str(err) == "activations sent without a credit"
    else:
        raise AssertionError("a second activation after the moved was accepted")


def test_a_moved_naming_what_came_or_more_than_one_ahead_takes_every_credit():
    for mb, epoch in ((1, 0), (3, 0), (2, 1)):  # all came; two still to come; another epoch's count
        tr = _transport()
        tr._permits["mover"], tr._next["mover"] = 2, (0, 0)
        _act(tr, 0)
        tr._permit("mover", Packet(Kind.MOVED, 0, mb, epoch, 1))
        assert tr._permits["mover"] == 0, (mb, epoch)


def _server(seen: int) -> tuple[SplitFrozen, list]:
    """The server side of SplitFrozen with only what ``_early`` and ``lose`` read."""
    dropped = []
    sf = SplitFrozen.__new__(SplitFrozen)
    sf.setup = SimpleNamespace(transport=SimpleNamespace(drop=lambda n, why: dropped.append((n, why))),
                               micro_batch=4, samples={"mover": 16})
    sf.lost, sf.cursor, sf._epoch, sf._ahead, sf._seen = {}, {"mover": 1}, 0, {}, {"mover": seen}
    return sf, dropped


def test_the_server_holds_a_moved_ahead_until_that_micro_batch_and_drops_a_device_naming_more():
    sf, dropped = _server(1)
    assert sf._early(Message("mover", 2, kind="moved", aux=1), {"mover": 3})  # one still to come: held
    assert sf._ahead["mover"].mb == 2 and not dropped
    sf, _ = _server(1)
    assert not sf._early(Message("mover", 1, kind="moved", aux=1), {"mover": 3})  # all came: applies now
    assert not sf._early(Message("mover", 2, kind="moved", aux=1, epoch=1), {"mover": 3})  # another epoch's
    left = {"mover": 3}
    sf, dropped = _server(1)
    assert sf._early(Message("mover", 4, kind="moved", aux=1), left)
    why = "a moved naming 4 micro-batches sent this epoch where 1 came here (at most 1 more)"
    assert dropped == [("mover", why)] and sf.lost["mover"]["reason"] == why and "mover" not in left
    assert not sf._ahead


def test_only_a_method_that_takes_a_moved_ahead_keeps_a_credit_for_it():
    """SplitLoRA's server never takes a moved ahead (its serve loop would crash on an activation after a moved): on its
    transport a moved takes every credit, as before."""
    tr = _transport()
    tr.moves_ahead = False
    tr._permits["mover"], tr._next["mover"] = 2, (0, 0)
    _act(tr, 0)
    tr._permit("mover", Packet(Kind.MOVED, 0, 2, 0, 1))
    assert tr._permits["mover"] == 0
