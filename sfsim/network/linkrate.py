"""Time-varying rates: a link's bandwidth over time, and how long a transfer takes on it.

A rate is piecewise constant: :meth:`Rate.segment` gives the rate at time ``t`` and the time until
which it holds. A transfer of ``bits`` that starts at ``t`` ends where the integral of the rate from
``t`` reaches ``bits`` (:func:`finish`): on a constant rate ``r`` that is ``t + bits / r``; across a
change at ``c`` from ``r1`` to ``r2`` it is ``c + (bits - r1 (c - t)) / r2``. The same integral
serves compute under availability (:mod:`sfsim.network.availability`): a rate of 1 while online, 0 offline.

Sources of a link's rate (keys of a scenario's ``uplink``, see :class:`sfsim.scenario.config.Link`):

* ``trace``: a CSV file ``time_s,bandwidth`` (a header line, then rows such as ``0,25 Mbps``; a
  bare number is bit/s; lines starting with ``#`` are comments, e.g. the trace's source). Row
  ``k``'s bandwidth holds on ``[time_k, time_{k+1})`` (0 is an outage); the first time is 0, and the
  trace repeats with period ``last time + last step`` (a trace sampled every second at
  ``t = 0..299`` repeats every 300 s).
* ``gilbert_elliott``: a two-state (good/bad) Markov channel (Gilbert 1960, Elliott 1963), either in
  continuous time with exponential sojourns of means ``mean_good``/``mean_bad``, or in steps of
  ``step`` seconds with per-step transition probabilities ``p_good_bad``/``p_bad_good`` (geometric
  sojourns). The first state is drawn from the stationary distribution.
* ``fading``: log-normal block fading: the rate is multiplied by ``10^(X/10)``, ``X ~ N(0, sigma_db)``
  drawn anew every ``coherence`` seconds (blocks ``[k c, (k+1) c)``); median factor 1, mean
  ``exp((sigma_db ln 10 / 10)^2 / 2)``. It multiplies the constant bandwidth, the trace or the
  Gilbert-Elliott rate.

The stochastic models are seeded (``training.seed``, the device and the link), so a run repeats.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from pathlib import Path

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from sfsim.errors import ConfigError
from sfsim.scenario.schema import STRICT, Bandwidth, PositiveSeconds, Seconds
from sfsim.units import parse_quantity


@dataclass(config=STRICT, kw_only=True)
class GilbertElliott:
    """A two-state channel: ``good`` and ``bad`` rates and how long each state lasts (see module)."""

    good: Bandwidth
    bad: Bandwidth
    mean_good: PositiveSeconds | None = Field(default=None, description="mean sojourn in good (exponential)")
    mean_bad: PositiveSeconds | None = Field(default=None, description="mean sojourn in bad (exponential)")
    step: PositiveSeconds | None = Field(default=None, description="slot of the discrete-time chain")
    p_good_bad: float | None = Field(default=None, gt=0, le=1, description="per step: good -> bad")
    p_bad_good: float | None = Field(default=None, gt=0, le=1, description="per step: bad -> good")

    @model_validator(mode="after")
    def _one_form(self):
        cont = (self.mean_good, self.mean_bad)
        disc = (self.step, self.p_good_bad, self.p_bad_good)
        if all(v is not None for v in cont) and all(v is None for v in disc):
            return self
        if all(v is not None for v in disc) and all(v is None for v in cont):
            return self
        raise ValueError("give either mean_good and mean_bad (e.g. 10 s, 2 s) or step, p_good_bad and "
                         "p_bad_good (e.g. 100 ms, 0.01, 0.1)")

    @property
    def p_good(self) -> float:
        """Stationary probability of the good state."""
        if self.mean_good is not None:
            return self.mean_good / (self.mean_good + self.mean_bad)
        return self.p_bad_good / (self.p_good_bad + self.p_bad_good)

    @property
    def mean_rate(self) -> float:
        """Time-average bandwidth (bit/s): ``p_good good + (1 - p_good) bad``."""
        return self.p_good * self.good + (1.0 - self.p_good) * self.bad


@dataclass(config=STRICT, kw_only=True)
class Fading:
    """Log-normal block fading of a link's rate (see the module docstring)."""

    sigma_db: float = Field(gt=0, le=30, description="standard deviation of the fade in dB")
    coherence: PositiveSeconds = Field(description="seconds over which one fade holds")


