"""The server loop's own time per micro-batch in real runs' traces: the gaps between the server lane's ops, by epoch.

Usage (after ``bench/validate_network.py --out DIR --only cached,...``)::

    /work/main/.venv/bin/python bench/server_gaps.py DIR/cached*/run/trace.json

Per epoch (split at the ``epoch_end`` event): the server's micro-batches (its ``F`` ops), the span from its first op
to its last, the sum of its ops, the gaps per micro-batch ((span - ops) / micro-batches) and the median gap from a
step's end to the next ``F`` (where a server loop's per-micro-batch work outside its ops lies). In ``cached``'s
second epoch (the server replays its activation cache: no device, no link) every gap is the server loop's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def epochs(path: Path) -> list[dict]:
    """One row per epoch of the server lane of the Chrome trace at ``path`` (see the module)."""
    ev = json.loads(path.read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    xs = [e for e in ev if e["ph"] == "X"]
    cuts = sorted(e["ts"] for e in xs if e["name"] == "epoch_end")
    lanes = {names[e["pid"]] for e in xs if e["name"] == "epoch_end"}
    server = {lane.removeprefix("epoch-end:") for lane in lanes} or {"srv", "server"}
    ops = sorted((e for e in xs if names[e["pid"]] in server), key=lambda e: e["ts"])
    rows, bounds = [], [float("-inf"), *cuts, float("inf")]
    for a, b in zip(bounds, bounds[1:], strict=False):
        part = [e for e in ops if a < e["ts"] < b]
        n = sum(e["name"] == "F" for e in part)
        if not n:
            continue
        span = part[-1]["ts"] + part[-1]["dur"] - part[0]["ts"]
        busy = sum(e["dur"] for e in part)
        loop = [y["ts"] - (x["ts"] + x["dur"]) for x, y in zip(part, part[1:], strict=False)
                if x["name"] == "step" and y["name"] == "F"]
        rows.append({"micro_batches": n, "span_ms": span / 1e3, "ops_ms": busy / 1e3, "gap_per_mb_ms": (span - busy) / n / 1e3,
                     "step_to_f_ms": statistics.median(loop) / 1e3 if loop else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", type=Path)
    for path in ap.parse_args().traces:
        for i, r in enumerate(epochs(path), 1):
            step = "n/a" if r["step_to_f_ms"] is None else f"{r['step_to_f_ms']:.3f} ms"
            print(f"{path} epoch {i}: {r['micro_batches']} micro-batches, span {r['span_ms']:.2f} ms, ops "
                  f"{r['ops_ms']:.2f} ms, gaps {r['gap_per_mb_ms']:.3f} ms a micro-batch, step -> F median {step}")


if __name__ == "__main__":
    main()
