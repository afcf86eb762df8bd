"""SplitFrozen over several epochs with several servers on the fast path (:mod:`sfsim.fast.synced`): each server opens
one epoch at a time after its drain and closing rounds (with ``training.sync``) or its closing round alone (without
it), and its devices wait for each epoch's start, as the SimPy engine's epoch gates
(:meth:`sfsim.engine.worker.WorkerLoop.by_epochs`). On seeded random fleets of 2-4 servers over 2-4 epochs, ``every``
1, 2, 3 or 5 in both modes or no ``training.sync``, pipelined or sequential, server or device credits, fifo,
round-robin, proportional or pool, with or without the activation cache (a server replays each later epoch from its
start): every figure equals the SimPy engine's (makespan, per device and per server, wait, end, mixing, pool peak,
the rounds and each server's backhaul bytes)."""

from __future__ import annotations

import random

import pytest

from sfsim.engine.pool import DeviceTimes, ServerTimes
from sfsim.fast.replay import uncovered
from sfsim.network.backhaul import SyncSpec
from sfsim.schedules import Job, ReplayConfig
from tests.test_fast_sync_frozen import POLICIES, _Scenario, _t, compare

SYNCS = [(1, "sync"), (1, "async"), (2, "sync"), (2, "async"), (3, "sync"), (3, "async"), (5, "sync"), (5, "async"),
         (None, "sync"), (None, "sync")]


def random_job(seed: int, ties: bool = False, every=False, big: bool = False, cache: bool = False
               ) -> tuple[Job, ReplayConfig, bool]:
    """2-4 servers, 0-8 devices (``big``: 10-30) sending 0-5 micro-batches an epoch (``big``: 0-12; some with a partial
    last one each epoch), 2-4 epochs; ``every`` False: random rounds (None among them: no training.sync); ``cache``:
    most devices send their first epoch only, their server replays the others (activation cache)."""
    rng = random.Random(seed)
    crng = random.Random(-seed - 7)  # the cache's draws: the fleet stays the one of the same seed without it
    ns, epochs = rng.randint(2, 4), rng.randint(2, 4)
    servers = [ServerTimes(f"s{k}", 1, _t(rng, ties, 0.2) if rng.random() < 0.8 else 0.0) for k in range(ns)]
    devices = []
    for i in range(rng.randint(10, 30) if big else rng.randint(0, 8)):
        per = rng.randint(0, 12 if big else 5)
        devices.append(DeviceTimes(
            f"d{i}", rng.randrange(ns), n=per * epochs, per_epoch=per,
            last=rng.choice((1.0, 1.0, 0.5)) if per else 1.0, f=_t(rng, ties, 1.0),
            warmup=_t(rng, ties, 0.5) if rng.random() < 0.2 else 0.0, up_s=_t(rng, ties, 1.0), up_l=_t(rng, ties, 0.2),
            srv_f=_t(rng, ties, 0.3), srv_b=_t(rng, ties, 0.3), srv_w=_t(rng, ties, 0.3) if rng.random() < 0.8 else 0.0,
            act_bytes=rng.choice((100.0, 250.0)), sent=per if cache and crng.random() < 0.85 else -1))
    job = Job(devices, servers)
    pick, mode = rng.choice(SYNCS)
    links = tuple((s.name, float("inf"), 0.0) if rng.random() < 0.15 else (s.name, rng.uniform(20.0, 400.0),
                                                                              _t(rng, ties, 0.1)) for s in servers)
    job.sync = SyncSpec(links, pick if every is False else every, mode, 10.0, 12.0, epochs)
    policy = rng.choice(POLICIES)
    cfg = ReplayConfig(buffer=rng.randint(1, 4), accumulate=rng.randint(1, 3), policy=policy,
                       credits=rng.choice(("server", "device")), decompose=rng.random() < 0.7, seed=rng.randrange(99),
                       pool_memory=rng.choice((None, 300.0)) if policy == "pool" else None)
    return job, cfg, rng.random() < 0.3


def check(seed: int, ties: bool, every=False, big: bool = False, cache: bool = False, wait: bool = False) -> str:
    """Compare one random job (:func:`tests.test_fast_sync_frozen.compare`); ``wait``: random epoch-end waits
    (``training.eval_samples``: 0 on some servers, ties with the fleet's times on some)."""
    waits = None
    if wait:
        rng = random.Random(seed + 10_000)
        ns = random.Random(seed).randint(2, 4)  # random_job's servers
        waits = {f"s{k}": rng.choice((0.0, 0.5, 1.0, rng.uniform(0.01, 2.0))) for k in range(ns)}
    return compare(lambda: random_job(seed, ties, every, big, cache), f"seed {seed} ties={ties} cache={cache}", waits)


@pytest.mark.parametrize("ties", [False, True])
def test_random_fleets_over_epochs_equal(ties):
    outcomes = [check(seed, ties) for seed in range(300)]
    assert outcomes.count("equal") >= 270, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.parametrize("ties", [False, True])
def test_closing_rounds_each_epoch_equal(ties):
    """No training.sync: each epoch's closing round alone, then the next epoch."""
    outcomes = [check(seed, ties, None) for seed in range(150)]
    assert outcomes.count("equal") >= 135, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.parametrize("ties", [False, True])
