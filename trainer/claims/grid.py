"""The claims report's grid: which real runs ("cells") it needs, how each is run, and where it is kept.

A cell is one ``sfsim run`` (accuracy, GSM8K) or one ``sfsim validate`` (measured and predicted
training time) with fixed settings. Each finished cell is one small JSON file under the results
folder (written atomically), keyed by its settings, holding the figures the report needs and the
exact command that produced them. :func:`run_cells` runs the cells that are missing, in priority
order (seed 0 of every cell before any second seed), and stops starting new ones when the budget
would be exceeded: a report can be filled over several sessions and never runs a cell twice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sfsim.scenario.schema import write_atomic

ROOT = Path(__file__).resolve().parents[2]

TASKS = ("sst2", "mrpc", "mnli")
PARTITIONS = ("iid", "dirichlet:0.5", "dirichlet:0.1", "label-skew:1")
#: Method variants of the accuracy grid -> (``sfsim run --method``, extra options).
METHODS = {
    "splitfrozen": ("splitfrozen", ()),
    "splitlora-interleaved": ("splitlora", ("--client-order", "interleaved")),
    "splitlora-sequential": ("splitlora", ("--client-order", "sequential")),
    "fedlora": ("fedlora", ()),
    "cenlora": ("cenlora", ()),
}
SEEDS = (0, 1, 2)
#: Methods whose training time the runtime measures (``sfsim validate``).
TIME_METHODS = ("splitfrozen", "splitfrozen-sequential", "splitlora", "splitlora-sequential", "fedlora")
#: Time-grid names that are a method with options (``splitlora`` alone is the default, interleaved, order).
TIME_VARIANTS = {"splitlora-sequential": ("splitlora", ("--client-order", "sequential"))}
#: GSM8K cells; CenLoRA's also scores the model before fine-tuning (``--eval-before``).
GSM8K_METHODS = ("cenlora", "splitfrozen")


@dataclass(frozen=True)
class Settings:
    """Run settings shared by the cells of one model (what the report states beside its tables)."""

    fleet: str
    train_samples: int
    eval_samples: int | None
    max_len: int
    split: int
    extra: tuple[str, ...] = ()


#: Per-model settings. MiniLM-L6: 6 blocks, cut 2 (LoRA on blocks 2-5 for SplitFrozen); SmolLM2-135M:
#: 30 blocks, cut 10. Sample counts are what this 2-core CPU trains in about a minute (MiniLM) or
#: several minutes (SmolLM2); every figure in the report names them. SmolLM2 at 200 samples (12
#: optimizer steps) learned nothing (every method 46-57.5% on 200 dev rows, CenLoRA iid 50.0%); at 800
#: CenLoRA iid reaches 86.0% (8.5 min on the loaded 2-core machine), so 800 it is.
SETTINGS = {
    "minilm-l6": Settings("bench/sst2_minilm_4dev.yaml", 1000, None, 64, 2),
    "smollm2-135m": Settings("bench/sst2_minilm_4dev.yaml", 800, 200, 64, 10),
}
GSM8K = Settings("bench/sst2_minilm_4dev.yaml", 64, 40, 256, 10, ("--gen-tokens", "160"))
TIME = Settings("bench/runtime_4dev.yaml", 320, None, 64, 2,
                ("--server-profile", "profiles/latency/minilm-l6-server.yaml"))  # the server: this CPU, measured
#: Emulated fleets of the measured times (a time cell's ``setting``); its ``seed`` is the repeat.
TIME_FLEETS = {"mixed-links": "bench/runtime_4dev.yaml", "fast-links": "bench/sst2_runtime_4dev_fastlink.yaml"}
TIME_REPEATS = (0, 1, 2)


@dataclass(frozen=True)
class Cell:
    """One real run of the report: what it is (kind, model, task, partition, method, seed)."""

    kind: str  # "accuracy", "time" or "gsm8k" (the earlier grid); "tune" or "converge" (trainer.claims.scale)
    model: str
    task: str
    method: str
    partition: str = "iid"
    seed: int = 0
    setting: str = ""  # tune: the trial's setting ("lr=0.002+local_steps=1"); time: the fleet's name

    @property
    def key(self) -> str:
        """A file-name-safe identity, e.g. ``accuracy/minilm-l6/sst2/label-skew-1/splitfrozen/s0``
        (a setting adds a last part: ``.../s0/lr=0.002``)."""
        part = self.partition.replace(":", "-")
        key = f"{self.kind}/{self.model}/{self.task}/{part}/{self.method}/s{self.seed}"
        return f"{key}/{self.setting}" if self.setting else key

    @property
    def settings(self) -> Settings:
        """The run settings of this cell (a time cell's fleet is its setting, when it names one)."""
        if self.kind == "time" and self.setting:
            return replace(TIME, fleet=TIME_FLEETS[self.setting])
        return {"time": TIME, "gsm8k": GSM8K}.get(self.kind) or SETTINGS[self.model]

    def command(self, out: str, data_dir: str) -> list[str]:
        """The ``sfsim`` command line that runs this cell into ``out``."""
        s = self.settings
        common = ["--devices", s.fleet, "--model", self.model, "--task", self.task, "--partition", self.partition,
                  "--seed", str(self.seed), "--train-samples", str(s.train_samples), "--max-len", str(s.max_len),
                  "--data-dir", data_dir, "--out", out, *s.extra]
        if self.kind == "time":
            method, extra = TIME_VARIANTS.get(self.method, (self.method, ()))
            return ["sfsim", "validate", "--method", method, *extra, "--split", str(s.split), "--emulate", "all",
                    *common]
        method, extra = METHODS.get(self.method, (self.method, ()))
        if self.kind == "gsm8k" and self.method == "cenlora":  # and the pretrained model's scores
            extra = ("--eval-before",)
        cut = () if method in ("cenlora", "fedlora") else ("--split", str(s.split))
        evals = () if s.eval_samples is None else ("--eval-samples", str(s.eval_samples))
        return ["sfsim", "run", "--method", method, *cut, *extra, *evals, "--launch", "inprocess", "--quiet",
                *common]


def accuracy_cells(models: Iterable[str] = ("minilm-l6",), tasks: Iterable[str] = TASKS,
                   partitions: Iterable[str] = PARTITIONS, methods: Iterable[str] = tuple(METHODS),
                   seeds: Iterable[int] = SEEDS) -> list[Cell]:
    """Every accuracy cell of a grid, in priority order: all of seed 0 first, then seed 1, ..."""
    return [Cell("accuracy", m, t, meth, p, s) for s in seeds for m in models for t in tasks for p in partitions
            for meth in methods]


def default_grid() -> list[Cell]:
    """The whole report, most informative cells first.

    1. MiniLM, seed 0: every task x partition x method (the accuracy table's first pass);
    2. the measured training times of each method on the shaped 4-device fleet;
    3. MiniLM seeds 1 and 2 (error bars);
    4. SmolLM2-135M on SST-2, iid and label-skew:1, seeds 0-2; GSM8K before and after fine-tuning.
    """
    cells = accuracy_cells(seeds=(0,))
    cells += [Cell("time", "minilm-l6", "sst2", m) for m in TIME_METHODS]
    cells += accuracy_cells(seeds=(1, 2))
    cells += accuracy_cells(models=("smollm2-135m",), tasks=("sst2",), partitions=("iid", "label-skew:1"))
    cells += [Cell("gsm8k", "smollm2-135m", "gsm8k", m) for m in GSM8K_METHODS]
    return cells


def time_cells() -> list[Cell]:
    """Measured training time: every timed method on every fleet of :data:`TIME_FLEETS`, repeat by repeat."""
    return [Cell("time", "minilm-l6", "sst2", m, "iid", r, fleet) for r in TIME_REPEATS for fleet in TIME_FLEETS
            for m in TIME_METHODS]


def select(cells: list[Cell], only: dict[str, set[str]]) -> list[Cell]:
    """The cells whose fields match every filter (``{"task": {"sst2"}, "seed": {"0"}}``)."""
    return [c for c in cells if all(str(getattr(c, k)) in v for k, v in only.items())]


def cell_path(results: Path, cell: Cell) -> Path:
    return results / "cells" / f"{cell.key}.json"


def load_cells(results: Path) -> dict[str, dict]:
    """Every recorded cell under ``results/cells``, by key."""
    out = {}
    for f in sorted((results / "cells").rglob("*.json")):
        rec = json.loads(f.read_text())
        out[rec["key"]] = rec
    return out


@dataclass
class Outcome:
    """What :func:`run_cells` did: cells run, skipped (already recorded), failed, left for lack of budget, and
    left to another ``sfsim report`` that was running them (``elsewhere``)."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    wall_s: float = 0.0


#: Seconds a cell is assumed to take before any of its kind has run (the budget check's first guess).
FIRST_GUESS_S = {"accuracy": 60.0, "time": 90.0, "gsm8k": 600.0, "tune": 1800.0, "converge": 1800.0}


def _claim_path(path: Path) -> Path:
    return path.with_name(path.name + ".running")


def claim(path: Path) -> bool:
    """Claim the cell recorded at ``path`` for this process; False while another live process holds it.

    The claim is a ``<cell>.json.running`` file created exclusively, holding ``host pid``, so two
    ``sfsim report`` runs (one per core) share a grid without running a cell twice. A claim left by
    a process of this host that is gone (killed, crashed) is stale and taken over; a claim from another
    host is respected, since its process cannot be checked from here.
    """
    lock = _claim_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if claimed(path):
                return False
            lock.unlink(missing_ok=True)  # stale (its process is gone), or released meanwhile: try again
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def claimed(path: Path) -> bool:
    """Whether a live process (or one on another host) holds the cell recorded at ``path``."""
    try:
        host, _, pid = _claim_path(path).read_text().partition(" ")
    except FileNotFoundError:
        return False
    return not (host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)))


def release(path: Path) -> None:
    """Drop this process's claim on the cell recorded at ``path``."""
    _claim_path(path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_cells(cells: list[Cell], results: Path, data_dir: str, budget_s: float,
              runner: Callable[[Cell, str, str], dict] | None = None, log=print) -> Outcome:
    """Run the cells not yet recorded, within ``budget_s`` seconds of wall time.

    Before each cell the expected time (the median of this kind's cells run so far, else
    :data:`FIRST_GUESS_S`) must fit in what is left of the budget; a cell is also killed at the
    budget's end. A failing cell is reported and skipped; the next ones still run.
    """
    runner = runner or run_cell
    outcome, t0 = Outcome(), time.perf_counter()
    took: dict[str, list[float]] = {}
    for cell in cells:
        path = cell_path(results, cell)
        if path.is_file():  # recorded before this call, or since by another process
            outcome.skipped.append(cell.key)
            continue
        left = budget_s - (time.perf_counter() - t0)
        past = sorted(took.get(cell.kind, []))
        guess = past[len(past) // 2] if past else FIRST_GUESS_S[cell.kind]
        if guess > left:
            outcome.left.append(cell.key)
            continue
        if not claim(path):
            outcome.elsewhere.append(cell.key)
            log(f"  {cell.key}: running in another process, skipped")
            continue
        t = time.perf_counter()
        try:
            if path.is_file():  # recorded between the check above and the claim
                outcome.skipped.append(cell.key)
                continue
            rec = runner(cell, data_dir, str(left))
            took.setdefault(cell.kind, []).append(time.perf_counter() - t)
            write_atomic(path, json.dumps(rec, indent=1))
        except CellWaiting as err:
            outcome.waiting.append(cell.key)
            log(f"  {cell.key}: {err}")
            continue
        except CellError as err:
            outcome.failed[cell.key] = str(err)
            log(f"  failed {cell.key}: {err}")
            continue
        finally:
            release(path)
        outcome.ran.append(cell.key)
        log(f"  {cell.key}: {_brief(rec)} ({time.perf_counter() - t:.0f} s)")
    outcome.wall_s = time.perf_counter() - t0
    return outcome


class CellError(RuntimeError):
    """A cell's command failed or ran out of time (its message is the command's last error line)."""


class CellWaiting(CellError):
    """A cell that cannot run yet: it needs other cells first (a seed waits for its method's tuning)."""


def _brief(rec: dict) -> str:
    f = rec["figures"]
    if "accuracy" in f:
        return f"accuracy {f['accuracy']:.4f}" if f["accuracy"] is not None else "no accuracy"
    if "measured_s" in f:
        return f"measured {f['measured_s']:.1f} s, predicted {f['predicted_s']:.1f} s"
    return json.dumps(f)[:80]


def run_cell(cell: Cell, data_dir: str, timeout: str, allow_dirty: bool = False) -> dict:
    """Run one cell's command in a fresh process and keep the figures the report uses."""
    prov = provenance(allow_dirty)  # before the run: the code the command imports is HEAD as it starts
    tmp = Path(tempfile.mkdtemp(prefix="sfsim-claims-"))
    out = tmp / "out"
    cmd = cell.command(str(out), data_dir)
    exe = [str(Path(sys.executable).with_name("sfsim")), *cmd[1:]]
    before = load_average()
    try:
        wall = run_command(exe, timeout)
        figures = (time_figures if cell.kind == "time" else run_figures)(out)
        kept = run_generations(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"key": cell.key, "cell": asdict(cell), "command": portable(cmd, {str(out): "OUT", data_dir: "DATA"}),
            "settings": asdict(cell.settings), "wall_s": round(wall, 1), "load": {"before": before, "after": load_average()},
            **prov, "data": data_files(cell.task, data_dir),
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "figures": figures,
            **({"generations": kept} if kept else {})}


def load_average() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes (``os.getloadavg``), rounded to 2 places: a cell
    records it before and after its run, since other processes on a shared CPU inflate measured times."""
    return [round(x, 2) for x in os.getloadavg()]


def run_command(exe: list[str], timeout: str) -> float:
    """Run a cell's command from the project root (offline, no display); its wall seconds, or :class:`CellError`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    try:
        proc = subprocess.run(exe, cwd=ROOT, env=env, capture_output=True, text=True, timeout=float(timeout))
    except subprocess.TimeoutExpired:
        raise CellError(f"out of budget after {float(timeout):.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise CellError(lines[-1] if lines else f"exit status {proc.returncode}")
    return time.perf_counter() - t


def portable(cmd: list[str], names: dict[str, str]) -> str:
    """A command as text with machine-specific paths (output folder, data folder) replaced by names."""
    return " ".join(names.get(part, part) for part in cmd)


def data_files(task: str, data_dir: str) -> dict[str, str]:
    """The task's train and dev files relative to the data folder (``sst2/train.tsv``)."""
    from trainer.data.tasks import _file

    return {split: _file(data_dir, task, split).relative_to(data_dir).as_posix() for split in ("train", "dev")}


#: Figures a run's ``metrics.json`` gives the report (those present are kept).
RUN_FIGURES = ("eval_accuracy", "eval_f1", "eval_macro_f1", "majority_accuracy", "majority_macro_f1",
               "eval_metrics", "majority_baseline", "device_flops_total", "server_flops_total", "uplink_bytes",
               "downlink_bytes", "train_samples", "eval_samples", "wall_s", "train_s_by_epoch", "absent_classes",
               "eval_before")


def run_figures(out: Path) -> dict:
    """The report's figures from a run's ``metrics.json`` (accuracy under its own name)."""
    m = json.loads((out / "metrics.json").read_text())
    figs = {k: m[k] for k in RUN_FIGURES if k in m}
    figs["accuracy"] = figs.pop("eval_accuracy", None)
    figs["partition_counts"] = m.get("partition", {}).get("counts")
    figs["cuts"] = m.get("cuts")
    return figs


def run_generations(out: Path) -> dict[str, list[dict]]:
    """A generation run's scored answers (``generations.jsonl``, ``generations_before.jsonl``), kept with its cell."""
    kept = {}
    for name, key in (("generations.jsonl", "after"), ("generations_before.jsonl", "before")):
        path = out / name
        if path.is_file():
            kept[key] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return kept


def time_figures(out: Path) -> dict:
    """Measured and predicted total time, and each stage's, from ``sfsim validate``'s ``report.json``."""
    rep = json.loads((out / "report.json").read_text())
    return {**rep["total"], "stages": rep["stages"]}


def provenance(allow_dirty: bool = False) -> dict:
    """The commit a cell runs: ``{"commit": short hash}`` from a clean tree.

    A tree whose ``sfsim/``, ``trainer/`` or ``bench/*.yaml`` differ from HEAD is refused (:class:`CellError`)
    unless ``allow_dirty``: then the diff is kept under ``bench/results/claims/diffs/<sha256>.diff`` and
    its hash recorded, so the code of every figure can be rebuilt.
    """
    import hashlib

    paths = ["sfsim", "trainer", "bench"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", *paths], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout
        new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "sfsim", "trainer"],
                             cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        raise CellError(f"git not usable for the cell's provenance ({err})") from None
    if not diff and not new:
        return {"commit": head}
    if not allow_dirty:
        raise CellError("the working tree differs from HEAD in sfsim/, trainer/ or bench/: commit first "
                        "(or pass --allow-dirty to store the diff with the cell)")
    text = diff + "".join(f"\nnew file {p}\n" + (ROOT / p).read_text() for p in new.splitlines())
    sha = hashlib.sha256(text.encode()).hexdigest()
    write_atomic(ROOT / "bench" / "results" / "claims" / "diffs" / f"{sha}.diff", text)
    return {"commit": f"{head}+dirty", "diff_sha256": sha}
