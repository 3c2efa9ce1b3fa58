"""Triton kernels of ``alpha::program_activation`` (see ``alpha.symbio.program``).

Each direction has two kernels, both launched every time (one captured step serves every
program); the buffer's flag makes exactly one of them do the work, so neither is compiled with
the other's registers. The quadratic-form kernel evaluates the form's 20 coefficients with a fixed
sequence of multiply-adds, and computes silu and tanh-GELU (an exponential and a division each)
only when a coefficient uses them. The program kernel computes the five basis functions and runs
the instructions: they are the same for every element, so the branches on opcode and stack
position are uniform and the stack lives in registers (``STACK_SLOTS`` of them); its backward runs
them on (value, derivative) pairs. Both compute in fp32 and store in x's dtype; the backward
kernels write dy · f'(x).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from alpha.symbio.program import FLAG_AT, HEADER, LINEAR_AT, PAIRS_AT

FORWARD_BLOCK = 1024  # the program kernels
BACKWARD_BLOCK = 512
FORM_BLOCK = 1024  # the quadratic-form kernels


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
def _bases(x):
    """silu, relu, tanh-GELU, identity, square at x, and their derivatives."""
    sig = tl.sigmoid(x)
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    t = 2.0 * tl.sigmoid(2.0 * u) - 1.0  # tanh(u)
    b0 = x * sig
    b1 = tl.maximum(x, 0.0)
    b2 = 0.5 * x * (1.0 + t)
    b4 = x * x
    g0 = sig * (1.0 + x * (1.0 - sig))
    g1 = tl.where(x > 0.0, 1.0, 0.0)
    g2 = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    g3 = x * 0.0 + 1.0
    g4 = 2.0 * x
    return b0, b1, b2, x, b4, g0, g1, g2, g3, g4


@triton.jit
def _quadratic_value(p, b0, b1, b2, b3, b4, LIN: tl.constexpr, PAIR: tl.constexpr):
    """Σ aᵢ·bᵢ + Σ_{i≤j} qᵢⱼ·bᵢ·bⱼ, as Σᵢ bᵢ·(aᵢ + Σ_{j≥i} qᵢⱼ·bⱼ); q in PAIRS order."""
    r0 = tl.load(p + LIN) + tl.load(p + PAIR) * b0 + tl.load(p + PAIR + 1) * b1 + tl.load(p + PAIR + 2) * b2
    r0 += tl.load(p + PAIR + 3) * b3 + tl.load(p + PAIR + 4) * b4
    r1 = tl.load(p + LIN + 1) + tl.load(p + PAIR + 5) * b1 + tl.load(p + PAIR + 6) * b2
    r1 += tl.load(p + PAIR + 7) * b3 + tl.load(p + PAIR + 8) * b4
    r2 = tl.load(p + LIN + 2) + tl.load(p + PAIR + 9) * b2 + tl.load(p + PAIR + 10) * b3
    r2 += tl.load(p + PAIR + 11) * b4
    r3 = tl.load(p + LIN + 3) + tl.load(p + PAIR + 12) * b3 + tl.load(p + PAIR + 13) * b4
    r4 = tl.load(p + LIN + 4) + tl.load(p + PAIR + 14) * b4
    return b0 * r0 + b1 * r1 + b2 * r2 + b3 * r3 + b4 * r4


@triton.jit
def _quadratic_slope(p, b0, b1, b2, b3, b4, g0, g1, g2, g3, g4, LIN: tl.constexpr, PAIR: tl.constexpr):
    """Σₖ gₖ·∂f/∂bₖ, with ∂f/∂bₖ = aₖ + 2qₖₖ·bₖ + Σ_{j≠k} q_{kj}·bⱼ."""
    q00 = tl.load(p + PAIR)
    q01 = tl.load(p + PAIR + 1)
    q02 = tl.load(p + PAIR + 2)
    q03 = tl.load(p + PAIR + 3)
    q04 = tl.load(p + PAIR + 4)
    q11 = tl.load(p + PAIR + 5)
    q12 = tl.load(p + PAIR + 6)
    q13 = tl.load(p + PAIR + 7)
    q14 = tl.load(p + PAIR + 8)
    q22 = tl.load(p + PAIR + 9)
    q23 = tl.load(p + PAIR + 10)
    q24 = tl.load(p + PAIR + 11)
    q33 = tl.load(p + PAIR + 12)
    q34 = tl.load(p + PAIR + 13)
    q44 = tl.load(p + PAIR + 14)
    d0 = tl.load(p + LIN) + 2.0 * q00 * b0 + q01 * b1 + q02 * b2 + q03 * b3 + q04 * b4
    d1 = tl.load(p + LIN + 1) + q01 * b0 + 2.0 * q11 * b1 + q12 * b2 + q13 * b3 + q14 * b4
    d2 = tl.load(p + LIN + 2) + q02 * b0 + q12 * b1 + 2.0 * q22 * b2 + q23 * b3 + q24 * b4
    d3 = tl.load(p + LIN + 3) + q03 * b0 + q13 * b1 + q23 * b2 + 2.0 * q33 * b3 + q34 * b4
    d4 = tl.load(p + LIN + 4) + q04 * b0 + q14 * b1 + q24 * b2 + q34 * b3 + 2.0 * q44 * b4
    return g0 * d0 + g1 * d1 + g2 * d2 + g3 * d3 + g4 * d4


@triton.jit
def _run_program(prog_ptr, x, b0, b1, b2, b3, b4, HEAD: tl.constexpr):
    """The program's value: its instructions on a stack of STACK_SLOTS registers."""
    s0 = x * 0.0
    s1 = s0
    s2 = s0
    s3 = s0
    s4 = s0
    s5 = s0
    s6 = s0
    s7 = s0
    sp = tl.program_id(0) * 0
    n = tl.load(prog_ptr).to(tl.int32)
    for pc in range(n):
        op = tl.load(prog_ptr + HEAD + 2 * pc).to(tl.int32)
        c = tl.load(prog_ptr + HEAD + 1 + 2 * pc)
        if op < 5:
            v = _pick(b0, b1, b2, b3, b4, op)
            s0, s1, s2, s3, s4, s5, s6, s7 = _put(s0, s1, s2, s3, s4, s5, s6, s7, sp, v)
            sp += 1
        elif op == 5:
            v = _get(s0, s1, s2, s3, s4, s5, s6, s7, sp - 1) * c
            s0, s1, s2, s3, s4, s5, s6, s7 = _put(s0, s1, s2, s3, s4, s5, s6, s7, sp - 1, v)
        else:
            a = _get(s0, s1, s2, s3, s4, s5, s6, s7, sp - 2)
            b = _get(s0, s1, s2, s3, s4, s5, s6, s7, sp - 1)
            v = a + b
            if op == 7:
                v = a * b
            s0, s1, s2, s3, s4, s5, s6, s7 = _put(s0, s1, s2, s3, s4, s5, s6, s7, sp - 2, v)
            sp -= 1
    return s0


