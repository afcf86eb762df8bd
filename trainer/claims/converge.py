"""One cell of the decisive grid: train a method to convergence and record its curves.

The training set less a fixed validation draw (:func:`trainer.methods.convergence.holdout`) is
partitioned over the fleet as ``sfsim run`` does (the runner's ``build``); after every epoch the
global model is scored on the validation rows (which select the epoch and stop the run, by
:class:`~trainer.methods.convergence.EarlyStop`) and on the reported dev set (which is only recorded,
for the reported figure at the validation-selected epoch: the dev set never chooses anything). The dev
set is scored only after an epoch whose validation score improved, since only such an epoch can be the
one reported (``--dev-every-epoch`` scores it after every epoch, as the first recorded cells did; scoring
has no side effect on training, so the reported figures are the same either way).
``python -m trainer.claims.converge ...`` runs one cell and writes its JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sfsim.errors import SfsimError
from sfsim.scenario.schema import write_atomic
from trainer.data import tasks as tdata
from trainer.methods.convergence import EarlyStop, holdout
from trainer.methods.evaluate import majority_baseline
from trainer.run.runner import RunConfig, build, score


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The stopping rule every method shares: validation rows, patience and epoch limit, selection metric."""

    val_samples: int
    patience: int = 2
    max_epochs: int = 12
    metric: str = "accuracy"  # or "macro_f1" (MRPC)
    dev_every_epoch: bool = False  # False: score the dev set only after epochs whose validation score improved


def subset(data: tdata.TaskData, idx) -> tdata.TaskData:
    """The rows ``idx`` of a classification split, as a split of its own."""
    return dataclasses.replace(data, texts=[data.texts[i] for i in idx], labels=data.labels[idx])


def converge(cfg: RunConfig, proto: Protocol, log=print, on_epoch=None) -> dict:
    """Train ``cfg`` epoch after epoch until :class:`EarlyStop` says stop; return the cell's figures.

    ``figures``: the dev scores at the best validation epoch, the epoch, whether patience (not the
    epoch limit) stopped it, and ``curve``: one row per epoch (samples seen, optimizer steps, FedAvg
    rounds, mean training loss, validation and dev scores, measured training and scoring seconds; dev
    is None after an epoch that did not improve on validation, unless ``proto.dev_every_epoch``). ``on_epoch``
    (optional) is called with the curve and losses so far after every epoch (a run stopped by its budget
    keeps them as a partial record).
    """
    full = tdata.load_task(cfg.task, cfg.data_dir, "train")
    if full.is_generation:
        raise SfsimError(f"task {cfg.task}: the convergence grid covers classification tasks only")
    train_idx, val_idx = holdout(len(full), proto.val_samples)
    val, dev = subset(full, val_idx), tdata.load_task(cfg.task, cfg.data_dir, "dev")
    built = build(cfg, train=subset(full, train_idx), dev=val)
    lm, setup, method, info = built.lm, built.setup, built.method, built.info
    n_dev = min(cfg.eval_samples or len(dev), len(dev))
    stop, curve, losses, seen = EarlyStop(proto.patience, proto.max_epochs), [], [], 0
    while not stop.stopped:
        epoch, n0, t = len(curve), len(losses), time.perf_counter()
        method.train_epoch(epoch, lambda loss, n: losses.append(loss))
        method.finish_epoch()
        train_s = time.perf_counter() - t
        seen += sum(setup.samples.values())
        t = time.perf_counter()
        v = score(method, lm, setup.head, val, cfg, len(val))
        stop.update(v[proto.metric])
        d = score(method, lm, setup.head, dev, cfg, n_dev) if stop.improved or proto.dev_every_epoch else None
        curve.append({"epoch": epoch + 1, "samples_seen": seen, "optimizer_steps": len(losses),
                      "fedavg_rounds": _rounds(method), "train_loss": round(statistics.fmean(losses[n0:]), 6),
                      "val": _brief(v), "dev": None if d is None else _brief(d), "train_s": round(train_s, 3),
                      "score_s": round(time.perf_counter() - t, 3)})
        if on_epoch is not None:
            on_epoch({"curve": curve, "loss_curve": [round(x, 5) for x in losses], "train_samples": seen // len(curve),
                      "val_samples": len(val), "eval_samples": n_dev, "stopped": stop.stopped})
        log(f"epoch {epoch + 1}: loss {curve[-1]['train_loss']:.4f} val {v[proto.metric]:.4f} "
            + ("dev not scored" if d is None else f"dev {d[proto.metric]:.4f}") + f" ({train_s:.0f} s)")
    best = curve[stop.best_epoch]
    major = majority_baseline(dev.labels[:n_dev], dev.num_labels)
    return {"accuracy": best["dev"]["accuracy"], "macro_f1": best["dev"]["macro_f1"], "f1": best["dev"].get("f1"),
            "best_epoch": stop.best_epoch + 1, "epochs_run": len(curve), "converged": stop.converged,
            "val_best": stop.best, "selection_metric": proto.metric, "samples_seen": best["samples_seen"],
            "optimizer_steps": best["optimizer_steps"], "fedavg_rounds": best["fedavg_rounds"],
            "train_samples": sum(setup.samples.values()), "val_samples": len(val), "eval_samples": n_dev,
            "majority_accuracy": major["accuracy"], "majority_macro_f1": major["macro_f1"],
            "partition_counts": info["partition_counts"], "absent_classes": info["absent_classes"],
            "train_s": round(sum(r["train_s"] for r in curve), 3), "loss_curve": [round(x, 5) for x in losses],
            "curve": curve}


