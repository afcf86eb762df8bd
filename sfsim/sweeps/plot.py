"""The sweep plot: a metric against the first varied key, one line per schedule, small multiples for a second key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sfsim.errors import SfsimError
from sfsim.sweeps.sweep import METRICS, Vary, as_number, cell, read_rows
from sfsim.units import format_quantity

_LABELS = {"makespan_s": "total time (s)", "device_flops_total": "device FLOP (all devices)",
           "device_flops_max": "device FLOP (busiest device)", "server_flops_total": "server FLOP",
           "device_busy_total_s": "device compute (s, all devices)", "uplink_bytes": "uplink bytes",
           "downlink_bytes": "downlink bytes", "server_utilization": "server utilisation",
           "bottleneck_utilization": "busiest resource's utilisation", "servers_used": "servers used",
           "device_energy_j": "device energy (J)", "server_energy_j": "server energy (J)",
           "backhaul_bytes": "backhaul bytes", "sync_rounds": "sync rounds",
           "stream_mixing": "stream mixing (TV distance, 0 = mixed)", "server_wait_s": "server wait (worker-s)",
           "pool_peak_bytes": "mixing pool peak bytes", "samples_not_trained": "samples not trained (all devices)"}


MAX_VALUE_TICKS = 9
"""Up to this many swept values, the x ticks sit at the values themselves."""


def _tick(value: float, kind: str) -> str:
    """A tick label in the key's units ("30 s", "1 Gbps"); zero is plain 0."""
    if value == 0:
        return "0"
    return f"{value:g} J/bit" if kind == "bit energy" else format_quantity(float(value), kind)


def _value_text(value, kind: str | None) -> str:
    if kind is not None:
        return _tick(value, kind)
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_sweep(csv_path: str | Path, png: str | Path, varies: Sequence[Vary], metric: str = "makespan_s",
               title: str | None = None) -> None:
    """Draw ``metric`` against the first key of ``varies`` from a sweep CSV and write a PNG.

    One line per schedule (error rows are left out, so a line has a gap there); the x axis is
    logarithmic when the key's values came from a log range or span more than a factor of 30, the y
    axis when the metric does; up to :data:`MAX_VALUE_TICKS` swept values get a tick each, labelled in
    the key's units. A second key gives one panel per value (shared y axis).

    Raises:
        SfsimError: an unknown metric, more than two varied keys, or no successful row (no empty plot).
    """
    # matplotlib (~0.5 s) loads only when a plot is asked for; no pyplot: the caller's backend stays as it was
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if metric not in METRICS:
        raise SfsimError(f"--metric: unknown column {metric!r}; choose one of: {', '.join(METRICS)}")
    if not 1 <= len(varies) <= 2:
        raise SfsimError("the sweep plot draws one or two varied keys (x axis, small multiples)")
    rows = [r for r in read_rows(csv_path) if r["status"] == "ok"]
    if not rows:
        raise SfsimError(f"{csv_path}: no point succeeded, so there is nothing to plot; see the error column")
    xv, panel = varies[0], (varies[1] if len(varies) == 2 else None)
    panels = list(panel.values) if panel else [None]
    schedules = list(dict.fromkeys(r["schedule"] for r in read_rows(csv_path)))
    fig = Figure(figsize=(min(4.2 * len(panels), 16), 3.6))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)
    ys_all = [as_number(r[metric]) for r in rows]
    ys_all = [y for y in ys_all if y > 0]
    logy = bool(ys_all) and max(ys_all) / min(ys_all) > 30
    xs = sorted({x for r in rows if not isinstance(x := _x(r[xv.key]), str)})
    logx = xv.log or (len(xs) > 2 and xs[0] > 0 and xs[-1] / xs[0] > 30)  # a list spanning decades, too
    for ax, pv in zip(axes[0], panels, strict=True):
        for s in schedules:
            pts = sorted((_x(r[xv.key]), as_number(r[metric])) for r in rows if r["schedule"] == s
                         and (panel is None or r[panel.key] == _cell_of(pv)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1.4, label=s)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if xv.kind and 1 < len(xs) <= MAX_VALUE_TICKS:  # ticks at the swept values, in their units
            ax.set_xticks(xs, labels=[_tick(v, xv.kind) for v in xs], fontsize=8)
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif xv.kind:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p, k=xv.kind: _tick(v, k)))
        ax.set_xlabel(xv.key)
        if panel is not None:
            ax.set_title(f"{panel.key} = {_value_text(pv, panel.kind)}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(_LABELS.get(metric, metric))
    axes[0][-1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=150)


def _x(text: str):
    v = as_number(text)
    return text if v != v else v  # words stay words (categorical axis)


def _cell_of(value) -> str:
    return cell(value)
