"""``sfsim validate``'s codec and sync stage rows (trainer.validate.stagerows) and its cached second epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfsim.outputs.trace import TraceEvent
from tests.emulation_guard import timed
from trainer.validate.compare import compare, format_report
from trainer.validate.stagerows import codec_measured, codec_predicted

FIXTURES = Path(__file__).parent / "fixtures"


def test_sync_and_codec_rows_sit_beside_the_other_stages():
    ev = lambda lane, op, start, dur: TraceEvent(lane, op, start, dur, 0, "")  # noqa: E731
    pred = [ev("d", "F", 0.0, 1.0), ev("link:d", "send", 1.0, 1.0), ev("srv", "F", 2.0, 0.5),
            ev("backhaul:srv", "sync-send", 2.5, 0.25), ev("backhaul:srv", "sync-recv", 2.75, 0.25)]
    meas = [ev("d", "F", 0.0, 1.0), ev("link:d", "send", 1.0, 1.0), ev("srv", "F", 2.0, 0.5),
            ev("backhaul:srv", "sync-send", 2.5, 0.5), ev("backhaul:srv", "sync-recv", 3.0, 0.5)]
    rep = compare(pred, meas, ["srv"], {"codec": (0.2, 0.25), "unused": (0.0, 0.0)})
    assert list(rep["stages"]) == ["device_forward", "uplink", "server_F", "sync", "waiting", "codec"]
    assert rep["stages"]["sync"] == {"predicted_s": 0.5, "measured_s": 1.0, "error": -0.5, "minor": False}
    assert rep["stages"]["codec"] == {"predicted_s": 0.2, "measured_s": 0.25, "error": -0.2, "minor": False}
    assert rep["total"] == {"predicted_s": 3.0, "measured_s": 3.5, "error": round(-0.5 / 3.5, 6)}
    assert "sync                    0.500       1.000   -50.0%" in format_report(rep)


def test_a_real_runs_codec_ops_count_where_the_simulator_folds_them():
    """The runtime traces encode/decode apart from the forward; the stages add them to the op the simulator
    folds them into (device encode -> forward, server decode -> F, server encode -> that micro-batch's B)."""
    from trainer.validate.table import stages

    ev = lambda lane, op, start, dur, mb=0: TraceEvent(lane, op, start, dur, mb, "d")  # noqa: E731
    meas = [ev("d", "F", 0.0, 1.0), ev("d", "encode", 1.0, 0.25), ev("link:d", "send", 1.25, 1.0),
            ev("srv", "decode", 2.25, 0.125), ev("srv", "F", 2.375, 0.5), ev("srv", "B", 2.875, 0.5),
            ev("srv", "encode", 3.375, 0.0625), ev("d", "decode", 3.4375, 0.03125), ev("d", "BW", 3.46875, 0.5),
            ev("srv", "encode", 4.0, 0.5, mb=1)]  # no backward traced for micro-batch 1: BW
    span, got = stages(meas, ["srv"])
    assert span == 4.5
    assert got == {"device_forward": 1.25, "uplink": 1.0, "server_F": 0.625, "server_B": 0.5625,
                   "device_backward": 0.53125, "server_BW": 0.5, "waiting": 4.5 - 1.6875}
    assert [e.op for e in meas if e.lane == "srv"].count("F") == 1  # one forward a micro-batch in the trace


def test_the_codec_row_counts_each_sent_micro_batch_once(tmp_path):
    from tests.test_codecs import _profiled

    sc = _profiled(tmp_path, "int8", timed=True)  # 2 us per token to encode, 1 us to decode
    tokens = 4 * 96
    # micro-batch 0's forward cut in two by an outage, then micro-batch 1: two sent
    events = [TraceEvent("d", "F", 0.0, 0.1, 0, "d"), TraceEvent("d", "F", 0.5, 0.1, 0, "d"),
              TraceEvent("d", "F", 1.0, 0.2, 1, "d"), TraceEvent("s", "F", 1.0, 0.2, 1, "d")]
    got = codec_predicted(sc, events, {"d": "s"}, "splitfrozen")
    assert got == pytest.approx(2 * 3e-6 * tokens, rel=1e-9)
    assert codec_predicted(sc, events, {"d": "s"}, "fedlora") == 0.0  # no activations on the wire
    assert codec_measured({"phase_s": {"codec_encode": 0.5, "codec_decode": 0.25, "device_forward": 9.0}}) == 0.75


@pytest.mark.slow
def test_validate_compares_a_cached_second_epoch(tiny_gpt2, tmp_path):
    """2 epochs with cache_activations: the devices forward and send only in the first, in both timelines."""
    from click.testing import CliRunner

    from sfsim.cli import main
    from sfsim.outputs.trace import read_chrome_trace

    out = tmp_path / "val"
    res = CliRunner().invoke(main, ["validate", "--devices", str(FIXTURES / "runtime_cached.yaml"), "--model", tiny_gpt2,
                                    "--method", "splitfrozen", "--split", "1", "--max-len", "48", "--train-samples",
                                    "32", "--epochs", "2", "--data-dir", str(FIXTURES / "data"), "--out", str(out),
                                    "--server-order", "fifo"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    m = json.loads((out / "run" / "metrics.json").read_text())
    assert rep["config"]["epochs"] == 2 and len(m["train_loss_history"]) == 2 * 8  # 8 micro-batches per epoch
    both = read_chrome_trace(out / "trace.json")
    for side in ("predicted", "measured"):
        sends = [e for e in both if e.lane.startswith(f"{side} link:") and e.op == "send"]
        steps = [e for e in both if e.lane == f"{side} srv" and e.op == "step"]
        assert len(sends) == 8 and len(steps) == 16, side  # one epoch on the wire, two of server steps
        assert max(e.end for e in sends) < max(e.end for e in steps)  # the cached epoch is after the last send
    assert rep["stages"]["uplink"]["error"] is not None and abs(rep["stages"]["uplink"]["error"]) < 0.05
    timed(abs(rep["total"]["error"]) < 0.5, rep["emulation"], f"error {rep['total']['error']} not within 0.5: {rep['total']}")  # a short run on a loaded machine: loose
