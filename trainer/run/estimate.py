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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: optimizer steps (bursts, see DurationEstimate) measured after the first before the estimate is printed
STEPS = 3
#: ... or as soon as this many seconds of steps after the first have passed
MIN_S = 20.0
GAP_S = 0.05  # a step this much later than the one before starts a new burst
FORWARD_SHARE = 1 / 3  # a forward pass's share of a training step's time (forward + backward ~ 1 + 2)


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
        if self.done or len(self.ends) < 2:
            return
        (t1, n1), (tk, nk) = self.ends[0], self.ends[-1]
        if len(self.ends) - 1 < STEPS and tk - t1 < MIN_S:
            return
        self.done = True
        rate = (tk - t1) / max(nk - n1, 1)  # seconds per training sample
        train_left = max(self.samples_per_epoch * self.epochs - self._n, 0) * rate
        eval_s = self.eval_rows * self.eval_cost * rate * self.epochs
        total = now - self.started + train_left + eval_s
        self.report(f"estimate: this run takes about {format_seconds(total)} in all "
                    f"({format_seconds(train_left)} more training at {1 / rate:.2f} samples/s, measured over "
                    f"{nk - n1} samples after the first step; about {format_seconds(eval_s)} of evaluation, "
                    "extrapolated); an estimate, not a promise")


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
    import sys

    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def for_run(cfg, setup, dev, n_eval: int, epochs_left: int, started: float,
            report: Callable[[str], None] = say) -> DurationEstimate:
    """The estimate of one ``sfsim run`` (``cfg``: its RunConfig, ``setup``: its Setup, ``dev``: eval data)."""
    prompt = 0.0
    if dev.is_generation and n_eval:
        from trainer.data.tasks import GSM8K_PROMPT

        tok = setup.lm.tokenizer
        some = dev.questions[:min(n_eval, 32)]  # a sample of the prompts is enough for an estimate
        prompt = sum(min(len(tok(GSM8K_PROMPT.format(question=q))["input_ids"]), cfg.max_len) for q in some) / len(some)
    return DurationEstimate(samples_per_epoch=sum(setup.samples.values()), epochs=epochs_left, eval_rows=n_eval,
                            eval_cost=eval_cost(dev.is_generation, cfg.max_len, prompt, cfg.gen_tokens),
                            started=started, report=report)
