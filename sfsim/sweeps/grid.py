"""The grid of a sweep: ``KEY=VALUES`` texts read into varied keys, and every combination of their values.

Values are a list or a range (see :mod:`sfsim.sweeps.sweep`)::

    devices[*].uplink.bandwidth=10,50,100 Mbps     a list; a unit at the end applies to bare numbers
    devices[*].uplink.bandwidth=10Mbps..1Gbps:log:8  8 values spaced evenly in log
    servers[0].flops=1..8 TFLOPS:lin:4               4 values spaced evenly
    servers.count=1..8                               whole numbers 1, 2, ..., 8
    training.server_policy=fifo,proportional         words

A list is numbers (with or without units) or words, never both: ``10,abc Mbps`` is an error, not
the number 10 read in bit/s. Ranges and grids are bounded (:data:`MAX_VALUES`, :data:`MAX_POINTS`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sfsim.errors import ConfigError
from sfsim.scenario.overrides import parse_value, split_assignment
from sfsim.units import (
    BANDWIDTH_UNITS,
    ENERGY_PER_BIT_UNITS,
    FLOPS_UNITS,
    POWER_UNITS,
    SIZE_UNITS,
    TIME_UNITS,
    parse_quantity,
)

_KINDS = {"bandwidth": BANDWIDTH_UNITS, "time": TIME_UNITS, "size": SIZE_UNITS, "flops": FLOPS_UNITS,
          "power": POWER_UNITS, "bit energy": ENERGY_PER_BIT_UNITS}
_QUANTITY = r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-zµ/]*)\s*"
_RANGE = re.compile(r"(.+?)\.\.(.+?)(?::(lin|log))?(?::(\d+))?")
_NUMERIC = re.compile(r"\s*[+-]?(?:\d|\.\d)")  # starts like a number: '10', '-3', '.5 ms', '10 Mbsp'

MAX_VALUES = 10_000
"""Values one varied key may take (a range's count, a list's length)."""
MAX_POINTS = 100_000
"""Points in a grid (every combination of the varied values)."""


@dataclass(frozen=True)
class Vary:
    """One varied key: its path, its values, and how they were given.

    Attributes:
        key: the key path (``devices[*].uplink.bandwidth``).
        values: the values in base units (bit/s, s, bytes, FLOP/s, W, J/bit), whole numbers or words.
        log: the values came from a log-spaced range (plots use a log axis).
        kind: the unit kind of the values (``bandwidth``, ``time``, ``size``, ``flops``, ``power``,
            ``bit energy``) or None.
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
    m = _RANGE.fullmatch(text.strip())
    if m:
        return _range(m.group(1), m.group(2), m.group(3), m.group(4), option)
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ConfigError(None, option, f"empty value in {_short(text)!r}; write e.g. 10,50,100 Mbps")
    if len(items) > MAX_VALUES:
        raise ConfigError(None, option, f"{len(items):,} values; a --vary takes at most {MAX_VALUES:,}")
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
    _one_sort(items, parsed, text, option)
    if len(kinds) > 1:
        raise ConfigError(None, option, f"{_short(text)!r} mixes units of {' and '.join(sorted(map(str, kinds)))}; "
                          "give values of one kind")
    return out, False, next(iter(kinds), None)


def _one_sort(items: list[str], parsed: list, text: str, option: str) -> None:
    """A list is all numbers or all words: a word that starts like a number (``10 Mbsp``) or a word
    beside numbers (``10,abc Mbps``) is an error, so no number is read in a unit it was not meant in."""
    numbers = [q is not None for q in parsed]
    for t, ok in zip(items, numbers, strict=True):
        if not ok and (_NUMERIC.match(t) or any(numbers)):
            why = "is not a number with a known unit" if _NUMERIC.match(t) else "is a word among numbers"
            raise ConfigError(None, option, f"{_short(t)!r} in {_short(text)!r} {why}; write numbers of one kind "
                              "(10,50,100 Mbps) or words (fifo,proportional)")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quantity(text: str) -> tuple[float | int, str | None, str] | None:
    """``'10 Mbps' -> (1e7, 'bandwidth', 'Mbps')``; ``'8' -> (8, None, '')``; None for a word."""
    m = re.fullmatch(_QUANTITY, text)
    if not m:
        try:  # a compound duration: '2 h 15 min'
            value = parse_quantity(text, "time")
        except ValueError:
            return None
        return (value, "time", "s") if math.isfinite(value) else None
    num, unit = m.group(1), m.group(2)
    if not unit:
        value = float(num)
        if not math.isfinite(value):
            return None
        return (int(value) if re.fullmatch(r"[+-]?\d+", num) else value), None, ""
    for kind, table in _KINDS.items():
        if unit in table:
            value = float(num) * table[unit]
            return (value, kind, unit) if math.isfinite(value) else None
    return None


def _range(lo_text: str, hi_text: str, spacing: str | None, count: str | None, option: str):
    lo, hi = _quantity(lo_text), _quantity(hi_text)
    if lo is not None and hi is not None and not lo[2] and hi[2]:  # 10..100 Mbps
        lo = _quantity(f"{lo_text} {hi[2]}")
    shown = _short(f"{lo_text}..{hi_text}")
    if lo is None or hi is None or lo[1] != hi[1]:
        raise ConfigError(None, option, f"cannot read the range {shown}; write two finite numbers of "
                          "one kind, e.g. 10Mbps..1Gbps:log:8 or 1..8")
    a, b, kind = lo[0], hi[0], lo[1]
    whole = isinstance(a, int) and isinstance(b, int)
    if count is None:
        if spacing or not whole:
            raise ConfigError(None, option, f"say how many values: {shown}:lin:5 or {shown}:log:8")
        if b < a:
            raise ConfigError(None, option, f"the range {a}..{b} is empty; write the smaller value first")
        if b - a + 1 > MAX_VALUES:
            raise ConfigError(None, option, f"the range {a}..{b} holds {b - a + 1:,} whole numbers; a --vary takes "
                              f"at most {MAX_VALUES:,}: give a count, e.g. {a}..{b}:log:8")
        return list(range(a, b + 1)), False, None
    n = int(count) if len(count) <= 9 else MAX_VALUES + 1  # more digits are past the bound anyway
    if not 2 <= n <= MAX_VALUES:
        raise ConfigError(None, option, f"a range needs at least 2 values and at most {MAX_VALUES:,}, got "
                          f"{_short(count, 12)}; or give one value")
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
    """Every combination of the varied values, first key slowest: ``((key, value), ...)`` per point.

    Raises:
        ConfigError: more than :data:`MAX_POINTS` points.
    """
    total = math.prod(len(v.values) for v in varies)
    if total > MAX_POINTS:
        raise ConfigError(None, "--vary", f"{total:,} points in the grid; a sweep runs at most {MAX_POINTS:,}: "
                          "give fewer values")
    return [tuple(zip((v.key for v in varies), combo, strict=True))
            for combo in itertools.product(*(v.values for v in varies))]
