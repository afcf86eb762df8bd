"""Output folders of ``sfsim run`` and ``sfsim validate``: never overwrite silently, never leave an empty one.

:func:`output_folder` wraps a command that writes a folder. Before the work starts it refuses a
folder that already holds files, unless the caller resumes there or passes ``overwrite`` and the
folder is an earlier sfsim output (moved aside, and removed once the new run has produced something).
When the work fails, a folder this call created is removed again if it holds no finished work (only
the settings and logs a run writes first: ``run_config.json``, ``logs/``, or for ``validate`` a
``run/`` holding only those) and the error does not point into it (as "logs in OUT/logs" does); an
output it was replacing is then put back. Finished work (metrics, checkpoints, adapters, reports) is
never deleted, except an earlier output that ``--overwrite`` asked to replace.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sfsim.errors import SfsimError

MARKERS = ("run_config.json", "report.json", "run/run_config.json")
"""Files that identify a folder as an sfsim output (``--overwrite`` replaces only such folders)."""

SETUP_ONLY = ("run_config.json", "logs")
"""What a run writes before it produces anything: a folder holding only these is not finished work."""


def check_out(path: str | Path, *, overwrite: bool = False, resume_hint: bool = True) -> Path:
    """Refuse a non-empty ``path`` unless ``overwrite`` is given and it holds an earlier sfsim output.

    Args:
        path: the ``--out`` folder (need not exist).
        overwrite: replace an earlier sfsim output in ``path``.
        resume_hint: the command supports ``--resume``: the message names it when ``path`` has a checkpoint.

    Returns:
        ``path`` as a :class:`~pathlib.Path`; nothing is created or removed here.

    Example:
        >>> check_out("runs/new-folder").name
        'new-folder'
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SfsimError(f"--out {path} is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    ours = any((out / m).is_file() for m in MARKERS)
    if overwrite and ours:
        return out
    if overwrite:
        raise SfsimError(f"--out {path} is not empty and holds no sfsim output (no run_config.json or report.json); "
                         "--overwrite replaces only an earlier run: choose a new or empty folder")
    fix = "pass --overwrite to replace it"
    if resume_hint and (out / "checkpoint.safetensors").is_file():
        fix = f"pass --resume {path} to continue it from its checkpoint, --overwrite to replace it"
    what = "an earlier run" if ours else "files"
    raise SfsimError(f"--out {path} already holds {what}; {fix}, or choose another --out")


def _unfinished(out: Path) -> bool:
    """True when ``out`` holds only what a run writes before producing anything (``validate``: in ``run/``)."""
    return all(p.name in SETUP_ONLY or (p.name == "run" and p.is_dir() and _unfinished(p)) for p in out.iterdir())


@contextmanager
def output_folder(path: str | Path, *, overwrite: bool = False, resume: bool = False,
                  resume_hint: bool = True) -> Iterator[Path]:
    """Check ``path`` (see :func:`check_out`; skipped when resuming), run the body, tidy up after a failure.

    With ``overwrite`` an earlier output is moved aside while the body runs and removed once the new
    one exists. On an exception from the body, if the folder holds only ``run_config.json`` and
    ``logs/`` and the error message does not name a path inside it, a folder this call created is
    removed (and a replaced output put back) and an empty one it was given is emptied again.

    Example:
        >>> with output_folder("runs/demo-out", overwrite=True) as out:  # doctest: +SKIP
        ...     (out / "metrics.json").write_text("{}")
    """
    out = Path(path)
    if resume:
        yield out
        return
    check_out(out, overwrite=overwrite, resume_hint=resume_hint)
    aside = None
    if out.is_dir() and any(out.iterdir()):  # an earlier output that --overwrite replaces
        aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        out.rename(aside)
    existed = out.exists()
    try:
        yield out
    except BaseException as err:
        if out.is_dir() and _unfinished(out) and str(out) not in str(err):
            for p in list(out.iterdir()) if existed else [out]:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        if aside is not None:
            if out.exists():  # the failed run left something the error points to, or finished work
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.rename(out)  # nothing came of it: the earlier output is back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
