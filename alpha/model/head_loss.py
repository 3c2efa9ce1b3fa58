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

import os
from typing import Any

import torch

from alpha.model import kernel_support
from alpha.model.kernel_support import kernels_available
from alpha.model.linear import Linear, autocast_dtype
from alpha.model.losses import MAX_KERNEL_VOCAB, cross_entropy_grad, reference_logsumexp_target

# rows of logits computed and turned into their gradient at a time (``head_grad``); 0 takes them
# all at once, as Inductor's product and ``alpha::cross_entropy_grad`` (ALPHA_HEAD_CHUNK_ROWS)
CHUNK_ROWS = int(os.environ.get("ALPHA_HEAD_CHUNK_ROWS", "4096"))
ROW_ALIGN = 64  # elements a row of logits is padded to (128 bytes in bf16, as Inductor pads them)


@torch.library.custom_op("alpha::head_grad", mutates_args=())
def head_grad(
    x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each row's cross-entropy in fp32, the mean loss's gradient ``(softmax - one_hot) / N`` of
    the logits ``x wᵀ``, (N, V) in x's dtype with rows padded to ``ROW_ALIGN``) for (N, C) ``x``.
    ``chunk_rows`` rows at a time: each chunk's logits are written by the product and overwritten
    by their gradient while they are in L2, so the logits never go to memory and back."""
    n, v = x.shape[0], w.shape[0]
    stride = -(-v // ROW_ALIGN) * ROW_ALIGN
    grad = torch.empty(n, stride, device=x.device, dtype=x.dtype)[:, :v]
    row_loss = torch.empty(n, device=x.device, dtype=torch.float32)
    for start in range(0, n, chunk_rows):
        rows = slice(start, start + chunk_rows)
        logits = torch.mm(x[rows], w.t(), out=grad[rows])
        _cross_entropy_grad_in_place(logits, targets[rows], row_loss[rows], n)
    return row_loss, grad


@head_grad.register_fake
def _(
    x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    n, v = x.shape[0], w.shape[0]
    stride = -(-v // ROW_ALIGN) * ROW_ALIGN
    return x.new_empty(n, dtype=torch.float32), x.new_empty_strided((n, v), (stride, 1))


def _cross_entropy_grad_in_place(
    logits: torch.Tensor, targets: torch.Tensor, row_loss: torch.Tensor, n_mean: int
) -> None:
    """Each row's cross-entropy into ``row_loss`` and ``(softmax - one_hot) / n_mean`` over the logits."""
    if kernel_support.kernels_available(logits.device) and logits.shape[1] <= MAX_KERNEL_VOCAB:
        from alpha.model.loss_kernels import cross_entropy_grad as kernel

        kernel(logits, targets, out=(row_loss, logits), n_mean=n_mean)
        return
    lse, target_logit = reference_logsumexp_target(logits, targets)
    row_loss.copy_(lse - target_logit)
    probs = torch.exp(logits.float() - lse[:, None])
    probs[torch.arange(len(targets), device=logits.device), targets] -= 1.0
    logits.copy_(probs / n_mean)


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
        if CHUNK_ROWS > 0:
            row_loss, grad = head_grad(x, w, targets.reshape(-1), CHUNK_ROWS)
        else:
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
