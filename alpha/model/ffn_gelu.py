"""The GELU FFN with its activation inside the GEMMs: ``fc2(gelu(fc1 x))`` without a GELU kernel.

The FFN's GELU sits between two GEMMs, and as kernels of its own its forward reads h and writes
gelu(h), and its backward reads h and the product ``dy W2`` and writes their product: at batch
128 of the seed model 0.6 GB a layer, memory-bound. cuBLASLt can do both inside the GEMMs
(``alpha.model.cublaslt``): ``alpha::linear_gelu`` writes gelu(x W1ᵀ) and the pre-activation
h from the first GEMM's epilogue, and ``alpha::linear_backward_dgelu`` computes
``(dy W2) ⊙ gelu′(h)`` in the epilogue of the second layer's input-gradient GEMM (and, like
``alpha::linear_backward``, launches that layer's weight gradient ``dyᵀ gelu(h)`` on the side
stream). The products are rounded once, after the activation or its slope is applied, so the
results are a little closer to fp32 than a bf16 h passed between kernels.

It applies where cuBLASLt runs (CUDA) to 16-bit activations while gradients are taken;
elsewhere, and with ``ALPHA_GELU_EPILOGUE=0``, the FFN is ``fc2(alpha::gelu(fc1 x))``. On the CPU
the ops compute the same maths in PyTorch (the tests' reference).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from alpha.model import cublaslt
from alpha.model.gelu import reference_backward
from alpha.model.linear import _SLOTS, Linear, _weight_grad_into, autocast_dtype

ENV = "ALPHA_GELU_EPILOGUE"
# read once, at import: ``applies`` runs inside traced code, which must not call into ctypes
ENABLED = os.environ.get(ENV, "1") != "0"
EPILOGUES = cublaslt.available()


def _epilogues_here(t: torch.Tensor) -> bool:
    return EPILOGUES and t.is_cuda


def applies(x: torch.Tensor, fc1: Linear, fc2: Linear) -> bool:
    """Whether ``gelu_ffn`` runs for ``x``: gradients on, on CUDA in a 16-bit compute dtype."""
    return (
        ENABLED
        and torch.is_grad_enabled()
        and fc1.weight.requires_grad
        and fc2.weight.requires_grad
        and (autocast_dtype(x.device) or x.dtype) in (torch.bfloat16, torch.float16)
        and _epilogues_here(x)
    )


@torch.library.custom_op("alpha::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu(x Wᵀ), x Wᵀ), GELU's tanh approximation, for x (..., in) and W (out, in)."""
    x2 = x.reshape(-1, x.shape[-1])
    if _epilogues_here(x):
        act, pre = cublaslt.linear_gelu(x2.contiguous(), weight.contiguous())
    else:
        pre = x2 @ weight.t()
        act = F.gelu(pre, approximate="tanh")
    shape = (*x.shape[:-1], weight.shape[0])
    return act.view(shape), pre.view(shape)


@linear_gelu.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (*x.shape[:-1], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


def _input_grad_dgelu(dy2: torch.Tensor, weight: torch.Tensor, pre2: torch.Tensor) -> torch.Tensor:
    if _epilogues_here(dy2):
        return cublaslt.linear_input_grad_dgelu(dy2, weight.contiguous(), pre2)
    return reference_backward(dy2 @ weight, pre2)


@torch.library.custom_op("alpha::linear_backward_dgelu", mutates_args=())
def linear_backward_dgelu(
    dy: torch.Tensor, act: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor, slot: int
) -> torch.Tensor:
    """dh = (dy W) ⊙ gelu′(pre) on the current stream, for the layer ``y = act Wᵀ`` with
    ``act = gelu(pre)``; its weight gradient dyᵀ act is launched on the side stream of ``slot``
    into weight.grad (as ``alpha::linear_backward`` does)."""
    owner = _SLOTS[slot]()
    if owner is None:
        raise RuntimeError(f"the WeightGradStream of linear slot {slot} is gone")
    dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
    pre2 = pre.reshape(-1, pre.shape[-1]).contiguous()
    dh = _input_grad_dgelu(dy2, weight, pre2)
    owner.compute(slot, dy2, act.reshape(-1, act.shape[-1]))
    return dh.view(pre.shape)


@linear_backward_dgelu.register_fake
def _(
    dy: torch.Tensor, act: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor, slot: int
) -> torch.Tensor:
    return pre.new_empty(pre.shape)


class _GeluFFN(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w1: torch.Tensor,
        shadow1: torch.Tensor | None,
        slot1: int | None,
        w2: torch.Tensor,
        shadow2: torch.Tensor | None,
        slot2: int | None,
    ) -> torch.Tensor:
        dtype = autocast_dtype(x.device) or x.dtype
        x = x.to(dtype)
        w1c = shadow1 if shadow1 is not None and shadow1.dtype == dtype else w1.to(dtype)
        w2c = shadow2 if shadow2 is not None and shadow2.dtype == dtype else w2.to(dtype)
        act, pre = torch.ops.alpha.linear_gelu(x, w1c)
        ctx.save_for_backward(x, w1c, w2c, act, pre)
        ctx.slots = (slot1, slot2)
        return act @ w2c.t()

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, w1c, w2c, act, pre = ctx.saved_tensors
        slot1, slot2 = ctx.slots
        dy = dy.contiguous()
        if slot1 is None or slot2 is None:  # weight gradients returned to autograd, in fp32
            dy2, pre2 = dy.reshape(-1, dy.shape[-1]), pre.reshape(-1, pre.shape[-1])
            dh2 = _input_grad_dgelu(dy2, w2c, pre2)
            dw1, dw2 = torch.empty_like(w1c, dtype=torch.float32), torch.empty_like(w2c, dtype=torch.float32)
            _weight_grad_into(dw2, dy2, act.reshape(-1, act.shape[-1]), overwrite=True)
            _weight_grad_into(dw1, dh2, x.reshape(-1, x.shape[-1]), overwrite=True)
            dx = (dh2 @ w1c).view(x.shape)
            return dx, dw1, None, None, dw2, None, None
        dh = torch.ops.alpha.linear_backward_dgelu(dy, act, w2c, pre, slot2)
        dx = torch.ops.alpha.linear_backward(dh, x, w1c, slot1)
        return dx, None, None, None, None, None, None


def gelu_ffn(x: torch.Tensor, fc1: Linear, fc2: Linear) -> torch.Tensor:
    """fc2(gelu(fc1(x))) with the GELU inside the GEMMs (see the module's docstring)."""
    return _GeluFFN.apply(
        x, fc1.weight, fc1.weight_shadow, fc1.grad_slot, fc2.weight, fc2.weight_shadow, fc2.grad_slot
    )
