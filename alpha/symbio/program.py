"""Composed activations as data: one op evaluates every graph, so a search swaps a buffer, not code.

During a search every candidate brings a new activation graph. Compiled as code, each one needs its
own kernel behind a graph break and, on CUDA, its own capture of the whole step graph. Compiled as
data, a graph is a short postfix program over the five basis functions, written into a fixed
buffer that one op, ``alpha::program_activation``, reads: the model and the captured step stay the
same from one candidate to the next (the seed's search: 1.34M against 1.07M tokens/s on an H200,
docs/SYMBIO.md).

A graph's program sits in a flat float32 buffer (``program_tensor``): the instruction count, a
flag, the graph's quadratic form, then (opcode, constant) pairs. Opcodes 0–4 push a basis
function of x (silu, relu, tanh-GELU, identity, square, as ``alpha.symbio.graph`` defines them), 5
scales the top of the stack by the constant, 6 and 7 replace the top two entries by their sum or
product. The backward pass evaluates the same program on dual numbers (value, derivative in x), so
dx = dy · f'(x) comes from the same instructions.

Most graphs a search makes are sums of scaled basis functions and products of two such sums: a
polynomial of degree at most two in the basis functions, f = Σ aᵢ·bᵢ + Σ_{i≤j} qᵢⱼ·bᵢ·bⱼ. For
those the flag is set and the op evaluates that form instead of running the program (the
interpreter's branches on opcode and stack slot are what make it slow on a GPU). The buffer holds
the form as rows, bₖ·(c + Σⱼ cⱼ·bⱼ) for the value and gₖ·(c + Σⱼ cⱼ·bⱼ) for the slope, keeping only
rows with a nonzero coefficient, and says whether silu and GELU are used at all: the seed graph
(relu + 0.04·sq)·gelu is two value rows and three slope rows, and never computes silu. Deeper
products run the program.

On CUDA the op is two Triton kernels (``alpha.symbio.program_kernels``); elsewhere it is the
PyTorch reference below, which the kernels are tested against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from alpha.symbio.activation import GraphActivation
from alpha.symbio.graph import BASIS_OPS, Add, Basis, Graph, Mul, Scale, dumps

if TYPE_CHECKING:
    from alpha.train.trainer import Trainer

OP_SCALE, OP_ADD, OP_MUL = 5, 6, 7
N_BASES = len(BASIS_OPS)
PAIRS = [(i, j) for i in range(N_BASES) for j in range(i, N_BASES)]  # qᵢⱼ, i ≤ j, row by row
# the buffer: [count, form flag, silu used, gelu used, value rows, slope rows,
#              N_BASES value rows, N_BASES slope rows, op₀, c₀, op₁, c₁, ..]
COUNT_AT, FLAG_AT, SILU_AT, GELU_AT, N_VALUE_ROWS_AT, N_SLOPE_ROWS_AT = range(6)
ROW = 2 + N_BASES  # a row: basis index k, constant c, then one coefficient per basis: bₖ·(c + Σⱼ cⱼ·bⱼ)
VALUE_ROWS_AT = 6
SLOPE_ROWS_AT = VALUE_ROWS_AT + N_BASES * ROW
HEADER = SLOPE_ROWS_AT + N_BASES * ROW
STACK_SLOTS = 8  # the kernels keep the stack in registers: programs deeper than this are refused
GELU_C = 0.7978845608028654  # sqrt(2 / pi)
GELU_A = 0.044715


class ProgramTooLarge(ValueError):
    """A graph whose program does not fit the buffer or the kernels' stack."""


def encode(graph: Graph) -> list[tuple[int, float]]:
    """The postfix program of ``graph``: (opcode, constant) instructions."""
    if isinstance(graph, Basis):
        return [(BASIS_OPS.index(graph.op), 0.0)]
    if isinstance(graph, Scale):
        return [*encode(graph.child), (OP_SCALE, float(graph.factor))]
    op = OP_ADD if isinstance(graph, Add) else OP_MUL
    assert isinstance(graph, (Add, Mul))
    return [*encode(graph.left), *encode(graph.right), (op, 0.0)]


def stack_depth(program: list[tuple[int, float]]) -> int:
    depth = deepest = 0
    for op, _ in program:
        depth += 1 if op < OP_SCALE else (0 if op == OP_SCALE else -1)
        deepest = max(deepest, depth)
    return deepest


def buffer_size(capacity: int) -> int:
    """Floats in the buffer of a program of at most ``capacity`` instructions."""
    return HEADER + 2 * capacity


def capacity_of(buffer: torch.Tensor) -> int:
    return (buffer.numel() - HEADER) // 2


