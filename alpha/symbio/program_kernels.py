"""Triton kernels of ``alpha::program_activation`` (see ``alpha.symbio.program``).

Each direction has two kernels, both launched every time (one captured step serves every
program); the buffer's flag makes exactly one of them do the work, so neither is compiled with
the other's registers. The form kernel evaluates the quadratic form's rows, one tile per program,
with every load issued first (a tile is short, and the kernel is bound by latency more than by
bandwidth) and silu and GELU computed only when the form uses them. The program kernel computes
the five basis functions and runs the instructions: they are the same for every element, so the
branches on opcode and stack position are uniform and the stack lives in registers
(``STACK_SLOTS`` of them); its backward runs them on (value, derivative) pairs. It loops over
tiles, so when the flag makes it return at once it costs a few hundred empty programs. Both
compute in fp32 and store in x's dtype; the backward kernels write dy · f'(x).

The kernels are bound by the GPU's special-function unit (an exponential and a division for each
of silu and GELU) more than by memory. For 16-bit activations GELU's tanh and silu's sigmoid are
computed with ``tanh.approx`` (relative error within 2⁻¹¹, one instruction instead of two and a
range check). Over x in [-8, 8], about 4% of GELU's bf16 outputs then differ from the fp32
reference by more than a unit in the last place, by at most 9.8e-4 (value) and 7.8e-3 (slope, at
1.13: one unit there). fp32 activations keep full accuracy (``rcp.approx``, within an ulp).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from alpha.model.fast_math import fast_mode, gelu_slope, gelu_tanh, sigmoid
from alpha.symbio.program import (
    FLAG_AT,
    GELU_AT,
    HEADER,
    N_SLOPE_ROWS_AT,
    N_VALUE_ROWS_AT,
    ROW,
    SILU_AT,
    SLOPE_ROWS_AT,
    VALUE_ROWS_AT,
)

FORWARD_BLOCK = 1024  # the program kernels
BACKWARD_BLOCK = 512
FORM_BLOCK = 512  # the quadratic-form kernels: 8 elements a thread
FORM_WARPS = 2
PROGRAMS_PER_SM = 8  # the program kernels' grid: at most this many programs per SM, looping over tiles


@triton.jit
def _pick(b0, b1, b2, b3, b4, op):
    v = b0
    if op == 1:
        v = b1
    elif op == 2:
        v = b2
    elif op == 3:
        v = b3
    elif op == 4:
        v = b4
    return v


@triton.jit
def _get(s0, s1, s2, s3, s4, s5, s6, s7, i):
    v = s0
    if i == 1:
        v = s1
    elif i == 2:
        v = s2
    elif i == 3:
        v = s3
    elif i == 4:
        v = s4
    elif i == 5:
        v = s5
    elif i == 6:
        v = s6
    elif i == 7:
        v = s7
    return v


@triton.jit
def _put(s0, s1, s2, s3, s4, s5, s6, s7, i, v):
    if i == 0:
        s0 = v
    elif i == 1:
        s1 = v
    elif i == 2:
        s2 = v
    elif i == 3:
        s3 = v
    elif i == 4:
        s4 = v
    elif i == 5:
        s5 = v
    elif i == 6:
        s6 = v
    elif i == 7:
        s7 = v
    return s0, s1, s2, s3, s4, s5, s6, s7


@triton.jit
def _bases(x, FAST: tl.constexpr):
    """silu, relu, tanh-GELU, identity, square at x, and their derivatives."""
    sig = sigmoid(x, FAST)
    t = gelu_tanh(x, FAST)
    b0 = x * sig
    b1 = tl.maximum(x, 0.0)
    b2 = 0.5 * x * (1.0 + t)
    b4 = x * x
    g0 = sig * (1.0 + x * (1.0 - sig))
    g1 = tl.where(x > 0.0, 1.0, 0.0)
    g2 = gelu_slope(x, t)
    g3 = x * 0.0 + 1.0
    g4 = 2.0 * x
    return b0, b1, b2, x, b4, g0, g1, g2, g3, g4


@triton.jit
def _run_program(
    prog_ptr, x, b0, b1, b2, b3, b4, g0, g1, g2, g3, g4, HEAD: tl.constexpr, SLOPE: tl.constexpr
):
    """The program's value (SLOPE false) or derivative: its instructions on a stack of STACK_SLOTS
    registers, holding (value, derivative) pairs for the derivative. Without SLOPE the derivative
    stack (and the gₖ) is never read, so the compiler drops it."""
    v0 = x * 0.0
    v1 = v0
    v2 = v0
    v3 = v0
    v4 = v0
    v5 = v0
    v6 = v0
    v7 = v0
    d0 = v0
    d1 = v0
    d2 = v0
    d3 = v0
    d4 = v0
    d5 = v0
    d6 = v0
    d7 = v0
    sp = tl.program_id(0) * 0
    n = tl.load(prog_ptr).to(tl.int32)
    for pc in range(n):
        op = tl.load(prog_ptr + HEAD + 2 * pc).to(tl.int32)
        c = tl.load(prog_ptr + HEAD + 1 + 2 * pc)
        if op < 5:
            v = _pick(b0, b1, b2, b3, b4, op)
            if SLOPE:
                d = _pick(g0, g1, g2, g3, g4, op)
            v0, v1, v2, v3, v4, v5, v6, v7 = _put(v0, v1, v2, v3, v4, v5, v6, v7, sp, v)
            if SLOPE:
                d0, d1, d2, d3, d4, d5, d6, d7 = _put(d0, d1, d2, d3, d4, d5, d6, d7, sp, d)
            sp += 1
        elif op == 5:
            v = _get(v0, v1, v2, v3, v4, v5, v6, v7, sp - 1) * c
            if SLOPE:
                d = _get(d0, d1, d2, d3, d4, d5, d6, d7, sp - 1) * c
            v0, v1, v2, v3, v4, v5, v6, v7 = _put(v0, v1, v2, v3, v4, v5, v6, v7, sp - 1, v)
            if SLOPE:
                d0, d1, d2, d3, d4, d5, d6, d7 = _put(d0, d1, d2, d3, d4, d5, d6, d7, sp - 1, d)
        else:
            va = _get(v0, v1, v2, v3, v4, v5, v6, v7, sp - 2)
            vb = _get(v0, v1, v2, v3, v4, v5, v6, v7, sp - 1)
            if SLOPE:
                da = _get(d0, d1, d2, d3, d4, d5, d6, d7, sp - 2)
                db = _get(d0, d1, d2, d3, d4, d5, d6, d7, sp - 1)
            v = va + vb
            if SLOPE:
                d = da + db
            if op == 7:
                v = va * vb
                if SLOPE:
                    d = va * db + da * vb
            v0, v1, v2, v3, v4, v5, v6, v7 = _put(v0, v1, v2, v3, v4, v5, v6, v7, sp - 2, v)
            if SLOPE:
                d0, d1, d2, d3, d4, d5, d6, d7 = _put(d0, d1, d2, d3, d4, d5, d6, d7, sp - 2, d)
            sp -= 1
    if SLOPE:
        return d0
    else:
        return v0


@triton.jit
def _rows(acc, prog_ptr, n_rows, x, b0, b2, outer0, outer2, SLOPE: tl.constexpr, ROW: tl.constexpr):
    """acc + Σ over the rows of outerₖ·(c + Σⱼ cⱼ·bⱼ), a row being (k, c, c₀..c₄). silu and GELU
    (b0, b2) and their outer factors come in; relu, x and x² and theirs (the bases, or with SLOPE
    their derivatives 1[x > 0], 1 and 2x) are recomputed from x where they are used, a few
    instructions instead of registers held across the loop. The outer basis is chosen by loops of
    trip count 0 or 1, one branch per row, not by a select per element."""
    for r in range(n_rows):
        row = prog_ptr + r * ROW
        k = tl.load(row).to(tl.int32)
        affine = tl.load(row + 1) + tl.load(row + 2) * b0 + tl.load(row + 3) * tl.maximum(x, 0.0)
        affine += tl.load(row + 4) * b2 + x * (tl.load(row + 5) + tl.load(row + 6) * x)
        for _ in range((k == 0).to(tl.int32)):
            acc += outer0 * affine
        for _ in range((k == 1).to(tl.int32)):
            if SLOPE:
                acc += tl.where(x > 0.0, affine, 0.0)
            else:
                acc += tl.maximum(x, 0.0) * affine
        for _ in range((k == 2).to(tl.int32)):
            acc += outer2 * affine
        for _ in range((k == 3).to(tl.int32)):
            if SLOPE:
                acc += affine
            else:
                acc += x * affine
        for _ in range((k == 4).to(tl.int32)):
            if SLOPE:
                acc += 2.0 * x * affine
            else:
                acc += x * x * affine
    return acc


@triton.jit
def _form_kernel(
    x_ptr, dy_ptr, out_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr, SLOPE: tl.constexpr,
    FLAG: tl.constexpr, SILU: tl.constexpr, GELU: tl.constexpr, N_ROWS: tl.constexpr,
    ROWS: tl.constexpr, ROW: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    """f(x) (SLOPE false) or dy·f′(x) by the quadratic form's rows (value or slope rows: only those
    with a nonzero coefficient are in the buffer). silu and GELU, an exponential and a division
    each, are computed only when the form uses them. Their switches and the row count are run-time
    trip counts of loops, not ``if`` tests: the compiler turns a test into selects and computes
    both sides, but keeps a loop it cannot bound as a branch. Does nothing unless the buffer's flag
    says the program has a form."""
    # every load first, so that their latencies overlap: a tile is short and the kernel is bound
    # by latency, not bandwidth (x and dy are read for nothing when the program kernel does the work)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SLOPE:
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    flag = tl.load(prog_ptr + FLAG)
    use_silu = tl.load(prog_ptr + SILU).to(tl.int32)
    use_gelu = tl.load(prog_ptr + GELU).to(tl.int32)
    n_rows = tl.load(prog_ptr + N_ROWS).to(tl.int32)  # the value or the slope rows (by the launch)
    if flag != 0.0:  # else the program kernel writes the output
        zero = tl.zeros_like(x)
        b0 = zero  # silu
        g0 = zero
        for _ in range(use_silu):
            sig = sigmoid(x, FAST)
            b0 = x * sig
            g0 = sig * (1.0 + x * (1.0 - sig))
        b2 = zero  # tanh-GELU
        g2 = zero
        for _ in range(use_gelu):
            t = gelu_tanh(x, FAST)
            b2 = 0.5 * x * (1.0 + t)
            if SLOPE:
                g2 = gelu_slope(x, t)
        if SLOPE:
            s = _rows(zero, prog_ptr + ROWS, n_rows, x, b0, b2, g0, g2, True, ROW)
            tl.store(out_ptr + offs, (dy * s).to(out_ptr.dtype.element_ty), mask=mask)
        else:
            y = _rows(zero, prog_ptr + ROWS, n_rows, x, b0, b2, b0, b2, False, ROW)
            tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _program_forward_kernel(
    x_ptr, y_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr, FLAG: tl.constexpr, HEAD: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    if tl.load(prog_ptr + FLAG) == 0.0:  # else the form kernel writes y
        for start in range(tl.program_id(0) * BLOCK, n_elements, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_elements
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            b0, b1, b2, b3, b4, g0, g1, g2, g3, g4 = _bases(x, FAST)
            y = _run_program(prog_ptr, x, b0, b1, b2, b3, b4, g0, g1, g2, g3, g4, HEAD, SLOPE=False)
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _program_backward_kernel(
    dy_ptr, x_ptr, dx_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr, FLAG: tl.constexpr, HEAD: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    if tl.load(prog_ptr + FLAG) == 0.0:
        for start in range(tl.program_id(0) * BLOCK, n_elements, tl.num_programs(0) * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_elements
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            b0, b1, b2, b3, b4, g0, g1, g2, g3, g4 = _bases(x, FAST)
            slope = _run_program(prog_ptr, x, b0, b1, b2, b3, b4, g0, g1, g2, g3, g4, HEAD, SLOPE=True)
            tl.store(dx_ptr + offs, (dy * slope).to(dx_ptr.dtype.element_ty), mask=mask)


_FORM = {"FLAG": FLAG_AT, "SILU": SILU_AT, "GELU": GELU_AT, "ROW": ROW}
_VALUE_ROWS = {"N_ROWS": N_VALUE_ROWS_AT, "ROWS": VALUE_ROWS_AT}
_SLOPE_ROWS = {"N_ROWS": N_SLOPE_ROWS_AT, "ROWS": SLOPE_ROWS_AT}
_PROGRAM = {"FLAG": FLAG_AT, "HEAD": HEADER}


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _programs(n: int, block: int, device: torch.device) -> tuple[int]:
    """The grid of the program kernels, which loop over tiles: enough programs to fill the GPU, at
    most one a tile. Most programs run as their form, so these kernels usually find the flag set
    and return; a few hundred empty programs cost 1.7 µs where one per tile cost 22 µs."""
    return (min(triton.cdiv(n, block), PROGRAMS_PER_SM * _sm_count(device)),)


def forward(x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    """Both kernels are launched (a captured step serves every program); the buffer's flag makes
    exactly one of them write y."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        fast = fast_mode(x)
        _form_kernel[(triton.cdiv(n, FORM_BLOCK),)](
            x, x, y, program, n, BLOCK=FORM_BLOCK, SLOPE=False, FAST=fast, num_warps=FORM_WARPS,
            **_FORM, **_VALUE_ROWS,
        )  # fmt: skip
        _program_forward_kernel[_programs(n, FORWARD_BLOCK, x.device)](
            x, y, program, n, BLOCK=FORWARD_BLOCK, FAST=fast, **_PROGRAM
        )
    return y


def backward(dy: torch.Tensor, x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    x, dy = x.contiguous(), dy.contiguous()
    dx = torch.empty_like(x)
    n = x.numel()
    if n:
        fast = fast_mode(x)
        _form_kernel[(triton.cdiv(n, FORM_BLOCK),)](
            x, dy, dx, program, n, BLOCK=FORM_BLOCK, SLOPE=True, FAST=fast, num_warps=FORM_WARPS,
            **_FORM, **_SLOPE_ROWS,
        )  # fmt: skip
        _program_backward_kernel[_programs(n, BACKWARD_BLOCK, x.device)](
            dy, x, dx, program, n, BLOCK=BACKWARD_BLOCK, FAST=fast, **_PROGRAM
        )
    return dx
