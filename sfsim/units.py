"""Quantities with units: ``"50 Mbps"``, ``"20 ms"``, ``"4 GiB"``, ``"1.3 TFLOPS"``, ``"2.5 W"`` or plain numbers.

Base units: bit/s for bandwidth, seconds for time, bytes for sizes, FLOP/s for compute rates,
watts for power, joules per bit for radio energy.
Each parser raises ``ValueError`` with a message that says what was expected.
"""

from __future__ import annotations

import re

_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_PATTERN = re.compile(rf"^\s*{_NUM}\s*([A-Za-zµ/]*)\s*$")
_UNSIGNED = r"((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_PART = re.compile(rf"{_UNSIGNED}\s*([A-Za-zµ]+)")
_COMPOUND = re.compile(rf"^\s*(?:{_UNSIGNED}\s*[A-Za-zµ]+\s*){{2,}}$")  # durations only: "2 h 15 min"

_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_IEC = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}

BANDWIDTH_UNITS = {f"{p}{u}": m for p, m in _SI.items() for u in ("bps", "bit/s", "b/s")}
BANDWIDTH_UNITS.update({f"{p}{u}": 8 * m for p, m in _SI.items() for u in ("Bps", "B/s")})
BANDWIDTH_UNITS.update({f"{p}{u}": m for p, m in _IEC.items() for u in ("bps", "bit/s")})
BANDWIDTH_UNITS.update({f"{p}{u}": 8 * m for p, m in _IEC.items() for u in ("Bps", "B/s")})

TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}

SIZE_UNITS = {f"{p}B": m for p, m in _SI.items()}
SIZE_UNITS.update({f"{p}B": m for p, m in _IEC.items()})
SIZE_UNITS[""] = 1.0

FLOPS_UNITS = {f"{p}{u}": m for p, m in _SI.items() for u in ("FLOPS", "FLOP/s", "flops")}
FLOPS_UNITS[""] = 1.0

POWER_UNITS = {"": 1.0, "W": 1.0, "mW": 1e-3, "kW": 1e3}

ENERGY_PER_BIT_UNITS = {"": 1.0, "J/bit": 1.0, "mJ/bit": 1e-3, "uJ/bit": 1e-6, "µJ/bit": 1e-6, "nJ/bit": 1e-9,
                        "pJ/bit": 1e-12}

_EXAMPLES = {"bandwidth": "'50 Mbps'", "time": "'20 ms'", "size": "'4 GiB'", "flops": "'1.3 TFLOPS'",
             "power": "'2.5 W'", "bit energy": "'50 nJ/bit'"}
_BASE = {"bandwidth": "bit/s", "time": "seconds", "size": "bytes", "flops": "FLOP/s", "power": "watts",
         "bit energy": "J/bit"}
_TABLES = {"bandwidth": BANDWIDTH_UNITS, "time": TIME_UNITS, "size": SIZE_UNITS, "flops": FLOPS_UNITS,
           "power": POWER_UNITS, "bit energy": ENERGY_PER_BIT_UNITS}


def parse_quantity(value: object, kind: str) -> float:
    """Parse a number or a string with a unit of ``kind`` (bandwidth, time, size, flops) into base units.

    Example:
        >>> parse_quantity("50 Mbps", "bandwidth")
        50000000.0
        >>> parse_quantity("4 GiB", "size")
        4294967296.0
        >>> parse_quantity("2 h 15 min", "time")
        8100.0
    """
    table = _TABLES[kind]
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a {kind}; write e.g. {_EXAMPLES[kind]} or a number in {_BASE[kind]}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _PATTERN.match(value)
        if m and m.group(2) in table:
            return float(m.group(1)) * table[m.group(2)]
        if kind == "time" and _COMPOUND.match(value):  # "2 h 15 min", "1min30s": each part with its unit
            parts = _PART.findall(value)
            if all(u in table and u for _, u in parts):
                return sum(float(n) * table[u] for n, u in parts)
    raise ValueError(f"{value!r} is not a {kind}; write e.g. {_EXAMPLES[kind]} or a number in {_BASE[kind]}")


def format_quantity(value: float, kind: str) -> str:
    """Render a base-unit value for people: ``format_quantity(5e7, "bandwidth") == "50 Mbps"``."""
    if kind == "time":
        for unit, scale in (("h", 3600.0), ("min", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if abs(value) >= scale or unit == "us":
                return f"{value / scale:.3g} {unit}"
    if kind == "size":
        for unit in ("TiB", "GiB", "MiB", "KiB"):
            if abs(value) >= _IEC[unit[:2]]:
                return f"{value / _IEC[unit[:2]]:.3g} {unit}"
        return f"{value:.0f} B"
    suffix = {"bandwidth": "bps", "flops": "FLOPS", "power": "W"}[kind]
    for prefix in ("P", "T", "G", "M", "k"):
        if abs(value) >= _SI[prefix]:
            return f"{value / _SI[prefix]:.3g} {prefix}{suffix}"
    return f"{value:.3g} {suffix}"


def format_count(value: float) -> str:
    """Render a large count (FLOPs, bytes as a count) with an SI prefix: ``1.2e12 -> '1.2 T'``."""
    for prefix in ("E", "P", "T", "G", "M", "k"):
        if abs(value) >= _SI[prefix]:
            return f"{value / _SI[prefix]:.3g} {prefix}"
    return f"{value:.3g}"


def format_amount(value: float, unit: str) -> str:
    """An amount for people, the one way sfsim prints it everywhere (CLI, run summary, notebooks).

    Bytes (``"B"``) in IEC units like every size (:func:`format_quantity`: ``'7.03 GiB'``); anything
    else (``"FLOP"``, ``"J"``) with three significant digits and an SI prefix.

    Example:
        >>> format_amount(1.5e12, "FLOP"), format_amount(7.55e9, "B"), format_amount(18_100, "J")
        ('1.5 TFLOP', '7.03 GiB', '18.1 kJ')
    """
    if unit == "B":
        return format_quantity(value, "size")
    return f"{format_count(value)}{unit}" if abs(value) >= 1e3 else f"{value:.3g} {unit}"
