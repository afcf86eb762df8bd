"""The schedule module of each canonical method name."""

from __future__ import annotations

import sfsim.schedules.cenlora as cenlora
import sfsim.schedules.fedlora as fedlora
import sfsim.schedules.splitfrozen as splitfrozen
import sfsim.schedules.splitlora as splitlora

SCHEDULES = {"splitfrozen": splitfrozen, "splitfrozen-sequential": splitfrozen, "splitlora": splitlora,
             "fedlora": fedlora, "cenlora": cenlora}
"""Canonical method name -> its schedule module (``build(setup) -> Job`` and ``run(engine, job, cfg)``)."""


def get(name: str):
    """The schedule module for a canonical method name."""
    return SCHEDULES[name]
