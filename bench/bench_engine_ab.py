"""A/B of the SplitFrozen engine against another checkout, in CPU seconds, alternating fresh processes.

On a shared machine wall-clock rates swing with the load; CPU seconds of the process swing much
less. Each round runs, in a fresh process per tree, the engine on ``bench_engine.py``'s fleet (best of
``--repeat``) and plain SimPy timeouts, and prints micro-batches per CPU second and per timeout.

Run::

    git archive <commit> sfsim bench | tar -x -C /tmp/base    # the tree to compare with
    .venv/bin/python bench/bench_engine_ab.py --base /tmp/base [--devices 10000] [--mb 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CODE = """
import sys, time
sys.path.insert(0, 'bench')
import bench_engine as b
def cpu(f, *a):
    t = time.process_time(); f(*a); return time.process_time() - t
e = min(cpu(b.run_engine, {devices}, {mb}) for _ in range({repeat}))
c = min(cpu(b.simpy_timeouts_per_s, 1_000_000) for _ in range({repeat}))
n = {devices} * {mb}
print(f'engine {{n / e:,.0f}} micro-batches per CPU s; SimPy {{1e6 / c:,.0f}} timeouts per CPU s; '
      f'{{n / e / (1e6 / c):.3f}} micro-batches per timeout')
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the other tree (with sfsim/ and bench/bench_engine.py)")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    code = CODE.format(devices=args.devices, mb=args.mb, repeat=args.repeat)
    trees = (("base", Path(args.base).resolve()), ("this", Path(__file__).resolve().parents[1]))
    for _ in range(args.rounds):
        for name, root in trees:
            out = subprocess.run([sys.executable, "-c", code], cwd=root, env={"PYTHONPATH": str(root)},
                                 capture_output=True, text=True, check=True)
            print(f"{name}: {out.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
