"""One point of a sweep: build its scenario, (plan and) simulate it, and turn each result into a CSV row.

:func:`run_point` is what every executor (:mod:`sfsim.sweeps.executors`) runs; a point whose values
the scenario rejects, or whose simulation fails, becomes an error row and never a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sfsim.cost.energy import run_energy
from sfsim.errors import SfsimError
from sfsim.methods import METHODS, canonical
from sfsim.outputs.report import overall_utilization
from sfsim.scenario.config import scenario_from_dict
from sfsim.scenario.overrides import apply
from sfsim.simulate import simulate

FIGURES = ("makespan_s", "micro_batches", "device_flops_total", "device_flops_max", "server_flops_total",
           "device_busy_total_s", "uplink_bytes", "downlink_bytes", "server_utilization", "bottleneck",
           "bottleneck_utilization", "cuts", "lora_start", "servers_used", "assignment", "assignment_source",
           "device_energy_j", "server_energy_j", "backhaul_bytes", "sync_rounds", "stream_mixing",
           "server_wait_s", "pool_peak_bytes", "handover_moved", "samples_not_trained")
"""Result columns of a sweep row, from the simulation's JSON result (see :func:`figures`)."""

NO_CUT = ("fedlora", "cenlora")
"""Schedules without a device/server cut (their rows leave ``cuts`` empty)."""

METRICS = tuple(f for f in FIGURES if f not in ("bottleneck", "cuts", "assignment", "assignment_source"))
"""Columns that are numbers (what ``--metric`` may plot)."""


@dataclass(frozen=True)
class Settings:
    """What each point runs.

    Attributes:
        schedules: canonical schedule names, each a row.
        split: one cut for every device (None: the scenario's default).
        plan: plan every point with the planner (SplitFrozen) and replay the plan for every schedule.
        sets: fixed overrides applied before the varied ones.
    """

    schedules: tuple[str, ...] = ("splitfrozen",)
    split: int | None = None
    plan: bool = False
    sets: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.plan and self.split is not None:
            raise SfsimError("--plan and --split exclude each other: plan every point, or give one cut")
        if not self.schedules:
            raise SfsimError("no schedule to run; give --schedule splitfrozen (or a list, or all)")


def parse_schedules(text: str) -> tuple[str, ...]:
    """``'all'`` -> every method; ``'splitfrozen,fedlora'`` -> those (canonical names, checked)."""
    if text.strip() == "all":
        return tuple(METHODS)
    return tuple(dict.fromkeys(canonical(s.strip()) for s in text.split(",") if s.strip()))


def run_point(base: dict, file: str | None, point: Sequence[tuple[str, object]], settings: Settings,
              schedules: Sequence[str] | None = None) -> list[dict]:
    """Build, (plan and) simulate one point; one row per schedule, an error row where it failed.

    Args:
        base: the scenario's raw YAML dict (not changed).
        file: the scenario file (for relative paths and error messages).
        point: ``(key, value)`` overrides of this point.
        settings: schedules, cut or planning.
        schedules: run only these of ``settings.schedules`` (resuming a half-done point).

    Returns:
        Rows: ``{"schedule", "status": "ok" | "error", "error", **figures}``.
    """
    names = list(schedules or settings.schedules)
    try:
        sc = scenario_from_dict(apply(base, [*settings.sets, *point], file), source=file)
        plan = _plan(sc, names) if settings.plan else None
    except Exception as err:  # noqa: BLE001 - a bad point is an error row, never a crash
        return [_error_row(n, err) for n in names]
    rows = []
    for name in names:
        try:
            res = simulate(sc, name, splits=settings.split, plan=plan)
            rows.append({"schedule": name, "status": "ok", "error": "", **figures(res, sc)})
        except Exception as err:  # noqa: BLE001
            rows.append(_error_row(name, err))
    return rows


def _plan(sc, names: Sequence[str]):
    # the planner pulls in scipy.optimize (~0.9 s): only sweeps with --plan pay for it
    from sfsim.planner import SCHEDULES
    from sfsim.planner import plan as make_plan

    target = next((n for n in names if n in SCHEDULES), "splitfrozen")
    return make_plan(sc, schedule=target).to_plan()


def _error_row(schedule: str, err: Exception) -> dict:
    text = str(err) if isinstance(err, SfsimError) else f"{type(err).__name__}: {err}"
    return {"schedule": schedule, "status": "error", "error": " ".join(text.split())}


def figures(res, sc) -> dict:
    """A row's figures from a :class:`~sfsim.outputs.result.SimResult`: totals, utilisation and the bottleneck.

    ``bottleneck`` is the busiest resource over the run: a server (busy / (accelerators x time)), a
    device (compute / time) or a device's uplink or downlink (serialisation / time); ties go to the
    first of that order. ``assignment`` counts devices per server (``mec-a:24 regional:24``). The
    energy columns sum the joules of the devices / servers that declare ``power`` (empty if none).
    """
    d = res.to_dict()
    counts = {s.name: s.count for s in sc.servers}
    used: dict[str, int] = {}
    for srv in res.assignment.values():
        used[srv] = used.get(srv, 0) + 1
    what, util = _bottleneck(res, sc)
    energy = res.energy if res.energy is not None else run_energy(res, sc)
    return {**{k: d[k] for k in ("makespan_s", "micro_batches", "device_flops_total", "device_flops_max",
                                 "uplink_bytes", "downlink_bytes", "lora_start")},
            "server_flops_total": float(sum(res.server_flops.values())),
            "device_busy_total_s": res.device_busy_total_s,
            "server_utilization": overall_utilization(res, counts),
            "bottleneck": what, "bottleneck_utilization": util,
            "cuts": "" if res.schedule in NO_CUT else " ".join(map(str, sorted(set(res.splits.values())))),
            "servers_used": len(used),
            "assignment": " ".join(f"{s}:{used[s]}" for s in counts if s in used),
            "assignment_source": res.assignment_source,
            "device_energy_j": energy["device_total_j"] if energy and energy["devices"] else None,
            "server_energy_j": energy["server_total_j"] if energy and energy["servers"] else None,
            "backhaul_bytes": float(sum(res.backhaul_bytes_by_server.values())), "sync_rounds": res.sync_rounds,
            "stream_mixing": res.stream_mixing, "server_wait_s": float(sum(res.server_wait_s.values())),
            "pool_peak_bytes": float(max(res.pool_peak_bytes.values(), default=0.0)),
            "handover_moved": sum(h["sent_after"] for h in res.handovers),
            "samples_not_trained": sum(res.samples_not_trained.values())}


def _bottleneck(res, sc) -> tuple[str, float]:
    T = res.makespan_s
    if T <= 0:
        return "", 0.0
    best = ("", -1.0)
    for name, u in res.server_utilization.items():
        best = max(best, (f"server {name}", u), key=lambda x: x[1])
    for dev in sc.devices:
        for what, busy in (("device", res.device_busy_s.get(dev.name, 0.0)),
                           ("uplink", res.uplink_bytes_by_device.get(dev.name, 0.0) * 8 / dev.uplink.bandwidth),
                           ("downlink", res.downlink_bytes_by_device.get(dev.name, 0.0) * 8
                            / dev.downlink.bandwidth)):
            if busy / T > best[1]:
                best = (f"{what} {dev.name}", busy / T)
    return best[0], best[1]
