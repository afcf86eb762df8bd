"""Quiet runs: silence transformers, peft and torch chatter, and keep only our error and warning lines.

``sfsim run --quiet`` runs inside :func:`quiet_output`: Python's ``sys.stdout``/``sys.stderr`` and
file descriptors 1 and 2 (C libraries, child processes) go to a temporary file, and when the run
ends (or fails) only the lines that start with ``error:`` or ``warning:`` (sfsim's own: a lost
device, a class absent from the training data) are passed on to stderr. Library loggers are set to
errors only and their progress bars are switched off, so they cost no time either.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

KEEP = ("error:", "warning:")


def silence_libraries() -> None:
    """transformers (and peft, which logs through it) to errors only, no progress bars; the same for children."""
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _kept(text: str) -> list[str]:
    """The lines of ``text`` that start with an sfsim error or warning prefix (progress redraws dropped)."""
    out = []
    for line in text.splitlines():
        line = line.rsplit("\r", 1)[-1]
        if line.startswith(KEEP):
            out.append(line)
    return out


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Run the enclosed code silently; afterwards print only its ``error:``/``warning:`` lines to stderr."""
    silence_libraries()
    py_out, py_err = sys.stdout, sys.stderr
    for s in (py_out, py_err):
        with contextlib.suppress(Exception):
            s.flush()
    saved = [os.dup(1), os.dup(2)]
    buf = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                warnings.simplefilter("ignore")
                yield
        finally:
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace") + buf.getvalue()
            for line in _kept(text):
                print(line, file=py_err, flush=True)
