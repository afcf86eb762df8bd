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


def write_gantt(events: Iterable[TraceEvent], path: str | Path, title: str = "") -> None:
    """Draw ``events`` as a Gantt chart PNG at ``path`` (written via a temporary file, then renamed).

    Lanes follow :func:`sfsim.trace.lane_order`; the figure grows with the number of lanes, and
    each lane/op pair is one ``broken_barh`` call, so 100,000 events draw in seconds. Ops shorter
    than about a pixel are drawn one pixel wide so that they stay visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    events = list(events)
    lanes = lane_order(events)
    row = {lane: k for k, lane in enumerate(lanes)}
    bars: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for ev in events:
        bars.setdefault((ev.lane, ev.op), []).append((ev.start, ev.dur))
    end = max((ev.end for ev in events), default=1.0)
    min_w = end * 0.0012  # ~1 px at this width: very short ops (a send of a few KB) stay visible
    height = max(2.5, 0.28 * len(lanes) + 1.4)
    fig, ax = plt.subplots(figsize=(13, height))
    ops = [op for op in OPS if any(k[1] == op for k in bars)] + sorted({k[1] for k in bars} - set(OPS))
    # Two passes: ops widened to one pixel first, true-width ops on top, so that a widened short
    # op (a W, a step) never hides the long forward next to it.
    # Within the widened pass the op with the most time on a lane is drawn last (on top).
    by_total = sorted(bars.items(), key=lambda kv: sum(d for _, d in kv[1]))
    for widened in (True, False):
        for (lane, op), spans in by_total:
            part = [(s, min_w) for s, d in spans if d < min_w] if widened else \
                   [(s, d) for s, d in spans if d >= min_w]
            if not part:
                continue
            # links and waits drawn thinner so that compute stands out
            h = 0.5 if lane.startswith(("link:", "downlink:")) or op == "wait" else 0.8
            ax.broken_barh(part, (row[lane] - h / 2, h), facecolors=COLORS.get(op, "#999999"), linewidth=0)
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
