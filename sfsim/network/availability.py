"""Availability and churn: when a device is online, and what happens to its work when it is not.

A device type may declare ``availability``:

* ``file``: FedScale-style windows, a YAML/JSON mapping of device names to lists of online
  intervals ``[start, end)`` in seconds (numbers or ``"2 min"``); a device of a type with
  ``count > 1`` (``phone-3``) takes its own entry, else the type's (``phone``). After its last
  interval a device stays offline.
* ``mean_on`` / ``mean_off``: a seeded on/off process with exponential online and offline periods
  of those means, starting online (seed: ``training.seed`` and the device name).
* ``fedscale`` (and optionally ``client``): FedScale's ``client_behave_trace`` pickle; how devices
  map to its clients is in :mod:`sfsim.network.fedscale`.

``churn`` says what an outage does:

* ``pause`` (default): the device's compute and its uplink make progress only while it is online
  (a forward or a transfer cut by an outage resumes where it stopped); a micro-batch it has sent
  still trains. A device whose windows end with work left never trains that work.
* ``drop``: the device joins at its first online instant and leaves for good at the first outage
  after that: the micro-batches it has not finished sending by then are lost. Those fully sent
  (in flight or waiting at the server) still train.

The result reports ``samples_not_trained`` per device (summed over epochs: a sample missing from two
epochs counts twice). Availability is simulated for every schedule with device links
(:mod:`sfsim.schedules.splitfrozen`; FedLoRA's and SplitLoRA's rules are in :mod:`sfsim.schedules.fedlora` and
:mod:`sfsim.schedules.splitlora.server`).
"""

from __future__ import annotations

import bisect
import functools
import math
import random
from array import array
from pathlib import Path

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from sfsim.errors import ConfigError
from sfsim.network import fedscale
from sfsim.network.linkrate import Rate, _Lazy
from sfsim.scenario.schema import STRICT, PositiveSeconds, read_yaml
from sfsim.units import parse_quantity


@dataclass(config=STRICT, kw_only=True)
class Availability:
    """When a device is online (a windows file or an on/off process) and what an outage does."""

    file: str | None = Field(default=None, description="YAML/JSON: device name -> [[start, end], ...] online")
    mean_on: PositiveSeconds | None = Field(default=None, description="mean online period (exponential)")
    mean_off: PositiveSeconds | None = Field(default=None, description="mean offline period (exponential)")
    fedscale: str | None = Field(default=None, description="FedScale client_behave_trace pickle (sfsim.network.fedscale)")
    client: int | str | None = Field(default=None, description="fedscale: the trace client of the type's first "
                                     "device (default: a seeded draw)")
    churn: str = Field(default="pause", pattern="^(pause|drop)$",
                       description="pause: resume when back online; drop: leave at the first outage")

    @model_validator(mode="after")
    def _one_source(self):
        process = self.mean_on is not None or self.mean_off is not None
        if self.client is not None and self.fedscale is None:
            raise ValueError("client picks a client of a FedScale trace: give fedscale (the trace file) or drop client")
        if self.fedscale is not None:
            if self.file is not None or process:
                raise ValueError("give one source of availability: file, mean_on and mean_off, or fedscale")
            return self
        if (self.file is not None) == process or (process and (self.mean_on is None or self.mean_off is None)):
            raise ValueError("give either file (online windows) or both mean_on and mean_off (e.g. 10 min, 2 min)")
        return self


class Windows(Rate):
    """1 inside the online intervals ``[start, end)``, else 0 (0 after the last one)."""

    def __init__(self, intervals: list[tuple[float, float]]):
        for (a, b), (c, _) in zip(intervals, intervals[1:] + [(math.inf, math.inf)], strict=False):  # none: never online
            if not (0 <= a < b <= c):
                raise ValueError("intervals must satisfy 0 <= start < end <= next start")
        self.edges = [x for iv in intervals for x in iv]  # even index: a start, odd: an end

    def segment(self, t: float) -> tuple[float, float]:
        """``(1 or 0, next edge)``."""
        k = bisect.bisect_right(self.edges, t)
        return (1.0 if k % 2 else 0.0), (self.edges[k] if k < len(self.edges) else math.inf)


