"""A cached device's ``gone`` (issue 21, ``trainer.transport.departure``): the wire checks its header, a server checks
who sent it and decides by its stamp, not by when it arrived, and a malformed one costs only its sender."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from trainer.transport.runtime import Message


class _Transport:
    """A server's transport with a real inbox: ``recv_up`` by device and kinds, ``drop`` records, ``send_*`` record."""

    def __init__(self, drops: dict[str, float] | None = None):
        from trainer.transport.distributed import _Inbox

        self.inbox, self.drops, self.dropped, self.sent = _Inbox(), drops or {}, {}, []

    def recv_up(self, device, kinds=None):
        return self.inbox.take(device, kinds, lambda: None)

    def drop(self, device: str, reason: str) -> None:
        self.dropped[device] = reason
        self.inbox.lose(device, reason)

    @property
    def lost(self) -> dict[str, str]:
        return dict(self.inbox.lost)

    def send_up(self, msg: Message) -> None:
        self.sent.append((None, msg))

    def send_to(self, rank: int, msg: Message) -> None:
        self.sent.append((rank, msg))


def _server(known=("mover",), drops=None, now: float = 10.0):
    from trainer.transport.departure import Departures

    tr = _Transport(drops)
    clock = SimpleNamespace(t=now)
    setup = SimpleNamespace(transport=tr, meter=SimpleNamespace(now=lambda: clock.t, presence={}))
    lost = []
    return Departures(setup, lambda n: n in known, lambda n, why: lost.append((n, why))), tr, lost, clock


def _gone(name: str, at: float | None) -> Message:
    return Message(name, -1, kind="gone", epoch=1, at=at)


def test_the_wire_takes_a_gone_only_stamped_with_no_micro_batch_or_count_in_an_epoch_of_the_run():
    from trainer.transport.wire import (
        Kind,
        Limits,
        Packet,
        WireError,
        check_specs,
        decode_header,
        encode_header,
    )

    lim = Limits(hidden=8, max_batch=4, max_len=16, epochs=3)
    ok = Packet(Kind.GONE, 0, -1, 1, 0, at=3_750_000)
    assert decode_header(encode_header(ok), {Kind.GONE})[0].at == 3_750_000
    check_specs(ok, [], lim)
    for bad, why in ((Packet(Kind.GONE, 0, -1, 1, 0), r"^a GONE must carry its departure instant \(at\)$"),
                     (Packet(Kind.GONE, 0, 2, 1, 0, at=1), r"^a GONE names no micro-batch and no count \(mb 2, aux 0"),
                     (Packet(Kind.GONE, 0, -1, 1, 5, at=1), r"^a GONE names no micro-batch and no count \(mb -1, aux 5"),
                     (Packet(Kind.GONE, 0, -1, 3, 0, at=1), r"^a GONE in epoch 3; the run has epochs 0\.\.2$")):
        with pytest.raises(WireError, match=why):
            check_specs(bad, [], lim)
    for at in (-5, (1 << 50) + 1):  # the stamp's range: the header's own check
        h = encode_header(Packet(Kind.GONE, 0, -1, 1, 0))
        h[8] = at
        with pytest.raises(WireError, match=r"^GONE stamped at .* us"):
            decode_header(h, {Kind.GONE})
    with pytest.raises(WireError, match="not allowed in this direction"):
        decode_header(encode_header(ok), {Kind.ACT})  # a device never receives one


def test_a_server_decides_by_the_gones_stamp_not_by_its_arrival():
    """A gone stamped at 3.75 s stops a replay starting at 3.75 s or later, not one at 3.7 s; when the scenario says
    the device is gone by now and its gone has not come, the server waits for it and still compares the stamp: one
    that arrives 50 ms late but is stamped by now stops the replay."""
    dep, tr, lost, _ = _server(drops={"mover": 3.75})
    assert not dep.gone("mover", 3.7)  # not due yet: no wait, it trains
    tr.inbox.put(_gone("mover", 3.75))
    assert not dep.gone("mover", 3.7) and dep.gone("mover", 3.75) and dep.gone("mover", 9.0)
    dep, tr, lost, _ = _server(drops={"mover": 3.75})
    threading.Timer(0.05, tr.inbox.put, (_gone("mover", 3.75),)).start()
    t0 = time.monotonic()
    assert dep.gone("mover", 3.8)  # due: it waited for the gone, stamped before 3.8 s
    assert 0.04 < time.monotonic() - t0 < 2.0 and not lost and not tr.dropped
    dep, tr, lost, _ = _server(drops={"mover": 3.75})
    threading.Timer(0.05, tr.inbox.put, (_gone("mover", 3.79),)).start()
    assert dep.gone("mover", 3.8) and not dep.gone("mover", 3.78)  # its stamp, not its arrival, decides


