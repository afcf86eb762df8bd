"""Merging a distributed run's measurements: the devices' reports into their server's metrics, every server's
metrics into the run's (pure functions over JSON-able dicts)."""

from __future__ import annotations

import math

from sfsim.errors import SfsimError
from trainer.run.emulation import lanes_error, merge_lanes, section
from trainer.run.measure import cpu_seconds, peak_rss_bytes


def merge_reports(metrics: dict, reports: dict[str, dict], names: list[str], server: str, meter,
                  header_bytes: int) -> dict:
    """Fold the devices' own measurements into one server's metrics (same field shapes as in-process)."""
    m = dict(metrics)
    m["device_flops"] = {n: int(reports.get(n, {}).get("flops", 0)) for n in names}
    m["device_flops_total"] = sum(m["device_flops"].values())
    m["uplink_bytes_by_device"] = {n: int(reports.get(n, {}).get("uplink_bytes", 0)) for n in names}
    m["uplink_bytes"] = sum(m["uplink_bytes_by_device"].values())
    phases = dict(m["phase_s"])
    for r in reports.values():
        for k, v in r["phase_s"].items():
            phases[k] = round(phases.get(k, 0.0) + v, 6)
    m["phase_s"] = dict(sorted(phases.items()))
    m["peak_rss_bytes_by_role"] = {server: peak_rss_bytes(),
                                   **{n: int(r["peak_rss_bytes"]) for n, r in reports.items()}}
    m["peak_rss_bytes"] = max(m["peak_rss_bytes_by_role"].values())
    m["cpu_s_by_role"] = {server: round(cpu_seconds() - meter.cpu0, 3),
                          **{n: round(float(r.get("cpu_s", 0.0)), 3) for n, r in reports.items()}}
    m["cpu_s"] = round(sum(m["cpu_s_by_role"].values()), 3)
    m["peak_memory_note"] = "peak RSS (ru_maxrss) of each role's own process"
    m["header_bytes"] = header_bytes + sum(int(r["header_bytes"]) for r in reports.values())
    m["clock_offset_s"] = {n: r["clock_offset_s"] for n, r in reports.items()}
    m["emulated_sleep_s"] = {n: round(r["stretched_s"], 6) for n, r in reports.items()}
    m["missing_reports"] = [n for n in names if n not in reports]
    m["handovers"] = [h for r in reports.values() for h in r.get("handovers", [])]
    m["emulation"] = section(merge_lanes([meter.lag.lanes()] + [r.get("emulation", {}) for r in reports.values()]),
                             _span(list(meter.events) + [e for r in reports.values() for e in r["events"]]))
    m["notes"] = dict(m["notes"], link_events="distributed: shaped links: a send occupies the link for bytes / "
                      "bandwidth (the latency follows as a delay, as in the simulator); unshaped: from the queue "
                      "to gloo handing it to the peer")
    return m


#: Per-device fields of metrics.json that each server fills for its own devices.
_BY_DEVICE = ("device_flops", "uplink_bytes_by_device", "downlink_bytes_by_device", "samples_by_device",
              "microbatch_shapes", "samples_not_trained", "clock_offset_s", "emulated_sleep_s", "cpu_s_by_role",
              "peak_rss_bytes_by_role", "lost_devices", "server_flops", "dropped_peers")


#: Per-device counts each server adds to: a server's downlink bytes to a device, and the device's own report (flops,
#: uplink bytes: to the server it ends on), the samples a device left untrained (each server holding a part of a
#: departed device's cache counts its own); summed over the servers, or a device that handed over keeps one server's.
_COUNTED = ("device_flops", "uplink_bytes_by_device", "downlink_bytes_by_device", "samples_not_trained")


#: Totals of metrics.json summed over the servers.
_SUMMED = ("device_flops_total", "server_flops_total", "uplink_bytes", "downlink_bytes", "header_bytes",
           "train_samples", "cpu_s")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _part_error(part: dict) -> str | None:
    """What is wrong with a server's end-of-run part (``metrics``, ``events``, ``sync``) for :func:`merge_servers`."""
    m, ev, sync = part.get("metrics"), part.get("events"), part.get("sync")
    if not (isinstance(m, dict) and isinstance(ev, list) and isinstance(sync, dict)):
        return "not {metrics: {...}, events: [...], sync: {...}}"
    bad = [k for k in _BY_DEVICE if k in m and not isinstance(m[k], dict)]
    bad += [k for k in _COUNTED if isinstance(m.get(k), dict) and not all(_num(v) for v in m[k].values())]
    bad += [k for k in _SUMMED + ("peak_rss_bytes",) if not _num(m.get(k, 0))]
    bad += [k for k in ("phase_s", "server_flops") if not (isinstance(m.get(k, {}), dict)
                                                          and all(_num(v) for v in m.get(k, {}).values()))]
    bad += [k for k in ("missing_reports", "handovers", "train_loss_history") if not isinstance(m.get(k), list)]
    if not bad and not all(isinstance(h, dict) and _num(h.get("at_s")) and isinstance(h.get("device"), str)
                           for h in m["handovers"]):
        bad.append("handovers")
    em = m.get("emulation")
    if em is not None and not (isinstance(em, dict) and lanes_error(em.get("lanes")) is None and _num(em.get("span_s"))):
        bad.append("emulation")
    if not (isinstance(sync.get("joint"), bool) and _num(sync.get("sync_rounds")) and _num(sync.get("backhaul_bytes"))):
        bad.append("sync")
    if not all(isinstance(e, list) and len(e) == 6 and isinstance(e[0], str) and isinstance(e[1], str)
               and _num(abs(e[2]) if isinstance(e[2], (int, float)) else None) and _num(e[3])
               and isinstance(e[4], int) and isinstance(e[5], str) for e in ev):
        bad.append("events")
    return f"malformed {', '.join(bad)}" if bad else None


