"""``sfsim validate``'s ``server_cpu`` line: how much of the server's measured op time was compute, and how much
waiting for a core.

A server op's traced time is wall time: its compute plus any time its thread waited for a core. The server's profile
(``sfsim profile --role server``) times each layer separately and keeps the median over its repeats; its calls are
short (0.1-1 ms on the tiny GPT-2), so a repeat that waited for a core is an outlier the median drops, and the profile
gives the compute. On a loaded machine (two cores, load 4-5: other processes' work), traced in a ``cached`` and an
``epochs2-cenlora`` run, the server's F, B and W took 2.2-3.7x their thread's CPU time, and that CPU time was within
5% of what the profile predicted (``cached``: F 0.104 s CPU against 0.105 s predicted, 0.269 s wall; B 0.065 against
0.063, 0.189 s wall). This line shows that split for every run, so that a server row's error can be read as the
model's or as the machine's load.

Measured: the run's ``server_cpu_s`` (:class:`trainer.run.measure.Meter`: the computing thread's CPU seconds in each
server phase) against the same phases' ``phase_s``; predicted: the simulator's server op stages. Only for one server
on a CPU with one torch thread (:func:`trainer.validate.firstcall.cpu_clock`'s rule: otherwise the thread's CPU time
is not the op's compute); None otherwise.
"""

from __future__ import annotations

SERVER_OPS = ("server_F", "server_B", "server_W", "server_BW", "server_backward", "server_step")


def server_cpu(report: dict, metrics: dict, threads: int) -> dict | None:
    """The ``server_cpu`` line of ``report`` (see the module): predicted, measured (wall) and CPU seconds of the
    server's ops, and the wall seconds beyond the CPU (``core_wait_s``); None where it does not apply."""
    cpu = metrics.get("server_cpu_s") or {}
    if threads != 1 or len(metrics.get("server_flops", {})) != 1 or not cpu:
        return None
    wall = sum(metrics["phase_s"].get(k, 0.0) for k in cpu)
    used = sum(cpu.values())
    pred = sum(row["predicted_s"] for name, row in report["stages"].items() if name in SERVER_OPS)
    return {"predicted_s": round(pred, 6), "measured_s": round(wall, 6), "cpu_s": round(used, 6),
            "core_wait_s": round(wall - used, 6)}


def format_server_cpu(row: dict | None) -> list[str]:
    """The report's text line for :func:`server_cpu`'s row (none without one)."""
    if row is None:
        return []
    return [f"server ops: predicted {row['predicted_s']:.3f} s, measured {row['measured_s']:.3f} s, of which "
            f"{row['cpu_s']:.3f} s the server thread's CPU and {row['core_wait_s']:.3f} s waiting for a core"]


__all__ = ["SERVER_OPS", "format_server_cpu", "server_cpu"]