@dataclass(config=STRICT, kw_only=True)
class Link:
    """One direction of a network link: a constant ``bandwidth``, or one varying over time.

    With ``trace`` or ``gilbert_elliott`` the simulator's transfers follow that rate; ``bandwidth``
    may then be left out, and the cost model's static figures use the time-average (filled in when
    the scenario loads; a ``bandwidth`` given beside them is used instead). The planner plans on the
    rate the device really gets over its run (:mod:`sfsim.planner.dynamics`). ``fading`` multiplies
    whichever rate the link has.
    """

    bandwidth: Bandwidth | None = None
    latency: Seconds = 0.0
    trace: str | None = Field(default=None, description="CSV time_s,bandwidth (relative to the scenario file)")
    gilbert_elliott: GilbertElliott | None = Field(default=None, description="two-state good/bad channel")
    fading: Fading | None = Field(default=None, description="log-normal block fading of the rate")

    @model_validator(mode="after")
    def _one_rate(self):
        if self.trace is not None and self.gilbert_elliott is not None:
            raise ValueError("give the rate as a trace or as gilbert_elliott, not both")
        if self.bandwidth is None and self.trace is None and self.gilbert_elliott is None:
            raise ValueError("give bandwidth (e.g. '50 Mbps'), a trace file or gilbert_elliott")
        return self

    @property
    def varies(self) -> bool:
        """True when the rate changes over time (trace, Gilbert-Elliott or fading)."""
        return self.trace is not None or self.gilbert_elliott is not None or self.fading is not None


class Rate:
    """A piecewise-constant rate over time (units per second)."""

    def segment(self, t: float) -> tuple[float, float]:
        """``(rate at t, time until which it holds)``; the end may be ``inf``."""
        raise NotImplementedError


class Constant(Rate):
    """The same rate at every time."""

    def __init__(self, rate: float):
        self.rate = rate

    def segment(self, t: float) -> tuple[float, float]:
        """``(rate, inf)``."""
        return self.rate, math.inf


class Steps(Rate):
    """Rates ``rates[k]`` on ``[times[k], times[k+1])``, repeating with ``period`` (or holding the last).

    Args:
        times: increasing change times, the first 0.
        rates: one rate per time.
        period: repeat every ``period`` seconds (> last time); None: the last rate holds forever.
    """

    def __init__(self, times: list[float], rates: list[float], period: float | None = None):
        if not times or times[0] != 0 or len(times) != len(rates):
            raise ValueError("Steps need times starting at 0 and one rate per time")
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError("Steps need strictly increasing times")
        if period is not None and period <= times[-1]:
            raise ValueError(f'"period" must be > the last time {times[-1]}, got {period}')
        self.times, self.rates, self.period = list(times), list(rates), period

    def segment(self, t: float) -> tuple[float, float]:
        """The step holding at ``t``."""
        base, at = 0.0, t
        if self.period is not None:
            base = math.floor(t / self.period) * self.period
            t -= base
        k = bisect.bisect_right(self.times, t) - 1
        if k + 1 < len(self.times):
            end = self.times[k + 1]
        else:
            end = self.period if self.period is not None else math.inf
        if base + end <= at:  # t / period rounded just below a whole period: the next period's first step
            base, k = base + self.period, bisect.bisect_right(self.times, 0.0) - 1
            end = self.times[k + 1] if k + 1 < len(self.times) else self.period
        return self.rates[k], base + end


