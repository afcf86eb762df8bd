"""Plausibility warnings: values that load but are likely off by orders of magnitude (a unit left out).

A scenario may write ``bandwidth: 20``: that is 20 bit/s, not 20 Mbps, and the run it simulates
takes thousands of hours. Such a value is valid, so it is not an error; :func:`warnings_for` names
it, with the unit it was read in, so the user can see at once what was meant. The checks (all on
the raw YAML, after overrides, before validation):

- a bandwidth under 1 kbit/s (uplink, downlink, handover links, backhaul);
- a latency over 10 s, or a latency of 1 s or more written without a unit (read as seconds);
- a compute rate (``flops``) outside 1 MFLOPS .. 10 PFLOPS.
"""

from __future__ import annotations

from collections.abc import Iterator

from sfsim.units import format_quantity, parse_quantity

MIN_BANDWIDTH = 1e3  # bit/s: below a 1990s modem
MAX_LATENCY = 10.0  # s: beyond a geostationary round trip many times over
BARE_LATENCY = 1.0  # s: a bare number this large is most likely milliseconds
MIN_FLOPS, MAX_FLOPS = 1e6, 1e16  # FLOP/s: a microcontroller .. a large accelerator node

_BASE_UNIT = {"bandwidth": "bit/s", "time": "seconds", "flops": "FLOP/s"}
_MEANT = {"bandwidth": "Mbps", "time": "ms", "flops": "GFLOPS"}


def _links(item: dict, key: str) -> Iterator[tuple[str, object]]:
    """``(key path, link dict)`` of an entry's links: uplink, downlink, backhaul and handover links."""
    for side in ("uplink", "downlink", "backhaul"):
        if isinstance(item.get(side), dict):
            yield f"{key}.{side}", item[side]
    moves = item.get("handover")
    for j, h in enumerate(moves if isinstance(moves, list) else []):
        for side in ("uplink", "downlink"):
            if isinstance(h, dict) and isinstance(h.get(side), dict):
                yield f"{key}.handover[{j}].{side}", h[side]


def _values(data: dict) -> Iterator[tuple[str, str, object]]:
    """``(key path, kind, raw value)`` of every bandwidth, latency and compute rate in a raw scenario."""
    for section in ("servers", "devices"):
        entries = data.get(section)
        for i, item in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(item, dict):
                continue
            key = f"{section}[{i}]"
            if "flops" in item:
                yield f"{key}.flops", "flops", item["flops"]
            for where, link in _links(item, key):
                for field, kind in (("bandwidth", "bandwidth"), ("latency", "time")):
                    if field in link:
                        yield f"{where}.{field}", kind, link[field]


def _problem(kind: str, value: float, bare: bool) -> str | None:
    """Why ``value`` (base units) is implausible, or None."""
    if kind == "bandwidth" and 0 < value < MIN_BANDWIDTH:
        return "under 1 kbit/s"
    if kind == "time" and (value > MAX_LATENCY or (bare and value >= BARE_LATENCY)):
        return "over 10 s" if value > MAX_LATENCY else "a latency of seconds"
    if kind == "flops" and value > 0 and not MIN_FLOPS <= value <= MAX_FLOPS:
        return "outside 1 MFLOPS .. 10 PFLOPS"
    return None


def warnings_for(data: dict, file: str | None = None) -> list[str]:
    """One line per implausible value of a raw scenario dict (see the module), with the unit it was read in.

    Values that do not parse are left to the loader's errors.

    Example:
        >>> d = {"devices": [{"uplink": {"bandwidth": 20, "latency": "20 ms"}}]}
        >>> warnings_for(d)[0][:72]
        'devices[0].uplink.bandwidth: 20 reads as 20 bit/s (a number without a u'
    """
    out = []
    for key, kind, raw in _values(data if isinstance(data, dict) else {}):
        try:
            value = parse_quantity(raw, kind)
        except (ValueError, TypeError):
            continue
        bare = not isinstance(raw, str) or raw.strip().replace(".", "", 1).isdigit()
        why = _problem(kind, value, bare)
        if why is None:
            continue
        shown = format_quantity(value, kind)
        if bare:
            text = (f"{raw} reads as {raw} {_BASE_UNIT[kind]} (a number without a unit is in {_BASE_UNIT[kind]}), "
                    f"{why}; if you meant {raw} {_MEANT[kind]}, write '{raw} {_MEANT[kind]}'")
        else:
            text = f"{raw!r} is {shown}, {why}: check the unit"
        out.append(f"{file}: {key}: {text}" if file else f"{key}: {text}")
    return out