@triton.jit
def _run_program_slope(prog_ptr, x, b0, b1, b2, b3, b4, g0, g1, g2, g3, g4, HEAD: tl.constexpr):
    """The program's derivative: its instructions on (value, derivative) pairs."""
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
            d = _pick(g0, g1, g2, g3, g4, op)
            v0, v1, v2, v3, v4, v5, v6, v7 = _put(v0, v1, v2, v3, v4, v5, v6, v7, sp, v)
            d0, d1, d2, d3, d4, d5, d6, d7 = _put(d0, d1, d2, d3, d4, d5, d6, d7, sp, d)
            sp += 1
        elif op == 5:
            v = _get(v0, v1, v2, v3, v4, v5, v6, v7, sp - 1) * c
            d = _get(d0, d1, d2, d3, d4, d5, d6, d7, sp - 1) * c
            v0, v1, v2, v3, v4, v5, v6, v7 = _put(v0, v1, v2, v3, v4, v5, v6, v7, sp - 1, v)
            d0, d1, d2, d3, d4, d5, d6, d7 = _put(d0, d1, d2, d3, d4, d5, d6, d7, sp - 1, d)
        else:
            va = _get(v0, v1, v2, v3, v4, v5, v6, v7, sp - 2)
            vb = _get(v0, v1, v2, v3, v4, v5, v6, v7, sp - 1)
            da = _get(d0, d1, d2, d3, d4, d5, d6, d7, sp - 2)
            db = _get(d0, d1, d2, d3, d4, d5, d6, d7, sp - 1)
            v = va + vb
            d = da + db
            if op == 7:
                v = va * vb
                d = va * db + da * vb
            v0, v1, v2, v3, v4, v5, v6, v7 = _put(v0, v1, v2, v3, v4, v5, v6, v7, sp - 2, v)
            d0, d1, d2, d3, d4, d5, d6, d7 = _put(d0, d1, d2, d3, d4, d5, d6, d7, sp - 2, d)
            sp -= 1
    return d0


@triton.jit
def _smooth_bases(x, use_silu, use_gelu):
    """silu and tanh-GELU at x with their derivatives, each only when used (uniform branches:
    they are the costly bases, an exponential and a division each), zero otherwise."""
    zero = x * 0.0
    b0 = zero
    g0 = zero
    if use_silu:
        sig = tl.sigmoid(x)
        b0 = x * sig
        g0 = sig * (1.0 + x * (1.0 - sig))
    b2 = zero
    g2 = zero
    if use_gelu:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        t = 2.0 * tl.sigmoid(2.0 * u) - 1.0  # tanh(u)
        b2 = 0.5 * x * (1.0 + t)
        g2 = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    return b0, b2, g0, g2