def _brief(scores: dict) -> dict:
    return {k: scores[k] for k in ("accuracy", "macro_f1", "f1") if k in scores}


def _rounds(method) -> int | None:
    """FedAvg rounds so far: FedLoRA's ``round``, SplitLoRA's ``rounds``; None for methods that never average."""
    for name in ("round", "rounds"):
        if isinstance(getattr(method, name, None), int):
            return getattr(method, name)
    return None


def parser() -> argparse.ArgumentParser:
    """The options of ``python -m trainer.claims.converge`` (what a cell's recorded command holds)."""
    p = argparse.ArgumentParser(prog="python -m trainer.claims.converge", description=__doc__.splitlines()[0])
    for name, kind in (("--devices", str), ("--model", str), ("--task", str), ("--method", str),
                       ("--partition", str), ("--data-dir", str), ("--out", str)):
        p.add_argument(name, type=kind, required=True)
    for name, kind in (("--seed", int), ("--lr", float), ("--train-samples", int), ("--val-samples", int),
                       ("--eval-samples", int), ("--max-len", int), ("--split", int), ("--local-steps", int),
                       ("--fedavg-every", int), ("--patience", int), ("--max-epochs", int)):
        p.add_argument(name, type=kind)
    p.add_argument("--client-order")
    p.add_argument("--partial", help="file that receives the curves after every epoch (kept if the run is stopped)")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "macro_f1"))
    p.add_argument("--dev-every-epoch", action="store_true",
                   help="score the dev set after every epoch (default: only after epochs that improved on validation)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one convergence cell and write its figures to ``--out`` (JSON); one-line errors, exit 2."""
    a = parser().parse_args(argv)
    torch.set_num_threads(1)  # one core per run: the machine is shared
    try:
        cfg = RunConfig(devices=a.devices, model=a.model, task=a.task, method=a.method, partition=a.partition,
                        out=tempfile.mkdtemp(prefix="sfsim-converge-"), split=a.split, train_samples=a.train_samples,
                        eval_samples=a.eval_samples, lr=a.lr or 2e-3, seed=a.seed or 0, max_len=a.max_len or 128,
                        data_dir=a.data_dir, local_steps=a.local_steps, fedavg_every=a.fedavg_every,
                        client_order=a.client_order, count_flops=False, progress=False)
        proto = Protocol(a.val_samples, a.patience or 2, a.max_epochs or 12, a.metric, a.dev_every_epoch)
        keep = None if a.partial is None else (lambda d: write_atomic(Path(a.partial), json.dumps(d, indent=1)))
        figures = converge(cfg, proto, log=lambda s: print(s, file=sys.stderr, flush=True), on_epoch=keep)
    except (SfsimError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_atomic(Path(a.out), json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
