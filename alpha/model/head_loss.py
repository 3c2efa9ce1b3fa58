"""The output layer and the loss as one autograd function, the loss's gradient taken in the forward.

The mean cross-entropy's gradient with respect to the logits is ``(softmax - one_hot) / N``
times the scalar that reaches the loss in the backward pass (1, or a micro-batch's share). The
first factor depends only on the logits, so ``head_loss`` computes it in the forward pass, from
the registers that hold each row of logits for its log-sum-exp (``alpha::cross_entropy_grad``):
the logits are read once and never saved, where ``losses.cross_entropy`` reads them a second time
in its backward to rebuild the softmax. The backward applies the scalar to the smaller side of
each product of the head's backward, (tokens x dim) instead of (tokens x vocabulary): the input
gradient is ``(g W) s`` and the weight gradient ``gᵀ (x s)``, computed as ``alpha::linear_backward``
computes any linear layer's (the weight gradient on the side stream when the head has a slot).

It applies while gradients are taken and the loss kernels run (CUDA with Triton), in bf16 or
fp32; elsewhere the model computes its logits and ``losses.cross_entropy``, which is the same
loss. Not in fp16: ``(softmax - one_hot) / N`` would be rounded to fp16 before the loss scale
reaches it (the scale arrives with the backward), and most of it would underflow, which is what
fp16's loss scaling is there to prevent.
"""

from __future__ import annotations

from typing import Any

import torch

from alpha.model.kernel_support import kernels_available
from alpha.model.linear import Linear, autocast_dtype
from alpha.model.losses import MAX_KERNEL_VOCAB, cross_entropy_grad


def applies(h: torch.Tensor, head: Linear) -> bool:
    """Whether ``head_loss`` runs for hidden states ``h`` (gradients on, kernels available, not
    in fp16)."""
    return (
        torch.is_grad_enabled()
        and head.weight.requires_grad
        and kernels_available(h.device)
        and head.out_features <= MAX_KERNEL_VOCAB
        and (autocast_dtype(h.device) or h.dtype) != torch.float16
    )


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        shadow: torch.Tensor | None,
        slot: int | None,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        dtype = autocast_dtype(h.device) or h.dtype
        x = h.reshape(-1, h.shape[-1]).to(dtype)
        w = shadow if shadow is not None and shadow.dtype == dtype else weight.to(dtype)
        row_loss, grad = cross_entropy_grad(x @ w.t(), targets.reshape(-1))
        ctx.save_for_backward(x, w, grad)
        ctx.slot = slot
        ctx.h_shape = h.shape
        return row_loss.mean()

    @staticmethod
    def backward(ctx: Any, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None, None, None]:  # type: ignore[override]
        x, w, grad = ctx.saved_tensors
        if ctx.slot is None:
            dx = (grad @ w) * scale
            dw = (grad.t() @ x).float() * scale
            return dx.view(ctx.h_shape), dw, None, None, None
        dx = torch.ops.alpha.linear_backward(grad, x * scale, w, ctx.slot)
        return (dx * scale).view(ctx.h_shape), None, None, None, None


def head_loss(h: torch.Tensor, head: Linear, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``head(h)`` against ``targets``; the gradient of the logits is
    computed in the forward pass (see the module's docstring)."""
    return _HeadLoss.apply(h, head.weight, head.weight_shadow, head.grad_slot, targets)