class OnOff(_Lazy):
    """A seeded on/off process: exponential online periods of mean ``mean_on``, offline of ``mean_off``.

    Online first, then off and on by turns: its rates are implied by the step's parity, and its drawn
    change times are packed floats (8 bytes each, where a list of floats takes 40), so a long run's
    history of many devices stays small.
    """

    def __init__(self, mean_on: float, mean_off: float, rng: random.Random):
        self.rng = rng
        self.times = array("d")
        self.means = (mean_on, mean_off)

    @property
    def rates(self) -> list[float]:
        """The rate before each change time: 1 (online), 0, 1, ..."""
        return [0.0 if k % 2 else 1.0 for k in range(len(self.times))]

    def segment(self, t: float) -> tuple[float, float]:
        """The step holding at ``t`` (drawing further steps as needed)."""
        times = self.times
        if not times or times[-1] <= t:
            self._draw_past(t)
        k = bisect.bisect_right(times, t)
        return (0.0 if k % 2 else 1.0), times[k]

    def _draw_past(self, t: float) -> None:
        """Draw periods until the last change is later than ``t``."""
        times, expo = self.times, self.rng.expovariate
        last = times[-1] if times else 0.0
        while not times or last <= t:
            last = last + expo(1.0 / self.means[len(times) % 2])
            times.append(last)

    def _draw(self) -> None:
        times = self.times
        times.append((times[-1] if times else 0.0) + self.rng.expovariate(1.0 / self.means[len(times) % 2]))


def next_online(avail: Rate, t: float) -> float:
    """The first instant ``>= t`` at which ``avail`` is online (``inf`` if never)."""
    while True:
        r, until = avail.segment(t)
        if r > 0 or until == math.inf:
            return t if r > 0 else math.inf
        t = until


def online_until(avail: Rate, t: float) -> float:
    """The end of the online period holding at ``t`` (``t`` itself when offline at ``t``)."""
    while True:
        r, until = avail.segment(t)
        if r <= 0 or until == math.inf:
            return t if r <= 0 else math.inf
        t = until


def offline_periods(avail: Rate, end: float) -> list[tuple[float, float]]:
    """The offline intervals of ``avail`` within ``[0, end)`` (for the trace)."""
    out, t = [], 0.0
    while t < end:
        r, until = avail.segment(t)
        if r <= 0:
            out.append((t, min(until, end)))
        t = until
    return out


def read_windows(path: Path, file: str | None, key: str) -> dict[str, list[tuple[float, float]]]:
    """Read a windows file: device name -> online intervals in seconds (checked, one-line errors)."""
    stamp = path.stat().st_mtime_ns if path.is_file() else -1
    return _read_windows(path, stamp, file, key)


@functools.lru_cache(maxsize=8)
def _read_windows(path: Path, stamp: int, file: str | None, key: str) -> dict[str, list[tuple[float, float]]]:
    """:func:`read_windows`, read once per file version (every device of a fleet asks for it)."""
    data = read_yaml(path) if path.is_file() else None
    if data is None:
        raise ConfigError(file, key, f"no such file {str(path)!r} (paths are relative to the scenario file)")
    out = {}
    for name, ivs in data.items():
        try:
            if not isinstance(ivs, list) or not all(isinstance(iv, list) and len(iv) == 2 for iv in ivs):
                raise ValueError("expected a list of [start, end] pairs")
            pairs = [(parse_quantity(a, "time"), parse_quantity(b, "time")) for a, b in ivs]
            Windows(pairs)
        except ValueError as err:
            raise ConfigError(file, key, f"{path.name}: {name}: {err}") from None
        out[str(name)] = pairs
    return out


def availability_for(spec: Availability, device: str, dtype: str, resolve, seed: int,
                     file: str | None, key: str) -> Rate:
    """The 0/1 availability of one device (its windows, else its type's, its FedScale client, or its seeded process)."""
    if spec.fedscale is not None:
        return fedscale.availability(resolve(spec.fedscale), spec.client, device, dtype, seed, file, key)
    if spec.file is None:
        return OnOff(spec.mean_on, spec.mean_off, random.Random(f"{seed}:{device}:availability"))
    windows = read_windows(resolve(spec.file), file, f"{key}.file")
    for name in (device, dtype):
        if name in windows:
            return Windows(windows[name])
    raise ConfigError(file, f"{key}.file", f"{spec.file} has no entry for {device!r} (nor for its type {dtype!r})")
