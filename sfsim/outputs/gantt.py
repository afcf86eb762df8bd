"""Gantt charts of traces that agree with the trace at any zoom (matplotlib, Agg; PNG, PDF or SVG).

Each lane is drawn as a **utilisation strip**: the time axis is cut into :data:`BINS` equal columns
(about one pixel each in a PNG) and in every column each op gets a bar whose height is the exact
fraction of that column the op kept the lane busy. A long op is a full-height bar, as in any Gantt
chart; a lane of ops far shorter than a column (a link sending every 0.6 s on a 500 s run) is a
strip whose height is its busy fraction, instead of the aliased bursts that drawing each sub-pixel
op as a rectangle gives. So that no op vanishes, an op present in a column is drawn at least
:data:`MIN_HEIGHT` of the lane high (the stack is scaled down to the lane when that overfills it).
Each lane's label ends with its exact busy fraction over the run.

Big fleets: above ``lane_limit`` lanes, devices are grouped by type (``rpi5 ×4``: the type's
devices, links and downlinks as three lanes whose heights are the mean busy fraction of the group),
and a server's workers fold into one lane when still above the limit. Servers come after the
devices, sorted by name; servers with no work are shown and labelled ``idle``.

:func:`write_gantt` draws one trace; :func:`write_panels` draws several (one per schedule) as small
multiples on one shared time axis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sfsim.errors import SfsimError
from sfsim.outputs.trace import OPS, TraceEvent, lane_order

#: Colour of each op (Okabe-Ito colour-blind-safe palette plus greys, then Tol's muted indigo, wine and olive
#: for the backhaul and the epoch's end): B, W and step differ in hue and lightness (vermillion, yellow, black);
#: every op has its own colour (:data:`FALLBACK` is for ops this table does not know).
COLORS = {
    "F": "#0072B2",          # blue
    "B": "#D55E00",          # vermillion
    "W": "#F0E442",          # yellow
    "BW": "#CC79A7",         # reddish purple
    "encode": "#44AA99",     # teal (Tol's muted palette: the wire codec)
    "decode": "#AA4499",     # purple
    "send": "#009E73",       # bluish green
    "step": "#000000",       # black
    "aggregate": "#56B4E9",  # sky blue
    "wait": "#D9D9D9",       # light grey
    "offline": "#8C8C8C",    # dark grey
    "handover": "#E69F00",   # orange (a marker: the op is an instant)
    "resume": "#CC0000",     # red (a dashed line across the panel: the run restarted from its checkpoint)
    "sync-send": "#332288",  # indigo (backhaul: a server sends its part of a round)
    "sync-recv": "#882255",  # wine (backhaul: a server receives the others' parts)
    "epoch_end": "#999933",  # olive (the server evaluates and saves between epochs)
}

#: Legend text of the ops a trace may hold beyond :data:`~sfsim.outputs.trace.OPS` (backhaul and epoch end).
LABELS = {**OPS, "sync-send": "backhaul: sending the server's part of a round",
          "sync-recv": "backhaul: receiving the other servers' parts",
          "epoch_end": "server evaluates and saves between epochs"}

FALLBACK = "#999999"
"""Colour of an op :data:`COLORS` does not know (mid grey)."""

BINS = 1000
"""Columns the time axis is cut into (about one pixel each at the PNG's size)."""

MIN_HEIGHT = 0.15
"""Least height (fraction of a lane) of an op present in a column, so that no op vanishes."""

LANE_LIMIT = 40
"""Lanes above which devices are grouped by type (and then server workers folded)."""

FORMATS = ("png", "pdf", "svg")
"""Files a Gantt chart can be written as (chosen by the path's suffix)."""


@dataclass
class Panel:
    """One trace to draw, with what the trace alone does not say.

    Attributes:
        events: the trace.
        title: the panel's title.
        devices: device names in display order (e.g. the scenario's).
        labels: device -> extra label text (e.g. ``cut 3``).
        types: device -> device type, for grouping big fleets (default: the name without ``-<n>``).
        servers: server lanes to show even when idle (``edge-gpu``, ``regional/0``, ...).
    """

    events: list[TraceEvent]
    title: str = ""
    devices: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    servers: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One drawn lane: its label and the trace lanes it stands for (several when grouped)."""

    label: str
    lanes: list[str]
    kind: str  # "device", "link" or "server"


def write_gantt(events: Iterable[TraceEvent], path: str | Path, title: str = "", devices: Iterable[str] = (),
                *, labels: dict[str, str] | None = None, types: dict[str, str] | None = None,
                servers: Iterable[str] = (), lane_limit: int = LANE_LIMIT) -> None:
    """Draw ``events`` as a Gantt chart at ``path`` (``.png``, ``.pdf`` or ``.svg``; written atomically).

    Args:
        events: the trace.
        path: output file; its folder is created when missing.
        title: figure title.
        devices, labels, types, servers: see :class:`Panel`.
        lane_limit: group devices by type above this many lanes.
    """
    panel = Panel(list(events), title, list(devices), dict(labels or {}), dict(types or {}), list(servers))
    write_panels([panel], path, lane_limit=lane_limit)


def write_panels(panels: list[Panel], path: str | Path, title: str = "", lane_limit: int = LANE_LIMIT) -> None:
    """Draw several traces as small multiples, one above the other, on one shared time axis.

    The lane limit is shared: each of ``n`` panels groups its devices above ``lane_limit / n`` lanes
    (at least 12), so that a comparison stays one readable figure.
    """
    fmt = gantt_format(path)
    if len(panels) > 1:
        lane_limit = max(12, lane_limit // len(panels))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    end = max((ev.end for p in panels for ev in p.events), default=1.0) or 1.0
    level = max((_fold_level(p, lane_limit) for p in panels), default=0)
    rows = [rows_for(p, lane_limit, level) for p in panels]  # every panel folds alike
    heights = [max(len(r), 1) + 1.2 for r in rows]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(13, max(2.5, 0.28 * sum(heights) + 0.8)),
                             gridspec_kw={"height_ratios": heights})
    used: set[str] = set()
    for ax, panel, prow in zip(axes[:, 0], panels, rows, strict=True):
        used |= _draw(ax, panel, prow, end)
    axes[-1, 0].set_xlabel("time (s)")
    axes[-1, 0].set_xlim(0, end * 1.01)
    ops = [op for op in OPS if op in used] + sorted(used - set(OPS))
    handles = [Patch(facecolor=COLORS.get(op, FALLBACK), edgecolor="#555555", linewidth=0.5,
                     label=f"{op}: {LABELS.get(op, op)}") for op in ops]
    handles.append(Patch(facecolor="white", edgecolor="white",
                         label=f"bar height = busy share of\neach column (min {MIN_HEIGHT:.0%})"))
    axes[0, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format=fmt)
    plt.close(fig)
    tmp.replace(path)


def gantt_format(path: str | Path) -> str:
    """The file format for ``path`` (its suffix: png, pdf or svg), or a one-line SfsimError."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise SfsimError(f"gantt: cannot write {str(path)!r}; name a .png, .pdf or .svg file")
    return suffix


def _draw(ax, panel: Panel, rows: list[Row], end: float) -> set[str]:
    """Draw one panel's rows on ``ax``; returns the ops drawn."""
    edges = np.linspace(0.0, end, BINS + 1)
    busy = strips(panel.events, rows, end)
    total = _busy_totals(panel.events)
    span = max((ev.end for ev in panel.events), default=end) or end  # this panel's own makespan
    h = 0.8
    for r, row in enumerate(rows):
        stack = {op: b for (rr, op), b in busy.items() if rr == r}
        if not stack:
            continue
        ops = [op for op in OPS if op in stack] + sorted(set(stack) - set(OPS))
        heights = np.array([np.where(stack[op] > 0, np.maximum(stack[op], MIN_HEIGHT), 0.0) for op in ops])
        heights /= np.maximum(heights.sum(axis=0), 1.0)  # never taller than the lane
        lane_h = h * (0.6 if row.kind == "link" else 1.0)
        base = r + lane_h / 2  # bottom of the lane (the y axis is inverted)
        bottom = np.zeros(BINS)
        for op, hh in zip(ops, heights, strict=True):
            top = bottom + hh
            x, lo, hi = _steps(edges, base - bottom * lane_h, base - top * lane_h)
            ax.fill_between(x, lo, hi, step="post", facecolor=COLORS.get(op, FALLBACK), linewidth=0)
            bottom = top
    instants = [(r, ev.start) for ev in panel.events if ev.op == "handover"
                for r, row in enumerate(rows) if ev.lane in row.lanes]
    if instants:  # instants have no width: a marker on the lane
        ax.plot([t for _, t in instants], [r for r, _ in instants], linestyle="none", marker="v",
                markersize=6, color=COLORS["handover"], markeredgecolor="black", markeredgewidth=0.5)
    restarts = [ev.start for ev in panel.events if ev.op == "resume"]
    for t in restarts:  # a resumed run: where its restart from the checkpoint sits on the timeline
        ax.axvline(t, color=COLORS["resume"], linestyle="--", linewidth=1.0)
    labels = []
    for row in rows:
        frac = sum(total.get(lane, 0.0) for lane in row.lanes) / (len(row.lanes) * span)
        labels.append(f"{row.label}  {_percent(frac)}" if frac > 0 else f"{row.label}  idle")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8 if len(rows) <= 40 else 6)
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # first lane on top
    ax.grid(axis="x", color="#eeeeee", linewidth=0.8)
    ax.set_axisbelow(True)
    for r, row in enumerate(rows):
        if r and row.kind != "link":
            ax.axhline(r - 0.5, color="#e8e8e8", linewidth=0.6)
    if panel.title:
        ax.set_title(panel.title, fontsize=10, loc="left")
    return {op for (_, op) in busy} | ({"handover"} if instants else set()) | ({"resume"} if restarts else set())


