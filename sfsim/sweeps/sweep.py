"""Sweeps: simulate (and optionally plan) a scenario at every point of a grid of overridden values.

A sweep varies one or more key paths of the scenario file (see :mod:`sfsim.scenario.overrides`) over lists
or ranges of values::

    devices[*].uplink.bandwidth=10,50,100 Mbps     a list; a unit at the end applies to bare numbers
    devices[*].uplink.bandwidth=10Mbps..1Gbps:log:8  8 values spaced evenly in log
    servers[0].flops=1..8 TFLOPS:lin:4               4 values spaced evenly
    servers.count=1..8                               whole numbers 1, 2, ..., 8
    training.server_policy=fifo,proportional         words

Several varied keys make a grid (every combination). Each point's overrides are applied to the raw
YAML and the result is validated by the scenario loader, so a bad value is the loader's one-line
error, recorded as an error row; the sweep goes on. :func:`run_sweep` writes one CSV row per point
and schedule as soon as it is done (a crash loses nothing; ``resume`` skips rows already there) and
runs points in local processes (all cores by default).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sfsim.errors import ConfigError, SfsimError
from sfsim.scenario.overrides import apply, set_value
from sfsim.scenario.schema import read_yaml
from sfsim.sweeps.executors import execute
from sfsim.sweeps.grid import Vary, grid, parse_values, parse_vary  # noqa: F401 (re-exported: the sweep's API)
from sfsim.sweeps.point import (  # noqa: F401 (re-exported)
    FIGURES,
    METRICS,
    NO_CUT,
    Settings,
    figures,
    parse_schedules,
    run_point,
)


# ---------------------------------------------------------------------------------------- the sweep
def columns(varies: Sequence[Vary]) -> list[str]:
    """The CSV header: point index, the varied keys, schedule, status, figures, error."""
    return ["point", *(v.key for v in varies), "schedule", "status", *FIGURES, "error"]


def cell(value) -> str:
    """How a value is written in the CSV (floats in full precision, so resuming matches them)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass
class SweepSummary:
    """What :func:`run_sweep` did: points in the grid, rows written and skipped, errors, seconds."""

    points: int
    rows: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_error: str = ""
    output: str = ""
    varies: list[Vary] = field(default_factory=list)


