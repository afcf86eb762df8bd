"""An early estimate of a run's duration, from its first measured optimizer steps.

``sfsim run`` trains for real from the start; after a few steps it knows the seconds per training
sample on this machine under its current load, and extrapolates: the rest of the training, and the
evaluation after each epoch. The first step is left out of the rate (it pays one-off costs: FLOP
counting of new shapes, allocator growth, the devices' first forwards). It is an estimate: the load
of a shared machine, micro-batches of other lengths and the evaluation's cost all move it.

Evaluation is extrapolated from the training rate: a forward pass costs about a third of a training
step (forward + backward of the same tokens), so a classification row costs a third of a training
sample; a GSM8K prompt decoded with a KV cache runs each of its ``prompt + gen_tokens`` tokens
through the model once, against the training sample's ``max_len`` tokens.

What ``sfsim run`` passes (:func:`for_run`) corrects three things that made the estimate about
2x low on the README's runs: the clock starts when the command started (a local launch's
processes spend tens of seconds importing and loading before the server's first step: the
launcher records its start in ``OUT/logs/started.json``); the rate is measured after the burst
in which the devices' credits fill the server's queue (``buffer`` micro-batches per device, served
faster than the devices can refill them) and over a window of at least :data:`WINDOW_S` seconds;
and evaluation is timed from the server's own measured forward passes (seconds per sample and
block, times the whole model's blocks), not from a training rate that emulated devices can slow.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from trainer.data.tasks import GSM8K_PROMPT

#: optimizer steps (bursts, see DurationEstimate) measured after the first before the estimate is printed
STEPS = 3
#: ... or as soon as this many seconds of steps after the first have passed
MIN_S = 20.0
GAP_S = 0.05  # a step this much later than the one before starts a new burst
FORWARD_SHARE = 1 / 3  # a forward pass's share of a training step's time (forward + backward ~ 1 + 2)
WINDOW_S = 10.0  # for_run: seconds of steps the rate is measured over (after the credit burst), at least
START_MAX_S = 900.0  # launch_started: an older start record is an earlier launch's
SKIP_SHARE = 0.3  # for_run: the credit burst skipped is at most this share of an epoch's samples


def format_seconds(s: float) -> str:
    """Seconds as ``42 s``, ``3.5 min`` or ``1.2 h``.

    Example:
        >>> format_seconds(42.4), format_seconds(210), format_seconds(9000)
        ('42 s', '3.5 min', '2.5 h')
    """
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


@dataclass
class DurationEstimate:
    """Watches a run's optimizer steps and reports its estimated duration once (see the module).

    Some methods report steps in bursts (FedLoRA: a round's local steps when the round's adapters
    arrive), so the rate is taken between *burst ends*: a step is the end of a burst when the next
    one comes more than :data:`GAP_S` later. The first burst is left out of the rate.

    Args:
        samples_per_epoch: training samples in one epoch.
        epochs: epochs still to train (this one included).
        eval_rows: rows evaluated after every epoch.
        eval_cost: one evaluated row's cost in training samples (:func:`eval_cost`).
        started: ``time.perf_counter()`` when the run started (loading counts as elapsed time).
        report: called once with the estimate's line.
    """

    samples_per_epoch: int
    epochs: int
    eval_rows: int
    eval_cost: float
    started: float
    report: Callable[[str], None]
    skip_samples: int = 0  # samples (beyond the first burst) left out of the rate: the credit burst
    window_s: float = 0.0  # the rate's window must also span this many seconds (0: STEPS bursts or MIN_S)
    eval_s: Callable[[float], float | None] | None = None  # seconds/sample -> eval seconds (None: extrapolate)
    done: bool = False
    ends: list[tuple[float, int]] = field(default_factory=list)  # (time, samples trained) at burst ends
    _last: tuple[float, int] | None = None
    _n: int = 0

    def step(self, samples: int, now: float | None = None) -> None:
        """One optimizer step of ``samples`` samples ended (now, or at ``now``: seconds of perf_counter)."""
        now = time.perf_counter() if now is None else now
        if self._last is not None and now - self._last[0] > GAP_S:
            self.ends.append(self._last)
        self._n += samples
        self._last = (now, self._n)
        ends = [e for e in self.ends if e[1] - self.ends[0][1] >= self.skip_samples] if self.ends else []
        if self.done or len(ends) < 2:
            return
        (t1, n1), (tk, nk) = ends[0], ends[-1]
        if (len(ends) - 1 < STEPS and tk - t1 < MIN_S) or tk - t1 < self.window_s:
            return
        self.done = True
        rate = (tk - t1) / max(nk - n1, 1)  # seconds per training sample
        train_left = max(self.samples_per_epoch * self.epochs - self._n, 0) * rate
        timed = self.eval_s(rate) if self.eval_s is not None else None
        eval_s = timed if timed is not None else self.eval_rows * self.eval_cost * rate * self.epochs
        total = now - self.started + train_left + eval_s
        after = "the first step" if not self.skip_samples else f"the first {self.skip_samples} (credits filling)"
        self.report(f"estimate: this run takes about {format_seconds(total)} in all "
                    f"({format_seconds(train_left)} more training at {1 / rate:.2f} samples/s, measured over "
                    f"{nk - n1} samples after {after}; about {format_seconds(eval_s)} of evaluation, "
                    f"{'timed from the server forward passes' if timed is not None else 'extrapolated'}); "
                    "an estimate, not a promise")


def eval_cost(is_generation: bool, max_len: int, prompt_tokens: float = 0.0, gen_tokens: int = 0) -> float:
    """One evaluated row's cost in training samples (forward only; see the module).

    Example:
        >>> round(eval_cost(False, 64), 3), round(eval_cost(True, 128, prompt_tokens=64, gen_tokens=128), 3)
        (0.333, 0.5)
    """
    if not is_generation:
        return FORWARD_SHARE
    return FORWARD_SHARE * (prompt_tokens + gen_tokens) / max_len


def say(line: str) -> None:
    """Print a line to stderr above the progress bar."""
    tqdm.write(line, file=sys.stderr)


def for_run(cfg, setup, dev, n_eval: int, epochs_left: int, started: float,
            report: Callable[[str], None] = say) -> DurationEstimate:
    """The estimate of one ``sfsim run`` (``cfg``: its RunConfig, ``setup``: its Setup, ``dev``: eval data)."""
    prompt = 0.0
    if dev.is_generation and n_eval:
        tok = setup.lm.tokenizer
        some = dev.questions[:min(n_eval, 32)]  # a sample of the prompts is enough for an estimate
        prompt = sum(min(len(tok(GSM8K_PROMPT.format(question=q))["input_ids"]), cfg.max_len) for q in some) / len(some)
    per_epoch = sum(setup.samples.values())
    est = DurationEstimate(samples_per_epoch=per_epoch, epochs=epochs_left, eval_rows=n_eval,
                           eval_cost=eval_cost(dev.is_generation, cfg.max_len, prompt, cfg.gen_tokens),
                           started=started, report=report, window_s=WINDOW_S,
                           skip_samples=min(len(setup.devices) * setup.buffer * setup.micro_batch,
                                            int(SKIP_SHARE * per_epoch)))
    if not dev.is_generation:  # GSM8K decodes token by token: its cost is not a forward pass's
        est.eval_s = lambda _rate: _timed_eval(setup, n_eval * epochs_left, est)
    return est


def _timed_eval(setup, rows: int, est: DurationEstimate) -> float | None:
    """Seconds to evaluate ``rows`` rows at the server's measured forward speed, or None before it has one.

    The server's forward passes so far took ``server_forward`` seconds for ``est``'s samples over
    the blocks above each device's cut; an evaluated row runs every block (no backward, no sleep).
    """
    server_s = setup.meter.phase_s.get("server_forward", 0.0)
    n_layers = setup.lm.n_layers
    above = n_layers - sum(setup.cuts.values()) / max(len(setup.cuts), 1)  # mean blocks on the server
    if server_s <= 0 or est._n <= 0 or above <= 0:
        return None
    return rows * server_s / est._n * n_layers / above


def launch_started(out, fallback: float) -> float:
    """The ``time.perf_counter()`` value at which the launcher started this run (``OUT/logs/started.json``).

    The launcher writes wall-clock seconds there; this process converts them to its own clock, so
    a role started seconds after the command counts those seconds. ``fallback`` without the file, or
    when it is older than :data:`START_MAX_S` (left by an earlier launch of the folder).
    """
    try:
        unix = float(json.loads((Path(out) / "logs" / "started.json").read_text())["unix"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback
    if not 0 <= time.time() - unix <= START_MAX_S:
        return fallback
    return min(fallback, time.perf_counter() - (time.time() - unix))


def record_start(out) -> None:
    """The launcher's side of :func:`launch_started`: write the wall-clock start to ``OUT/logs/started.json``."""
    logs = Path(out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "started.json").write_text(json.dumps({"unix": time.time()}))
