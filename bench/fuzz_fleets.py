"""Fuzz the simulator with random valid fleets: every schedule on SimPy and on ``auto`` (tests/test_fuzz_fleets.py).

Counts the runs on each engine, the refusals (one line each, allowed) and the problems: a crash, a "please
report" stop, or fast-path figures that differ from SimPy's; prints each problem and the table, and writes
``bench/results/fuzz_fleets.json`` (``--out``). The scenarios of the seeds with problems are written beside it
(``fuzz_fleets/SEED.yaml``), ready for ``sfsim simulate --devices``.

    python bench/fuzz_fleets.py                       # seeds 0-1999
    python bench/fuzz_fleets.py --seeds 2000:4000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from tests.test_fuzz_fleets import fleet, problems  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0:2000", help="START:STOP (default 0:2000)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/fuzz_fleets.json"))
    args = ap.parse_args()
    start, stop = (int(x) for x in args.seeds.split(":"))
    out = Path(args.out)
    found_dir = out.parent / "fuzz_fleets"
    totals = {"seeds": 0, "simpy": 0, "fast": 0, "refused": 0, "problems": 0}
    lines: list[str] = []
    t0 = time.perf_counter()
    for seed in range(start, stop):
        found, counts = problems(seed)
        totals["seeds"] += 1
        for k, v in counts.items():
            totals[k] += v
        if found:
            found_dir.mkdir(parents=True, exist_ok=True)
            (found_dir / f"{seed}.yaml").write_text(yaml.safe_dump(fleet(seed), sort_keys=False))
            for line in found:
                print(line, flush=True)
            lines += found
            totals["problems"] += len(found)
    totals["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"seeds {start}-{stop - 1}: {totals['simpy']} runs on SimPy only, {totals['fast']} also compared on the fast "
          f"path, {totals['refused']} refused with their line, {totals['problems']} problems ({totals['seconds']} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": args.seeds, "totals": totals, "problems": lines}, indent=2) + "\n")


if __name__ == "__main__":
    main()
