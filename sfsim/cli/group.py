"""The ``sfsim`` command group: one-line errors with exit status 2, and an example in every ``--help``.

Each subcommand module registers itself on :data:`main` (``@main.command(epilog=example(...))``);
:mod:`sfsim.cli` imports them all. Errors a user can fix (:class:`~sfsim.errors.SfsimError`, a bad
option) print one line and exit with status 2, never a traceback; Ctrl-C exits 130. Anything else is a bug in
sfsim: it prints one line saying so (the exception's type and message, and how to see the traceback:
``SFSIM_DEBUG=1``) and exits with status 70 (``EX_SOFTWARE``).
"""

from __future__ import annotations

import os
import sys

import click

from sfsim.errors import SfsimError

#: exit status of an internal error (a bug in sfsim, not bad input): BSD sysexits' EX_SOFTWARE
INTERNAL_ERROR = 70

#: examples of the commands that do not give their own (``epilog``), shown at the end of ``--help``
EXAMPLES = {
    "validate": "sfsim validate --devices profiles/measured-minilm.yaml --model minilm-l6 --method splitfrozen "
                "--out runs/validate",
    "profile": "sfsim profile --model minilm-l6 --name my-laptop -o profiles/latency/my-laptop.yaml",
}


def example(*commands: str) -> str:
    """A ``--help`` epilog that shows ``commands`` as typed (click keeps ``\\b`` paragraphs as they are).

    Example:
        >>> example("sfsim plan --devices profiles/edge.yaml").splitlines()[1]
        'Example:'
    """
    return "\b\nExample:\n" + "\n".join(f"  {c}" for c in commands)


def warn(lines: list[str]) -> None:
    """Print each warning line (e.g. a scenario's plausibility warnings) on stderr as ``warning: ...``."""
    for line in lines:
        click.echo(f"warning: {line}", err=True)


class _Group(click.Group):
    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None and not cmd.epilog and name in EXAMPLES:
            cmd.epilog = example(EXAMPLES[name])
        return cmd

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
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise  # click's own ends (an exit status, an abort, its one-line errors): click prints them
        except Exception as err:  # a bug, not the user's input: one line, the traceback only on request
            if os.environ.get("SFSIM_DEBUG"):
                raise
            msg = " ".join(str(err).split()) or "(no message)"
            click.echo(f"error: internal error in sfsim ({type(err).__name__}: {msg}); this is a bug: please report "
                       f"the command and its scenario (SFSIM_DEBUG=1 shows the traceback)", err=True)
            sys.exit(INTERNAL_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("sfsim plan --devices profiles/edge.yaml -o plan.yaml",
                            "sfsim simulate --devices profiles/edge.yaml --plan plan.yaml"))
@click.version_option(package_name="sfsim")
def main() -> None:
    """Plan, simulate and run split fine-tuning of LLMs on heterogeneous edge devices and servers.

    Options marked [required] must be given; 'sfsim COMMAND --help' shows an example of each command.
    """
