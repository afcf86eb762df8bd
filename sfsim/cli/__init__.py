"""The ``sfsim`` command line: thin click commands over the library.

:data:`main` (:mod:`sfsim.cli.group`) is the group; each subcommand lives in its own module, which
registers itself on it when imported here.
"""

from sfsim.cli import plan, profile, report, run, simulate, sweep, validate  # noqa: F401 (registers the commands)
from sfsim.cli.group import main

__all__ = ["main"]