def quadratic_form(graph: Graph) -> tuple[list[float], list[float]] | None:
    """``graph`` as Σ aᵢ·bᵢ + Σ_{i≤j} qᵢⱼ·bᵢ·bⱼ over the basis functions: (a, q in ``PAIRS``
    order), or None when a product of products makes it a polynomial of higher degree."""
    terms = _expand(graph)
    if terms is None:
        return None
    linear, pairs = [0.0] * N_BASES, [0.0] * len(PAIRS)
    for monomial, coefficient in terms.items():
        if len(monomial) == 1:
            linear[monomial[0]] += coefficient
        else:
            pairs[PAIRS.index(monomial)] += coefficient
    return linear, pairs


def _expand(graph: Graph) -> dict[tuple[int, ...], float] | None:
    """The polynomial in the basis functions: {sorted basis indices: coefficient}, degree ≤ 2."""
    if isinstance(graph, Basis):
        return {(BASIS_OPS.index(graph.op),): 1.0}
    if isinstance(graph, Scale):
        child = _expand(graph.child)
        return None if child is None else {m: graph.factor * c for m, c in child.items()}
    assert isinstance(graph, (Add, Mul))
    left, right = _expand(graph.left), _expand(graph.right)
    if left is None or right is None:
        return None
    out: dict[tuple[int, ...], float] = {}
    if isinstance(graph, Add):
        for m, c in [*left.items(), *right.items()]:
            out[m] = out.get(m, 0.0) + c
        return out
    for ml, cl in left.items():
        for mr, cr in right.items():
            monomial = tuple(sorted(ml + mr))
            if len(monomial) > 2:
                return None
            out[monomial] = out.get(monomial, 0.0) + cl * cr
    return out


def program_tensor(graph: Graph, capacity: int) -> torch.Tensor:
    """``graph``'s buffer (``buffer_size(capacity)`` float32 values, on the CPU)."""
    program = encode(graph)
    if len(program) > capacity or stack_depth(program) > STACK_SLOTS:
        raise ProgramTooLarge(
            f"activation program of {len(program)} instructions and stack depth {stack_depth(program)} "
            f"exceeds {capacity} instructions or {STACK_SLOTS} stack slots"
        )
    out = torch.zeros(buffer_size(capacity), dtype=torch.float32)
    out[COUNT_AT] = len(program)
    form = quadratic_form(graph)
    if form is not None:
        out[FLAG_AT] = 1.0
        _write_form(out, *form)
    if program:
        out[HEADER : HEADER + 2 * len(program)] = torch.tensor(program, dtype=torch.float32).flatten()
    return out


def _write_form(out: torch.Tensor, linear: list[float], pairs: list[float]) -> None:
    """The form as rows, each a basis k times an affine function of the bases, with the rows of
    zero left out, so the kernels' work follows the terms the graph has (most have one to three):
    value rows f = Σₖ bₖ·(aₖ + Σ_{j≥k} qₖⱼ·bⱼ), slope rows f′ = Σₖ gₖ·∂f/∂bₖ with
    ∂f/∂bₖ = aₖ + Σⱼ qₖⱼ·bⱼ (qₖₖ counted twice, q symmetric), gₖ = bₖ′."""
    q = [[0.0] * N_BASES for _ in range(N_BASES)]
    for c, (i, j) in zip(pairs, PAIRS, strict=True):
        q[i][j] = c
    ks = range(N_BASES)
    value_rows = _nonzero([(k, linear[k], [q[k][j] if j >= k else 0.0 for j in ks]) for k in ks])
    slope_rows = _nonzero(
        [(k, linear[k], [2 * q[k][k] if j == k else q[min(j, k)][max(j, k)] for j in ks]) for k in ks]
    )
    for count_at, rows_at, rows in (
        (N_VALUE_ROWS_AT, VALUE_ROWS_AT, value_rows),
        (N_SLOPE_ROWS_AT, SLOPE_ROWS_AT, slope_rows),
    ):
        out[count_at] = len(rows)
        for r, (k, c, coefficients) in enumerate(rows):
            out[rows_at + r * ROW : rows_at + (r + 1) * ROW] = torch.tensor([k, c, *coefficients])
    used = {k for k, _, _ in slope_rows}  # a basis in some term is one f has a slope row for
    out[SILU_AT] = float(BASIS_OPS.index("silu") in used)
    out[GELU_AT] = float(BASIS_OPS.index("gelu") in used)


def _nonzero(rows: list[tuple[int, float, list[float]]]) -> list[tuple[int, float, list[float]]]:
    return [row for row in rows if row[1] != 0.0 or any(row[2])]