def merge_servers(parts: list[dict], fl) -> dict:
    """One run's metrics from every server's (server 0's losses and scores: after each epoch's last sync round
    every server holds the same model); per-device fields over all devices, totals summed, ``servers`` added.
    ``fl``: the run's :class:`trainer.run.fleet.Fleet`.

    Raises:
        SfsimError: a server's part is malformed (checked before use; one line naming the server)."""
    for j, p in enumerate(parts):
        why = _part_error(p)
        if why is not None:
            raise SfsimError(f"backhaul: server {fl.servers[j]}'s end-of-run part: {why}")
    ms = [p["metrics"] for p in parts]
    m = dict(ms[0])
    for key in _BY_DEVICE:
        if isinstance(m.get(key), dict):
            m[key] = {k: v for x in ms for k, v in x.get(key, {}).items()}
    for key in (k for k in _COUNTED if isinstance(m.get(k), dict)):  # a device that moved was counted by every server
        m[key] = {k: sum(x.get(key, {}).get(k, 0) for x in ms) for k in m[key]}  # it talked to (0 by the others)
    order = {n: i for i, n in enumerate(fl.devices)}
    for key in ("device_flops", "uplink_bytes_by_device", "downlink_bytes_by_device", "samples_by_device"):
        m[key] = dict(sorted(m[key].items(), key=lambda kv: order.get(kv[0], -1)))
    for key in _SUMMED:
        m[key] = sum(x.get(key, 0) for x in ms)
    m["phase_s"] = {k: round(sum(x.get("phase_s", {}).get(k, 0.0) for x in ms), 6)
                    for k in sorted({k for x in ms for k in x.get("phase_s", {})})}  # every process's
    m["missing_reports"] = [n for x in ms for n in x["missing_reports"]]
    m["handovers"] = sorted((h for x in ms for h in x["handovers"]), key=lambda h: (h["at_s"], h["device"]))
    m["peak_rss_bytes"] = max(x["peak_rss_bytes"] for x in ms)
    m["encrypted"] = any(x.get("encrypted", False) for x in ms)
    m["servers"] = {fl.servers[j]: {"devices": [n for n in fl.devices if fl.home[n] == j],
                                    "server_flops": sum(p["metrics"]["server_flops"].values()),
                                    "train_loss_history": p["metrics"]["train_loss_history"],
                                    "eval_accuracy": p["metrics"]["eval_accuracy"], **p["sync"]}
                    for j, p in enumerate(parts)}
    if parts[0]["sync"]["joint"] and m["method"] != "fedlora":  # one model stepping on every server's micro-batches
        hist = [p["metrics"]["train_loss_history"] for p in parts]
        m["train_loss_history"] = [round(sum(h[k] for h in hist if k < len(h)) / sum(k < len(h) for h in hist), 6)
                                   for k in range(max(map(len, hist)))]
    spans = [x["emulation"]["span_s"] for x in ms if "emulation" in x]
    if spans:  # every server's processes' overruns; one clock, so the run's span is the longest
        m["emulation"] = section(merge_lanes(x["emulation"]["lanes"] for x in ms if "emulation" in x), max(spans))
    m["backhaul_bytes_by_server"] = {k: v["backhaul_bytes"] for k, v in m["servers"].items()}
    m["sync_rounds"] = parts[0]["sync"]["sync_rounds"]
    m["notes"] = dict(m["notes"], servers="one process per server; train_loss_history is server 0's steps "
                      "(FedLoRA: its devices' steps), or with sync every step the mean over the servers, a step's "
                      "loss (each server's in servers.<name>); after each epoch's last sync round every server holds "
                      "the same adapters, which server 0 scores and saves")
    return m


def _span(events) -> float:
    """Seconds from the first event's start to the last one's end (events as tuples or lists)."""
    return max(e[2] + e[3] for e in events) - min(e[2] for e in events) if events else 0.0


def finite(obj):
    """``obj`` with every NaN or infinity replaced by ``None`` (JSON has no NaN: ``null`` says "no value")."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


__all__ = ["merge_reports", "merge_servers", "finite"]
