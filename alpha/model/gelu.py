"""GELU (tanh approximation) as one op with Triton kernels on CUDA: ``alpha::gelu``.

The FFN's GELU sits between two GEMMs, so Inductor has nothing to fuse it with: its forward and
backward are standalone pointwise kernels either way. Inductor's compute tanh with libdevice's
``tanhf`` (a few dozen instructions), which at large batches keeps them well below memory
bandwidth. These kernels compute it with the GPU's ``tanh.approx`` for 16-bit activations
(relative error within 2⁻¹¹, below bf16's own rounding of 2⁻⁸; the symbio program kernels share
the same functions) and through ``rcp.approx`` for fp32, within an ulp. Elsewhere the op is
PyTorch's ``F.gelu(x, approximate="tanh")`` and its derivative.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from alpha.model.kernel_support import kernels_available

SQRT_2_OVER_PI = 0.7978845608028654


@torch.library.custom_op("alpha::gelu", mutates_args=())
def gelu(x: torch.Tensor) -> torch.Tensor:
    """0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    if kernels_available(x.device):
        from alpha.model.gelu_kernels import gelu_forward

        return gelu_forward(x.contiguous())
    return F.gelu(x, approximate="tanh")


@gelu.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("alpha::gelu_backward", mutates_args=())
def gelu_backward(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy · gelu′(x)."""
    if kernels_available(x.device):
        from alpha.model.gelu_kernels import gelu_backward as kernel

        return kernel(dy.contiguous(), x.contiguous())
    return reference_backward(dy, x)


def reference_backward(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy · gelu′(x) in PyTorch, at least in fp32 (the op's form off CUDA, and the benchmarks')."""
    wide = torch.promote_types(x.dtype, torch.float32)
    xw = x.to(wide)
    t = torch.tanh(SQRT_2_OVER_PI * (xw + 0.044715 * xw**3))
    slope = 0.5 * (1 + t) + 0.5 * xw * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * xw * xw)
    return (dy.to(wide) * slope).to(x.dtype)


@gelu_backward.register_fake
def _(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return torch.ops.alpha.gelu_backward(dy, x)


gelu.register_autograd(_backward, setup_context=_setup_context)
