"""Per-step metrics a user can plot while a run goes: ``OUT/steps.csv`` and, when installed, TensorBoard.

``--log-to csv,tensorboard`` (default ``csv``; ``none`` turns it off). Every optimizer step adds a
row (step, epoch, samples so far, loss, samples/s of the epoch so far, seconds since the start);
every evaluation adds a row with ``eval_accuracy``. TensorBoard gets the same scalars under
``train/loss``, ``train/samples_per_s`` and ``eval/accuracy`` in ``OUT/tensorboard`` (``tensorboard
--logdir OUT/tensorboard``); without the ``tensorboard`` package it warns once and logs the CSV only.
A resumed run appends to what the first attempt logged.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from sfsim.errors import SfsimError

SINKS = ("csv", "tensorboard", "none")
"""What ``--log-to`` accepts (a comma list)."""

COLUMNS = ("step", "epoch", "samples", "loss", "samples_per_s", "wall_s", "eval_accuracy")
"""The columns of ``steps.csv``."""


def parse_log_to(text: str) -> tuple[str, ...]:
    """``'csv,tensorboard' -> ('csv', 'tensorboard')``; ``'none' -> ()``; one-line error for anything else.

    Example:
        >>> parse_log_to("tensorboard, csv")
        ('tensorboard', 'csv')
    """
    sinks = tuple(dict.fromkeys(s.strip() for s in str(text).split(",") if s.strip()))
    bad = [s for s in sinks if s not in SINKS]
    if bad or not sinks:
        raise SfsimError(f"--log-to {text!r}: use a comma list of csv, tensorboard (or none)")
    return () if "none" in sinks else sinks


class StepLog:
    """Writes each step's and each evaluation's figures to the sinks of ``--log-to`` (see the module)."""

    def __init__(self, out: str | Path, log_to: str):
        sinks = parse_log_to(log_to)
        self.out, self._csv, self._tb, self._fh = Path(out), None, None, None
        if "tensorboard" in sinks:
            self._tb = _tensorboard(self.out / "tensorboard")
            if self._tb is None:  # not installed: the CSV instead, so the run still logs its steps
                sinks = (*sinks, "csv")
        if "csv" in sinks:
            path = self.out / "steps.csv"
            fresh = not path.is_file() or path.stat().st_size == 0
            self._fh = open(path, "a", newline="")  # noqa: SIM115 - closed by close()
            self._csv = csv.writer(self._fh)
            if fresh:
                self._csv.writerow(COLUMNS)

    def step(self, step: int, epoch: int, samples: int, loss: float, rate: float, wall_s: float) -> None:
        """One optimizer step ended."""
        if self._csv is not None:
            self._csv.writerow([step, epoch, samples, f"{loss:.6g}", f"{rate:.4g}", f"{wall_s:.3f}", ""])
            self._fh.flush()
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/samples_per_s", rate, step)

    def evaluation(self, step: int, epoch: int, samples: int, accuracy: float, wall_s: float) -> None:
        """An evaluation ended (after ``epoch``, at optimizer step ``step``)."""
        if self._csv is not None:
            self._csv.writerow([step, epoch, samples, "", "", f"{wall_s:.3f}", f"{accuracy:.6g}"])
            self._fh.flush()
        if self._tb is not None:
            self._tb.add_scalar("eval/accuracy", accuracy, step)
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the sinks."""
        if self._fh is not None:
            self._fh.close()
            self._fh = self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard(folder: Path):
    """A TensorBoard ``SummaryWriter`` on ``folder``, or None (with one warning) without the package."""
    try:  # torch's writer needs the optional tensorboard package: only --log-to tensorboard imports it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("warning: --log-to tensorboard needs the tensorboard package (pip install tensorboard); "
              "logging to steps.csv only", file=sys.stderr, flush=True)
        return None
    return SummaryWriter(log_dir=str(folder))