def _instructions(values: list[float]) -> list[tuple[int, float]]:
    body = values[HEADER : HEADER + 2 * int(values[COUNT_AT])]
    return [(int(op), c) for op, c in zip(body[0::2], body[1::2], strict=True)]


def _form_rows(values: list[float], n_rows_at: int, rows_at: int) -> list[tuple[int, float, list[float]]]:
    rows = [values[rows_at + r * ROW : rows_at + (r + 1) * ROW] for r in range(int(values[n_rows_at]))]
    return [(int(row[0]), row[1], row[2:]) for row in rows]


def _rows_sum(
    rows: list[tuple[int, float, list[float]]],
    outer: tuple[torch.Tensor, ...],
    bases: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """Σ over the rows of outerₖ·(c + Σⱼ cⱼ·bⱼ)."""
    total = torch.zeros_like(bases[0])
    for k, c, coefficients in rows:
        total = total + outer[k] * (c + sum(cj * bj for cj, bj in zip(coefficients, bases, strict=True)))
    return total


def _basis_and_slope(op: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Basis function ``op`` at x and its derivative (tanh-GELU's, for gelu; 0 at 0, for relu)."""
    if op == 0:
        sig = torch.sigmoid(x)
        return F.silu(x), sig * (1 + x * (1 - sig))
    if op == 1:
        return F.relu(x), (x > 0).to(x.dtype)
    if op == 2:
        t = torch.tanh(GELU_C * (x + GELU_A * x * x * x))
        slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_C * (1 + 3 * GELU_A * x * x)
        return F.gelu(x, approximate="tanh"), slope
    if op == 3:
        return x, torch.ones_like(x)
    return x * x, 2 * x


def _value_and_slope(x: torch.Tensor, program: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) and f'(x) in fp32: the quadratic form and its derivative when the flag is set, else the
    program run on (value, derivative) pairs."""
    x32 = x.float()
    values = program.tolist()
    if values[FLAG_AT] != 0.0:
        bases, slopes = zip(*(_basis_and_slope(op, x32) for op in range(N_BASES)), strict=True)
        value = _rows_sum(_form_rows(values, N_VALUE_ROWS_AT, VALUE_ROWS_AT), bases, bases)
        return value, _rows_sum(_form_rows(values, N_SLOPE_ROWS_AT, SLOPE_ROWS_AT), slopes, bases)
    stack = []
    for op, c in _instructions(values):
        if op < OP_SCALE:
            stack.append(_basis_and_slope(op, x32))
        elif op == OP_SCALE:
            v, d = stack.pop()
            stack.append((c * v, c * d))
        else:
            (vb, db), (va, da) = stack.pop(), stack.pop()
            stack.append((va + vb, da + db) if op == OP_ADD else (va * vb, va * db + da * vb))
    return stack[-1]


def reference_forward(x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    """f(x) by the program (or its quadratic form), computed in fp32 and returned in x's dtype."""
    return _value_and_slope(x, program)[0].to(x.dtype, copy=True)  # a new tensor even for the identity


def reference_backward(dy: torch.Tensor, x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    """dy · f'(x)."""
    return (dy.float() * _value_and_slope(x, program)[1]).to(x.dtype)


@torch.library.custom_op("alpha::program_activation", mutates_args=())
def program_activation(x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    """The activation that ``program`` encodes, elementwise on x."""
    if x.is_cuda:
        from alpha.symbio import program_kernels

        return program_kernels.forward(x, program)
    return reference_forward(x, program)


@program_activation.register_fake
def _(x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("alpha::program_activation_backward", mutates_args=())
def program_activation_backward(dy: torch.Tensor, x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    if x.is_cuda:
        from alpha.symbio import program_kernels

        return program_kernels.backward(dy, x, program)
    return reference_backward(dy, x, program)


@program_activation_backward.register_fake
def _(dy: torch.Tensor, x: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
    x, program = ctx.saved_tensors
    return torch.ops.alpha.program_activation_backward(dy.contiguous(), x, program), None


program_activation.register_autograd(_backward, setup_context=_setup_context)


def install_programs(trainer: Trainer, graph: Graph) -> None:
    """Every block's activation becomes ``graph`` as a program, the way a search runs its
    candidates (for ``alpha bench --activation-program`` and the step profile)."""
    capacity = len(encode(graph))  # a graph too deep for the kernels' stack raises ProgramTooLarge
    trainer.set_activation(
        lambda: GraphActivation(graph, swappable=True, program_capacity=capacity), dumps(graph)
    )
