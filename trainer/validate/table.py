"""The comparison table of ``sfsim validate``: each trace event's stage, predicted against measured per stage, and
the report's text.

Stages (sums of op durations over lanes, in seconds; ``waiting`` is the server's idle time inside
the run's span): ``device_forward`` (F on device lanes), ``device_backward`` (B/W/BW on device lanes),
``device_step``, ``uplink``, ``downlink`` (``send`` on ``link:``/``downlink:`` lanes), ``server_F``,
``server_B``, ``server_W``, ``server_BW``, ``server_step``, ``aggregate``, ``sync`` and ``codec``
(:mod:`trainer.validate.stagerows`), ``epoch_end`` and ``waiting``. ``epoch_end`` is the wait between epochs
(evaluation, adapter, checkpoint; lane ``epoch-end:<server>``): predicted by :mod:`sfsim.cost.epochend` where the
simulation replays it between the epochs, else measured only (``modelled`` false, no error), so that the total's
error can be read against it. The total is the span from the first to the last event of each timeline. A stage
that is a small share of the run (under 2% of the measured span, e.g. an optimizer step of a few LoRA matrices) is
reported but flagged ``minor``: its relative error says little.
"""

from __future__ import annotations

from sfsim.outputs.trace import TraceEvent
from sfsim.units import format_amount
from trainer.validate.corewait import format_server_cpu
from trainer.validate.stagerows import is_sync

MINOR = 0.02  # a stage under this share of the measured span is flagged minor
REPLAYED_WHERE_PREDICTED = {"epoch_end"}  # measured only (not modelled) where the prediction has none


def stage_of(e: TraceEvent, servers: list[str], backward: dict | None = None) -> str | None:
    """The stage an event counts toward (see the module docstring). A wire codec's ``encode``/``decode`` (real runs
    trace them apart) counts toward the op the simulator folds it into: a device's encode into its forward and its
    decode into its backward, a server's decode into its ``F`` and its encode into the backward of the same
    micro-batch (``backward``: (lane, device, mb) -> ``B`` or ``BW``, default ``BW``)."""
    lane = e.lane
    if e.op in ("encode", "decode"):
        if lane.split("/")[0] in servers:
            return "server_F" if e.op == "decode" else f"server_{(backward or {}).get((lane, e.device, e.mb), 'BW')}"
        return "device_forward" if e.op == "encode" else "device_backward"
    if e.op == "epoch_end":  # the wait between epochs (sfsim.cost.epochend)
        return "epoch_end"
    if is_sync(e):
        return "sync"
    if lane.startswith("link:"):
        return "uplink"
    if lane.startswith("downlink:"):
        return "downlink"
    if lane.split("/")[0] in servers:
        return "aggregate" if e.op == "aggregate" else f"server_{e.op}" if e.op != "wait" else None
    if e.op == "F":
        return "device_forward"
    if e.op in ("B", "W", "BW"):
        return "device_backward"
    if e.op == "step":
        return "device_step"
    return None


def stages(events: list[TraceEvent], servers: list[str]) -> tuple[float, dict[str, float]]:
    """(span, stage -> seconds) of a timeline."""
    if not events:
        return 0.0, {}
    t0, t1 = min(e.start for e in events), max(e.end for e in events)
    out: dict[str, float] = {}
    busy: dict[str, float] = {}
    backward = {(e.lane, e.device, e.mb): e.op for e in events if e.op in ("B", "BW")}
    for e in events:
        st = stage_of(e, servers, backward)
        if st is not None:
            out[st] = out.get(st, 0.0) + e.dur
        lane = e.lane.removeprefix("epoch-end:")  # the server evaluates then: busy, not waiting
        if lane.split("/")[0] in servers and e.op != "wait":
            busy[lane] = busy.get(lane, 0.0) + e.dur
    out["waiting"] = sum(max(0.0, (t1 - t0) - b) for b in busy.values())
    return t1 - t0, out


def _row(pred: float, meas: float) -> dict:
    """One report row; the error is computed from the rounded figures it sits beside, so it re-derives exactly."""
    pred, meas = round(pred, 6), round(meas, 6)
    return {"predicted_s": pred, "measured_s": meas,
            "error": round((pred - meas) / meas, 6) if meas > 0 else None}


