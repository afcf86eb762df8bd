"""Why no server reads a ``join`` from a later epoch than its own (issue 21).

``trainer.transport.handover.Visits.joined`` counts a ``join`` only in the server's own epoch. A join from an
*earlier* epoch is a leftover (a device's ``join`` of 0 read after the server moved on) and rightly counts for nothing.
A join from a *later* epoch, if it were ever read, would be thrown away while the server may wait for that visitor
in the next epoch (a hang, or a peer-timeout loss). It is never read, because the servers close every epoch together,
``training.sync`` or not: with several servers each has a :class:`trainer.transport.backhaul.ServerSync`
(``trainer.run.launch``: without ``training.sync``, ``every`` None), ``Method.train_epoch`` ends with
``finish_sync`` (``ServerSync.finish`` / ``fed_finish``), a round over every server, and it returns only once every
server has left its epoch (the last step where it reads a ``join``: ``SplitLoRA._segment``, ``FedLoRA._collect``).
(A resumable method's epoch-end checkpoint adds two more barriers over the same links, ``trainer.run.resume``:
the closing round is the one every multi-server run has.) A device enters epoch e+1 only on its server's ``start`` of
e+1, sent after that round; so a join it sends in
e+1 waits, unread (a server takes only the kinds it asks for), in the new server's inbox until that server's
own epoch e+1. A waiting server answers no round without ``training.sync`` (``idle``: nothing opens one), so a slow
server cannot be lured through its closing round early either. A peer's join naming an epoch the run does not have
is refused on receipt (``wire``; tests/test_multiserver.py). The real run: tests/test_join_later_epoch_run.py.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tests.test_runtime_peer_fields import _linked


def _waits(sync, state: list[torch.Tensor], fed: bool, seconds: float) -> None:
    """A slow server still in its epoch for ``seconds``, waiting for a visitor (``idle`` again and again)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        sync.fed_idle(state) if fed else sync.idle(state)
    if sync._idle is not None:
        sync._idle.join()


@pytest.mark.parametrize(("every", "mode"), [(None, "sync"), (2, "sync"), (2, "async")])
@pytest.mark.parametrize("fed", [False, True])
def test_no_server_leaves_its_epoch_before_every_server_closes_it(every, mode, fed):
    """Server a has trained its epoch (``finish``; FedLoRA ``fed_finish``) while server b is still in its own, waiting
    for a visitor: a cannot leave its epoch (so none of its devices can start the next one and hand over to b) until
    b closes its epoch too; then both leave it with one model. Without training.sync b answers no round meanwhile."""
    from trainer.transport.backhaul import ServerSync

    s0, s1, _ = _linked()
    a = ServerSync(s0, 0, 2, every, mode, 1.0, None, "a")
    b = ServerSync(s1, 1, 2, every, mode, 1.0, None, "b")
    xa, xb = [torch.ones(3)], [torch.full((3,), 3.0)]
    left = threading.Event()

    def close_a() -> None:
        (a.fed_finish(xa, 1.0) if fed else a.finish(xa))
        left.set()

    th = threading.Thread(target=close_a, daemon=True)
    th.start()
    _waits(b, xb, fed, 0.4)
    assert not left.is_set(), "a server left its epoch while another was still in it"
    assert b.rounds == 0  # a waiting server joins only rounds opened from a step: a's closing one is not
    (b.fed_finish(xb, 1.0) if fed else b.finish(xb))
    th.join(timeout=10)
    assert left.is_set() and torch.equal(xa[0], xb[0]) and torch.equal(xa[0], torch.full((3,), 2.0))
    assert a.rounds == b.rounds == (1 if every is None else 2)  # the closing round (with sync: a drain round first)


def test_an_epoch_ends_with_the_closing_round_before_the_server_starts_its_devices_next_epoch():
    """``Method.train_epoch``: the server's epoch (where it reads joins), then, with several servers, its closing round
    (``finish_sync``), before it returns to the runner, which then starts the next epoch (``start`` to its devices)."""
    from types import SimpleNamespace

    from trainer.methods.common import Method

    calls: list[str] = []
    fake = SimpleNamespace(server_epoch=lambda e, cb: calls.append(f"epoch {e}"), sync=object(),
                           finish_sync=lambda: calls.append("closing round"), pull_server=lambda: calls.append("pull"))
    Method.train_epoch(fake, 1, None)
    assert calls == ["epoch 1", "closing round", "pull"]
