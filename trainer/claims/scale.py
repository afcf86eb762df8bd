"""The decisive grid: tuned baselines trained to convergence at a scale that can decide a claim.

Cells (:class:`trainer.claims.grid.Cell`) of two kinds:

- ``tune``: seed 0 of one (model, task, partition, method) at one setting of its tuning grid
  (:data:`TUNING`), trained to convergence; the setting with the best *validation* score wins
  (:func:`chosen`), and its cell is also the method's seed-0 result;
- ``converge``: seeds 1.. of the same, at the chosen setting (they wait until every setting of the
  tuning grid is recorded).

Every method gets the same tuning budget: :data:`TRIALS` settings, the learning rate alone for the
methods with no other knob, the learning rate crossed with FedLoRA's local steps per round or
SplitLoRA's FedAvg interval for those two. :func:`plan` orders the cells so that the ones behind a
claim run first and estimates each from measured samples per second (:mod:`trainer.claims.budget`).
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sfsim.scenario.schema import write_atomic
from trainer.claims.grid import (
    METHODS,
    PARTITIONS,
    Cell,
    CellError,
    CellWaiting,
    data_files,
    load_average,
    load_cells,
    portable,
    provenance,
    run_cell,
    run_command,
)

#: The grid's fleets by model, (plain, with SplitFrozen's activation cache on): 4 devices with equal budgets
#: (only the count and the relative sizes matter to a run; the model line must be the run's model, since
#: the runtime checks the cuts against it). With the cache, SplitFrozen's epochs 2+ replay epoch 1's micro-batches.
FLEETS = {"minilm-l6": ("bench/sst2_minilm_4dev.yaml", "bench/sst2_minilm_4dev_cached.yaml"),
          "smollm2-135m": ("bench/sst2_smollm2_4dev.yaml", "bench/sst2_smollm2_4dev_cached.yaml")}
FLEET, CACHED_FLEET = FLEETS["minilm-l6"]


@dataclass(frozen=True)
class TaskScale:
    """One (model, task) of the decisive grid.

    ``train_samples`` is drawn from the training file less its ``val_samples`` validation rows;
    ``max_len`` was chosen from :data:`TRUNCATION` (tokens of this model's tokenizer); ``metric`` is the
    figure that selects epochs and settings and decides the verdict.
    """

    train_samples: int
    val_samples: int
    max_len: int
    metric: str = "accuracy"
    eval_samples: int | None = None  # None: the whole dev set
    split: int = 2

    def __post_init__(self):
        if self.train_samples < 1 or self.val_samples < 1 or self.max_len < 2:
            raise ValueError(f"train_samples, val_samples must be >= 1 and max_len >= 2 (got {self})")
        if self.metric not in ("accuracy", "macro_f1"):
            raise ValueError(f"metric {self.metric!r}: use accuracy or macro_f1")


#: Share of rows longer than a length, measured with each tokenizer on the files of ``/work/shared/data``
#: (``python -m trainer.claims.lengths MODEL TASK DATA``; MiniLM-L6's WordPiece, [CLS] a [SEP] b [SEP] for
#: pairs; SmolLM2-135M's BPE from its GGUF, special tokens included: its longest SST-2 row is 68 tokens in
#: train and 59 in dev, so length 72 truncates none; shares are rounded to 4 places).
TRUNCATION = {
    ("smollm2-135m", "sst2"): {"rows": (67_349, 872), "max_tokens": (68, 59), "over": {72: (0.0, 0.0)}},
    ("minilm-l6", "sst2"): {"rows": (67_349, 872), "max_tokens": (66, 55), "over": {64: (0.0001, 0.0), 72: (0.0, 0.0)}},
    ("minilm-l6", "mrpc"): {"rows": (3_667, 408), "max_tokens": (103, 86), "over": {64: (0.1996, 0.1985),
                                                                                 96: (0.0014, 0.0), 104: (0.0, 0.0)}},
    ("minilm-l6", "mnli"): {"rows": (8_999, 1_000), "max_tokens": (254, 156), "over": {64: (0.0955, 0.083),
                                                                                  96: (0.0122, 0.013),
                                                                                  128: (0.0031, 0.005)}},
}

#: The grid's scale. SST-2: 8,000 of 67,349 training rows and the whole dev set (872). MNLI: the offline
#: file holds 8,999 training rows (a balanced subset, not GLUE's 393k), so 10,000 cannot be drawn: all
#: 8,099 left after the 900 validation rows. MRPC: all 3,300 left after 367 validation rows, at a
#: length that truncates none, macro-F1 first (its dev majority class is 68.4%).
SCALE = {
    ("minilm-l6", "sst2"): TaskScale(8_000, 800, 72),
    ("minilm-l6", "mnli"): TaskScale(8_099, 900, 96),
    ("minilm-l6", "mrpc"): TaskScale(3_300, 367, 104, metric="macro_f1"),
    ("smollm2-135m", "sst2"): TaskScale(8_000, 800, 72, split=10),
}
#: Seeds: 5 where a claim is decided (label-skew:1), 3 elsewhere.
SEEDS = {"label-skew:1": (0, 1, 2, 3, 4)}
DEFAULT_SEEDS = (0, 1, 2)
PATIENCE, MAX_EPOCHS = 2, 12

#: The same number of trials per method: 6 learning rates, or 3 learning rates x 2 of the method's knob.
TUNING = {
    "splitfrozen": {"lr": (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)},
    "splitlora-sequential": {"lr": (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)},
    "cenlora": {"lr": (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)},
    "fedlora": {"lr": (5e-4, 2e-3, 8e-3), "local_steps": (1, 10)},
    "splitlora-interleaved": {"lr": (5e-4, 2e-3, 8e-3), "fedavg_every": (1, 10)},
}
TRIALS = 6


def settings_of(method: str) -> list[str]:
    """Every setting of ``method``'s tuning grid as text, ``'lr=0.002+local_steps=1'``, in grid order (``+``, not a
    comma, joins knobs, so ``sfsim report --only setting=A,B`` can list settings)."""
    grid = TUNING[method]
    return ["+".join(f"{k}={v:g}" for k, v in zip(grid, combo, strict=True))
            for combo in itertools.product(*grid.values())]


def parse_setting(text: str) -> dict[str, float | int]:
    """``'lr=0.002+local_steps=1'`` -> ``{'lr': 0.002, 'local_steps': 1}`` (integers stay integers)."""
    out: dict[str, float | int] = {}
    for part in filter(None, text.split("+")):
        key, _, val = part.partition("=")
        out[key] = int(val) if key in ("local_steps", "fedavg_every") else float(val)
    return out


def seeds_for(partition: str) -> tuple[int, ...]:
    """The seeds a partition's cells run: 5 under label-skew:1 (the claims), 3 elsewhere."""
    return SEEDS.get(partition, DEFAULT_SEEDS)


