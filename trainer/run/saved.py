"""``sfsim eval``: reload the adapter and head a run saved and score them on the dev set.

It prints the same summary as ``sfsim run`` (scores beside the majority-class baseline); the figures
of the training itself (FLOPs, bytes, wall time) come from the run's ``metrics.json`` when present.
"""

from __future__ import annotations

import time
from pathlib import Path

from sfsim.errors import SfsimError
from trainer.data import tasks as tdata
from trainer.methods.checkpoint import load_adapter
from trainer.methods.evaluate import majority_baseline, score
from trainer.model.loading import load_model
from trainer.run.estimate import say
from trainer.run.resume import recorded_metrics
from trainer.run.runner import load_run_config


def evaluate_saved(out_dir: str, data_dir: str | None = None, eval_samples: int | None = None,
                   progress: bool = False) -> dict:
    """Reload the adapter and head saved in ``out_dir`` and score them (what ``sfsim eval`` runs).

    Returns:
        The run's recorded ``metrics.json`` fields (method, task, FLOPs, bytes, ``wall_s``, when
        present) with this evaluation's: ``eval_accuracy``, ``eval_f1``, ``eval_macro_f1``,
        ``eval_metrics``, ``majority_baseline`` (classification) and ``eval_samples``.
    """
    path = Path(out_dir) / "run_config.json"
    if not path.is_file():
        raise SfsimError(f"{path} is missing: point --out at a folder written by sfsim run")
    cfg = load_run_config(out_dir)
    cfg.progress = False
    if data_dir:
        cfg.data_dir = str(Path(data_dir).resolve())
    if eval_samples:
        cfg.eval_samples = eval_samples
    t = time.perf_counter()
    if progress:
        say(f"loading {cfg.model} and the {cfg.task} dev set ...")
    dev = tdata.load_task(cfg.task, cfg.data_dir, "dev")
    lm = load_model(cfg.model, cache_dir=cfg.model_cache)
    head, acfg = load_adapter(Path(out_dir) / "adapter", lm)

    class _Saved:  # eval needs only the cut
        def eval_cut(self):
            return acfg["sfsim"]["eval_cut"]

    n_eval = min(cfg.eval_samples or len(dev), len(dev))
    if progress:
        say(f"loaded in {time.perf_counter() - t:.1f} s; evaluating on {n_eval} dev rows ...")
    scores = score(_Saved(), lm, head, dev, cfg, n_eval)
    recorded = {k: v for k, v in (recorded_metrics(out_dir) or {}).items() if k in _RECORDED}
    return {**recorded, "method": cfg.method, "task": cfg.task, "eval_accuracy": round(scores["accuracy"], 6),
            "eval_f1": scores.get("f1"), "eval_macro_f1": scores.get("macro_f1"), "eval_metrics": scores,
            "majority_baseline": None if dev.is_generation else majority_baseline(dev.labels[:n_eval], dev.num_labels),
            "eval_samples": n_eval, "eval_s": round(time.perf_counter() - t, 3)}


_RECORDED = ("launch", "device_flops_total", "server_flops_total", "uplink_bytes", "downlink_bytes", "wall_s",
             "lost_devices")
"""Training figures ``sfsim eval`` takes from the run's metrics.json for its summary line."""
