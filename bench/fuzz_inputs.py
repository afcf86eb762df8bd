"""Fuzz the commands users type, at full count: mutated scenario files and --vary strings, each a real process.

300 mutated scenario files (alias bombs, deep nesting, huge or unit-less numbers, names that are
paths, torn or binary text; ``tests/test_fuzz.py``'s strategies) go through ``sfsim simulate``,
``sfsim plan`` and a two-point ``sfsim sweep``, and 100 mutated ``--vary`` strings through ``sfsim
sweep``. Every command must exit 0 or 2 within 30 s and print no traceback; the report counts exit
statuses, the slowest command and every failure (``bench/results/fuzz_inputs.json``). CI runs the
same strategies in-process at a small count (``tests/test_fuzz.py``).

    python bench/fuzz_inputs.py                      # 300 files x 3 commands + 100 --vary strings
    python bench/fuzz_inputs.py --files 30 --varies 20 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from tests.test_fuzz import BASE, TEXT_MUTATION, VARY_KEY, VARY_VALUE, _mutated_text  # noqa: E402

LIMIT_S = 30


def _run(args: list[str]) -> dict:
    """One ``python -m sfsim ...`` process: its exit status, seconds, and whether it printed a traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "sfsim", *args], capture_output=True, text=True, env=env,
                           timeout=LIMIT_S, errors="replace")
        code, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        code, text = "timeout", ""
    s = time.perf_counter() - t
    ok = code in (0, 2) and "Traceback" not in text
    return {"args": args, "code": code, "s": round(s, 2), "ok": ok, "tail": "" if ok else text[-600:]}


def _cases(files: int, varies: int, folder: Path) -> list[list[str]]:
    """The commands to run: each mutated file through three commands, each --vary string through a sweep."""
    cases: list[list[str]] = []
    plain = folder / "base.yaml"
    plain.write_text(yaml.safe_dump(BASE))
    hc = [HealthCheck.too_slow, HealthCheck.filter_too_much]

    @settings(max_examples=files, deadline=None, database=None, suppress_health_check=hc)
    @given(st.lists(TEXT_MUTATION, min_size=1, max_size=3))
    def file_cases(mutations):
        path = folder / f"f{len(cases)}.yaml"
        path.write_bytes(_mutated_text(mutations))
        cases.extend([["simulate", "--devices", str(path)], ["plan", "--devices", str(path)],
                      ["sweep", "--devices", str(path), "--vary", "training.accumulate=1,2", "--jobs", "1",
                       "-o", str(folder / f"{path.stem}.csv"), "--overwrite"]])

    @settings(max_examples=varies, deadline=None, database=None, suppress_health_check=hc)
    @given(VARY_KEY, VARY_VALUE)
    def vary_cases(key, value):
        vary = f"{key}={value}".replace("\0", "")  # argv cannot hold a NUL (C strings end there): no user types one
        cases.append(["sweep", "--devices", str(plain), "--vary", vary, "--jobs", "1",
                      "-o", str(folder / f"v{len(cases)}.csv"), "--overwrite"])

    file_cases()
    vary_cases()
    return cases


def main() -> None:
    """Generate, run and report (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--varies", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2, help="commands at once")
    ap.add_argument("--out", default=str(ROOT / "bench/results/fuzz_inputs.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = _cases(a.files, a.varies, Path(tmp))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(_run, cases))
        wall = time.perf_counter() - t0
    codes: dict[str, int] = {}
    for r in results:
        codes[str(r["code"])] = codes.get(str(r["code"]), 0) + 1
    slowest = max(results, key=lambda r: r["s"])
    report = {"files": a.files, "varies": a.varies, "commands": len(results), "exit_codes": codes,
              "failures": [r for r in results if not r["ok"]], "slowest_s": slowest["s"],
              "slowest_args": slowest["args"][:3], "wall_s": round(wall, 1), "limit_s": LIMIT_S}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(results)} commands ({a.files} files x 3, {a.varies} --vary strings): exit codes {codes}, "
          f"{len(report['failures'])} failures, slowest {slowest['s']:.1f} s; {wall:.0f} s in all -> {a.out}")
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