#: The order in which (model, task, partition) groups run: the claim's own setting first, on the task
#: whose ceiling sits far above its majority class (SST-2), then iid (the reference), then the rest.
PRIORITY = [("minilm-l6", "sst2", "label-skew:1"), ("minilm-l6", "sst2", "iid"),
            ("minilm-l6", "mnli", "label-skew:1"), ("minilm-l6", "mnli", "iid"),
            ("minilm-l6", "mrpc", "label-skew:1"), ("minilm-l6", "mrpc", "iid"),
            ("smollm2-135m", "sst2", "label-skew:1"), ("smollm2-135m", "sst2", "iid")]


def groups() -> list[tuple[str, str, str]]:
    """Every (model, task, partition) of the grid, :data:`PRIORITY` first; SmolLM2 runs SST-2 iid and label-skew:1."""
    rest = [(m, t, p) for (m, t) in SCALE if m == "minilm-l6" for p in PARTITIONS]
    return PRIORITY + [g for g in rest if g not in PRIORITY]


def decisive_grid() -> list[Cell]:
    """Every cell, in the order they should run: per group, every method's tuning trials, then its other seeds."""
    cells = []
    for model, task, part in groups():
        cells += [Cell("tune", model, task, meth, part, 0, s) for meth in METHODS for s in settings_of(meth)]
        cells += [Cell("converge", model, task, meth, part, seed) for seed in seeds_for(part)[1:] for meth in METHODS]
    return cells


def chosen(recorded: dict[str, dict], model: str, task: str, partition: str, method: str) -> dict | None:
    """The winning tuning cell (best validation score, ties to the earlier setting), once every trial is recorded."""
    trials = []
    for s in settings_of(method):
        rec = recorded.get(Cell("tune", model, task, method, partition, 0, s).key)
        if rec is None:
            return None
        trials.append(rec)
    return max(trials, key=lambda r: r["figures"]["val_best"])  # max keeps the first of equals


def keep_partial(path: Path, meta: dict, wall_s: float) -> None:
    """Give a stopped cell's curves (if it finished an epoch) its command and commit: a pilot, never a result."""
    if path.is_file():
        curves = json.loads(path.read_text())
        write_atomic(path, json.dumps({**meta, "wall_s": round(wall_s, 1), "stopped_by_budget": True,
                                       "recorded": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                                       "figures": curves}, indent=1))


def load_partials(results) -> dict[str, dict]:
    """Curves of cells stopped by a budget (``results/partial``), by key; each holds its command and commit."""
    out = {}
    for f in sorted((Path(results) / "partial").rglob("*.json")):
        rec = json.loads(f.read_text())
        if "key" in rec:  # a run still writing its first epochs has no key yet
            out[rec["key"]] = rec
    return out


def partial_path(results, cell: Cell) -> Path:
    """Where a tune/converge cell's curves so far are kept while it runs (and if its budget stops it)."""
    return Path(results) / "partial" / f"{cell.key}.json"


