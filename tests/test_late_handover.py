"""A handover due after a device's process has ended is not a handover that happened: neither half lists it.

The runtime's device records the handovers due by its process's end (``trainer.transport.handover.late_moves``),
one due after its last send but before the end included; the simulator lists the handovers due by the run's end
(as its trace shows them). Before, the simulator listed every handover of the scenario, one at 60 s of a run of
2 s too, which the real run never made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.emulation_guard import timed

FIXTURES = Path(__file__).parent / "fixtures"


def _data(*later: tuple[str, str]) -> dict:
    """runtime_handover.yaml (mover: mec-a -> mec-b at 0.8 s), stay-a with 32 samples, then mover's ``later``
    handovers (at, to)."""
    data = yaml.safe_load((FIXTURES / "runtime_handover.yaml").read_text())
    data["devices"][1]["samples"] = 32
    data["devices"][0]["handover"] += [{"at": at, "to": to} for at, to in later]
    return data


@pytest.mark.parametrize("method", ["splitfrozen", "splitlora", "fedlora"])
def test_the_simulator_lists_no_handover_due_after_the_runs_end(tmp_path, method):
    import sfsim

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_data()))
    sc = sfsim.load_scenario(str(tmp_path / "s.yaml"))
    on_time = sfsim.simulate(sc, method, splits=1)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_data((f"{on_time.makespan_s * 3:.3f} s", "mec-a"))))
    late = sfsim.simulate(sfsim.load_scenario(str(tmp_path / "s.yaml")), method, splits=1)
    assert late.makespan_s == on_time.makespan_s  # a handover after the end changes nothing
    assert late.handovers == on_time.handovers and [h["to"] for h in late.handovers] == ["mec-b"]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_handover_after_the_run_is_listed_by_neither_half(tiny_gpt2, tmp_path):
    """SplitFrozen: mover's move back to mec-a at 1.5 s (after its last send, before its process ends at ~2.2 s) is
    listed by both; one at 60 s, after the run, by neither (the simulator used to list it with ``sent_after`` 0)."""
    from tests.test_handover import _validate

    rep, m, _ = _validate(tiny_gpt2, tmp_path, "splitfrozen", _data(("1.5 s", "mec-a"), ("60 s", "mec-b")))
    moves = {side: [(h["from"], h["to"], h["sent_before"]) for h in rep["handovers"][side]]
             for side in ("predicted", "measured")}
    timed(moves["measured"] == moves["predicted"], rep["emulation"],
          f"handovers measured {moves['measured']}, predicted {moves['predicted']}")
    assert moves["predicted"] == [("mec-a", "mec-b", 2), ("mec-b", "mec-a", 3)]
    assert [h["at_s"] for h in m["handovers"]] == [0.8, 1.5]
    assert m["lost_devices"] == {} and m["missing_reports"] == [] and m["dropped_peers"] == {}
