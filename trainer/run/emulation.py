"""How far a run's emulation fell behind the scenario it emulates (metrics.json ``emulation``).

The runtime emulates slower devices and links by sleeping: a device's compute is stretched to FLOPs / rate
(:meth:`trainer.run.measure.Meter.compute`), a shaped message is held until its emulated end and delivered
after the latency (:mod:`trainer.transport.distributed`), a pausing device waits for its next online
instant (:mod:`trainer.transport.dynamics`), a backhaul transfer holds the server's link
(:mod:`trainer.transport.backhaul`). Sleeping can only slow work down: when the machine is loaded, real
compute can take longer than its emulated time, and a sleeping thread can wake late. The run is then
slower than the scenario it claims to emulate, and comparing it with the simulator compares speeds the
run never had.

Every emulated op or transfer records its *overrun*: the seconds it ended after its emulated end
(0 when it kept up), per lane (a device's compute lane ``d1``, its uplink ``link:d1``, a server's downlink
to it ``downlink:d1``, a server's backhaul ``backhaul:mec-a``). A lane *fell behind* when its total overrun
exceeds the tolerance: :data:`TOLERANCE_S` or :data:`TOLERANCE_SHARE` of the run's span, whichever is
larger (docs/guide/profile-validate.md, "Emulation that falls behind", gives the measurements behind them).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from sfsim.errors import SfsimError

#: A lane's total overrun below this many seconds is wake-up noise, not a slower run: the worst lane of runs
#: that kept up summed 0.001-0.048 s at load 7-14 on 2 cores (19 validate cases and the handover test: the docs).
TOLERANCE_S = 0.05
#: ... or below this share of the run's span (its first to last trace event), whichever is larger: the
#: simulator's median error against the runtime is about 1% on a quiet machine, so an emulation that
#: lost more than 1% of the run on one lane could move a comparison by as much as the error being measured.
TOLERANCE_SHARE = 0.01
#: An op that ended more than this after its emulated end counts as ``late`` (below it: a sleep's usual wake-up).
LATE_S = 0.001
#: The figures one lane records (metrics.json ``emulation.lanes.<lane>``).
LANE_KEYS = ("ops", "late", "total_s", "worst_s")


class EmulationBehind(SfsimError):
    """``sfsim run --strict-emulation``: the run fell behind its emulation (its outputs are kept); exit status 3."""

    exit_code = 3


class Lag:
    """Per-lane overruns of the emulated ops of one process (thread-safe: senders and deliverers record too)."""

    def __init__(self):
        self._lanes: dict[str, list] = {}  # lane -> [ops, late, total_s, worst_s]
        self._lock = threading.Lock()

    def record(self, lane: str, over_s: float) -> None:
        """One emulated op on ``lane`` that ended ``over_s`` seconds after its emulated end (<= 0: on time; over
        :data:`LATE_S`: counted ``late``)."""
        over = over_s if over_s > 0 else 0.0
        with self._lock:
            e = self._lanes.setdefault(lane, [0, 0, 0.0, 0.0])
            e[0] += 1
            e[1] += over > LATE_S
            e[2] += over
            e[3] = max(e[3], over)

    def lanes(self) -> dict[str, dict]:
        """``lane -> {ops, late, total_s, worst_s}`` (seconds to the microsecond), lanes sorted."""
        with self._lock:
            return {lane: {"ops": n, "late": late, "total_s": round(t, 6), "worst_s": round(w, 6)}
                    for lane, (n, late, t, w) in sorted(self._lanes.items())}


def sleep_until(now: Callable[[], float], t: float, lag: Lag | None, lane: str) -> float:
    """Sleep (never spin) until ``now() >= t``; record on ``lane`` how late it woke; return that lateness."""
    dt = t - now()
    if dt > 0:
        time.sleep(dt)
    late = now() - t
    if lag is not None:
        lag.record(lane, late)
    return max(0.0, late)


def merge_lanes(parts: Iterable[dict]) -> dict[str, dict]:
    """One run's lanes from several processes' (a lane two processes recorded, e.g. the downlink to a device
    that handed over, adds its counts and totals; its worst is the worse)."""
    out: dict[str, dict] = {}
    for lanes in parts:
        for lane, f in lanes.items():
            if lane not in out:
                out[lane] = dict(f)
                continue
            o = out[lane]
            o.update(ops=o["ops"] + f["ops"], late=o["late"] + f["late"], total_s=round(o["total_s"] + f["total_s"], 6),
                     worst_s=max(o["worst_s"], f["worst_s"]))
    return dict(sorted(out.items()))


def lanes_error(lanes) -> str | None:
    """What is wrong with a peer's ``lane -> figures`` (a device's report, a server's part), or None."""
    if not isinstance(lanes, dict):
        return "not a mapping of lanes"
    for lane, f in lanes.items():
        if not (isinstance(lane, str) and 0 < len(lane) <= 200 and isinstance(f, dict) and set(f) == set(LANE_KEYS)):
            return f"lane {str(lane)[:40]!r} is not {{{', '.join(LANE_KEYS)}}}"
        if not all(isinstance(f[k], int) and not isinstance(f[k], bool) and f[k] >= 0 for k in ("ops", "late")) \
                or f["late"] > f["ops"]:
            return f"lane {lane[:40]!r}: ops and late must be counts, late <= ops"
        if not all(_seconds(f[k]) for k in ("total_s", "worst_s")) or f["worst_s"] > f["total_s"] + 1e-6:
            return f"lane {lane[:40]!r}: total_s and worst_s must be finite seconds >= 0, worst <= total"
    return None


