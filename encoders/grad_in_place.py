"""Linear layers that add each pass's weight gradient into `.grad` in place, for CPU steps in micro-batches.

Why: when an optimiser step runs in several forward/backward passes (train.samples_per_pass), autograd makes
each pass's weight gradient as a new tensor and only then adds it to the gradient already held. For vgg16's
first classifier layer (25,088 x 4,096) that new tensor is 0.41 GB, allocated on every pass after the first,
on top of the parameters, their gradients and Adam's two moments: it was the difference between a 3.1 GB and a
3.5 GB process (bench/results/micro-batches.md). `addmm_` into `.grad` needs no such tensor.

The swapped layers keep their parameter objects, names and values, so the optimiser, the checkpoint and the
model's outputs are unchanged; only where the backward writes differs. Not for DistributedDataParallel: its
reducer waits on autograd's own gradient accumulation, which these layers bypass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_PARAMETERS = 1_000_000
"""Layers smaller than this (4 MB of float32 weights) gain too little to be worth swapping."""


class _LinearAddingGradInPlace(torch.autograd.Function):
    """y = x W^T + b whose backward adds dL/dW and dL/db into W.grad and b.grad itself (and returns None for them).

    The parameters are held as they are, not through save_for_backward: under activation checkpointing a saved
    tensor comes back as a recomputed alias, and a gradient set on it would never reach the parameter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.weight, ctx.bias = weight, bias
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,), weight = ctx.saved_tensors, ctx.weight
        rows_out = grad_out.reshape(-1, grad_out.shape[-1])
        if weight.requires_grad:
            rows_in = x.reshape(-1, x.shape[-1])
            if weight.grad is None:
                weight.grad = rows_out.t().mm(rows_in)
            else:
                weight.grad.addmm_(rows_out.t(), rows_in)
        bias = ctx.bias
        if bias is not None and bias.requires_grad:
            if bias.grad is None:
                bias.grad = rows_out.sum(0)
            else:
                bias.grad.add_(rows_out.sum(0))
        grad_x = grad_out.matmul(weight) if ctx.needs_input_grad[0] else None
        return grad_x, None, None


class LinearAddingGradInPlace(nn.Linear):
    """nn.Linear whose training backward accumulates its weight gradient in place (see the module doc)."""

    @classmethod
    def sharing(cls, layer: nn.Linear) -> "LinearAddingGradInPlace":
        """A layer holding `layer`'s own parameters (no copy: the optimiser's references stay valid)."""
        swapped = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        swapped.weight, swapped.bias = layer.weight, layer.bias
        return swapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return _LinearAddingGradInPlace.apply(x, self.weight, self.bias)


def add_linear_grads_in_place(model: nn.Module, min_parameters: int = MIN_PARAMETERS) -> int:
    """Swap every plain nn.Linear of at least `min_parameters` weights for LinearAddingGradInPlace; how many.

    Only exact nn.Linear: subclasses (e.g. MultiheadAttention's out_proj, whose weight its parent reads
    directly) keep their own forward."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and child.weight.numel() >= min_parameters]
    for parent, name, child in swaps:
        setattr(parent, name, LinearAddingGradInPlace.sharing(child))
    return len(swaps)
