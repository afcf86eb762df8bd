"""The schedule module of each canonical method name."""

from __future__ import annotations

from sfsim.schedules import cenlora, fedlora, splitfrozen, splitlora

SCHEDULES = {"splitfrozen": splitfrozen, "splitfrozen-sequential": splitfrozen, "splitlora": splitlora,
             "fedlora": fedlora, "cenlora": cenlora}
"""Canonical method name -> its schedule module (``build(setup) -> Job`` and ``run(engine, job, cfg)``)."""


def get(name: str):
    """The schedule module for a canonical method name."""
    return SCHEDULES[name]
