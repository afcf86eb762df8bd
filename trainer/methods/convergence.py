"""Training to convergence, the same rule for every method: a held-out validation split and patience.

Pure pieces, no model and no I/O, so the rule is testable on its own and every method shares it:

- :func:`holdout`: which training rows are set aside for validation (a fixed draw per task, the same
  for every method and seed, disjoint from the rows any method trains on);
- :class:`EarlyStop`: epochs go on until the validation score has not improved for ``patience``
  epochs in a row (or ``max_epochs`` is reached); the best epoch's weights are the ones reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Seed of the validation draw: fixed, so every method, seed and setting is selected on the same rows.
HOLDOUT_SEED = 20_260_503


def holdout(n_rows: int, n_val: int, seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n_rows)`` into (training rows, validation rows), both sorted, by a seeded permutation.

    Example:
        >>> tr, va = holdout(10, 3)
        >>> len(tr), len(va), sorted(set(tr) | set(va)) == list(range(10))
        (7, 3, True)
    """
    if not 0 < n_val < n_rows:
        raise ValueError(f"validation rows must be in 1..{n_rows - 1} (got {n_val})")
    perm = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class EarlyStop:
    """Stop when the validation score has not beaten its best for ``patience`` epochs in a row.

    ``update(score)`` after each epoch returns True while training should go on. A score must exceed
    the best by more than ``min_delta`` to count as an improvement, so a plateau stops the run.

    Example:
        >>> es = EarlyStop(patience=2, max_epochs=10)
        >>> [es.update(s) for s in (0.5, 0.6, 0.6, 0.55)]
        [True, True, True, False]
        >>> es.best_epoch, es.best
        (1, 0.6)
    """

    patience: int
    max_epochs: int
    min_delta: float = 0.0
    history: list[float] = field(default_factory=list)
    best: float = float("-inf")
    best_epoch: int = -1

    def __post_init__(self):
        if self.patience < 1 or self.max_epochs < 1:
            raise ValueError(f"patience and max_epochs must be >= 1 (got {self.patience}, {self.max_epochs})")

    def update(self, score: float) -> bool:
        """Record one epoch's validation score; True while another epoch should run."""
        self.history.append(score)
        if score > self.best + self.min_delta:
            self.best, self.best_epoch = score, len(self.history) - 1
        return not self.stopped

    @property
    def improved(self) -> bool:
        """Whether the last recorded epoch is the best so far (its weights are the ones to keep)."""
        return self.best_epoch == len(self.history) - 1

    @property
    def stopped(self) -> bool:
        """Patience exhausted or the epoch limit reached."""
        since = len(self.history) - 1 - self.best_epoch
        return len(self.history) >= self.max_epochs or (self.best_epoch >= 0 and since >= self.patience)

    @property
    def converged(self) -> bool:
        """Stopped by patience (the score stopped improving), not by the epoch limit."""
        return self.best_epoch >= 0 and len(self.history) - 1 - self.best_epoch >= self.patience
