"""The Triton kernel of ``alpha::embedding_backward``: a lookup's gradient added into its table.

One program takes ROWS rows of the 16-bit gradient and BLOCK_C columns, and adds each row into
the float32 table's row of its token with relaxed atomics: the work of Inductor's own backward of
a lookup, in a kernel of its own rather than fused into the first LayerNorm's backward, where it
made that kernel three times as long as the others.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS = 32  # gradient rows a program
BLOCK_C = 128  # columns a program


@triton.jit
def _add_rows_kernel(GRAD, IDX, OUT, N, C, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < N) & (cols[None, :] < C)
    ids = tl.load(IDX + rows, mask=rows < N, other=0)
    g = tl.load(GRAD + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0.0)
    tl.atomic_add(OUT + ids[:, None] * C + cols[None, :], g.to(tl.float32), mask=mask, sem="relaxed")


def add_rows(grad: torch.Tensor, idx: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The float32 (num_rows, C) sums of the rows of a contiguous 16-bit (N, C) ``grad`` by their
    token in the (N,) ``idx``."""
    N, C = grad.shape
    out = torch.zeros(num_rows, C, device=grad.device, dtype=torch.float32)
    if N == 0:
        return out
    grid = (triton.cdiv(N, ROWS), triton.cdiv(C, BLOCK_C))
    _add_rows_kernel[grid](grad, idx, out, N, C, ROWS=ROWS, BLOCK_C=BLOCK_C, num_warps=4)
    return out
