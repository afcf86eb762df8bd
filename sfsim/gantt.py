"""Gantt chart of a trace: one lane per device, link and server, coloured by op (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sfsim.trace import OPS, TraceEvent, lane_order

#: Colour of each op (colour-blind-friendly Okabe-Ito palette plus greys).
COLORS = {
    "F": "#0072B2",          # blue
    "B": "#D55E00",          # vermillion
    "W": "#E69F00",          # orange
    "BW": "#CC79A7",         # purple
    "send": "#009E73",       # green
    "step": "#000000",       # black
    "aggregate": "#56B4E9",  # sky blue
    "wait": "#D9D9D9",       # light grey
}


def write_gantt(events: Iterable[TraceEvent], path: str | Path, title: str = "",
                devices: Iterable[str] = ()) -> None:
    """Draw ``events`` as a Gantt chart PNG at ``path`` (written via a temporary file, then renamed).

    Lanes follow :func:`sfsim.trace.lane_order`; the figure grows with the number of lanes, and
    each lane/op pair is one ``broken_barh`` call, so 100,000 events draw in seconds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    events = list(events)
    lanes = lane_order(events, devices)
    row = {lane: k for k, lane in enumerate(lanes)}
    end = max((ev.end for ev in events), default=1.0)
    bars = _bars(events, min_w=end * 0.0012)  # ~1 px at this width
    height = max(2.5, 0.28 * len(lanes) + 1.4)
    fig, ax = plt.subplots(figsize=(13, height))
    ops = [op for op in OPS if any(k[1] == op for k in bars)] + sorted({k[1] for k in bars} - set(OPS))
    for (lane, op), spans in bars.items():
        # links and waits drawn thinner so that compute stands out
        h = 0.5 if lane.startswith(("link:", "downlink:")) or op == "wait" else 0.8
        ax.broken_barh(spans, (row[lane] - h / 2, h), facecolors=COLORS.get(op, "#999999"), linewidth=0)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes, fontsize=8 if len(lanes) <= 40 else 6)
    ax.set_ylim(len(lanes) - 0.5, -0.5)  # first lane on top
    ax.set_xlim(0, end * 1.01)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", color="#eeeeee", linewidth=0.8)
    ax.set_axisbelow(True)
    for k, lane in enumerate(lanes):  # faint separators between devices
        if k and not lane.startswith(("link:", "downlink:")):
            ax.axhline(k - 0.5, color="#f0f0f0", linewidth=0.6)
    handles = [Patch(color=COLORS.get(op, "#999999"), label=f"{op}: {OPS.get(op, op)}") for op in ops]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _bars(events: list[TraceEvent], min_w: float) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(lane, op) -> [(start, width)]: an isolated op shorter than ``min_w`` (about a pixel) is drawn
    ``min_w`` wide so that it stays visible; an op whose lane has another op starting within two
    pixels keeps its true width, so dense runs of short ops blend their colours in proportion."""
    by_lane: dict[str, list[TraceEvent]] = {}
    for ev in events:
        by_lane.setdefault(ev.lane, []).append(ev)
    bars: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for lane, evs in by_lane.items():
        evs.sort(key=lambda e: e.start)
        nxt = [e.start for e in evs[1:]] + [float("inf")]
        for ev, next_start in zip(evs, nxt, strict=True):
            isolated = next_start - ev.start >= 2 * min_w
            width = max(ev.dur, min_w) if isolated else ev.dur
            bars.setdefault((lane, ev.op), []).append((ev.start, width))
    return bars
