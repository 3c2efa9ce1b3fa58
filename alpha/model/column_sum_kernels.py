"""Triton kernel for ``alpha.model.column_sums``: the column sums of many matrices in one launch.

The matrices are the partial sums that Inductor's mix-order reductions leave for a LayerNorm's
weight and bias gradients: a few thousand rows of a few hundred fp32 columns (3 MB), dozens of them
a step. One launch takes up to ``MAX_PER_LAUNCH`` matrices of one shape as a tuple of pointers; a
program picks its matrix by its first index (a chain of uniform branches, no table in memory, so
the launch can be captured in a CUDA graph as it is) and owns ``BLOCK_C`` of its columns, walking
every row in tiles of ``BLOCK_R`` with a tile of fp32 partial sums in registers that it reduces
once at the end: no atomics, no second pass, the same result at every call.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R = 64
BLOCK_C = 32
WARPS = 4
MAX_PER_LAUNCH = 48


@triton.jit
def _column_sums_kernel(
    xs, ys, rows, COLS: tl.constexpr, COUNT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    which = tl.program_id(0)
    x_ptr = xs[0]
    y_ptr = ys[0]
    for i in tl.static_range(1, COUNT):
        if which == i:
            x_ptr = xs[i]
            y_ptr = ys[i]
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    column_ok = columns < COLS
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for start in range(0, rows, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R)
        ok = (r < rows)[:, None] & column_ok[None, :]
        offsets = r.to(tl.int64)[:, None] * COLS + columns[None, :]
        acc += tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + columns, tl.sum(acc, axis=0).to(y_ptr.dtype.element_ty), mask=column_ok)


def sum_columns_into(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
    """``y.copy_(x.sum(dim=0))`` for every pair (contiguous 2-D x, 1-D y of its columns), one launch
    per shape and dtype (and per ``MAX_PER_LAUNCH`` matrices)."""
    groups: dict[tuple[torch.Size, torch.dtype, torch.dtype], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for x, y in zip(xs, ys, strict=True):
        if x.dim() != 2 or y.shape != x.shape[1:]:
            raise ValueError(f"cannot sum the columns of {tuple(x.shape)} into {tuple(y.shape)}")
        groups.setdefault((x.shape, x.dtype, y.dtype), []).append((x.contiguous(), y))
    for (shape, _, _), pairs in groups.items():
        rows, cols = shape
        for start in range(0, len(pairs), MAX_PER_LAUNCH):
            chunk = pairs[start : start + MAX_PER_LAUNCH]
            contiguous_ys = [y if y.is_contiguous() else torch.empty_like(y) for _, y in chunk]
            _column_sums_kernel[(len(chunk), triton.cdiv(cols, BLOCK_C))](
                tuple(x for x, _ in chunk),
                tuple(contiguous_ys),
                rows,
                COLS=cols,
                COUNT=len(chunk),
                BLOCK_R=BLOCK_R,
                BLOCK_C=BLOCK_C,
                num_warps=WARPS,
            )
            for (_, y), written in zip(chunk, contiguous_ys, strict=True):
                if written is not y:
                    y.copy_(written)
