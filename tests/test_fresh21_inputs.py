"""Issue 21's scenario keys, bad input on fresh fleets (tests/fixtures/fresh21): one line naming the file and the key,
exit 2, no traceback, from ``simulate``, ``run`` and ``validate`` alike (each refuses before it loads a model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sfsim.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
FRESH = FIXTURES / "fresh21"

#: (fixture, text in it, replacement, the one line's key and message)
BAD = {
    "wire-dtype-typo": ("codec_slowlink.yaml", "wire_dtype: int4", "wire_dtype: int 8",
                        "training.wire_dtype: Input should be 'fp32', 'fp16', 'bf16', 'int8' or 'int4' (got 'int 8')"),
    "wire-dtype-topk": ("codec_slowlink.yaml", "wire_dtype: int4", "wire_dtype: topk",
                        "training.wire_dtype: Input should be 'fp32', 'fp16', 'bf16', 'int8' or 'int4' (got 'topk')"),
    "handover-unknown": ("handover_midsend.yaml", "to: south,", "to: sout,",
                         "devices[0].handover[0].to: no server named 'sout'; servers are: north, south"),
    "sync-every-0": ("handover_midsend.yaml", "every: 3", "every: 0",
                     "training.sync.every: Input should be greater than 0 (got 0)"),
    "sync-mode": ("uneven_pins.yaml", "mode: sync", "mode: lazy",
                  "training.sync.mode: Input should be 'sync' or 'async' (got 'lazy')"),
    "pin-missing": ("uneven_pins.yaml", "{name: w-1, server: west,", "{name: w-1, server: wes,",
                    "devices[1].server: no server named 'wes'; servers are: east, west"),
    "pin-missing-count": ("three_async.yaml", "count: 1, server: s-c,", "count: 1, server: s-d,",
                          "devices[0].server: no server named 's-d'; servers are: s-a, s-b, s-c"),
    "churn-typo": ("churn_split.yaml", "churn: drop}", "churn: dorp}",
                   "devices[2].availability.churn: String should match pattern '^(pause|drop)$' (got 'dorp')"),
}



def _args(command: str, model: str) -> list[str]:
    return {"simulate": [],
            "run": ["--model", model, "--task", "sst2", "--method", "splitfrozen", "--partition", "iid",
                    "--data-dir", str(FIXTURES / "data")],  # a clean clone has no ../shared/data
            "validate": ["--model", model, "--method", "splitfrozen", "--data-dir", str(FIXTURES / "data")]}[command]


@pytest.mark.parametrize("command", ["simulate", "run", "validate"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_network_keys_are_one_line_naming_file_and_key(tiny_gpt2, tmp_path, case, command):
    src, old, new, message = BAD[case]
    text = (FRESH / src).read_text()
    assert text.count(old) == 1, old
    path = tmp_path / src
    path.write_text(text.replace(old, new).replace("file: churn_windows.yaml", f"file: {FRESH / 'churn_windows.yaml'}"))
    extra = [] if command == "simulate" else ["--out", str(tmp_path / "out")]
    res = CliRunner().invoke(main, [command, "--devices", str(path), *_args(command, tiny_gpt2), *extra])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [f"error: {path}: {message}"], res.output
    assert "Traceback" not in res.output


def test_a_plan_that_pins_a_device_to_a_missing_server_is_one_line(tiny_gpt2, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("splits: {e-1: 1, w-1: 1, e-2: 1, e-3: 1}\nlora_start: 1\n"
                    "assignment: {e-1: east, w-1: nowhere, e-2: east, e-3: east}\n")
    for command in ("simulate", "run"):
        extra = [] if command == "simulate" else ["--out", str(tmp_path / "out")]
        res = CliRunner().invoke(main, [command, "--devices", str(FRESH / "uneven_pins.yaml"), "--plan", str(plan),
                                        *_args(command, tiny_gpt2), *extra])
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines()[-1] == \
            f"error: {plan}: assignment.w-1: no server named 'nowhere'; servers are: east, west", res.output


def test_a_wire_codec_flag_outside_the_vocabulary_is_refused(tiny_gpt2, tmp_path):
    res = CliRunner().invoke(main, ["run", "--devices", str(FRESH / "codec_slowlink.yaml"), *_args("run", tiny_gpt2),
                                    "--wire-dtype", "topk", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "'topk' is not one of 'fp32', 'fp16', 'bf16', 'int8', 'int4'" in res.output
