"""The residual add and the LayerNorm after it in one pass, forward and backward (Triton on CUDA).

A pre-LN block adds a branch to the residual stream and normalises the sum for the next branch:
``s = x + branch; y = LayerNorm(s)``. ``AddLayerNorm`` returns both ``s`` and ``y`` from one
kernel that reads ``x`` and ``branch`` once. Its backward is one kernel too: it takes the
gradients of both outputs, writes the gradient of the sum (which is the gradient of ``x`` and of
``branch``) and per-program partial sums of the weight and bias gradients, which a small sum
finishes. Inductor, given the same math, splits LayerNorm's backward into a row pass and separate
column reductions that read the activations again. Both kernels are opaque custom ops to
``torch.compile`` (``alpha::add_layer_norm`` and its backward) and replay inside the step's CUDA
graph like any other kernel.

The statistics are computed in fp32 from the sum rounded to the residual stream's dtype, so
forward and backward see the same ``s``. Without CUDA or Triton (the CPU, tests, the sampler
process), or with ``ALPHA_FUSED_NORM=0``, the module is ``x + branch`` and ``F.layer_norm``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

MAX_BACKWARD_PROGRAMS = 512


def fused_available(x: torch.Tensor) -> bool:
    """Whether ``x`` goes through the Triton kernels (CUDA, or Triton's interpreter in tests)."""
    if triton is None or os.environ.get("ALPHA_FUSED_NORM", "1") == "0":
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _forward_kernel(
        X, BRANCH, S, Y, W, B, MEAN, RSTD, n_rows, n_cols, eps,
        BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        col_ok = cols < n_cols
        ok = row_ok[:, None] & col_ok[None, :]
        offsets = rows[:, None] * n_cols + cols[None, :]
        s = tl.load(X + offsets, mask=ok, other=0.0).to(tl.float32)
        s += tl.load(BRANCH + offsets, mask=ok, other=0.0).to(tl.float32)
        s = s.to(S.dtype.element_ty)
        tl.store(S + offsets, s, mask=ok)
        s = s.to(tl.float32)
        mean = tl.sum(s, axis=1) / n_cols
        centred = tl.where(ok, s - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / n_cols + eps)
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=ok)
        tl.store(MEAN + rows, mean, mask=row_ok)
        tl.store(RSTD + rows, rstd, mask=row_ok)

    @triton.jit
    def _backward_kernel(
        S, DY, DS, DX, W, MEAN, RSTD, DW_PARTIAL, DB_PARTIAL, n_rows, n_cols,
        ROWS_PER_PROGRAM: tl.constexpr, HAS_DS: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        program = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        db = tl.zeros([BLOCK_N], dtype=tl.float32)
        first = program * ROWS_PER_PROGRAM
        end = tl.minimum(first + ROWS_PER_PROGRAM, n_rows)
        for offset in range(0, ROWS_PER_PROGRAM, ROWS):
            rows = first + offset + tl.arange(0, ROWS)
            row_ok = rows < end
            ok = row_ok[:, None] & col_ok[None, :]
            offsets = rows[:, None] * n_cols + cols[None, :]
            s = tl.load(S + offsets, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + offsets, mask=ok, other=0.0).to(tl.float32)
            mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
            rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
            x_hat = tl.where(ok, (s - mean[:, None]) * rstd[:, None], 0.0)
            w_dy = dy * w[None, :]
            c1 = tl.sum(x_hat * w_dy, axis=1) / n_cols
            c2 = tl.sum(w_dy, axis=1) / n_cols
            dx = (w_dy - (x_hat * c1[:, None] + c2[:, None])) * rstd[:, None]
            if HAS_DS:
                dx += tl.load(DS + offsets, mask=ok, other=0.0).to(tl.float32)
            tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=ok)
            dw += tl.sum(dy * x_hat, axis=0)
            db += tl.sum(dy, axis=0)
        tl.store(DW_PARTIAL + program * n_cols + cols, dw, mask=col_ok)
        tl.store(DB_PARTIAL + program * n_cols + cols, db, mask=col_ok)

    def _tiling(n_cols: int) -> tuple[int, int]:
        block_n = triton.next_power_of_2(n_cols)
        return block_n, max(1, min(16, 4096 // block_n))

    @torch.library.custom_op("alpha::add_layer_norm", mutates_args=())
    def _add_layer_norm(
        x: torch.Tensor,
        branch: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        out_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n_cols = x.shape[-1]
        x2 = x.reshape(-1, n_cols).contiguous()
        branch2 = branch.reshape(-1, n_cols).contiguous()
        n_rows = x2.shape[0]
        s = torch.empty_like(x2)
        y = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
        mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block_n, rows = _tiling(n_cols)
        grid = (triton.cdiv(n_rows, rows),)
        _forward_kernel[grid](
            x2, branch2, s, y, weight, bias, mean, rstd, n_rows, n_cols, eps,
            BLOCK_N=block_n, ROWS=rows, num_warps=4,
        )  # fmt: skip
        return s.view(x.shape), y.view(x.shape), mean, rstd

    @torch.library.custom_op("alpha::add_layer_norm_backward", mutates_args=())
    def _add_layer_norm_backward(
        s: torch.Tensor,
        dy: torch.Tensor,
        ds: torch.Tensor | None,
        weight: torch.Tensor,
        mean: torch.Tensor,
        rstd: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_cols = s.shape[-1]
        s2 = s.reshape(-1, n_cols).contiguous()
        dy2 = dy.reshape(-1, n_cols).contiguous()
        ds2 = ds.reshape(-1, n_cols).contiguous() if ds is not None else s2
        n_rows = s2.shape[0]
        block_n, rows = _tiling(n_cols)
        programs = min(triton.cdiv(n_rows, rows), MAX_BACKWARD_PROGRAMS)
        rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), rows) * rows
        programs = triton.cdiv(n_rows, rows_per_program)
        dx = torch.empty_like(s2)
        dw_partial = torch.empty((programs, n_cols), dtype=torch.float32, device=s.device)
        db_partial = torch.empty((programs, n_cols), dtype=torch.float32, device=s.device)
        _backward_kernel[(programs,)](
            s2, dy2, ds2, dx, weight, mean, rstd, dw_partial, db_partial, n_rows, n_cols,
            ROWS_PER_PROGRAM=rows_per_program, HAS_DS=ds is not None, BLOCK_N=block_n, ROWS=rows, num_warps=4,
        )  # fmt: skip
        return dx.view(s.shape), dw_partial.sum(0), db_partial.sum(0)

    @_add_layer_norm.register_fake
    def _(x, branch, weight, bias, eps, out_dtype):  # noqa: ANN001, ANN202
        rows = x.numel() // x.shape[-1]
        stats = x.new_empty(rows, dtype=torch.float32)
        return torch.empty_like(x), x.new_empty(x.shape, dtype=out_dtype), stats, torch.empty_like(stats)

    @_add_layer_norm_backward.register_fake
    def _(s, dy, ds, weight, mean, rstd):  # noqa: ANN001, ANN202
        return torch.empty_like(s), torch.empty_like(weight), torch.empty_like(weight)


class _AddLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        branch: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        out_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s, y, mean, rstd = torch.ops.alpha.add_layer_norm(x, branch, weight, bias, eps, out_dtype)
        ctx.save_for_backward(s, weight, mean, rstd)
        ctx.dtypes = (x.dtype, branch.dtype)
        ctx.set_materialize_grads(False)
        return s, y

    @staticmethod
    def backward(ctx: Any, ds: torch.Tensor | None, dy: torch.Tensor | None) -> tuple[Any, ...]:
        s, weight, mean, rstd = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(s)
        dx, dw, db = torch.ops.alpha.add_layer_norm_backward(s, dy, ds, weight, mean, rstd)
        x_dtype, branch_dtype = ctx.dtypes
        return dx.to(x_dtype), dx.to(branch_dtype), dw, db, None, None


class AddLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that first adds the pending residual branch: returns (x + branch, LN(x + branch)).

    With ``branch=None`` it is a plain LayerNorm of ``x`` and returns (x, LN(x)). Same parameters
    and state-dict keys as ``nn.LayerNorm``.
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, branch: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if branch is None:
            return x, F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if not fused_available(x):
            s = x + branch
            return s, F.layer_norm(s, self.normalized_shape, self.weight, self.bias, self.eps)
        residual_dtype = torch.promote_types(x.dtype, branch.dtype)
        out_dtype = (
            torch.get_autocast_dtype(x.device.type)
            if torch.is_autocast_enabled(x.device.type)
            else residual_dtype
        )
        return _AddLayerNorm.apply(x.to(residual_dtype), branch, self.weight, self.bias, self.eps, out_dtype)