def test_a_gone_that_breaks_the_rules_costs_only_its_sender_in_one_line(capsys, monkeypatch):
    """No stamp, a device that never sent to this server nor is held here, a second departure at another instant:
    the device is dropped with one line and its gone is not used; a repeat of the same stamp is harmless; a gone the
    scenario says is due that never comes (GONE_WAIT_S) drops the device too, and its replay does not train."""
    import trainer.transport.departure as departure

    dep, tr, lost, _ = _server(known=("mover", "other"))
    tr.inbox.put(_gone("stranger", 1.0))
    tr.inbox.put(_gone("mover", None))
    tr.inbox.put(_gone("other", 2.0))
    tr.inbox.put(_gone("other", 2.0))  # the same departure again: fine
    dep.read()
    assert dep.at == {"other": 2.0}
    assert tr.dropped == {"stranger": "a gone from a device that never sent to this server and is not held here",
                          "mover": "a gone without a departure instant (at None)"}
    assert [n for n, _ in lost] == ["stranger", "mover"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["bad message from stranger: a gone from a device that never sent to this server and is not held "
                     "here; dropping stranger", "bad message from mover: a gone without a departure instant (at None); "
                     "dropping mover"]
    tr.inbox.put(_gone("other", 2.5))
    dep.read()
    assert tr.dropped["other"] == "a second gone (at 2.500000 s, after one at 2.000000 s)"
    assert capsys.readouterr().err == ("bad message from other: a second gone (at 2.500000 s, after one at 2.000000 "
                                       "s); dropping other\n")
    monkeypatch.setattr(departure, "GONE_WAIT_S", 0.1)
    dep, tr, lost, _ = _server(drops={"mover": 3.75})
    assert dep.gone("mover", 4.0)
    assert tr.dropped == {"mover": "no gone by 0.1 s after its drop instant"}
    assert capsys.readouterr().err.strip() == "warning: mover: no gone by 0.1 s after its drop instant; dropping mover"


def test_a_device_says_gone_once_to_every_server_it_sent_to_and_its_own_but_the_one_it_left():
    """mover sent to ranks 0 and 1 and is held by 1: after its leave to 1 in epoch 1, its gone goes to 0 only; at its
    drop instant (a cached epoch) to 0 and 1; once either way. Without handovers (rank None) it goes up to its server."""
    from trainer.transport.departure import Goodbye

    tr = _Transport()
    setup = SimpleNamespace(transport=tr, meter=SimpleNamespace(now=lambda: 0.0, presence={}))
    bye = Goodbye(setup)
    for rank in (0, 0, 1):
        bye.sent("mover", rank)
    bye.say("mover", 1.25, home=1, epoch=0, skip=1)
    bye.say("mover", 3.75, home=1, epoch=1)
    assert [(r, m.kind, m.at, m.epoch) for r, m in tr.sent] == [(0, "gone", 1.25, 0)]
    bye.sent("solo", None)
    bye.say("solo", 3.75, home=None, epoch=1)
    bye.sent("late", 0)
    bye.say("late", 3.75, home=1, epoch=1)
    assert [(r, m.device, m.at) for r, m in tr.sent[1:]] == [(None, "solo", 3.75), (0, "late", 3.75), (1, "late", 3.75)]


def test_the_cache_lists_what_a_departed_device_held_and_says_the_rows_of_each(tmp_path):
    """``ActivationCache.stop``: no later epoch replays the device, what it held stays in the report; ``rows_at``:
    the samples of one held micro-batch, from memory or from the file."""
    from trainer.transport.cache import ActivationCache

    def mb(rows: int) -> dict[str, torch.Tensor]:
        return {"hidden": torch.zeros(rows, 3, 4), "attention_mask": torch.ones(rows, 3, dtype=torch.uint8),
                "labels": torch.zeros(rows, dtype=torch.int64)}

    cache = ActivationCache(memory=sum(t.nbytes for t in mb(4).values()), folder=tmp_path)
    cache.fill(0, resumed=False)
    cache.put("mover", mb(4))
    cache.put("mover", mb(3))  # on file
    cache.put("stay", mb(4))
    assert (cache.rows_at("mover", 0), cache.rows_at("mover", 1)) == (4, 3) and cache.file_bytes > 0
    cache.stop("mover")
    assert cache.replays(1) == {"stay": 1} and len(cache.report()["devices"]["mover"]["held"]) == 2
    cache.close()