def test_cached_activations_over_epochs_equal(ties):
    """The activation cache: a device sends its first epoch, its server replays each later one from the epoch's start
    (WorkerLoop._next_epoch), each cached micro-batch eligible when the one before starts; with and without
    training.sync."""
    outcomes = [check(seed, ties, every, cache=True) for seed in range(150) for every in (False, None)]
    assert outcomes.count("equal") >= 270, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.parametrize("ties", [False, True])
def test_epoch_end_waits_over_epochs_equal(ties):
    """training.eval_samples: each server waits its epoch-end seconds after each epoch's rounds, before the next
    (WorkerLoop._epoch_end); with and without training.sync and the activation cache; who waited is compared too."""
    outcomes = [check(seed, ties, every, cache=seed % 3 == 0, wait=True) for seed in range(100) for every in (False, None)]
    assert outcomes.count("equal") >= 180, {o: outcomes.count(o) for o in set(outcomes)}


def test_bigger_fleets_over_epochs_equal():
    """10-30 devices, up to 12 micro-batches an epoch: credits and rounds crowd each epoch's end and start."""
    outcomes = [check(seed, seed % 2 == 1, big=True) for seed in range(60)]
    assert outcomes.count("equal") >= 54, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.slow
def test_many_random_fleets_over_epochs_equal():
    for ties in (False, True):
        outcomes = [check(seed, ties) for seed in range(300, 3300)]
        assert outcomes.count("equal") >= 2700, {o: outcomes.count(o) for o in set(outcomes)}
        outcomes = [check(seed, ties, big=True) for seed in range(60, 660)]
        assert outcomes.count("equal") >= 540, {o: outcomes.count(o) for o in set(outcomes)}
        outcomes = [check(seed, ties, every, big, True) for seed in range(150, 1650) for every in (False, None)
                    for big in (False, True)]
        assert outcomes.count("equal") >= 5400, {o: outcomes.count(o) for o in set(outcomes)}
        outcomes = [check(seed, ties, every, big, seed % 3 == 0, True) for seed in range(100, 1100)
                    for every in (False, None) for big in (False, True)]
        assert outcomes.count("equal") >= 3600, {o: outcomes.count(o) for o in set(outcomes)}


@pytest.mark.parametrize(("every", "policy", "workers", "why"), [
    (2, "paced-round-robin", 1, "training.sync under policy 'paced-round-robin'"),
    (None, "paced-proportional", 1, "the closing backhaul round at each epoch's end under policy 'paced-proportional'"),
    (None, "fifo", 2, "the closing backhaul round at each epoch's end on a server with several workers"),
])
def test_what_stays_on_simpy_is_said(every, policy, workers, why):
    job, _, _ = random_job(3, every=every)
    job.servers[0] = ServerTimes(job.servers[0].name, workers, job.servers[0].step)
    cfg = ReplayConfig(policy=policy, credits="device")
    assert uncovered(_Scenario(), "splitfrozen", cfg, job) == f"{why} is replayed by the SimPy engine only"


def test_moving_devices_over_epochs_stay_on_simpy():
    """Moving devices over several epochs stay on SimPy (its epoch gates), with their line."""
    from tests.test_fast_handover import random_job as handover_job

    job, cfg, _ = handover_job(5, False, epochs=2, workers=(1,))
    job.sync = SyncSpec(tuple((s.name, 100.0, 0.01) for s in job.servers), 2, "sync", 10.0, 12.0, 2)
    why = "training.sync over several epochs with moving devices"
    assert uncovered(_Scenario(), "splitfrozen", cfg, job) == f"{why} is replayed by the SimPy engine only"


@pytest.mark.parametrize("training", [{"sync": {"every": 2, "mode": "sync"}}, {"sync": {"every": 1, "mode": "async"}},
                                      {"sync": {"every": 3, "mode": "sync"}, "cache_activations": True},
                                      {"sync": None, "cache_activations": True}, {"sync": None}])
def test_simulate_replays_the_epoch_end_wait_and_the_cache_on_the_fast_path(training):
    """sfsim.simulate on a fresh two-server fleet with a backhaul, 3 epochs and training.eval_samples: the fast path
    replays it (the wait from the cost model, sfsim.cost.epochend) and every figure equals the SimPy engine's."""
    import sfsim
    from sfsim.cost.epochend import epoch_end_seconds
    from tests.test_epoch_end_wait import sc_of, two_servers

    sync = training.pop("sync")
    data = two_servers(sync={"every": 1, "mode": "sync"}, **training)
    if sync is None:  # no training.sync: each epoch's closing round on the servers' backhaul
        del data["training"]["sync"]
    else:
        data["training"]["sync"] = sync
    sc = sc_of(data)
    fast, slow = (sfsim.simulate(sc, "splitfrozen", splits=2, engine=e) for e in ("auto", "simpy"))
    assert (fast.engine, fast.engine_note, slow.engine) == ("fast", None, "simpy")
    assert fast.to_dict() == slow.to_dict() and fast.server_end_s == slow.server_end_s
    pinned = {d.name: d.server for d in sc.devices}  # two_servers pins every device
    assert fast.epoch_end_s == epoch_end_seconds(sc, assignment=pinned) and min(fast.epoch_end_s.values()) > 0
