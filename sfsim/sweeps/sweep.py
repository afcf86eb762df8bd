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
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sfsim.errors import ConfigError, SfsimError
from sfsim.methods import METHODS, canonical
from sfsim.scenario.overrides import apply, parse_value, set_value, split_assignment
from sfsim.units import BANDWIDTH_UNITS, FLOPS_UNITS, SIZE_UNITS, TIME_UNITS

_KINDS = {"bandwidth": BANDWIDTH_UNITS, "time": TIME_UNITS, "size": SIZE_UNITS, "flops": FLOPS_UNITS}
_QUANTITY = r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-zµ/]*)\s*"

FIGURES = ("makespan_s", "micro_batches", "device_flops_total", "device_flops_max", "server_flops_total",
           "device_busy_total_s", "uplink_bytes", "downlink_bytes", "server_utilization", "bottleneck",
           "bottleneck_utilization", "cuts", "lora_start", "servers_used", "assignment", "assignment_source",
           "device_energy_j", "server_energy_j", "backhaul_bytes", "sync_rounds", "stream_mixing",
           "server_wait_s", "pool_peak_bytes", "handover_moved", "samples_not_trained")
"""Result columns of a sweep row, from the simulation's JSON result (see :func:`figures`)."""

NO_CUT = ("fedlora", "cenlora")
"""Schedules without a device/server cut (their rows leave ``cuts`` empty)."""

METRICS = tuple(f for f in FIGURES if f not in ("bottleneck", "cuts", "assignment", "assignment_source"))
"""Columns that are numbers (what ``--metric`` may plot)."""


@dataclass(frozen=True)
class Vary:
    """One varied key: its path, its values, and how they were given.

    Attributes:
        key: the key path (``devices[*].uplink.bandwidth``).
        values: the values in base units (bit/s, s, bytes, FLOP/s), whole numbers or words.
        log: the values came from a log-spaced range (plots use a log axis).
        kind: the unit kind of the values (``bandwidth``, ``time``, ``size``, ``flops``) or None.
    """

    key: str
    values: tuple
    log: bool = False
    kind: str | None = None


def parse_vary(text: str, option: str = "--vary") -> Vary:
    """Read ``KEY=VALUES`` (a list or a range, see the module docstring).

    Raises:
        ConfigError: a bad key path or values, naming the option.

    Example:
        >>> parse_vary("devices[*].uplink.bandwidth=10Mbps..1Gbps:log:3").values
        (10000000.0, 100000000.0, 1000000000.0)
    """
    key, values = split_assignment(text, option)
    vals, log, kind = parse_values(values, f"{option} {key}")
    return Vary(key, tuple(vals), log, kind)


def parse_values(text: str, option: str = "--vary") -> tuple[list, bool, str | None]:
    """``(values, log, kind)`` of a list (``10,50,100 Mbps``) or a range (``10Mbps..1Gbps:log:8``, ``1..8``)."""
    import re

    m = re.fullmatch(r"(.+?)\.\.(.+?)(?::(lin|log))?(?::(\d+))?", text.strip())
    if m:
        return _range(m.group(1), m.group(2), m.group(3), m.group(4), option)
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ConfigError(None, option, f"empty value in {text!r}; write e.g. 10,50,100 Mbps")
    parsed = [_quantity(t) for t in items]
    unit = parsed[-1][2] if parsed[-1] else ""
    out, kinds = [], set()
    for t, q in zip(items, parsed, strict=True):
        if q is not None and not q[2] and unit:  # a bare number takes the unit given at the end
            q = _quantity(t + " " + unit)
        if q is None:
            out.append(parse_value(t, option))
        else:
            out.append(q[0])
            kinds.add(q[1])
    if len(kinds) > 1:
        raise ConfigError(None, option, f"{text!r} mixes units of {' and '.join(sorted(map(str, kinds)))}; "
                          "give values of one kind")
    return out, False, next(iter(kinds), None)


