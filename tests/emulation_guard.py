"""What a real-vs-simulator test says about its run's emulation (:mod:`trainer.run.emulation`)."""

from __future__ import annotations

import pytest

from trainer.run.emulation import note, state


def timed(ok: bool, emulation: dict | None, what: str) -> None:
    """A comparison of a real run's timing with the simulator's: pass when ``ok``; else skip when the run fell behind
    its emulation (it ran slower than the scenario: the comparison means nothing on that machine then), else fail
    with ``what`` and how the emulation held (it kept up, so the mismatch is real)."""
    if ok:
        return
    why = note(emulation)
    if why is not None:
        pytest.skip(f"{what}: {why}")
    pytest.fail(f"{what}; {state(emulation)}")
