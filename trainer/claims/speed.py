"""How fast each method trains and scores on this CPU: the speeds the decisive grid's estimate rests on.

``python -m trainer.claims.speed --model M --task T --samples N --data-dir DATA`` trains every
method of the grid for two short epochs on ``N`` training rows of the task (drawn as a cell draws them,
the validation rows held out) at the grid's length, cut and fleet (SplitFrozen on the cached fleet,
which every group uses unless it started without it: :func:`trainer.claims.scale.uses_cache`), one method after another in one process with
one torch thread, and times: the model's load and build, each epoch's training samples per second
(SplitFrozen's second epoch replays cached activations), and the scoring rows per second on the
validation rows, each in wall time and in this process's CPU time (what it costs a core: the estimate's
unit is core-hours, and CPU time hardly moves with the other processes' load). The record keeps its command, commit and the load average before and after each
method: on a shared CPU the load moves every figure, so the estimate says under what load it was made.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from sfsim.errors import SfsimError
from sfsim.scenario.schema import write_atomic
from trainer.claims.converge import subset
from trainer.claims.grid import METHODS, CellError, load_average, provenance
from trainer.claims.scale import FLEETS, SCALE
from trainer.data import tasks as tdata
from trainer.methods.convergence import holdout
from trainer.methods.evaluate import score
from trainer.run.runner import RunConfig, build

#: Where the speed records live, beside the cells (``<results>/speeds/<model>_<task>.json``).
SPEEDS = "speeds"


def probe(model: str, task: str, method: str, samples: int, data_dir: str, fleet: str, score_rows: int) -> dict:
    """Time one method: load and build, two epochs of ``samples`` rows, scoring ``score_rows`` validation rows.

    Each phase is timed twice: wall seconds, and this process's CPU seconds (``time.process_time``, every
    thread): with one torch thread the CPU time is what the phase costs a core, whatever the other
    processes on the machine do, while the wall time stretches with their load.
    """
    sc = SCALE[(model, task)]
    name, extra = METHODS[method]
    clock, before = _Clock(), load_average()
    full = tdata.load_task(task, data_dir, "train")
    train_idx, val_idx = holdout(len(full), sc.val_samples)
    val = subset(full, val_idx)
    cfg = RunConfig(devices=fleet, model=model, task=task, method=name, partition="iid", seed=0, lr=2e-3,
                    out=tempfile.mkdtemp(prefix="sfsim-speed-"), split=None if name in ("fedlora", "cenlora")
                    else sc.split, train_samples=samples, max_len=sc.max_len, data_dir=data_dir,
                    client_order=extra[1] if extra else None, count_flops=False, progress=False)
    built = build(cfg, train=subset(full, train_idx), dev=val)
    lm, setup, meth = built.lm, built.setup, built.method
    load, epochs = clock.lap(), []
    for epoch in range(2):
        meth.train_epoch(epoch, lambda loss, n: None)
        meth.finish_epoch()
        epochs.append(clock.lap())
    score(meth, lm, setup.head, val, cfg, score_rows)
    scoring, n = clock.lap(), sum(setup.samples.values())
    return {"fleet": fleet, "load_s": round(load[0], 2), "load_cpu_s": round(load[1], 2),
            "train_sps": [round(n / w, 3) for w, _ in epochs], "train_sps_cpu": [round(n / c, 3) for _, c in epochs],
            "score_rps": round(score_rows / scoring[0], 3), "score_rps_cpu": round(score_rows / scoring[1], 3),
            "train_samples": n, "score_rows": score_rows, "load": {"before": before, "after": load_average()}}


class _Clock:
    """Wall and CPU seconds since the last lap."""

    def __init__(self):
        self.t = (time.perf_counter(), time.process_time())

    def lap(self) -> tuple[float, float]:
        now = (time.perf_counter(), time.process_time())
        out, self.t = (now[0] - self.t[0], now[1] - self.t[1]), now
        return out


def load_speeds(results) -> dict[tuple[str, str, str], dict]:
    """Every probed speed under ``results/speeds``, by (model, task, method), with its record's commit."""
    out = {}
    for f in sorted((Path(results) / SPEEDS).glob("*.json")):
        rec = json.loads(f.read_text())
        for meth, sp in rec["methods"].items():
            out[(rec["model"], rec["task"], meth)] = {**sp, "commit": rec["commit"], "recorded": rec["recorded"]}
    return out


def parser() -> argparse.ArgumentParser:
    """The options of ``python -m trainer.claims.speed``."""
    p = argparse.ArgumentParser(prog="python -m trainer.claims.speed", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=sorted({m for m, _ in SCALE}))
    p.add_argument("--task", required=True, choices=sorted({t for _, t in SCALE}))
    p.add_argument("--samples", type=int, default=320, help="training rows of each method's two epochs")
    p.add_argument("--score-rows", type=int, default=256, help="validation rows scored")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods of the grid")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--results", default="bench/results/claims", help="folder of the recorded cells and speeds")
    return p


def main(argv: list[str] | None = None) -> int:
    """Probe every method and write ``<results>/speeds/<model>_<task>.json``; one-line errors, exit 2."""
    a = parser().parse_args(argv)
    torch.set_num_threads(1)  # one core per run: the machine is shared
    try:
        prov = provenance()
        methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        if (a.model, a.task) not in SCALE or not methods or any(m not in METHODS for m in methods):
            raise SfsimError(f"--model/--task/--methods: use a (model, task) of the grid and methods of {', '.join(METHODS)}")
        out = {}
        for meth in methods:  # SplitFrozen cached, as every group runs it that did not start without the cache
            fleet = FLEETS[a.model][meth == "splitfrozen"]
            out[meth] = probe(a.model, a.task, meth, a.samples, a.data_dir, fleet, a.score_rows)
            print(f"{meth}: {json.dumps(out[meth])}", file=sys.stderr, flush=True)
    except (SfsimError, ValueError, CellError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cmd = ["python", "-m", "trainer.claims.speed", *(argv if argv is not None else sys.argv[1:])]
    names = {a.data_dir: "DATA", a.results: "RESULTS"}
    rec = {"model": a.model, "task": a.task, "command": " ".join(names.get(c, c) for c in cmd),
           **prov, "recorded": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "methods": out}
    path = Path(a.results) / SPEEDS / f"{Path(a.model).name}_{a.task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
