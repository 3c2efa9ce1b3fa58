"""Activation graphs as programs: the encoding, the reference op against the graph's own
evaluation and autograd, the size limits, and (on CUDA) the Triton kernels against the reference."""

from __future__ import annotations

import random

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from alpha.model.kernel_support import kernels_available
from alpha.symbio.activation import evaluate
from alpha.symbio.graph import BASIS_OPS, Add, Basis, Graph, Mul, Scale, within_limits
from alpha.symbio.mutate import mutate
from alpha.symbio.program import (
    FLAG_AT,
    GELU_AT,
    HEADER,
    N_SLOPE_ROWS_AT,
    N_VALUE_ROWS_AT,
    OP_ADD,
    OP_MUL,
    OP_SCALE,
    PAIRS,
    ROW,
    SILU_AT,
    SLOPE_ROWS_AT,
    VALUE_ROWS_AT,
    ProgramTooLarge,
    buffer_size,
    encode,
    program_tensor,
    quadratic_form,
    stack_depth,
)


def without_quadratic_form(buffer: torch.Tensor) -> torch.Tensor:
    """The same program with its flag cleared: the op runs the instructions."""
    out = buffer.clone()
    out[FLAG_AT] = 0.0
    return out


SEED_FORMULA = Mul(Add(Basis("relu"), Scale(Basis("square"), 0.04)), Basis("gelu"))


def random_graphs(count: int, seed: int = 0) -> list[Graph]:
    """Graphs a search would make: mutation chains from every basis, within depth 4 and 10 nodes."""
    rng, graphs = random.Random(seed), []
    for i in range(count):
        graph: Graph = Basis(BASIS_OPS[i % len(BASIS_OPS)])
        for _ in range(1 + i % 6):
            graph = mutate(graph, rng, BASIS_OPS, 4, 10).graph
        assert within_limits(graph, 4, 10)
        graphs.append(graph)
    return graphs


def test_a_graph_becomes_a_postfix_program() -> None:
    relu, sq, gelu = (BASIS_OPS.index(op) for op in ("relu", "square", "gelu"))
    assert encode(SEED_FORMULA) == [
        (relu, 0.0),
        (sq, 0.0),
        (OP_SCALE, 0.04),
        (OP_ADD, 0.0),
        (gelu, 0.0),
        (OP_MUL, 0.0),
    ]
    assert stack_depth(encode(SEED_FORMULA)) == 2
    tensor = program_tensor(SEED_FORMULA, capacity=10)
    assert tensor.shape == (buffer_size(10),) and tensor[0] == 6
    body = tensor[HEADER : HEADER + 12].view(6, 2).tolist()
    assert body == [[op, pytest.approx(c)] for op, c in encode(SEED_FORMULA)]
    assert tensor[HEADER + 12 :].abs().sum() == 0


def test_sums_and_products_of_two_sums_have_a_quadratic_form() -> None:
    relu, sq, gelu = (BASIS_OPS.index(op) for op in ("relu", "square", "gelu"))
    linear, pairs = quadratic_form(SEED_FORMULA)  # (relu + 0.04·sq)·gelu = relu·gelu + 0.04·sq·gelu
    assert linear == [0.0] * len(BASIS_OPS)
    expected = {(min(relu, gelu), max(relu, gelu)): 1.0, (min(sq, gelu), max(sq, gelu)): 0.04}
    assert {pair: q for pair, q in zip(PAIRS, pairs, strict=True) if q} == pytest.approx(expected)
    assert program_tensor(SEED_FORMULA, capacity=10)[FLAG_AT] == 1.0
    cubic = Mul(SEED_FORMULA, Basis("silu"))
    assert quadratic_form(cubic) is None
    assert program_tensor(cubic, capacity=10)[FLAG_AT] == 0.0  # runs the instructions


def test_the_form_keeps_only_the_rows_and_bases_the_graph_uses() -> None:
    relu, gelu, sq = (BASIS_OPS.index(op) for op in ("relu", "gelu", "square"))
    buffer = program_tensor(SEED_FORMULA, capacity=10)  # relu·(gelu) + gelu·(0.04·sq)
    value_rows = buffer[VALUE_ROWS_AT : VALUE_ROWS_AT + int(buffer[N_VALUE_ROWS_AT]) * ROW].view(-1, ROW)
    assert value_rows[:, 0].tolist() == [relu, gelu]
    assert value_rows[0, 2 + gelu] == 1.0 and value_rows[1, 2 + sq] == pytest.approx(0.04)
    assert value_rows[:, 1].abs().sum() == 0 and value_rows[:, 2:].count_nonzero() == 2
    # f′ = relu′·gelu + gelu′·(relu + 0.04·sq) + sq′·0.04·gelu
    assert buffer[SLOPE_ROWS_AT : SLOPE_ROWS_AT + int(buffer[N_SLOPE_ROWS_AT]) * ROW : ROW].tolist() == [
        relu,
        gelu,
        sq,
    ]
    assert (buffer[SILU_AT], buffer[GELU_AT]) == (0.0, 1.0)  # silu is not computed
    relu_only = program_tensor(Scale(Basis("relu"), 2.0), capacity=10)
    assert (relu_only[N_VALUE_ROWS_AT], relu_only[N_SLOPE_ROWS_AT]) == (1.0, 1.0)
    assert (relu_only[SILU_AT], relu_only[GELU_AT]) == (0.0, 0.0)
    assert relu_only[VALUE_ROWS_AT : VALUE_ROWS_AT + ROW].tolist() == [relu, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("graph", [SEED_FORMULA, *random_graphs(24)], ids=str)
def test_the_quadratic_form_and_the_program_give_the_same_function(graph: Graph) -> None:
    x = torch.linspace(-4, 4, 801)
    dy = torch.randn_like(x)
    buffer = program_tensor(graph, capacity=10)
    program_only = without_quadratic_form(buffer)
    forward, backward = torch.ops.alpha.program_activation, torch.ops.alpha.program_activation_backward
    torch.testing.assert_close(forward(x, buffer), forward(x, program_only), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backward(dy, x, buffer), backward(dy, x, program_only), atol=1e-4, rtol=1e-4)


def test_programs_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ProgramTooLarge, match="exceeds 5 instructions"):
        program_tensor(SEED_FORMULA, capacity=5)
    deep: Graph = Basis("relu")
    for _ in range(8):  # right-leaning sums: every left operand waits on the stack
        deep = Add(Basis("silu"), deep)
    assert stack_depth(encode(deep)) == 9
    with pytest.raises(ProgramTooLarge, match="stack"):
        program_tensor(deep, capacity=32)


