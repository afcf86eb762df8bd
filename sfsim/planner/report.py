"""The planner's printout: one row per (device type, cut, server) group, bounds and comparisons."""

from __future__ import annotations

from dataclasses import dataclass

from sfsim.planner.fluid import CREDITS, Estimate, Group
from sfsim.planner.model import StageTable, gib
from sfsim.units import format_count, format_quantity


@dataclass(frozen=True)
class Row:
    """One line of the plan table: ``count`` devices of one type sharing a cut and a server."""

    devices: str  # e.g. "rpi5-0..3" or "laptop"
    type: str
    count: int
    cut: int
    server: str
    forward_s: float  # device forward per micro-batch
    uplink_s: float  # uplink transfer per micro-batch (without latency)
    micro_batches: int  # per device
    server_share: float  # fraction of its server's work that these devices bring
    memory_used: float  # bytes one device needs at this cut
    memory_avail: float  # bytes one device has


@dataclass(frozen=True)
class Comparison:
    """A reference plan simulated the same way, and how much time the planner's plan saves on it."""

    label: str
    cut: int | None
    makespan_s: float | None
    saved: float | None  # fraction of the reference's time the plan saves
    note: str = ""


def _names(devs: tuple[str, ...]) -> str:
    if len(devs) == 1:
        return devs[0]
    first, last = devs[0], devs[-1]
    stem = first.rsplit("-", 1)[0]
    if last.startswith(stem + "-"):
        return f"{first}..{last.rsplit('-', 1)[1]}"
    return f"{first}..{last}"


def rows_for(table: StageTable, groups: list[Group]) -> list[Row]:
    """Table rows for ``groups``, in fleet order (devices fill a type's groups in file order)."""
    load = {}
    for g in groups:
        ki = table.k_index(g.k)
        load[g] = g.n * table.types[g.t].units * table.w[ki, g.j]
    per_server = {}
    for g, x in load.items():
        per_server[g.j] = per_server.get(g.j, 0.0) + x
    rows = []
    for t, info in enumerate(table.types):
        start = 0
        for g in sorted((g for g in groups if g.t == t), key=lambda g: (g.j, g.k)):
            ki = table.k_index(g.k)
            devs = info.devices[start:start + g.n]
            start += g.n
            rows.append(Row(_names(devs), info.name, g.n, g.k, table.servers[g.j].name,
                            float(table.f[t, ki]), float(table.s[t, ki]), info.micro_batches,
                            load[g] / per_server[g.j] if per_server[g.j] else 0.0,
                            float(table.dev_mem[ki]), info.memory))
    return rows


def bottleneck_words(table: StageTable, est: Estimate, makespan: float) -> str:
    """What bounds the makespan, in words, from the fluid estimate's limiting term."""
    srv = table.servers[est.server]
    busy = est.busy_s[est.server] / makespan if makespan > 0 else 0.0
    if est.limiting is None:
        return f"server {srv.name} (busy {busy:.0%} of the run: its work sets the pace)"
    if est.limiting == CREDITS:
        return (f"server {srv.name}'s buffer ({table.buffer} credits: uplink transfers to it queue for a "
                f"credit; busy {busy:.0%}); raise training.buffer if it has the memory")
    g = est.limiting
    info, ki = table.types[g.t], table.k_index(g.k)
    f, s = table.f[g.t, ki], table.s[g.t, ki]
    who = _names(info.devices[:1]) if g.n == 1 else f"{info.name} devices"
    n = info.micro_batches
    if s >= f:
        bw = format_quantity(info.bandwidth, "bandwidth")
        if table.dynamic and table.bits is not None and s > 0:
            bw = (f"effective {format_quantity(table.bits[ki] / s, 'bandwidth')} over its run, nominal "
                  f"{bw}")
        return (f"uplink of {who} ({bw}: {format_quantity(s, 'time')} per micro-batch x {n}; activations "
                f"are the same size at every cut, so only a smaller wire_dtype or fewer samples help); "
                f"server {srv.name} busy {busy:.0%}")
    return (f"compute of {who} (cut {g.k}: {format_quantity(f, 'time')} per micro-batch x {n}); "
            f"server {srv.name} busy {busy:.0%}")


def _fmt_t(x: float | None) -> str:
    return "-" if x is None else format_quantity(x, "time")


