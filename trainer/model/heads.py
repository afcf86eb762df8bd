"""Task heads the server runs on the final hidden states."""

from __future__ import annotations

import torch
from torch import nn

from sfsim.errors import SfsimError

POOLINGS = ("last", "mean", "cls")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Pool (B, T, d) hidden states to (B, d): last non-pad token, masked mean, or token 0."""
    B, T, _ = hidden.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype)  # (B, T)
    if pooling == "cls":
        return hidden[:, 0]  # (B, d)
    if pooling == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(1)  # (B, d)
        return summed / mask.sum(1, keepdim=True).clamp(min=1.0)
    # last position whose mask is 1; works for left and right padding alike
    last = (mask * torch.arange(T, device=hidden.device, dtype=hidden.dtype)).argmax(-1)  # (B,)
    return hidden[torch.arange(B, device=hidden.device), last]  # (B, d)


class ClassificationHead(nn.Module):
    """Pooling + linear layer: (B, T, d) hidden states and (B, T) mask -> (B, C) logits.

    Pooling "last" (last non-pad token) suits decoders, "mean" (masked mean) and "cls" (token 0) suit BERT.
    """

    def __init__(self, hidden: int, num_labels: int, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise SfsimError(f"pooling {pooling!r} is unknown: use one of {', '.join(POOLINGS)}")
        if hidden < 1 or num_labels < 2:
            raise SfsimError(f"a classification head needs hidden >= 1 and num_labels >= 2 "
                             f"(got {hidden}, {num_labels})")
        self.pooling = pooling
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d), (B, T) -> (B, C) logits."""
        return self.classifier(pool(hidden, attention_mask, self.pooling))


def default_pooling(family: str) -> str:
    """Pooling for a model family: "mean" for BERT, "last" for decoders."""
    return "mean" if family == "bert" else "last"
