"""The fast path's refusal of a state it cannot replay, found while replaying (not beforehand, as
:func:`sfsim.fast.replay.uncovered` does): ``simulate(engine="auto")`` then runs the SimPy engine and notes why;
``engine="fast"`` stops with that line."""

from __future__ import annotations


class Unreplayable(RuntimeError):
    """A state of the run the fast path does not replay, reached during the replay (the SimPy engine does)."""
