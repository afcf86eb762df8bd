"""``sfsim validate``'s ``epoch_end`` row: the runtime's wait after each epoch (evaluation, adapter, checkpoint),
measured on lane ``epoch-end:<server>`` and shown as its own row, stated as not modelled (no error), so that the
total's error can be read against it."""

from __future__ import annotations

from sfsim.outputs.trace import TraceEvent
from trainer.validate.compare import compare, format_report


def test_the_epoch_end_wait_is_a_measured_row_the_simulator_does_not_model():
    predicted = [TraceEvent("mec-a", "F", 0.0, 1.0, 0, "d"), TraceEvent("link:d", "send", 0.0, 0.5, 0, "d")]
    measured = [TraceEvent("mec-a", "F", 0.0, 1.0, 0, "d"), TraceEvent("link:d", "send", 0.0, 0.5, 0, "d"),
                TraceEvent("epoch-end:mec-a", "epoch_end", 1.0, 0.25, -1, "")]
    rep = compare(predicted, measured, ["mec-a"])
    assert rep["stages"]["epoch_end"] == {"predicted_s": 0.0, "measured_s": 0.25, "error": None, "minor": False,
                                          "modelled": False}
    assert rep["total"] == {"predicted_s": 1.0, "measured_s": 1.25, "error": -0.2}  # the total counts the wait
    assert "waiting" not in rep["stages"]  # the server evaluates then: busy on both sides, not waiting
    line = next(ln for ln in format_report(rep).splitlines() if ln.startswith("epoch_end"))
    assert line.split() == ["epoch_end", "0.000", "0.250", "not", "modelled"]