@pytest.mark.parametrize("graph", [SEED_FORMULA, *random_graphs(24)], ids=str)
def test_the_reference_op_equals_the_graph_and_its_gradient_autograds(graph: Graph) -> None:
    x = torch.linspace(-4, 4, 801, dtype=torch.float64).float().requires_grad_(True)
    program = program_tensor(graph, capacity=10)
    y = torch.ops.alpha.program_activation(x, program)
    expected = evaluate(graph, x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(x)
    (dx,) = torch.autograd.grad(y, x, dy)
    (expected_dx,) = torch.autograd.grad(expected, x, dy)
    torch.testing.assert_close(dx, expected_dx, atol=1e-4, rtol=1e-4)


def test_a_new_program_in_the_same_buffer_changes_the_function() -> None:
    buffer = program_tensor(Basis("relu"), capacity=10)
    x = torch.linspace(-2, 2, 9)
    torch.testing.assert_close(torch.ops.alpha.program_activation(x, buffer), torch.relu(x))
    buffer.copy_(program_tensor(SEED_FORMULA, capacity=10))
    torch.testing.assert_close(torch.ops.alpha.program_activation(x, buffer), evaluate(SEED_FORMULA, x))


def test_the_op_compiles_into_a_model_without_a_graph_break() -> None:
    program = program_tensor(SEED_FORMULA, capacity=10)

    def mlp(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.ops.alpha.program_activation(h @ w, program).sum()

    h, w = torch.randn(8, 16), torch.randn(16, 32, requires_grad=True)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(mlp, fullgraph=True, backend=counter)  # fullgraph: a break would raise
    torch.testing.assert_close(compiled(h, w), evaluate(SEED_FORMULA, h @ w).sum(), atol=1e-4, rtol=1e-4)
    program.copy_(program_tensor(Basis("silu"), capacity=10))  # data, not code: no recompile
    torch.testing.assert_close(compiled(h, w), torch.nn.functional.silu(h @ w).sum(), atol=1e-4, rtol=1e-4)
    assert counter.frame_count == 1


@pytest.mark.gpu
@pytest.mark.skipif(not kernels_available(torch.device("cuda")), reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_equal_the_reference(dtype: torch.dtype) -> None:
    from alpha.symbio.program import reference_backward, reference_forward

    x = (torch.randn(3, 1000, 1537, device="cuda") * 3).to(dtype)  # not a multiple of the blocks
    dy = torch.randn_like(x)
    graphs = [SEED_FORMULA, Mul(SEED_FORMULA, Basis("silu")), *random_graphs(24)]
    for graph in graphs:
        buffer = program_tensor(graph, capacity=10)
        for program in (buffer.cuda(), without_quadratic_form(buffer).cuda()):  # the form, the program
            y = torch.ops.alpha.program_activation(x, program)
            dx = torch.ops.alpha.program_activation_backward(dy, x, program)
            tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
            torch.testing.assert_close(y, reference_forward(x.cpu(), program.cpu()).cuda(), **tol)
            torch.testing.assert_close(dx, reference_backward(dy.cpu(), x.cpu(), program.cpu()).cuda(), **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not kernels_available(torch.device("cuda")), reason="needs CUDA and Triton")
@pytest.mark.parametrize("basis", ["gelu", "silu"])
def test_the_approximate_tanh_of_16_bit_kernels_stays_near_a_unit_in_the_last_place(basis: str) -> None:
    """bf16 activations get tanh.approx: values and slopes of GELU and silu stay within about a bf16
    unit in the last place of the fp32 reference (2⁻⁷ relative), and within 2e-3 (values) and 8e-3
    (slopes) where they are small."""
    from alpha.symbio.program import reference_backward, reference_forward

    x = torch.linspace(-8, 8, 160_001, device="cuda").to(torch.bfloat16)
    dy = torch.ones_like(x)
    program = program_tensor(Basis(basis), capacity=4).cuda()
    value = torch.ops.alpha.program_activation(x, program).float()
    slope = torch.ops.alpha.program_activation_backward(dy, x, program).float()
    exact_value = reference_forward(x.cpu(), program.cpu()).cuda().float()
    exact_slope = reference_backward(dy.cpu(), x.cpu(), program.cpu()).cuda().float()
    assert ((value - exact_value).abs() <= 2**-7 * exact_value.abs().clamp(min=0.25)).all()
    assert ((slope - exact_slope).abs() <= 2**-7 * exact_slope.abs().clamp(min=1.0)).all()
