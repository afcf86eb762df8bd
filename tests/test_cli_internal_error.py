"""A bug inside a command (an exception that is not bad input) prints one line naming it and exits 70, never a
traceback; ``SFSIM_DEBUG=1`` shows the traceback. Bad input keeps its own line and exit 2."""

import click
import pytest
from click.testing import CliRunner

from sfsim.cli import main
from sfsim.cli.group import INTERNAL_ERROR


@pytest.fixture
def broken(monkeypatch):
    """``sfsim simulate`` whose engine fails as sfsim's pool did on a fuzzed fleet (semfuzz 744)."""
    import sfsim.cli.simulate as cli_simulate

    def boom(*_args, **_kwargs):
        raise RuntimeError("server s1: -60 micro-batches\n never processed")

    monkeypatch.setattr(cli_simulate, "run_schedule", boom)


def test_an_internal_error_is_one_line_and_exit_70(broken, monkeypatch):
    monkeypatch.delenv("SFSIM_DEBUG", raising=False)
    out = CliRunner().invoke(main, ["simulate", "--devices", "profiles/edge.yaml"])
    assert out.exit_code == INTERNAL_ERROR == 70
    assert out.output == ("error: internal error in sfsim (RuntimeError: server s1: -60 micro-batches never processed);"
                          " this is a bug: please report the command and its scenario (SFSIM_DEBUG=1 shows the "
                          "traceback)\n")


def test_sfsim_debug_shows_the_traceback(broken, monkeypatch):
    monkeypatch.setenv("SFSIM_DEBUG", "1")
    out = CliRunner().invoke(main, ["simulate", "--devices", "profiles/edge.yaml"])
    assert isinstance(out.exception, RuntimeError) and "never processed" in str(out.exception)


def test_bad_input_and_click_exits_keep_their_own_handling():
    runner = CliRunner()
    assert runner.invoke(main, ["simulate", "--devices", "no/such.yaml"]).exit_code == 2
    assert runner.invoke(main, ["simulate", "--help"]).exit_code == 0
    assert runner.invoke(main, ["--version"]).exit_code == 0
    assert issubclass(click.exceptions.Exit, RuntimeError)  # why the handler lets click's own ends through
