"""Errors that sfsim reports to users as one line (file, key path, problem, fix) and exit status 2."""

from __future__ import annotations


class SfsimError(Exception):
    """A user-facing error: the CLI prints ``str(err)`` on one line and exits with status 2."""

    exit_code = 2


class ConfigError(SfsimError):
    """Bad input in a scenario, plan or latency-profile file.

    Args:
        file: the file being read (or ``None`` for values given in code).
        key: the key path inside it, e.g. ``devices[2].uplink.bandwidth`` (or ``""``).
        problem: what is wrong and how to fix it, in one sentence.
    """

    def __init__(self, file: str | None, key: str, problem: str):
        key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)  # a key with a newline stays one line
        self.file, self.key, self.problem = file, key, problem
        where = ": ".join(p for p in (str(file) if file else "", key) if p)
        super().__init__(f"{where}: {problem}" if where else problem)


class InfeasibleError(SfsimError):
    """No plan satisfies the constraints; the message says which constraint and by how much."""