def _quantity(text: str) -> tuple[float | int, str | None, str] | None:
    """``'10 Mbps' -> (1e7, 'bandwidth', 'Mbps')``; ``'8' -> (8, None, '')``; None for a word."""
    import re

    m = re.fullmatch(_QUANTITY, text)
    if not m:
        return None
    num, unit = m.group(1), m.group(2)
    if not unit:
        value = float(num)
        return (int(value) if re.fullmatch(r"[+-]?\d+", num) else value), None, ""
    for kind, table in _KINDS.items():
        if unit in table:
            return float(num) * table[unit], kind, unit
    return None


def _range(lo_text: str, hi_text: str, spacing: str | None, count: str | None, option: str):
    lo, hi = _quantity(lo_text), _quantity(hi_text)
    if lo is not None and hi is not None and not lo[2] and hi[2]:  # 10..100 Mbps
        lo = _quantity(f"{lo_text} {hi[2]}")
    if lo is None or hi is None or lo[1] != hi[1]:
        raise ConfigError(None, option, f"cannot read the range {lo_text}..{hi_text}; write two numbers of "
                          "one kind, e.g. 10Mbps..1Gbps:log:8 or 1..8")
    a, b, kind = lo[0], hi[0], lo[1]
    whole = isinstance(a, int) and isinstance(b, int)
    if count is None:
        if spacing or not whole:
            raise ConfigError(None, option, f"say how many values: {lo_text}..{hi_text}:lin:5 or "
                              f"{lo_text}..{hi_text}:log:8")
        if b < a:
            raise ConfigError(None, option, f"the range {a}..{b} is empty; write the smaller value first")
        return list(range(a, b + 1)), False, None
    n = int(count)
    if n < 2:
        raise ConfigError(None, option, f"a range needs at least 2 values, got {n}; or give one value")
    log = spacing == "log"
    if log and (a <= 0 or b <= 0):
        raise ConfigError(None, option, f"a log range needs positive ends, got {a}..{b}; use :lin:")
    raw = np.geomspace(a, b, n) if log else np.linspace(a, b, n)
    if whole:
        vals = list(dict.fromkeys(int(round(v)) for v in raw))
    else:
        vals = [float(f"{v:.12g}") for v in raw]  # 1e8, not 99999999.99999999
    return vals, log, kind


def grid(varies: Sequence[Vary]) -> list[tuple[tuple[str, object], ...]]:
    """Every combination of the varied values, first key slowest: ``((key, value), ...)`` per point."""
    return [tuple(zip((v.key for v in varies), combo, strict=True))
            for combo in itertools.product(*(v.values for v in varies))]


# ---------------------------------------------------------------------------------------- one point
@dataclass(frozen=True)
class Settings:
    """What each point runs.

    Attributes:
        schedules: canonical schedule names, each a row.
        split: one cut for every device (None: the scenario's default).
        plan: plan every point with the planner (SplitFrozen) and replay the plan for every schedule.
        sets: fixed overrides applied before the varied ones.
    """

    schedules: tuple[str, ...] = ("splitfrozen",)
    split: int | None = None
    plan: bool = False
    sets: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.plan and self.split is not None:
            raise SfsimError("--plan and --split exclude each other: plan every point, or give one cut")
        if not self.schedules:
            raise SfsimError("no schedule to run; give --schedule splitfrozen (or a list, or all)")


def parse_schedules(text: str) -> tuple[str, ...]:
    """``'all'`` -> every method; ``'splitfrozen,fedlora'`` -> those (canonical names, checked)."""
    if text.strip() == "all":
        return tuple(METHODS)
    return tuple(dict.fromkeys(canonical(s.strip()) for s in text.split(",") if s.strip()))


