"""SplitFrozen's mixing pool (``server_policy: pool``) with devices that hand over, over several epochs with
``training.sync`` (issue 21).

The pool draws only when nothing more can arrive first (:class:`sfsim.engine.credits.Senders`). Its books of who
could still send did not follow the epoch books of devices that move (:class:`sfsim.engine.epochs.EpochBooks`): the
old server kept counting a mover's unsent micro-batches, the new one never counted them, and the next epoch counted
a device wherever it had once sent. The old server's pool then waited for a device that had moved away, held
micro-batches it never drew, never stepped, and a sync round waited for ever (102 of these 150 fleets stopped so).
Now the books move with the device (:meth:`sfsim.engine.worker.WorkerLoop._unsent`) and the pool draws as soon as
nothing more can come.
"""

from __future__ import annotations

from sfsim.engine.pool import Engine
from tests.test_splitfrozen_moves import _epochs, moving_run


def pool_run(seed: int) -> tuple[Engine | None, object]:
    """``tests.test_splitfrozen_moves.moving_run``'s fleet (2-3 epochs, training.sync every 1-3, either mode) under
    the mixing pool; the engine after the run (None: a round waited for ever) and the job."""
    return moving_run(seed, False, policy="pool")


def test_random_pool_fleets_with_handovers_and_sync_run_to_their_end():
    """150 random fleets: all but 2 end (fifo on the same fleets: all but 1; the rest are the rounds' own limit,
    which ``moving_run`` tolerates too), every micro-batch a device sent is trained exactly once, and no device
    forwards an epoch before every server ended its work on the one before."""
    ended = 0
    for seed in range(150):
        engine, job = pool_run(seed)
        if engine is None:
            continue
        ended += 1
        starts, ends, trained = _epochs(engine, job)
        moving = job.network.moving
        sent = {d.name: (moving[i].sent if i in moving else d.sent) for i, d in enumerate(job.devices)}
        assert trained == {(n, j): 1 for n, k in sent.items() for j in range(k)}, seed
        for ep in range(1, job.sync.epochs):
            if ep in starts:
                assert ends.get(ep - 1, 0.0) <= starts[ep], seed
    assert ended >= 148, ended
