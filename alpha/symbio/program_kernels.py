"""Triton kernels of ``alpha::program_activation`` (see ``alpha.symbio.program``).

Each kernel computes the five basis functions of its block of x once, then runs the program:
the instructions are the same for every element, so the branches on opcode and stack position
are uniform and the stack lives in registers (``STACK_SLOTS`` of them). The backward kernel runs
the program on (value, derivative) pairs and writes dy · f'(x). Both compute in fp32 and store
in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FORWARD_BLOCK = 1024
BACKWARD_BLOCK = 512


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
def _forward_kernel(x_ptr, y_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b0, b1, b2, b3, b4, g0, g1, g2, g3, g4 = _bases(x)
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
        op = tl.load(prog_ptr + 2 + 2 * pc).to(tl.int32)
        c = tl.load(prog_ptr + 3 + 2 * pc)
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
    tl.store(y_ptr + offs, s0.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(dy_ptr, x_ptr, dx_ptr, prog_ptr, n_elements, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b0, b1, b2, b3, b4, g0, g1, g2, g3, g4 = _bases(x)
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
        op = tl.load(prog_ptr + 2 + 2 * pc).to(tl.int32)
        c = tl.load(prog_ptr + 3 + 2 * pc)
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
    tl.store(dx_ptr + offs, (dy * d0).to(dx_ptr.dtype.element_ty), mask=mask)


def forward(x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _forward_kernel[(triton.cdiv(n, FORWARD_BLOCK),)](x, y, program, n, BLOCK=FORWARD_BLOCK)
    return y


def backward(dy: torch.Tensor, x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    x, dy = x.contiguous(), dy.contiguous()
    dx = torch.empty_like(x)
    n = x.numel()
    if n:
        _backward_kernel[(triton.cdiv(n, BACKWARD_BLOCK),)](dy, x, dx, program, n, BLOCK=BACKWARD_BLOCK)
    return dx