def run_point(base: dict, file: str | None, point: Sequence[tuple[str, object]], settings: Settings,
              schedules: Sequence[str] | None = None) -> list[dict]:
    """Build, (plan and) simulate one point; one row per schedule, an error row where it failed.

    Args:
        base: the scenario's raw YAML dict (not changed).
        file: the scenario file (for relative paths and error messages).
        point: ``(key, value)`` overrides of this point.
        settings: schedules, cut or planning.
        schedules: run only these of ``settings.schedules`` (resuming a half-done point).

    Returns:
        Rows: ``{"schedule", "status": "ok" | "error", "error", **figures}``.
    """
    from sfsim.scenario.config import scenario_from_dict
    from sfsim.simulate import simulate

    names = list(schedules or settings.schedules)
    try:
        sc = scenario_from_dict(apply(base, [*settings.sets, *point], file), source=file)
        plan = _plan(sc, names) if settings.plan else None
    except Exception as err:  # noqa: BLE001 - a bad point is an error row, never a crash
        return [_error_row(n, err) for n in names]
    rows = []
    for name in names:
        try:
            res = simulate(sc, name, splits=settings.split, plan=plan)
            rows.append({"schedule": name, "status": "ok", "error": "", **figures(res, sc)})
        except Exception as err:  # noqa: BLE001
            rows.append(_error_row(name, err))
    return rows


def _plan(sc, names: Sequence[str]):
    from sfsim.planner import SCHEDULES
    from sfsim.planner import plan as make_plan

    target = next((n for n in names if n in SCHEDULES), "splitfrozen")
    return make_plan(sc, schedule=target).to_plan()


def _error_row(schedule: str, err: Exception) -> dict:
    text = str(err) if isinstance(err, SfsimError) else f"{type(err).__name__}: {err}"
    return {"schedule": schedule, "status": "error", "error": " ".join(text.split())}


def figures(res, sc) -> dict:
    """A row's figures from a :class:`~sfsim.outputs.result.SimResult`: totals, utilisation and the bottleneck.

    ``bottleneck`` is the busiest resource over the run: a server (busy / (accelerators x time)), a
    device (compute / time) or a device's uplink or downlink (serialisation / time); ties go to the
    first of that order. ``assignment`` counts devices per server (``mec-a:24 regional:24``). The
    energy columns sum the joules of the devices / servers that declare ``power`` (empty if none).
    """
    from sfsim.cost.energy import run_energy
    from sfsim.outputs.report import overall_utilization

    d = res.to_dict()
    counts = {s.name: s.count for s in sc.servers}
    used: dict[str, int] = {}
    for srv in res.assignment.values():
        used[srv] = used.get(srv, 0) + 1
    what, util = _bottleneck(res, sc)
    energy = res.energy if res.energy is not None else run_energy(res, sc)
    return {**{k: d[k] for k in ("makespan_s", "micro_batches", "device_flops_total", "device_flops_max",
                                 "uplink_bytes", "downlink_bytes", "lora_start")},
            "server_flops_total": float(sum(res.server_flops.values())),
            "device_busy_total_s": res.device_busy_total_s,
            "server_utilization": overall_utilization(res, counts),
            "bottleneck": what, "bottleneck_utilization": util,
            "cuts": "" if res.schedule in NO_CUT else " ".join(map(str, sorted(set(res.splits.values())))),
            "servers_used": len(used),
            "assignment": " ".join(f"{s}:{used[s]}" for s in counts if s in used),
            "assignment_source": res.assignment_source,
            "device_energy_j": energy["device_total_j"] if energy and energy["devices"] else None,
            "server_energy_j": energy["server_total_j"] if energy and energy["servers"] else None,
            "backhaul_bytes": float(sum(res.backhaul_bytes_by_server.values())), "sync_rounds": res.sync_rounds,
            "stream_mixing": res.stream_mixing, "server_wait_s": float(sum(res.server_wait_s.values())),
            "pool_peak_bytes": float(max(res.pool_peak_bytes.values(), default=0.0)),
            "handover_moved": sum(h["sent_after"] for h in res.handovers),
            "samples_not_trained": sum(res.samples_not_trained.values())}