def _percent(frac: float) -> str:
    """``0.213 -> '21%'``, ``0.0042 -> '0.4%'``, ``1e-5 -> '<0.1%'``: small shares stay visible."""
    if frac >= 0.01:
        return f"{frac:.0%}"
    return f"{frac:.1%}" if frac >= 0.001 else "<0.1%"


def _steps(edges: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """A step outline over ``edges`` (one more than the values) with only the columns where it changes."""
    keep = np.ones(len(lo), dtype=bool)
    keep[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    x = np.append(edges[:-1][keep], edges[-1])
    return x, np.append(lo[keep], lo[-1]), np.append(hi[keep], hi[-1])


def _busy_totals(events: Iterable[TraceEvent]) -> dict[str, float]:
    out: dict[str, float] = {}
    for ev in events:
        if ev.op not in ("wait", "offline"):  # waiting and being offline are not work
            out[ev.lane] = out.get(ev.lane, 0.0) + ev.dur
    return out


def _type_of(name: str, panel: Panel) -> str:
    return panel.types.get(name) or re.sub(r"-\d+$", "", name)


def _natural(name: str) -> list:
    return [int(p) if p.isdecimal() else p for p in re.split(r"(\d+)", name)]


def rows_for(panel: Panel, lane_limit: int = LANE_LIMIT, fold: int = 0) -> list[Row]:
    """The rows to draw: devices (each followed by its link lanes) in order, then servers by name.

    Above ``lane_limit`` rows, devices are grouped by type; then, if still above, each server's
    workers fold into one row. ``fold`` forces at least that much folding (1: group devices, 2: and
    fold workers), so that small multiples fold alike.
    """
    lanes = lane_order(panel.events, panel.devices)
    present = set(lanes)
    linked = {lane.split(":", 1)[1] for lane in lanes if lane.startswith(("link:", "downlink:"))}
    devs = list(dict.fromkeys([*panel.devices, *(lane for lane in lanes if lane in linked)]))
    dev_lanes = {lane for d in devs for lane in (d, f"link:{d}", f"downlink:{d}")}
    servers = sorted(set(panel.servers) | {lane for lane in lanes if lane not in dev_lanes}, key=_natural)

    def label(d: str) -> str:
        extra = panel.labels.get(d)
        return f"{d} ({extra})" if extra else d

    rows = []
    for d in devs:
        rows.append(Row(label(d), [d], "device"))
        rows += [Row(f"{p}:{d}", [f"{p}:{d}"], "link") for p in ("link", "downlink") if f"{p}:{d}" in present]
    server_rows = [Row(s, [s], "server") for s in servers]
    if fold >= 1 or len(rows) + len(server_rows) > lane_limit:
        rows = _grouped(devs, present, panel)
    if fold >= 2 or len(rows) + len(server_rows) > lane_limit:
        by_server: dict[str, list[str]] = {}
        for s in servers:
            by_server.setdefault(s.split("/")[0], []).append(s)
        server_rows = [Row(name if len(ws) == 1 else f"{name} ×{len(ws)} workers", ws, "server")
                       for name, ws in by_server.items()]
    return rows + server_rows


def _fold_level(panel: Panel, lane_limit: int) -> int:
    """0: every lane drawn; 1: devices grouped by type; 2: server workers folded too."""
    full, grouped = rows_for(panel, 10**9), rows_for(panel, lane_limit)
    if len(grouped) == len(full):
        return 0
    return 2 if any(r.kind == "server" and len(r.lanes) > 1 for r in grouped) else 1


def _grouped(devs: list[str], present: set[str], panel: Panel) -> list[Row]:
    """One device, link and downlink row per device type, with counts and the cuts it uses."""
    by_type: dict[str, list[str]] = {}
    for d in devs:
        by_type.setdefault(_type_of(d, panel), []).append(d)
    rows = []
    for t, members in by_type.items():
        extras = sorted({panel.labels[d] for d in members if d in panel.labels}, key=_natural)
        tag = f" ({', '.join(extras)})" if extras else ""
        name = f"{t} ×{len(members)}" if len(members) > 1 else members[0]
        rows.append(Row(f"{name}{tag}", members, "device"))
        for p in ("link", "downlink"):
            ls = [f"{p}:{d}" for d in members]
            if any(lane in present for lane in ls):
                rows.append(Row(f"{p}:{name}", ls, "link"))
    return rows


def strips(events: Iterable[TraceEvent], rows: list[Row], end: float,
           bins: int = BINS) -> dict[tuple[int, str], np.ndarray]:
    """(row index, op) -> busy fraction of each of ``bins`` equal columns of ``[0, end]``.

    A row of ``m`` trace lanes divides by ``m``: the mean busy fraction of its lanes. Exact: the
    sum over columns of ``fraction * column width * m`` is the op's total time on those lanes.
    """
    row_of = {lane: r for r, row in enumerate(rows) for lane in row.lanes}
    size = {r: len(row.lanes) for r, row in enumerate(rows)}
    by_key: dict[tuple[int, str], list[TraceEvent]] = {}
    for ev in events:
        r = row_of.get(ev.lane)
        if r is not None and ev.dur > 0:
            by_key.setdefault((r, ev.op), []).append(ev)
    w = end / bins
    out = {}
    for key, evs in by_key.items():
        s = np.array([ev.start for ev in evs])
        e = np.minimum(np.array([ev.end for ev in evs]), end)
        out[key] = _bin_busy(s, e, w, bins) / (w * size[key[0]])
    return out


def _bin_busy(s: np.ndarray, e: np.ndarray, w: float, bins: int) -> np.ndarray:
    """Seconds of ``[s_i, e_i)`` intervals falling in each of ``bins`` columns of width ``w``."""
    a = np.minimum((s / w).astype(np.int64), bins - 1)
    b = np.minimum((e / w).astype(np.int64), bins - 1)
    busy = np.zeros(bins)
    same = a == b
    np.add.at(busy, a[same], e[same] - s[same])
    a, b, s, e = a[~same], b[~same], s[~same], e[~same]
    np.add.at(busy, a, (a + 1) * w - s)  # head of each interval in its first column
    np.add.at(busy, b, e - b * w)        # tail in its last column
    full = np.zeros(bins + 1)            # whole columns in between, via a difference array
    np.add.at(full, a + 1, 1.0)
    np.add.at(full, b, -1.0)
    return busy + np.cumsum(full[:-1]) * w
