"""The ``sfsim`` command line: thin click commands over the library.

Each subcommand lives in its own module and registers itself on :data:`main`. Errors a user can
fix (:class:`~sfsim.errors.SfsimError`) print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from sfsim.errors import SfsimError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SfsimError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except click.UsageError as err:  # a bad option or value: one line too, not click's usage block
            where = err.ctx.command_path if err.ctx is not None else "sfsim"
            msg = " ".join(err.format_message().split()).rstrip(".")
            click.echo(f"error: {msg}; see '{where} --help'", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sfsim")
def main() -> None:
    """Plan, simulate and run split fine-tuning of LLMs on heterogeneous edge devices and servers."""


def _register() -> None:
    import importlib

    for name in ("simulate", "plan", "run", "sweep", "validate", "profile", "report"):
        try:
            importlib.import_module(f"sfsim.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"sfsim.cli.{name}":
                raise


_register()