def section(lanes: dict[str, dict], span_s: float, modelled: dict[str, float] | None = None) -> dict:
    """metrics.json ``emulation``: the lanes, the tolerance for a run of ``span_s`` seconds, and the lanes that fell
    behind (total overrun above it), worst first.

    ``modelled``: seconds of a lane's overrun that the simulator models too (``sfsim validate`` with
    ``--device-profile``: a device's first-forward ``warmup``, by which its first stretched forward overruns); they
    are not held against it (``excess_s``: the overrun beyond them)."""
    tol = round(max(TOLERANCE_S, TOLERANCE_SHARE * max(0.0, span_s)), 6)
    modelled = {k: v for k, v in (modelled or {}).items() if k in lanes and v > 0}
    excess = {k: round(max(0.0, f["total_s"] - modelled.get(k, 0.0)), 6) for k, f in lanes.items()}
    behind = sorted((k for k in lanes if excess[k] > tol), key=lambda k: -excess[k])
    return {"lanes": lanes, "span_s": round(span_s, 6), "tolerance_s": tol, "behind": behind,
            "fell_behind": bool(behind), **({"modelled_s": modelled, "excess_s": excess} if modelled else {}),
            "rule": f"a lane fell behind when its emulated ops ended, in total, more than max({TOLERANCE_S} s, "
                    f"{TOLERANCE_SHARE:.0%} of the run's span) after their emulated ends"}


def verdict(em: dict | None) -> str | None:
    """The one line ``sfsim run`` ends with when the run fell behind (None when it kept up or emulated nothing)."""
    if not em or not em.get("fell_behind"):
        return None
    lanes = em["lanes"]
    worst = em["behind"][0]
    by = em.get("excess_s", {}).get(worst, lanes[worst]["total_s"])
    others = f" (also {', '.join(em['behind'][1:4])}{', ...' if len(em['behind']) > 4 else ''})" \
        if len(em["behind"]) > 1 else ""
    return (f"emulation fell behind by {by:.3f} s on {worst}{others}: "
            f"{lanes[worst]['late']} of {lanes[worst]['ops']} emulated ops ended late, the worst by "
            f"{lanes[worst]['worst_s']:.3f} s (tolerance {em['tolerance_s']:.3f} s); this run was slower than "
            f"the scenario it emulates: run fewer processes on this machine, give slower emulated speeds, or "
            f"lower --threads")


def behind_by(em: dict | None) -> tuple[str, float] | None:
    """(the lane that fell behind most, its total overrun in seconds), or None when the run kept up."""
    if not em or not em.get("fell_behind"):
        return None
    worst = em["behind"][0]
    return worst, em.get("excess_s", {}).get(worst, em["lanes"][worst]["total_s"])


def note(em: dict | None) -> str | None:
    """``emulation fell behind by X s on LANE: measured time not comparable`` (``sfsim validate``, tests), or None."""
    worst = behind_by(em)
    return None if worst is None else f"emulation fell behind by {worst[1]:.3f} s on {worst[0]}: measured time not comparable"


def state(em: dict | None) -> str:
    """One line on how the emulation held: :func:`note`, or that it kept up (its worst lane), or that there was none."""
    if not em or not em.get("lanes"):
        return "nothing emulated"
    line = note(em)
    if line is not None:
        return line
    lane = max(em["lanes"], key=lambda k: em["lanes"][k]["total_s"])
    return (f"emulation kept up (worst lane {lane}: {em['lanes'][lane]['total_s']:.3f} s over "
            f"{em['lanes'][lane]['ops']} ops, tolerance {em['tolerance_s']:.3f} s)")


def _seconds(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


__all__ = ["EmulationBehind", "TOLERANCE_S", "TOLERANCE_SHARE", "LATE_S", "LANE_KEYS", "Lag", "sleep_until", "merge_lanes", "lanes_error", "section",
           "verdict", "behind_by", "note", "state"]
