"""One micro-batch's work per layer (:class:`Work`), and what a rate table needs of a cost model (:class:`Shape`).

Both the cost model (:mod:`sfsim.cost.model`) and a latency profile's rates
(:mod:`sfsim.cost.profilerates`) speak of these, so they live below both: the rates never import the
cost model that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sfsim.model.arch import Arch


@dataclass(frozen=True, eq=False)
class Work:
    """FLOPs of one micro-batch on a set of layers, per layer: forward F, activation-backward B, weight-backward W.

    ``layers`` marks which layers take part (embeddings and norms have zero FLOPs but still take
    measured time on a latency-profile device); by default every layer with any FLOPs. Compared
    and hashed by identity (the CostModel returns one cached object per query), so it can key a dict.
    """

    F: np.ndarray  # (L+3,)
    B: np.ndarray  # (L+3,)
    W: np.ndarray  # (L+3,)
    layers: np.ndarray = field(default=None)  # (L+3,) bool

    def __post_init__(self):
        if self.layers is None:
            object.__setattr__(self, "layers", (self.F + self.B + self.W) > 0)
        # totals computed once: the engine asks for them per micro-batch
        f, b, w = float(self.F.sum()), float(self.B.sum()), float(self.W.sum())
        object.__setattr__(self, "_totals", (f, b, w, f + b + w))

    @property
    def f(self) -> float:
        """Total forward FLOPs."""
        return self._totals[0]

    @property
    def b(self) -> float:
        """Total activation-gradient (B) FLOPs."""
        return self._totals[1]

    @property
    def w(self) -> float:
        """Total weight-gradient (W) FLOPs."""
        return self._totals[2]

    @property
    def total(self) -> float:
        """F + B + W FLOPs."""
        return self._totals[3]

    def __add__(self, other: Work) -> Work:
        return Work(self.F + other.F, self.B + other.B, self.W + other.W, self.layers | other.layers)


class Shape(Protocol):
    """What :class:`~sfsim.cost.profilerates.ProfileRates` reads of a :class:`~sfsim.cost.model.CostModel`."""

    arch: Arch
    task: str
    micro_batch: int
    seq_len: int
    n_layers: int
    num_labels: int | None
    lora_rank: int
    lora_targets: tuple[str, ...]
    lf: object  # the scenario's LayerFlops

    def flops_at(self, arch: Arch, seq_len: int, micro_batch: int, task: str, num_labels: int | None,
                 lora_rank: int, lora_targets: tuple[str, ...]):
        """Per-layer FLOPs (a ``LayerFlops``) at another shape."""