def _bottleneck(res, sc) -> tuple[str, float]:
    T = res.makespan_s
    if T <= 0:
        return "", 0.0
    best = ("", -1.0)
    for name, u in res.server_utilization.items():
        best = max(best, (f"server {name}", u), key=lambda x: x[1])
    for dev in sc.devices:
        for what, busy in (("device", res.device_busy_s.get(dev.name, 0.0)),
                           ("uplink", res.uplink_bytes_by_device.get(dev.name, 0.0) * 8 / dev.uplink.bandwidth),
                           ("downlink", res.downlink_bytes_by_device.get(dev.name, 0.0) * 8
                            / dev.downlink.bandwidth)):
            if busy / T > best[1]:
                best = (f"{what} {dev.name}", busy / T)
    return best[0], best[1]


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


def run_sweep(file: str | Path, varies: Sequence[Vary], output: str | Path, settings: Settings = Settings(),
              resume: bool = False, jobs: int | None = None, progress: bool = True,
              on_rows: Callable[[list[dict]], None] | None = None, executor: str = "process",
              address: str | None = None) -> SweepSummary:
    """Run every point of the grid of ``varies`` on the scenario ``file``; write rows to ``output`` (CSV).

    Args:
        file: scenario YAML.
        varies: the varied keys (:func:`parse_vary`); several make a grid.
        output: the CSV file; rows are appended as points finish (in finishing order; ``point``
            is the index in the grid).
        settings: schedules, cut or planning, fixed overrides.
        resume: keep the rows already in ``output`` and run only the missing (point, schedule)s;
            otherwise ``output`` is started afresh.
        jobs: processes (default: all cores; 1 runs in this process); with Dask or Ray and no
            address, the local cluster's workers.
        progress: show a progress bar (tqdm, on stderr when it is a terminal).
        on_rows: called with each finished point's rows (e.g. for a notebook).
        executor: ``process`` (local processes), ``dask`` or ``ray`` (see :mod:`sfsim.sweeps.executors`).
        address: a Dask scheduler's (``tcp://host:8786``) or Ray cluster's (``host:6379``,
            ``ray://host:10001``, ``auto``) address; None starts a local cluster.

    Returns:
        A :class:`SweepSummary`.

    Raises:
        ConfigError: a varied key names nothing in the scenario, or ``output`` belongs to another sweep.
    """
    from tqdm import tqdm

    from sfsim.scenario.schema import read_yaml
    from sfsim.sweeps.executors import execute

    keys = [v.key for v in varies]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(None, "--vary", f"{twice[0]} is varied twice; give its values in one --vary")
    file = str(file)
    base = read_yaml(file)
    points = grid(varies)
    _check_paths(base, file, [*settings.sets, *points[0]] if points else list(settings.sets))
    header = columns(varies)
    done = _finished(output, header) if resume else {}
    todo = []
    for i, point in enumerate(points):
        left = [s for s in settings.schedules if (tuple(cell(v) for _, v in point), s) not in done]
        if left:
            todo.append((i, point, tuple(left)))
    summary = SweepSummary(points=len(points), skipped=len(points) * len(settings.schedules)
                           - sum(len(t[2]) for t in todo), output=str(output), varies=list(varies))
    t0 = time.perf_counter()
    finished = execute(base, file, settings, todo, jobs, executor, address)
    mode = "a" if resume and Path(output).is_file() else "w"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, mode, newline="") as fh, tqdm(total=len(todo), unit="point", disable=not progress or None,
                                                  desc="sweep") as bar:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        if mode == "w":
            writer.writeheader()
            fh.flush()
        for i, rows in finished:
            point = points[i]
            for row in rows:
                writer.writerow({k: cell(v) for k, v in
                                 {"point": i, **dict(point), **row}.items()})
                summary.rows += 1
                if row["status"] != "ok":
                    summary.errors += 1
                    summary.first_error = summary.first_error or row["error"]
            fh.flush()
            bar.update()
            if on_rows:
                on_rows(rows)
    summary.seconds = time.perf_counter() - t0
    return summary


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
