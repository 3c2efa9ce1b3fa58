"""Triton kernels of ``alpha::logsumexp_target`` and ``alpha::cross_entropy_grad`` (see
``alpha.model.losses``).

One program a row: the whole row (the vocabulary, up to ``BLOCK`` logits) is loaded once into
registers, so the maximum and the sum of exponentials are two reductions over registers and the
logits are read from memory once. Inductor's kernel for ``torch.logsumexp`` loops over the row
twice (the row is longer than it keeps in registers), reading the logits twice. The same program
picks the target's logit out of the row it holds; the gradient kernel also writes the row's
``(softmax - one_hot) / N`` from the registers, so the loss's backward never reads the logits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

WARPS = 4


@triton.jit
def _row_exp(LOGITS, row, stride, V, BLOCK: tl.constexpr):
    """Row ``row`` of the logits held in registers: its address, its maximum m, exp(x - m) per
    column (0 past V) and their sum."""
    cols = tl.arange(0, BLOCK)
    base = LOGITS + row.to(tl.int64) * stride
    x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    e = tl.exp(x - m)
    return base, m, e, tl.sum(e, axis=0)


@triton.jit
def _logsumexp_target_kernel(LOGITS, TARGETS, LSE, TARGET_LOGIT, stride, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base, m, _, s = _row_exp(LOGITS, row, stride, V, BLOCK)
    tl.store(LSE + row, m + tl.log(s))
    target = tl.load(TARGETS + row)
    tl.store(TARGET_LOGIT + row, tl.load(base + target).to(tl.float32))


def logsumexp_target(
    logits: torch.Tensor, targets: torch.Tensor, warps: int = WARPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp of each row, the target's logit), fp32, for (N, V) logits with unit column stride."""
    n, v = logits.shape
    lse = torch.empty(n, device=logits.device, dtype=torch.float32)
    target_logit = torch.empty_like(lse)
    block = triton.next_power_of_2(v)
    _logsumexp_target_kernel[(n,)](
        logits, targets, lse, target_logit, logits.stride(0), v, BLOCK=block, num_warps=warps
    )
    return lse, target_logit


@triton.jit
def _cross_entropy_grad_kernel(
    LOGITS, TARGETS, ROW_LOSS, GRAD, stride, grad_stride, V, inv_n, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    base, m, e, s = _row_exp(LOGITS, row, stride, V, BLOCK)
    target = tl.load(TARGETS + row)
    target_logit = tl.load(base + target).to(tl.float32)  # one load, not a third reduction
    tl.store(ROW_LOSS + row, m + tl.log(s) - target_logit)
    grad = e * (inv_n / s) - tl.where(cols == target, inv_n, 0.0)
    out = GRAD + row.to(tl.int64) * grad_stride + cols
    tl.store(out, grad.to(GRAD.dtype.element_ty), mask=cols < V)


def cross_entropy_grad(
    logits: torch.Tensor, targets: torch.Tensor, warps: int = WARPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each row's cross-entropy in fp32, ``(softmax - one_hot) / N`` in the logits' dtype) for
    (N, V) logits with unit column stride."""
    n, v = logits.shape
    row_loss = torch.empty(n, device=logits.device, dtype=torch.float32)
    grad = torch.empty(n, v, device=logits.device, dtype=logits.dtype)
    _cross_entropy_grad_kernel[(n,)](
        logits,
        targets,
        row_loss,
        grad,
        logits.stride(0),
        grad.stride(0),
        v,
        1.0 / n,
        BLOCK=triton.next_power_of_2(v),
        num_warps=warps,
    )
    return row_loss, grad
