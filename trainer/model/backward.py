"""Decomposed backward: B (activation gradients) now, W (weight gradients) deferred to the optimizer step.

Zero-bubble pipeline parallelism (Qi et al., ICLR 2024) splits a layer's backward into B, the gradient
with respect to its input (on the critical path), and W, the gradient with respect to its weights
(free to run later, in idle time). :class:`DeferredGrads` wraps every trainable ``nn.Linear`` of a
module (LoRA ``lora_A``/``lora_B`` and the classification head) with an autograd function whose
backward returns only the input gradient and stashes ``(input, grad_output)``; :meth:`DeferredGrads.flush`
later computes ``W.grad += grad_output^T @ input`` (and ``b.grad += sum(grad_output)``).
"""

from __future__ import annotations

import torch
from torch import nn


class _DeferredLinear(torch.autograd.Function):
    """``y = x W^T + b`` whose backward computes only ``dx`` and stashes ``(x, dy)`` for W."""

    @staticmethod
    def forward(ctx, x, weight, bias, linear, stash):
        ctx.save_for_backward(x, weight)
        ctx.linear, ctx.stash = linear, stash
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        ctx.stash.append((ctx.linear, x, grad_out))  # W work, done later by DeferredGrads.flush
        # under autocast (bf16/fp16 server) dy is in the low dtype while W and x kept theirs; the casts are
        # no-ops in fp32
        grad_x = (grad_out @ weight.to(grad_out.dtype)).to(x.dtype) if ctx.needs_input_grad[0] else None  # (..., in)
        return grad_x, None, None, None, None


class DeferredGrads:
    """Defers the weight gradients of ``module``'s trainable ``nn.Linear`` layers until :meth:`flush`.

    While attached, ``loss.backward()`` runs only B (input gradients; frozen weights are untouched and
    trainable Linear weights get no ``.grad``); :meth:`flush` runs W for every stashed micro-batch and
    accumulates into ``.grad`` exactly as a plain backward would have.

    Args:
        module: the module whose trainable Linear layers are wrapped (in place, on the instances).
        enabled: when False nothing is wrapped and backward is the usual fused B+W.

    Example:
        >>> dg = DeferredGrads(server_part)
        >>> loss.backward()   # B only
        >>> dg.flush()        # W; then optimizer.step()
    """

    def __init__(self, module: nn.Module, enabled: bool = True):
        self.enabled = enabled
        self.stash: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self.layers: list[nn.Linear] = []
        if enabled:
            for mod in module.modules():
                if type(mod) is nn.Linear and mod.weight.requires_grad:
                    self._wrap(mod)

    def _wrap(self, lin: nn.Linear) -> None:
        stash = self.stash

        def forward(x, _lin=lin):
            if not torch.is_grad_enabled():
                return nn.functional.linear(x, _lin.weight, _lin.bias)
            return _DeferredLinear.apply(x, _lin.weight, _lin.bias, _lin, stash)

        lin.forward = forward
        self.layers.append(lin)

    @property
    def pending(self) -> int:
        """Number of stashed (layer, input, grad_output) W items not yet computed."""
        return len(self.stash)

    def signature(self) -> tuple:
        """Shapes of the pending W work (its FLOPs depend only on these)."""
        return tuple((id(lin), tuple(x.shape), tuple(gy.shape)) for lin, x, gy in self.stash)

    @torch.no_grad()
    def flush(self) -> None:
        """Compute the deferred W: accumulate weight (and bias) gradients of every stashed item."""
        for lin, x, gy in self.stash:
            x2 = x.reshape(-1, x.shape[-1]).to(lin.weight.dtype)  # (N, in); a no-op unless under autocast
            gy2 = gy.reshape(-1, gy.shape[-1]).to(lin.weight.dtype)  # (N, out)
            with torch.autocast(x2.device.type, enabled=False):  # W in the weight's dtype even inside autocast
                gw = gy2.t() @ x2  # (out, in)
            lin.weight.grad = gw if lin.weight.grad is None else lin.weight.grad + gw
            if lin.bias is not None and lin.bias.requires_grad:
                gb = gy2.sum(0)
                lin.bias.grad = gb if lin.bias.grad is None else lin.bias.grad + gb
        self.stash.clear()

    def remove(self) -> None:
        """Restore the wrapped layers' own forward (pending W items are dropped)."""
        for lin in self.layers:
            if "forward" in lin.__dict__:
                del lin.forward
        self.layers.clear()
        self.stash.clear()
