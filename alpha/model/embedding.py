"""Token and position embeddings as one autograd function, the token table's gradient summed by runs.

The forward is PyTorch's (two lookups, a sum and the cast to the residual stream's dtype, which
the compiler fuses). The backward takes the residual stream's gradient in that dtype and returns
the position table's gradient as PyTorch's sum over the batch, and the token table's from
``alpha::embedding_backward``: on CUDA with Triton a kernel that sorts the tokens, sums the
gradient rows of each run of equal tokens with one matrix product per chunk of the sorted order,
and adds only those sums into the table (``alpha.model.embedding_kernels``). Inductor's own
backward of a lookup adds every row of the gradient into the table with float32 atomics, about
25 million at batch 128, and most of them into the rows of the few tokens a chat corpus is full
of; fused into the first LayerNorm's backward they made it three times as long as the others.

Elsewhere (the CPU, a float32 gradient, which a 16-bit matrix product would round) the op is
``index_add_`` in float32.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from alpha.model.kernel_support import kernels_available

# ALPHA_EMBEDDING_BACKWARD=lookup leaves the embeddings to PyTorch (the build before, for A/B runs)
ENABLED = os.environ.get("ALPHA_EMBEDDING_BACKWARD", "runs") != "lookup"


def applies(wte: torch.Tensor, wpe: torch.Tensor) -> bool:
    """Whether the model takes its embeddings through ``embeddings``: gradients are taken of
    float32 tables."""
    return (
        ENABLED and torch.is_grad_enabled() and wte.requires_grad and wte.dtype == wpe.dtype == torch.float32
    )


@torch.library.custom_op("alpha::embedding_backward", mutates_args=())
def embedding_backward(grad: torch.Tensor, idx: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The float32 (num_rows, C) gradient of a table looked up at ``idx`` (any shape) whose
    output's gradient is ``grad`` (idx's shape + (C,))."""
    C = grad.shape[-1]
    rows = grad.reshape(-1, C)
    if kernels_available(grad.device) and grad.dtype in (torch.bfloat16, torch.float16):
        from alpha.model.embedding_kernels import run_sums

        return run_sums(rows.contiguous(), idx.reshape(-1), num_rows)
    out = torch.zeros(num_rows, C, device=grad.device, dtype=torch.float32)
    return out.index_add_(0, idx.reshape(-1), rows.float())


@embedding_backward.register_fake
def _(grad: torch.Tensor, idx: torch.Tensor, num_rows: int) -> torch.Tensor:
    return grad.new_empty(num_rows, grad.shape[-1], dtype=torch.float32)


class _Embeddings(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        T = idx.shape[1]
        ctx.save_for_backward(idx)
        ctx.num_tokens = wte.shape[0]
        ctx.num_positions = wpe.shape[0]
        return (wte[idx] + wpe[:T]).to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        T = idx.shape[1]
        grad_wte = embedding_backward(grad, idx, ctx.num_tokens)
        grad_wpe = grad.new_zeros(ctx.num_positions, grad.shape[-1], dtype=torch.float32)
        grad_wpe[:T] = grad.float().sum(0)
        return None, grad_wte, grad_wpe, None


def embeddings(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(wte[idx] + wpe[:T]).to(dtype)`` for a (B, T) ``idx``, position 0 first; float32 tables."""
    return _Embeddings.apply(idx, wte, wpe, dtype)