def compare(predicted: list[TraceEvent], measured: list[TraceEvent], servers: list[str],
            extra: dict[str, tuple[float, float]] | None = None) -> dict:
    """The report: total and per-stage predicted, measured, error (``extra``: more rows, name -> (predicted,
    measured) seconds, e.g. ``codec``, :mod:`trainer.validate.stagerows`).

    When one side runs the server's backward fused (``BW``, the sequential ablation in the trainer)
    and the other as ``B`` then ``W`` (the simulator records them apart even when back to back), both
    are folded into one ``server_backward`` stage so that like is compared with like.
    """
    tp, sp = stages(predicted, servers)
    tm, sm = stages(measured, servers)
    if sp.get("server_BW", 0) > 0 or sm.get("server_BW", 0) > 0:
        for side in (sp, sm):
            side["server_backward"] = sum(side.pop(k, 0.0) for k in ("server_B", "server_W", "server_BW"))
    names = [n for n in ("device_forward", "device_backward", "device_step", "uplink", "downlink", "server_F",
                         "server_B", "server_W", "server_BW", "server_backward", "server_step", "aggregate",
                         "sync", "epoch_end", "waiting")
             if sp.get(n, 0) > 0 or sm.get(n, 0) > 0]
    for n, (p, m) in (extra or {}).items():
        if p > 0 or m > 0:
            sp[n], sm[n] = p, m
            names.append(n)
    rows = {n: _row(sp.get(n, 0.0), sm.get(n, 0.0)) for n in names}
    for r in rows.values():
        r["minor"] = r["measured_s"] < MINOR * tm
    for n in REPLAYED_WHERE_PREDICTED & rows.keys():
        if rows[n]["predicted_s"] == 0:  # a schedule that runs its epochs back to back, or no eval_samples
            rows[n].update(error=None, modelled=False)
    return {"total": _row(tp, tm), "stages": rows}


def rank_agreement(rows: dict[str, dict]) -> dict:
    """Does the simulator order configurations as the real runs do? Kendall's tau over a validate table.

    Args:
        rows: configuration -> a report (or its ``total`` row: ``predicted_s`` and ``measured_s``).

    Returns:
        ``{"tau": ..., "p_value": ..., "n": ...}`` (``scipy.stats.kendalltau``, tau-b: ties allowed);
        tau is None with fewer than two configurations.

    Example:
        >>> rank_agreement({"a": {"total": {"predicted_s": 1.0, "measured_s": 2.0}},
        ...                 "b": {"total": {"predicted_s": 3.0, "measured_s": 5.0}},
        ...                 "c": {"total": {"predicted_s": 2.0, "measured_s": 1.0}}})["tau"]
        0.333333
    """
    from scipy.stats import kendalltau

    totals = [r.get("total", r) for r in rows.values()]
    if len(totals) < 2:
        return {"tau": None, "p_value": None, "n": len(totals)}
    res = kendalltau([t["predicted_s"] for t in totals], [t["measured_s"] for t in totals])
    return {"tau": round(float(res.statistic), 6), "p_value": round(float(res.pvalue), 6), "n": len(totals)}


def format_header(h: dict) -> list[str]:
    """The report header's lines: what was emulated, what ran at native speed, the host's sharing."""

    lines = [f"server: {h['server']}", f"links: {h['links']}"]
    if h["devices_emulated"]:
        lines.append(f"devices emulated (compute slowed to the scenario's speed): {', '.join(h['devices_emulated'])}")
    for d in h["devices_native"]:
        why = (f" (scenario {format_amount(d['scenario_flops'], 'FLOPS')}, this machine reaches only "
               f"{format_amount(d['achievable_flops'], 'FLOPS')})" if "achievable_flops" in d else "")
        lines.append(f"device at NATIVE speed: {d['name']}{why}")
    host, load = h["host"], h["load_average_1min"]
    each = host.get("server_slowdowns")
    stretch = (", ".join(f"{s} x{f:.3f}" for s, f in each.items()) if each else f"x{host['server_slowdown']:.3f}")
    lines.append(f"host: {host['processes']} processes x {host['threads']} thread(s) on {host['cores']} cores; "
                 f"server{'s' if each else ''} stretched {stretch} for CPU sharing; 1-min load "
                 f"{load['before']} before, {load['after']} after the run")
    if host.get("load_ratio") is not None:
        used = ("the server's profile is scaled by it" if host.get("load_factor") is not None
                else "not applied (--load-calibration applies it)")
        lines.append(f"load: a sampled probe ran x{host['load_ratio']:.3f} as slow during the run as while the server "
                     f"was profiled; {used}")
    return lines


def format_report(report: dict) -> str:
    """The report as a table for the terminal (its header first, when it has one)."""
    lines = format_header(report["header"]) if "header" in report else []
    lines.append(f"{'stage':16} {'predicted s':>12} {'measured s':>11} {'error':>8}")
    for name, row in [("total", report["total"]), *report["stages"].items()]:
        e = "not modelled" if row.get("modelled") is False else "" if row["error"] is None else f"{100 * row['error']:+7.1f}%"
        lines.append(f"{name:16} {row['predicted_s']:12.3f} {row['measured_s']:11.3f} {e:>8}")
    return "\n".join(lines + format_server_cpu(report.get("server_cpu")))
