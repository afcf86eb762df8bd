"""Plain-text reports of simulation results: one schedule's summary and the comparison table."""

from __future__ import annotations

from sfsim.outputs.result import SimResult
from sfsim.units import format_amount, format_quantity

BASELINES = ("fedlora", "splitlora")
"""Schedules the comparison table computes savings against."""


si = format_amount
"""``si(1.5e12, "FLOP") == "1.5 TFLOP"``: :func:`sfsim.units.format_amount`, the one formatter of amounts."""


def overall_utilization(res: SimResult, counts: dict[str, int] | None = None) -> float:
    """Server busy time over all servers / (accelerators * makespan); ``counts`` = accelerators per server."""
    counts = counts or {}
    cap = sum(counts.get(s, 1) for s in res.server_busy_s) * res.makespan_s
    return sum(res.server_busy_s.values()) / cap if cap > 0 else 0.0


def saving(ours: float, theirs: float) -> float | None:
    """Percent saved by ``ours`` against ``theirs`` (None when ``theirs`` is 0)."""
    return 100.0 * (1.0 - ours / theirs) if theirs else None


def summary(res: SimResult, counts: dict[str, int] | None = None) -> str:
    """A few lines describing one result."""
    lines = [f"{res.schedule}: {format_quantity(res.makespan_s, 'time')} ({res.makespan_s:.2f} s) for "
             f"{res.micro_batches:,} micro-batches",
             f"  device FLOPs {si(res.device_flops_total, 'FLOP')} (max per device {si(res.device_flops_max, 'FLOP')}),"
             f" device busy {res.device_busy_total_s:.1f} s",
             f"  uplink {si(res.uplink_bytes, 'B')}, downlink {si(res.downlink_bytes, 'B')}"]
    util = ", ".join(f"{s} {u:.0%}" for s, u in res.server_utilization.items())
    lines.append(f"  server utilisation: {util}")
    if res.lora_start is not None:
        cuts = sorted(set(res.splits.values()))
        lines.append(f"  cuts {cuts}, LoRA from block {res.lora_start}, policy {res.policy}")
    if res.client_order is not None:
        lines.append(f"  clients {res.client_order}" + (f", server order {res.policy}" if res.policy else
                                                        " (one after another, each over its whole epoch)"))
    if res.stream_mixing is not None:
        lines.append(f"  stream mixing (mean TV distance per tenth of the server stream, 0 = mixed): "
                     f"{res.stream_mixing:.3f}")
    if any(res.server_wait_s.values()) or res.pool_peak_bytes:
        waits = ", ".join(f"{s} {w:.1f} s" for s, w in res.server_wait_s.items())
        pool = ", ".join(f"{s} {si(b, 'B')}" for s, b in res.pool_peak_bytes.items())
        lines.append(f"  server wait (idle while the policy held arrived micro-batches back): {waits}"
                     + (f"; mixing pool peak {pool}" if pool else ""))
    if res.handovers:
        moved = sum(h["sent_after"] for h in res.handovers)
        lines.append(f"  handovers: {len(res.handovers)}, moving {moved:,} micro-batches sent after them")
    if res.samples_not_trained:
        lost = {d: n for d, n in res.samples_not_trained.items() if n}
        lines.append(f"  samples not trained (availability): {sum(lost.values()):,} on {len(lost)} of "
                     f"{len(res.samples_not_trained)} devices with availability")
    if res.dynamic_network is not None and res.dynamic_network != "simulated":
        lines.append(f"  dynamic network: {res.dynamic_network}")
    if res.energy is not None:
        e, said = res.energy, []
        if e["devices"]:
            parts = ", ".join(f"{p} {si(sum(d[p] for d in e['devices'].values()), 'J')}"
                              for p in ("compute", "radio", "idle"))
            said.append(f"{len(e['devices'])} devices {si(e['device_total_j'], 'J')} ({parts})")
        if e["servers"]:
            said.append(f"{len(e['servers'])} servers {si(e['server_total_j'], 'J')}")
        lines.append(f"  energy: {'; '.join(said)}")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def comparison_table(results: dict[str, SimResult], counts: dict[str, int] | None = None) -> str:
    """One table, schedules as rows: time, device FLOPs (total, max), busy, bytes, utilisation, savings.

    Savings are ``100 * (1 - schedule / baseline)`` in time and in total device FLOPs against
    fedlora and splitlora (positive: the schedule needs less).
    """
    head = ["schedule", "time s", "dev FLOP", "max/dev", "dev busy s", "up", "down", "srv util"]
    churn = any(r.samples_not_trained for r in results.values())  # runs that may train different amounts
    if churn:
        head.insert(2, "untrained")
    base = {b: results[b] for b in BASELINES if b in results}
    for b in base:
        head += [f"t-save {b}", f"F-save {b}"]
    rows = []
    for name, r in results.items():
        row = [name, f"{r.makespan_s:.1f}", si(r.device_flops_total, "FLOP"), si(r.device_flops_max, "FLOP"),
               f"{r.device_busy_total_s:.1f}", si(r.uplink_bytes, "B"), si(r.downlink_bytes, "B"),
               f"{overall_utilization(r, counts):.0%}"]
        if churn:
            row.insert(2, f"{sum(r.samples_not_trained.values()):,}")
        for b, br in base.items():
            row += [_pct(saving(r.makespan_s, br.makespan_s)) if b != name else "-",
                    _pct(saving(r.device_flops_total, br.device_flops_total)) if b != name else "-"]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = lambda cells: "  ".join(c.ljust(w) if k == 0 else c.rjust(w)  # noqa: E731
                                  for k, (c, w) in enumerate(zip(cells, widths, strict=True)))
    note = ("t-save / F-save: % of total time / device FLOPs saved against that baseline, "
            "100 * (1 - schedule / baseline); negative = more")
    if churn:
        note += ("\nuntrained: samples lost to devices leaving (availability, churn: drop); schedules that "
                 "lose different amounts are not doing the same work, so compare their times with care")
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows] + [note])
