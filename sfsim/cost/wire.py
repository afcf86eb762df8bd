"""Activation codecs on the wire: how many bytes each sends, the one count the simulator and runtime share.

A codec turns a (B, T, d) float tensor of activations (or cut-layer gradients) into what crosses
the link; ``trainer.transport.codecs`` implements them, and its tests check that every encoded
message has exactly :func:`wire_bytes` bytes. ``tokens`` is B x T, ``hidden`` is d.

======  ==========================================================  ===========================
codec   payload                                                     bytes per token
======  ==========================================================  ===========================
fp32    float32 values                                              4 d
fp16    float16 values                                              2 d
bf16    bfloat16 values                                             2 d
int8    int8 values in -127..127 + one float32 absmax scale         d + 4
int4    4-bit values in -7..7, two per byte + one float32 scale     ceil(d / 2) + 4
======  ==========================================================  ===========================
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """What one codec sends per token of width ``d``.

    Attributes:
        code: the codec's number on the wire (``trainer.transport.wire``: the ACT header's aux slot).
        value_bits: bits per value (values of one token are packed into whole bytes).
        scale_bytes: bytes of the per-token scale (0: no scale).
    """

    code: int
    value_bits: int
    scale_bytes: int = 0

    def token_bytes(self, hidden: int) -> int:
        """Bytes of one token's ``hidden`` values plus its scale."""
        return math.ceil(hidden * self.value_bits / 8) + self.scale_bytes


#: Every codec the runtime can send (``training.wire_dtype``), in order of size.
CODECS: dict[str, Layout] = {
    "fp32": Layout(0, 32),
    "fp16": Layout(1, 16),
    "bf16": Layout(2, 16),
    "int8": Layout(3, 8, scale_bytes=4),  # float32 absmax / 127 per token
    "int4": Layout(4, 4, scale_bytes=4),  # float32 absmax / 7 per token
}


def layout(codec: str) -> Layout:
    """The :class:`Layout` of ``codec``; raises ``ValueError`` for an unknown name."""
    if codec not in CODECS:
        raise ValueError(f"unknown wire codec {codec!r}: use one of {', '.join(CODECS)}")
    return CODECS[codec]


def wire_bytes(codec: str, tokens: int, hidden: int) -> int:
    """Bytes ``codec`` sends for ``tokens`` tokens of width ``hidden`` (values, scales and packing included).

    Args:
        codec: a name in :data:`CODECS`.
        tokens: B x T of the message.
        hidden: d, the model width.

    Returns:
        Exact payload bytes of the encoded activations (the attention mask and labels are not included).

    Example:
        >>> wire_bytes("int8", tokens=8 * 128, hidden=384)
        397312
        >>> wire_bytes("int4", tokens=1, hidden=5)
        7
    """
    if tokens < 0 or hidden < 1:
        raise ValueError(f"tokens must be >= 0 and hidden >= 1 (got {tokens}, {hidden})")
    return tokens * layout(codec).token_bytes(hidden)


#: Measured accuracy cost of each codec in points: the worse, over SST-2 iid and label-skew:1, of the mean
#: paired loss against fp32 (same seed), floored at 0 (docs/codecs.md: SplitFrozen, MiniLM-L6 cut 2,
#: 1,000 samples, 1 epoch, 872 dev rows; seeds 0-2 for every codec). The planner's
#: ``--codecs`` admits a codec when this is within its accuracy budget; a codec without an entry is
#: admitted only with an unlimited budget.
ACCURACY_COST_POINTS: dict[str, float] = {"fp32": 0.0, "fp16": 0.0, "bf16": 0.04, "int8": 0.04, "int4": 0.61}


def admissible(codecs: list[str], budget_points: float | None) -> list[str]:
    """The codecs of ``codecs`` whose measured accuracy cost is within ``budget_points`` (``None``: all).

    Raises:
        ValueError: an unknown codec name or a negative budget.
    """
    for c in codecs:
        layout(c)
    if budget_points is None:
        return list(codecs)
    if budget_points < 0:
        raise ValueError(f"accuracy budget {budget_points} must be >= 0 points")
    return [c for c in codecs if c in ACCURACY_COST_POINTS and ACCURACY_COST_POINTS[c] <= budget_points]
