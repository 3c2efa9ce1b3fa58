"""Triton device functions for tanh, sigmoid and tanh-GELU at a chosen accuracy, shared by the
model's GELU kernels (``alpha.model.gelu_kernels``) and the symbio program kernels
(``alpha.symbio.program_kernels``), so that both compute the same function.

``FAST`` (see ``fast_mode``): 0 the plain division (Triton's interpreter has no inline assembly),
1 the division by ``rcp.approx`` (within an ulp, for fp32 activations), 2 ``tanh.approx``
(relative error within 2⁻¹¹, for 16-bit activations, whose own rounding of 2⁻⁸ is coarser).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def fast_mode(x: torch.Tensor) -> int:
    """How the kernels compute tanh and sigmoid for ``x``: ``tanh.approx`` when the activations
    are 16-bit, a reciprocal by ``rcp.approx`` for fp32, the plain division under Triton's
    interpreter."""
    if x.device.type != "cuda":
        return 0
    return 2 if x.element_size() == 2 else 1


@triton.jit
def tanh_approx(u):
    return tl.inline_asm_elementwise(
        "tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def sigmoid(x, FAST: tl.constexpr):
    """1 / (1 + e⁻ˣ); with FAST 2 as ½ + ½·tanh(x/2). Each special-function instruction saved is
    one of the GPU's scarcest (16 a cycle on an SM against 128 multiply-adds)."""
    if FAST == 2:
        return 0.5 * tanh_approx(0.5 * x) + 0.5
    elif FAST == 1:
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + tl.exp(-x)], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.sigmoid(x)


@triton.jit
def gelu_tanh(x, FAST: tl.constexpr):
    """tanh(√(2/π)·(x + 0.044715·x³)), GELU's inner tanh (see the module docstring for FAST)."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    if FAST == 2:
        return tanh_approx(u)
    else:
        return 2.0 * sigmoid(2.0 * u, FAST) - 1.0


@triton.jit
def gelu_slope(x, t):
    """tanh-GELU's derivative at x, given t = gelu_tanh(x)."""
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
