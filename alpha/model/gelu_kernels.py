"""Triton kernels of ``alpha::gelu`` and ``alpha::gelu_backward`` (see ``alpha.model.gelu``).

One tile of ``BLOCK`` elements a program, fp32 arithmetic, stored in x's dtype. tanh and the
slope come from ``alpha.model.fast_math``, as in the symbio program kernels, so a candidate's GELU
basis and the plain activation compute the same function.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from alpha.model.fast_math import fast_mode, gelu_slope, gelu_tanh

BLOCK = 2048
WARPS = 8


@triton.jit
def _gelu_forward_kernel(X, Y, n, BLOCK: tl.constexpr, FAST: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < n
    x = tl.load(X + offsets, mask=ok, other=0.0).to(tl.float32)
    y = 0.5 * x * (1.0 + gelu_tanh(x, FAST))
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _gelu_backward_kernel(DY, X, DX, n, BLOCK: tl.constexpr, FAST: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < n
    x = tl.load(X + offsets, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(DY + offsets, mask=ok, other=0.0).to(tl.float32)
    dx = dy * gelu_slope(x, gelu_tanh(x, FAST))
    tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=ok)


def gelu_forward(x: torch.Tensor, block: int = BLOCK, warps: int = WARPS) -> torch.Tensor:
    y = torch.empty_like(x)
    n = x.numel()
    _gelu_forward_kernel[(triton.cdiv(n, block),)](x, y, n, BLOCK=block, FAST=fast_mode(x), num_warps=warps)
    return y


def gelu_backward(dy: torch.Tensor, x: torch.Tensor, block: int = BLOCK, warps: int = WARPS) -> torch.Tensor:
    dx = torch.empty_like(x)
    n = x.numel()
    _gelu_backward_kernel[(triton.cdiv(n, block),)](
        dy, x, dx, n, BLOCK=block, FAST=fast_mode(x), num_warps=warps
    )
    return dx
