"""Triton kernel of ``alpha.train.adamw.AdamW``'s CUDA step: every parameter in one launch.

The parameters, gradients and moments stay separate tensors (the optimizer's state keeps
PyTorch's layout, so checkpoints and snapshots are unchanged); a table of their addresses lets
one grid cover them all. Each program updates one chunk of ``BLOCK`` elements of one tensor: it
reads the chunk's tensor index and start from two small arrays, its tensor's addresses from the
table, and then does AdamW's update in fp32 as PyTorch's fused kernel does (decoupled decay,
bias-corrected moments), the gradient divided by ``grad_scale`` first. A step whose ``found_inf``
is set leaves everything untouched. Where a tensor has a 16-bit shadow (the copy the linear
layers' GEMMs read), the new weight is also stored there, rounded, so no copy pass follows.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

BLOCK = 4096
WARPS = 8
VECTOR = 4  # fp32 elements in a 16-byte access


@triton.jit
def _adamw_kernel(
    CHUNK_TENSOR, CHUNK_START, PARAMS, GRADS, EXP_AVGS, EXP_AVG_SQS, SHADOWS, NUMELS, DECAYS,
    LR, STEP, GRAD_SCALE, FOUND_INF, beta1, beta2, eps,
    BLOCK: tl.constexpr, HAS_SHADOWS: tl.constexpr, SHADOW_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
    VECTOR: tl.constexpr,
):  # fmt: skip
    if tl.load(FOUND_INF) != 0.0:
        return
    pid = tl.program_id(0)
    t = tl.load(CHUNK_TENSOR + pid)
    start = tl.load(CHUNK_START + pid)
    numel = tl.load(NUMELS + t)
    param = tl.load(PARAMS + t).to(tl.pointer_type(tl.float32))
    grad = tl.load(GRADS + t).to(tl.pointer_type(tl.float32))
    exp_avg = tl.load(EXP_AVGS + t).to(tl.pointer_type(tl.float32))
    exp_avg_sq = tl.load(EXP_AVG_SQS + t).to(tl.pointer_type(tl.float32))
    if ALIGNED:  # what the compiler cannot see in addresses read from memory: 16-byte vectors
        start = tl.multiple_of(start, BLOCK)
        numel = tl.multiple_of(numel, VECTOR)
        param = tl.multiple_of(param, 16)
        grad = tl.multiple_of(grad, 16)
        exp_avg = tl.multiple_of(exp_avg, 16)
        exp_avg_sq = tl.multiple_of(exp_avg_sq, 16)
    offsets = start + tl.arange(0, BLOCK)
    mask = offsets < numel

    lr = tl.load(LR)
    step = tl.load(STEP) + 1.0  # the step being taken (the state holds the steps taken)
    bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))
    bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(beta2)))

    g = tl.load(grad + offsets, mask=mask, other=0.0) / tl.load(GRAD_SCALE)
    p = tl.load(param + offsets, mask=mask, other=0.0)
    m = tl.load(exp_avg + offsets, mask=mask, other=0.0)
    v = tl.load(exp_avg_sq + offsets, mask=mask, other=0.0)
    p = p * (1.0 - lr * tl.load(DECAYS + t))
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    p = p - (lr / bias_correction1) * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
    tl.store(param + offsets, p, mask=mask)
    tl.store(exp_avg + offsets, m, mask=mask)
    tl.store(exp_avg_sq + offsets, v, mask=mask)
    if HAS_SHADOWS:
        shadow_address = tl.load(SHADOWS + t)
        if shadow_address != 0:
            shadow = shadow_address.to(tl.pointer_type(SHADOW_DTYPE))
            if ALIGNED:
                shadow = tl.multiple_of(shadow, 8)
            tl.store(shadow + offsets, p.to(SHADOW_DTYPE), mask=mask)


_TRITON_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


class AdamWLaunch:
    """The address table and chunk list of one set of tensors, built once, launched every step.

    ``shadows[i]`` is None or a 16-bit tensor of ``params[i]``'s shape (one dtype for all)."""

    def __init__(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
        exp_avg_sqs: list[torch.Tensor],
        shadows: list[torch.Tensor | None],
        decays: list[float],
        block: int = BLOCK,
    ) -> None:
        device = params[0].device
        tensors = (params, grads, exp_avgs, exp_avg_sqs)
        for group in tensors:
            for t in group:
                if t.dtype != torch.float32 or not t.is_contiguous() or t.device != device:
                    raise ValueError("the AdamW kernel takes contiguous fp32 tensors on one device")
        shadow_dtypes = {s.dtype for s in shadows if s is not None}
        if len(shadow_dtypes) > 1 or not shadow_dtypes <= set(_TRITON_DTYPES):
            raise ValueError("the AdamW kernel's shadows must share one 16-bit dtype")
        self.shadow_dtype = _TRITON_DTYPES[shadow_dtypes.pop()] if shadow_dtypes else None
        numels = [p.numel() for p in params]
        chunk_tensor = [i for i, n in enumerate(numels) for _ in range(triton.cdiv(n, block))]
        chunk_start = [s for n in numels for s in range(0, n, block)]

        def on_device(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device)

        self.addresses = tuple(on_device([t.data_ptr() for t in group], torch.int64) for group in tensors)
        self.shadows = on_device([0 if s is None else s.data_ptr() for s in shadows], torch.int64)
        self.numels = on_device(numels, torch.int64)
        self.decays = on_device(decays, torch.float32)
        self.chunk_tensor = on_device(chunk_tensor, torch.int32)
        self.chunk_start = on_device(chunk_start, torch.int64)
        self.block = block
        # every tensor starts on a 16-byte boundary and holds whole vectors: vector accesses
        self.aligned = (
            all(n % VECTOR == 0 for n in numels)
            and all(t.data_ptr() % 16 == 0 for group in tensors for t in group)
            and all(s.data_ptr() % 8 == 0 for s in shadows if s is not None)
        )

    def __call__(
        self,
        lr: torch.Tensor,
        step: torch.Tensor,
        grad_scale: torch.Tensor,
        found_inf: torch.Tensor,
        beta1: float,
        beta2: float,
        eps: float,
    ) -> Any:
        """One AdamW step (``step``: the steps taken before this one; all 0-dim fp32 tensors).
        Returns Triton's compiled kernel (its PTX is in ``.asm["ptx"]``)."""
        return _adamw_kernel[(self.chunk_tensor.numel(),)](
            self.chunk_tensor, self.chunk_start, *self.addresses, self.shadows, self.numels, self.decays,
            lr, step, grad_scale, found_inf, beta1, beta2, eps,
            BLOCK=self.block, HAS_SHADOWS=self.shadow_dtype is not None,
            SHADOW_DTYPE=self.shadow_dtype or tl.bfloat16, ALIGNED=self.aligned, VECTOR=VECTOR,
            num_warps=WARPS,
        )  # fmt: skip