@triton.jit
def _uses(p, k: tl.constexpr, LIN: tl.constexpr, PAIR: tl.constexpr):
    """Whether basis k (0 silu or 2 gelu) has a nonzero coefficient in the form."""
    used = tl.load(p + LIN + k) != 0.0
    if k == 0:
        for j in tl.static_range(5):  # q₀ⱼ at PAIR + j
            used = used | (tl.load(p + PAIR + j) != 0.0)
    else:  # q₀₂, q₁₂, q₂₂, q₂₃, q₂₄
        used = used | (tl.load(p + PAIR + 2) != 0.0) | (tl.load(p + PAIR + 6) != 0.0)
        used = used | (tl.load(p + PAIR + 9) != 0.0) | (tl.load(p + PAIR + 10) != 0.0)
        used = used | (tl.load(p + PAIR + 11) != 0.0)
    return used


@triton.jit
def _quadratic_forward_kernel(
    x_ptr, y_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr,
    FLAG: tl.constexpr, LIN: tl.constexpr, PAIR: tl.constexpr,
):  # fmt: skip
    if tl.load(prog_ptr + FLAG) != 0.0:  # else the program kernel writes y
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        use_silu = _uses(prog_ptr, 0, LIN, PAIR)
        use_gelu = _uses(prog_ptr, 2, LIN, PAIR)
        b0, b2, g0, g2 = _smooth_bases(x, use_silu, use_gelu)
        y = _quadratic_value(prog_ptr, b0, tl.maximum(x, 0.0), b2, x, x * x, LIN, PAIR)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _program_forward_kernel(
    x_ptr, y_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr, FLAG: tl.constexpr, HEAD: tl.constexpr
):
    if tl.load(prog_ptr + FLAG) == 0.0:  # else the quadratic kernel writes y
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b0, b1, b2, b3, b4, g0, g1, g2, g3, g4 = _bases(x)
        y = _run_program(prog_ptr, x, b0, b1, b2, b3, b4, HEAD)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quadratic_backward_kernel(
    dy_ptr, x_ptr, dx_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr,
    FLAG: tl.constexpr, LIN: tl.constexpr, PAIR: tl.constexpr,
):  # fmt: skip
    if tl.load(prog_ptr + FLAG) != 0.0:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        use_silu = _uses(prog_ptr, 0, LIN, PAIR)
        use_gelu = _uses(prog_ptr, 2, LIN, PAIR)
        b0, b2, g0, g2 = _smooth_bases(x, use_silu, use_gelu)
        g1 = tl.where(x > 0.0, 1.0, 0.0)
        slope = _quadratic_slope(
            prog_ptr, b0, tl.maximum(x, 0.0), b2, x, x * x, g0, g1, g2, x * 0.0 + 1.0, 2.0 * x, LIN, PAIR
        )
        tl.store(dx_ptr + offs, (dy * slope).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _program_backward_kernel(
    dy_ptr, x_ptr, dx_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr, FLAG: tl.constexpr, HEAD: tl.constexpr
):
    if tl.load(prog_ptr + FLAG) == 0.0:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        b0, b1, b2, b3, b4, g0, g1, g2, g3, g4 = _bases(x)
        slope = _run_program_slope(prog_ptr, x, b0, b1, b2, b3, b4, g0, g1, g2, g3, g4, HEAD)
        tl.store(dx_ptr + offs, (dy * slope).to(dx_ptr.dtype.element_ty), mask=mask)


_FORM = {"FLAG": FLAG_AT, "LIN": LINEAR_AT, "PAIR": PAIRS_AT}
_PROGRAM = {"FLAG": FLAG_AT, "HEAD": HEADER}


def forward(x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    """Both kernels are launched (a captured step serves every program); the buffer's flag makes
    exactly one of them write y."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _quadratic_forward_kernel[(triton.cdiv(n, FORM_BLOCK),)](x, y, program, n, BLOCK=FORM_BLOCK, **_FORM)
        _program_forward_kernel[(triton.cdiv(n, FORWARD_BLOCK),)](
            x, y, program, n, BLOCK=FORWARD_BLOCK, **_PROGRAM
        )
    return y


def backward(dy: torch.Tensor, x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    x, dy = x.contiguous(), dy.contiguous()
    dx = torch.empty_like(x)
    n = x.numel()
    if n:
        _quadratic_backward_kernel[(triton.cdiv(n, FORM_BLOCK),)](
            dy, x, dx, program, n, BLOCK=FORM_BLOCK, **_FORM
        )
        _program_backward_kernel[(triton.cdiv(n, BACKWARD_BLOCK),)](
            dy, x, dx, program, n, BLOCK=BACKWARD_BLOCK, **_PROGRAM
        )
    return dx