def uses_cache(recorded: dict[str, dict], model: str, task: str, partition: str) -> bool:
    """Whether a group's SplitFrozen cells run with the activation cache (:data:`CACHED_FLEET`).

    Yes, unless a SplitFrozen cell of the group was recorded without it: a group keeps the protocol its
    first SplitFrozen cell ran under, so its trials and seeds stay comparable (the cache fixes each
    micro-batch's rows at epoch 1, where an uncached run re-draws them every epoch).
    """
    return not any(r["cell"]["kind"] in ("tune", "converge") and r["cell"]["method"] == "splitfrozen"
                   and (r["cell"]["model"], r["cell"]["task"], r["cell"]["partition"]) == (model, task, partition)
                   and not r.get("settings", {}).get("cache_activations", False) for r in recorded.values())


def cell_fleet(cell: Cell, recorded: dict[str, dict]) -> str:
    """The fleet file a tune/converge cell runs on (:data:`FLEETS` of its model): the cached one for SplitFrozen
    where :func:`uses_cache`, else the plain one."""
    plain, cached = FLEETS[cell.model]
    return cached if cell.method == "splitfrozen" and uses_cache(recorded, cell.model, cell.task, cell.partition) \
        else plain


def converge_command(cell: Cell, setting: str, data_dir: str, out: str, fleet: str = FLEET) -> list[str]:
    """The command that runs one tune/converge cell at ``setting`` on ``fleet``."""
    sc, opts = SCALE[(cell.model, cell.task)], parse_setting(setting)
    method, extra = METHODS[cell.method]
    cmd = ["python", "-m", "trainer.claims.converge", "--devices", fleet, "--model", cell.model, "--task", cell.task,
           "--method", method, *extra, "--partition", cell.partition, "--seed", str(cell.seed),
           "--lr", f"{opts['lr']:g}", "--train-samples", str(sc.train_samples), "--val-samples", str(sc.val_samples),
           "--max-len", str(sc.max_len), "--patience", str(PATIENCE), "--max-epochs", str(MAX_EPOCHS),
           "--metric", sc.metric, "--data-dir", data_dir, "--out", out]
    if method not in ("fedlora", "cenlora"):
        cmd += ["--split", str(sc.split)]
    for knob in ("local_steps", "fedavg_every"):
        if knob in opts:
            cmd += [f"--{knob.replace('_', '-')}", str(opts[knob])]
    if sc.eval_samples is not None:
        cmd += ["--eval-samples", str(sc.eval_samples)]
    return cmd


def run_decisive(results, allow_dirty: bool = False):
    """A cell runner for :func:`trainer.claims.grid.run_cells` that also runs tune and converge cells.

    A converge cell reads the chosen setting from the recorded tuning cells when it starts, and waits
    (:class:`~trainer.claims.grid.CellWaiting`) while any trial of its method is missing.
    """
    def run(cell: Cell, data_dir: str, timeout: str) -> dict:
        if cell.kind not in ("tune", "converge"):
            return run_cell(cell, data_dir, timeout, allow_dirty)
        setting, recorded = cell.setting, load_cells(Path(results))
        if cell.kind == "converge":
            win = chosen(recorded, cell.model, cell.task, cell.partition, cell.method)
            if win is None:
                raise CellWaiting(f"waits for every tuning trial of {cell.method} ({cell.task}, {cell.partition})")
            setting = win["cell"]["setting"]
        prov = provenance(allow_dirty)
        tmp = Path(tempfile.mkdtemp(prefix="sfsim-claims-"))
        out = str(tmp / "cell.json")
        fleet = cell_fleet(cell, recorded)
        cmd = converge_command(cell, setting, data_dir, out, fleet)
        partial = partial_path(results, cell)
        partial.parent.mkdir(parents=True, exist_ok=True)
        meta = {"key": cell.key, "cell": asdict(cell), "setting": setting,
                "command": portable(cmd, {out: "OUT", data_dir: "DATA"}),
                "settings": {**asdict(SCALE[(cell.model, cell.task)]), "fleet": fleet, "patience": PATIENCE,
                             "max_epochs": MAX_EPOCHS, "cache_activations": fleet == FLEETS[cell.model][1],
                             "dev_scored": "after epochs that improved on validation"},
                **prov, "data": data_files(cell.task, data_dir)}
        t0, before = time.perf_counter(), load_average()
        try:
            wall = run_command([sys.executable, *cmd[1:], "--partial", str(partial)], timeout)
            figures = json.loads(Path(out).read_text())
        except CellError:
            keep_partial(partial, meta, time.perf_counter() - t0)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        partial.unlink(missing_ok=True)  # the whole record replaces it
        return {**meta, "wall_s": round(wall, 1), "load": {"before": before, "after": load_average()}, "recorded": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "figures": figures}

    return run
