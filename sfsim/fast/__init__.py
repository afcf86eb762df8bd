"""The fast path: an exact replay of SplitFrozen and its baselines beside the SimPy engine, compiled with numba.

Same inputs as the engine (a schedule's job and run knobs), same figures (to the last bits, event
for event), memory in devices not micro-batches; on bench/bench_scale.py's fleets 12-18x the SimPy
engine's micro-batches per second and about 100x a naive SimPy model. ``simulate(engine=...)``
chooses it (:data:`ENGINES`); where it does not cover a run, :func:`uncovered` says why in one line.

Covered: SplitFrozen pipelined and sequential, server or device credits and any buffer,
accumulation, fused or decomposed B/W, several servers of one or more workers, every policy (fifo,
round-robin, proportional, paced, and ``pool`` with Python's random draws: :mod:`sfsim.fast.pool`),
activation caching, partial last micro-batches and warm-up, time-varying uplinks and availability
(pause, drop) (:mod:`sfsim.fast.dynamic`), handovers (every server in one loop, :mod:`sfsim.fast.handover`:
fifo, round-robin, proportional, ``pool``), SplitFrozen's backhaul rounds with ``training.sync`` over one
epoch (every server and its rounds in that loop, :mod:`sfsim.fast.synced`), and the closing backhaul round of
servers without ``training.sync`` over one epoch or epochs run back to back (moving devices, cached activations:
:func:`sfsim.network.backhaul.close_epochs`; SplitLoRA's and CenLoRA's
too, :mod:`sfsim.fast.closing`: their servers wait for each epoch's round); SplitLoRA on constant
links and on the dynamic network (:mod:`sfsim.fast.splitlora`: both client orders, arrival or fixed
server orders, FedAvg segments, accumulation, fused or decomposed B/W, time-varying links, availability
with pause or drop, handovers that keep a device on its server; handovers between servers in one loop,
:mod:`sfsim.fast.splitmoves`, with each epoch's closing round too, :mod:`sfsim.fast.splitclose`); CenLoRA (:mod:`sfsim.fast.cenlora`: several workers,
accumulation, the proportional source and its mixing); FedLoRA (:mod:`sfsim.fast.fedlora`: rounds of
local steps, adapter uploads and downloads, each server's FedAvg) on any network (time-varying links,
availability, handover). Each epoch's closing backhaul round (no ``training.sync``) on every network
for every schedule (:mod:`sfsim.fast.closing`; FedLoRA's in :mod:`sfsim.fast.fedlora` and, with
handovers or availability, :mod:`sfsim.fast.fedmoves`); SplitFrozen's backhaul sync (``training.sync``)
(:mod:`sfsim.fast.synced`), over several epochs too with static devices, each server opening one epoch at a time
after its epoch-end rounds (so too without ``training.sync``, its closing round at each epoch's end,
:func:`sfsim.schedules.splitfrozen.closes_per_epoch`); without backhaul rounds every multi-epoch SplitFrozen run with
static devices, each server opening one epoch at a time after the one before (and its epoch-end wait) in the
single-server kernel (:mod:`sfsim.fast.opening`). Not covered (the SimPy engine replays them): traces and
Gantt charts; backhaul sync for the baselines; SplitFrozen's with several workers a server, a paced policy, cached
activations, or moving devices over several epochs (with or without backhaul rounds); SplitFrozen with a paced policy and
availability or handovers, or with handovers and cached activations.
"""

from sfsim.fast.replay import COVERED, ENGINES, Replayed, replay, uncovered
from sfsim.fast.unreplayable import Unreplayable

__all__ = ["COVERED", "ENGINES", "Replayed", "Unreplayable", "replay", "uncovered"]
