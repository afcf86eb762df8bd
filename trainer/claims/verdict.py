"""Verdicts in plain words: does a claim hold, not hold, or stay undecided at this scale.

A claim "SplitFrozen beats baseline B" is judged on paired seeds (the same seed gives both methods the
same partition and stream): the per-seed difference d_i = SplitFrozen - B (in points of the task's
primary metric), its mean and a two-sided 95% Student-t confidence interval. It **holds** when the whole
interval is above 0, it **does not hold** when the whole interval is below :data:`MARGIN` points (a gain
of a point or more is ruled out), and it is **inconclusive** otherwise, or whenever the setting cannot
decide it: fewer seeds than the grid asks, or a task whose ceiling (CenLoRA) sits at its majority class.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

#: Points below which a gain is no gain worth the name (the interval's upper end must sit under it).
MARGIN = 1.0
#: How far (points of accuracy) the centralised ceiling must sit above the majority class for a task to decide.
CEILING_MARGIN = 5.0


@dataclass(frozen=True)
class Verdict:
    """One claim against one baseline: the paired gain (points), its 95% interval, and the word."""

    word: str  # "holds", "does not hold" or "inconclusive at this scale"
    reason: str
    seeds: int
    mean: float | None = None
    ci: tuple[float, float] | None = None
    relative: float | None = None  # mean per-seed relative gain, %

    def text(self) -> str:
        """``'holds: +12.1 points, 95% CI +8.0 to +16.2, 5 seeds (the whole interval is above 0)'``."""
        return f"{self.word} ({self.reason})" if self.mean is None else f"{self.word}: {self.detail()}"

    def detail(self) -> str:
        """The figures without the word: ``'+12.1 points, 95% CI +8.0 to +16.2, 5 seeds (why)'``."""
        if self.mean is None:
            return self.reason
        ci = "" if self.ci is None else f", 95% CI {self.ci[0]:+.1f} to {self.ci[1]:+.1f}"
        return f"{self.mean:+.1f} points{ci}, {self.seeds} seeds ({self.reason})"


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a 95% two-sided interval)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_ci(diffs: list[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean of the per-seed differences and its 95% t interval (None under two values).

    Example:
        >>> m, (lo, hi) = paired_ci([2.0, 4.0, 6.0])
        >>> m, round(lo, 2), round(hi, 2)
        (4.0, -0.97, 8.97)
    """
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, None
    half = t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, (m - half, m + half)


def judge(pairs: list[tuple[float, float]], seeds_needed: int, ceiling: float | None, majority: float | None,
          decisive: bool = True) -> Verdict:
    """The verdict on paired (SplitFrozen, baseline) scores in [0, 1], one pair per seed.

    Args:
        pairs: the primary metric of both methods on each seed both ran.
        seeds_needed: seeds the grid asks for this claim; fewer gives "inconclusive".
        ceiling, majority: CenLoRA's mean accuracy and the dev set's majority-class accuracy; a ceiling
            within :data:`CEILING_MARGIN` points of the majority makes the task unable to decide.
        decisive: False for cells of a setting the review rejected (the earlier grid): always inconclusive.
    """
    if not pairs:
        return Verdict("inconclusive at this scale", "not run", 0)
    diffs = [100 * (a - b) for a, b in pairs]
    rel = statistics.fmean(100 * (a / b - 1) for a, b in pairs if b > 0) if any(b > 0 for _, b in pairs) else None
    mean, ci = paired_ci(diffs)

    def v(word, reason):
        return Verdict(word, reason, len(pairs), mean, ci, rel)

    if not decisive:
        return v("inconclusive at this scale", "earlier grid: untuned baselines, one epoch, toy scale")
    if ceiling is not None and majority is not None and 100 * (ceiling - majority) < CEILING_MARGIN:
        return v("inconclusive at this scale", "the ceiling sits at the majority class")
    if len(pairs) < seeds_needed:
        return v("inconclusive at this scale", f"{len(pairs)} of {seeds_needed} seeds")
    if ci[0] > 0:
        return v("holds", "the whole interval is above 0")
    if ci[1] < MARGIN:
        return v("does not hold", f"a gain of {MARGIN:g} point or more is ruled out")
    return v("inconclusive at this scale", "the interval spans 0 and gains above a point")


def time_verdict(savings: list[float], level: float, repeats_needed: int) -> Verdict:
    """The verdict on "up to ``level`` less training time" on one fleet, from paired repeats.

    ``savings`` are SplitFrozen's per-repeat savings against one baseline (fractions, each repeat pairing
    the two methods' runs of one seed). **Holds**: the 95% t interval of the mean saving lies at or above
    ``level`` (the paper's figure is reached on this fleet); **does not hold**: it lies below ``level``;
    otherwise, or with fewer than ``repeats_needed`` repeats, inconclusive. ``mean``/``ci`` are in percent.

    Example:
        >>> time_verdict([0.30, 0.32, 0.31], 0.502, 3).word
        'does not hold'
    """
    if not savings:
        return Verdict("inconclusive at this scale", "not run", 0)
    mean, ci = paired_ci([100 * s for s in savings])

    def v(word, reason):
        return Verdict(word, reason, len(savings), mean, ci)

    if len(savings) < repeats_needed or ci is None:
        return v("inconclusive at this scale", f"{len(savings)} of {repeats_needed} repeats")
    if ci[0] >= 100 * level:
        return v("holds", f"the whole interval is at or above {100 * level:g}%")
    if ci[1] < 100 * level:
        return v("does not hold", f"the whole interval is below {100 * level:g}%")
    return v("inconclusive at this scale", f"the interval spans {100 * level:g}%")
