"""``sfsim run --emulate none`` says in one line that the scenario's handovers and availability are not applied."""

from __future__ import annotations

from pathlib import Path

from sfsim.scenario.config import load_scenario
from trainer.transport.dynamics import unemulated

FRESH = Path(__file__).parent / "fixtures" / "fresh21"


def test_unemulated_dynamics_are_named():
    sc = load_scenario(str(FRESH / "churn_split.yaml"))
    assert unemulated(sc, "splitfrozen", "none") == (
        "--emulate none: the scenario's availability (napper, leaver) are not applied (every device stays on its first "
        "server and online); use --emulate all to run them")
    mover = load_scenario(str(FRESH / "handover_midsend.yaml"))
    assert unemulated(mover, "fedlora", None).startswith("--emulate none: the scenario's handovers (walker) are not")
    for method, emulate in (("splitfrozen", "all"), ("splitfrozen", "links"), ("cenlora", "none")):
        assert unemulated(sc, method, emulate) is None
    assert unemulated(load_scenario(str(FRESH / "uneven_pins.yaml")), "splitfrozen", "none") is None