def run_sweep(file: str | Path, varies: Sequence[Vary], output: str | Path, settings: Settings | None = None,
              resume: bool = False, jobs: int | None = None, progress: bool = True,
              on_rows: Callable[[list[dict]], None] | None = None, executor: str = "process",
              address: str | None = None, overwrite: bool = False) -> SweepSummary:
    """Run every point of the grid of ``varies`` on the scenario ``file``; write rows to ``output`` (CSV).

    Args:
        file: scenario YAML.
        varies: the varied keys (:func:`parse_vary`); several make a grid.
        output: the CSV file; rows are appended as points finish (in finishing order; ``point``
            is the index in the grid).
        settings: schedules, cut or planning, fixed overrides (default: SplitFrozen, the scenario's cut).
        resume: keep the rows already in ``output`` and run only the missing (point, schedule)s.
        jobs: processes (default: all cores; 1 runs in this process); with Dask or Ray and no
            address, the local cluster's workers.
        progress: show a progress bar (tqdm, on stderr when it is a terminal).
        on_rows: called with each finished point's rows (e.g. for a notebook).
        executor: ``process`` (local processes), ``dask`` or ``ray`` (see :mod:`sfsim.sweeps.executors`).
        address: a Dask scheduler's (``tcp://host:8786``) or Ray cluster's (``host:6379``,
            ``ray://host:10001``, ``auto``) address; None starts a local cluster.
        overwrite: replace an existing ``output``; without it (or ``resume``) an existing file is an error.

    Returns:
        A :class:`SweepSummary`.

    Raises:
        ConfigError: a varied key names nothing in the scenario, or ``output`` belongs to another sweep.
        SfsimError: ``output`` exists and neither ``resume`` nor ``overwrite`` is given.
    """
    settings = settings or Settings()
    keys = [v.key for v in varies]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(None, "--vary", f"{twice[0]} is varied twice; give its values in one --vary")
    _check_output(output, resume, overwrite)
    file = str(file)
    base = read_yaml(file)
    points = grid(varies)
    _check_paths(base, file, [*settings.sets, *points[0]] if points else list(settings.sets))
    header = columns(varies)
    todo = _todo(points, settings.schedules, _finished(output, header) if resume else {})
    summary = SweepSummary(points=len(points), skipped=len(points) * len(settings.schedules)
                           - sum(len(t[2]) for t in todo), output=str(output), varies=list(varies))
    from tqdm import tqdm  # only a sweep shows progress: the other commands (plan) do not import it

    t0 = time.perf_counter()
    finished = execute(base, file, settings, todo, jobs, executor, address)
    _write_rows(output, header, points, finished, summary, append=resume and Path(output).is_file(),
                bar=tqdm(total=len(todo), unit="point", disable=not progress or None, desc="sweep"), on_rows=on_rows)
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_output(output: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace an existing CSV unless asked (``--overwrite``) or continued (``--resume``)."""
    out = Path(output)
    if out.is_dir():
        raise SfsimError(f"-o {output} is a folder; give a CSV file")
    if resume and overwrite:
        raise SfsimError("--resume keeps the rows in -o and --overwrite replaces them; give one")
    if out.exists() and out.stat().st_size > 0 and not (resume or overwrite):
        raise SfsimError(f"-o {output} already exists; pass --resume to run only its missing rows, --overwrite "
                         "to replace it, or choose another -o")


def _todo(points: list, schedules: Sequence[str], done: dict) -> list[tuple[int, tuple, tuple[str, ...]]]:
    """``(index, point, schedules left)`` of every point with a (point, schedule) row not yet in ``done``."""
    todo = []
    for i, point in enumerate(points):
        left = [s for s in schedules if (tuple(cell(v) for _, v in point), s) not in done]
        if left:
            todo.append((i, point, tuple(left)))
    return todo


def _write_rows(output: str | Path, header: list[str], points: list, finished, summary: SweepSummary,
                append: bool, bar, on_rows) -> None:
    """Write each finished point's rows as it arrives (flushed, so a crash loses nothing); count them."""
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "a" if append else "w", newline="") as fh, bar:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        if not append:
            writer.writeheader()
            fh.flush()
        for i, rows in finished:
            for row in rows:
                writer.writerow({k: cell(v) for k, v in {"point": i, **dict(points[i]), **row}.items()})
                summary.rows += 1
                if row["status"] != "ok":
                    summary.errors += 1
                    summary.first_error = summary.first_error or row["error"]
            fh.flush()
            bar.update()
            if on_rows:
                on_rows(rows)


def _check_paths(base: dict, file: str, overrides: Iterable[tuple[str, object]]) -> None:
    """Raise the one-line error of a key path that names nothing, before any point runs."""
    data = apply(base, [], file)
    for key, value in overrides:
        set_value(data, key, value, file)


def _finished(output: str | Path, header: list[str]) -> dict:
    """(point values as written, schedule) -> row for the rows already in ``output``."""
    path = Path(output)
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    text = path.read_text()
    if not text.endswith("\n"):  # a crash in the middle of a row: drop the partial row
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
    rows = list(csv.DictReader(text.splitlines()))
    got = next(csv.reader(text.splitlines()[:1]), [])
    if got != header:
        raise ConfigError(str(output), "", "its columns are not this sweep's (other keys?); write to a new "
                          "file with -o, or drop --resume to start it afresh")
    keys = header[1:header.index("schedule")]
    return {(tuple(r[k] for k in keys), r["schedule"]): r for r in rows if r.get("status") in ("ok", "error")}


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a sweep CSV as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def as_number(text: str) -> float:
    """A CSV cell as a float (NaN when empty or not a number)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