def _lora_line(res) -> str:
    last = res.lora_start + res.lora_layers - 1
    why = ("fixed by training.lora_start" if res.lora_fixed else
           f"the fewest allowed by --min-lora-layers {res.min_lora_layers}: more LoRA layers cost server "
           "time but may train better")
    return f"LoRA on blocks {res.lora_start}..{last} ({why})"


def _joules(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e3:.3g} kJ" if abs(x) >= 1e3 else f"{x:.3g} J"


def objective_lines(res) -> list[str]:
    """What the objective traded: time ties for device compute, or time for device energy."""
    fast = res.fastest
    if fast is None:
        return []
    dt = res.makespan_s / fast.makespan_s - 1 if fast.makespan_s > 0 else 0.0
    if res.objective == "energy":
        saved = 1 - res.device_j / fast.device_j if fast.device_j else 0.0
        return [f"objective: least device energy within --deadline {_fmt_t(res.deadline_s)}: {_joules(res.device_j)} "
                f"on the devices (servers not counted), {format_count(res.device_flop)}FLOP",
                f"  vs the fastest plan found, ties unbroken ({_fmt_t(fast.makespan_s)}, {_joules(fast.device_j)}): "
                f"{saved:.1%} less device energy for {dt:+.1%} time"]
    tol = f"{res.tie_tolerance:.2g}" if res.tie_tolerance < 0.001 else f"{res.tie_tolerance:.1%}"
    if res.tie_tolerance <= 0:
        return []
    if not res.ties_searched:
        return [f"time ties (within {tol}): not searched (a run this long leaves no replays in the planning "
                "budget; --objective energy searches anyway)"]
    if res.device_flop < fast.device_flop:
        return [f"time ties (plans within {tol} of the fastest, {_fmt_t(fast.makespan_s)}) go to less device "
                f"compute: {format_count(res.device_flop)}FLOP on the devices instead of "
                f"{format_count(fast.device_flop)}FLOP ({1 - res.device_flop / fast.device_flop:.1%} less) "
                f"for {dt:+.1%} time"]
    return [f"time ties (plans within {tol} of the fastest): none computes less on the devices "
            f"({format_count(res.device_flop)}FLOP)"]


def _bound_line(res) -> str:
    """The lower bound and gap, or why a dynamic network has none."""
    if res.lower_bound_s is None:
        return (f"dynamic network ({res.dynamic}): the analytic estimate uses each device's effective rates "
                "over its own run, and proves no lower bound; the total time above is simulated with it")
    return f"lower bound: {_fmt_t(res.lower_bound_s)}   gap: {res.gap:.1%}"


def format_result(res) -> str:
    """The text ``sfsim plan`` prints for a :class:`~sfsim.planner.PlanResult`."""
    head = ("devices", "count", "cut", "server", "fwd/mb", "uplink/mb", "mb/dev", "server share",
            "memory used/avail")
    body = [(r.devices, str(r.count), str(r.cut), r.server, _fmt_t(r.forward_s), _fmt_t(r.uplink_s),
             str(r.micro_batches), f"{r.server_share:.0%}", f"{gib(r.memory_used)} / {gib(r.memory_avail)}")
            for r in res.rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    line = "  ".join

    def fmt(cells):
        return line(c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [f"plan for {res.scenario or 'scenario'}: {res.schedule}, model {res.model}",
           _lora_line(res), "",
           fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(r) for r in body]
    out += ["",
            f"total time (simulated): {_fmt_t(res.makespan_s)}   (analytic estimate {_fmt_t(res.estimate_s)})",
            _bound_line(res),
            f"bounded by: {res.bottleneck}"]
    out += objective_lines(res)
    out.append("")
    for c in res.comparisons:
        if c.makespan_s is None:
            out.append(f"vs {c.label}: {c.note}")
        elif c.saved < 0:
            out.append(f"vs {c.label}: {_fmt_t(c.makespan_s)} -> this plan takes {-c.saved:.1%} longer")
        else:
            out.append(f"vs {c.label}: {_fmt_t(c.makespan_s)} -> this plan saves {c.saved:.1%}")
    out.append(f"(planned in {res.search_s:.2f} s; {res.simulated} plans simulated)")
    return "\n".join(out)