class _Lazy(Rate):
    """Steps drawn on demand from a seeded process (``_draw`` appends the next change time and rate)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.times: list[float] = []
        self.rates: list[float] = []

    def segment(self, t: float) -> tuple[float, float]:
        """The step holding at ``t`` (drawing further steps as needed)."""
        while not self.times or self.times[-1] <= t:
            self._draw()
        k = bisect.bisect_right(self.times, t)  # times[k] is the first change after t
        return self.rates[k], self.times[k]

    def _draw(self) -> None:
        raise NotImplementedError


class GilbertElliottRate(_Lazy):
    """The rate of a :class:`GilbertElliott` channel: ``rates[k]`` holds until ``times[k]``."""

    def __init__(self, spec: GilbertElliott, rng: random.Random):
        super().__init__(rng)
        self.spec = spec
        self.good = rng.random() < spec.p_good

    def _draw(self) -> None:
        spec, rng = self.spec, self.rng
        if spec.mean_good is not None:
            dur = rng.expovariate(1.0 / (spec.mean_good if self.good else spec.mean_bad))
        else:  # geometric number of steps >= 1 with success probability p
            p = spec.p_good_bad if self.good else spec.p_bad_good
            steps = 1 if p >= 1 else 1 + math.floor(math.log(1.0 - rng.random()) / math.log(1.0 - p))
            dur = steps * spec.step
        start = self.times[-1] if self.times else 0.0
        self.times.append(start + dur)
        self.rates.append(spec.good if self.good else spec.bad)
        self.good = not self.good


class FadingRate(_Lazy):
    """Log-normal factors ``10^(X/10)``, one per coherence block (multiply a rate by it)."""

    def __init__(self, spec: Fading, rng: random.Random):
        super().__init__(rng)
        self.spec = spec

    def _draw(self) -> None:
        k = len(self.times) + 1
        self.times.append(k * self.spec.coherence)
        self.rates.append(10.0 ** (self.rng.gauss(0.0, self.spec.sigma_db) / 10.0))


class Product(Rate):
    """The product of two rates (a link's rate times a fading factor, or times an availability 0/1)."""

    def __init__(self, a: Rate, b: Rate):
        self.a, self.b = a, b

    def segment(self, t: float) -> tuple[float, float]:
        """``(a(t) b(t), the earlier of the two ends)``."""
        ra, ea = self.a.segment(t)
        rb, eb = self.b.segment(t)
        if (ra == 0 and ea == math.inf) or (rb == 0 and eb == math.inf):
            return 0.0, math.inf  # 0 for good (offline for good times a repeating trace): finish() must not loop
        return ra * rb, min(ea, eb)


def finish(rate: Rate, t: float, amount: float) -> float:
    """When ``amount`` (bits, or compute seconds) started at ``t`` is done at ``rate``; ``inf`` if never.

    Example:
        >>> finish(Steps([0.0, 1.0], [8.0, 2.0]), 0.5, 6.0)  # 4 by t = 1, then 2 more at 2/s
        2.0
    """
    while True:
        r, until = rate.segment(t)
        if r > 0:
            end = t + amount / r
            if end <= until:
                return end
            amount -= r * (until - t)
        if until == math.inf:
            return math.inf
        t = until


def read_trace(path: Path, file: str | None = None, key: str = "trace") -> Steps:
    """Read a ``time_s,bandwidth`` CSV trace into a repeating :class:`Steps` (bit/s).

    Raises:
        ConfigError: one line naming the file, the key and the row at fault.
    """
    if not path.is_file():
        raise ConfigError(file, key, f"no such file {str(path)!r} (paths are relative to the scenario file)")
    with path.open(newline="") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
        rows = list(csv.reader(lines))
    if not rows or [c.strip() for c in rows[0]] != ["time_s", "bandwidth"]:
        raise ConfigError(file, key, f"{path.name}: the first line must be the header 'time_s,bandwidth'")
    times, rates = [], []
    for line, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != 2:
                raise ValueError("expected two columns")
            cell = row[1].strip()
            t, bw = float(row[0]), parse_quantity(_number(cell), "bandwidth")
            if not (math.isfinite(t) and t >= 0 and bw >= 0 and math.isfinite(bw)):
                raise ValueError("times and bandwidths must be >= 0")
        except ValueError as err:
            raise ConfigError(file, key, f"{path.name} row {line}: {err}") from None
        if times and t <= times[-1]:
            raise ConfigError(file, key, f"{path.name} row {line}: time {t} is not after {times[-1]}")
        times.append(t)
        rates.append(bw)
    if not times or times[0] != 0:
        raise ConfigError(file, key, f"{path.name}: the first row must be at time 0")
    step = times[-1] - times[-2] if len(times) > 1 else 1.0
    steps = Steps(times, rates, period=times[-1] + step)
    if trace_mean(steps) <= 0:
        raise ConfigError(file, key, f"{path.name}: every bandwidth is 0; a transfer would never end")
    return steps


def _number(cell: str) -> float | str:
    """A bare number as a float (bit/s), else the text for :func:`parse_quantity`."""
    try:
        return float(cell)
    except ValueError:
        return cell


def trace_mean(steps: Steps) -> float:
    """Time-average rate of a repeating trace over one period."""
    ends = steps.times[1:] + [steps.period]
    return sum(r * (e - t) for t, e, r in zip(steps.times, ends, steps.rates, strict=True)) / steps.period


def link_rate(link, resolve, seed_key: str, file: str | None = None, key: str = "uplink") -> Rate | None:
    """The time-varying rate of a scenario ``Link`` (None when it is a constant ``bandwidth``).

    Args:
        link: a :class:`sfsim.scenario.config.Link`.
        resolve: maps a path from the scenario to a file path (``Scenario.resolve_path``).
        seed_key: a string unique to this link in the run (seed, device, leg), seeding its draws.
        file, key: where the link sits, for error messages.
    """
    if not link.varies:
        return None
    if link.trace is not None:
        base: Rate = read_trace(resolve(link.trace), file, f"{key}.trace")
    elif link.gilbert_elliott is not None:
        base = GilbertElliottRate(link.gilbert_elliott, random.Random(f"{seed_key}:ge"))
    else:
        base = Constant(link.bandwidth)
    if link.fading is not None:
        base = Product(base, FadingRate(link.fading, random.Random(f"{seed_key}:fading")))
    return base
