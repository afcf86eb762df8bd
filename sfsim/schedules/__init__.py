"""Schedules: small policies that turn a scenario into stage durations and replay them on the engine.

Each schedule module provides ``build(setup) -> Job`` (durations and FLOPs from the cost model, no
SimPy) and ``run(engine, job, cfg)`` (SimPy processes on :class:`sfsim.engine.pool.Engine`). Tests call
``run`` with hand-made :class:`~sfsim.engine.pool.DeviceTimes` to check exact timelines.

Multi-server scenarios: each device talks to its assigned server; each server trains its own
replica (and, for fedlora/splitlora, averages only its own devices' adapters); the servers' backhaul
rounds follow the runtime's (:mod:`sfsim.network.backhaul`; FedLoRA's: :mod:`sfsim.schedules.fedsync`).
"""

from sfsim.schedules.common import (
    Barrier,
    Job,
    ReplayConfig,
    ReplaySetup,
    aggregate_seconds,
    fedavg_groups,
    groups,
    link_seconds,
    rounds,
)
from sfsim.schedules.registry import SCHEDULES, cenlora, fedlora, get, splitfrozen, splitlora

__all__ = ["SCHEDULES", "Barrier", "Job", "ReplayConfig", "ReplaySetup", "aggregate_seconds", "cenlora", "fedavg_groups",
           "fedlora", "get", "groups", "link_seconds", "rounds", "splitfrozen", "splitlora"]
