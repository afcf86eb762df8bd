"""The fast path: an exact replay of SplitFrozen beside the SimPy engine, compiled with numba.

Same inputs as the engine (a schedule's job and run knobs), same figures (to the last bits, event
for event), orders of magnitude faster, memory in devices not micro-batches. ``simulate(engine=...)``
chooses it (:data:`ENGINES`); where it does not cover a run, :func:`uncovered` says why in one line.
"""

from sfsim.fast.replay import COVERED, ENGINES, Replayed, replay, uncovered

__all__ = ["COVERED", "ENGINES", "Replayed", "replay", "uncovered"]
