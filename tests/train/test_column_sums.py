"""The deferred column sums of Inductor's mix-order reductions (``alpha.model.column_sums``)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch._inductor.scheduler import OutputNode
from torch._inductor.virtualized import V

from alpha.model import column_sums
from alpha.model.column_sums import DeferredSums
from alpha.model.inductor_ops import ops_fingerprint
from alpha.model.kernel_support import TRITON_INSTALLED
from alpha.model.linear import Linear, WeightGradStream, compile_options
from tests.conftest import capture

ON_CUDA = pytest.mark.skipif(
    not (torch.cuda.is_available() and TRITON_INSTALLED), reason="needs CUDA and Triton"
)

# the lines Inductor's mix-order reduction writes for its final sums
FINAL_SUM = "buf7 = ws[0 : (2048) * (384)].view(2048, 384).sum(dim=0)"
FINAL_SUM_SHAPED = (
    "buf8 = ws[1 * (2048) * (384) : (1 + 1) * (2048) * (384)].view(2048, 384).sum(dim=0).view([384])"
)
FINAL_SUM_CAST = "buf9 = ws[0 : (512) * (96)].view(512, 96).sum(dim=0).to(torch.bfloat16)"


def everything_returned_only(name: str) -> bool:
    return True


def test_the_op_sums_at_once_with_no_scope_open_and_its_fake_gives_the_shape() -> None:
    x = torch.randn(300, 7)
    torch.testing.assert_close(column_sums.column_sum_deferred(x), x.sum(dim=0))
    torch.library.opcheck(column_sums.column_sum_deferred, (x,))


def test_a_returned_only_final_sum_is_deferred_and_what_follows_it_is_kept() -> None:
    assert column_sums.rewrite_final_sum(FINAL_SUM, everything_returned_only) == (
        "buf7 = torch.ops.alpha.column_sum_deferred(ws[0 : (2048) * (384)].view(2048, 384))"
    )
    assert column_sums.rewrite_final_sum(FINAL_SUM_SHAPED, everything_returned_only) == (
        "buf8 = torch.ops.alpha.column_sum_deferred(ws[1 * (2048) * (384) : (1 + 1) * (2048) * (384)]"
        ".view(2048, 384)).view([384])"
    )


@pytest.mark.parametrize(
    ("line", "returned"),
    [
        (FINAL_SUM, False),  # the graph reads the sum itself: it must exist at once
        (FINAL_SUM_CAST, True),  # a cast is a kernel that would read the sum before it is computed
        ("buf7 = ws[0 : (2048) * (384)].view(2048, 384).amax(dim=0)", True),  # not a sum
        ("buf3 = buf2.sum(dim=0)", True),
        ("del buf2", True),
        ("buf7 = ws[0 : 8].view(2, 4).sum(dim=1)", True),
    ],
)
def test_other_lines_are_left_alone(line: str, returned: bool) -> None:
    assert column_sums.rewrite_final_sum(line, lambda name: returned) == line


def test_only_a_buffer_whose_every_reader_is_the_output_counts_as_returned_only() -> None:
    output = OutputNode.__new__(OutputNode)
    kernel = SimpleNamespace(get_name=lambda: "op3")

    def user(node: object, weak: bool = False) -> SimpleNamespace:
        return SimpleNamespace(node=node, is_weak=weak)

    scheduler = SimpleNamespace(
        name_to_buf={
            "returned": SimpleNamespace(users=[user(output)]),
            "also_ordered": SimpleNamespace(users=[user(output), user(kernel, weak=True)]),
            "also_read": SimpleNamespace(users=[user(output), user(kernel)]),
            "only_read": SimpleNamespace(users=[user(kernel)]),
        }
    )
    verdicts = {
        name: column_sums.returned_only(scheduler, name) for name in [*scheduler.name_to_buf, "unknown"]
    }
    assert verdicts == {
        "returned": True,
        "also_ordered": True,
        "also_read": False,
        "only_read": False,
        "unknown": False,
    }
    assert not column_sums.returned_only(None, "returned")


def test_a_routed_method_rewrites_what_it_writes_and_only_while_it_runs() -> None:
    written: list[object] = []

    class Wrapper:
        def writeline(self, line: object) -> None:
            written.append(line)

    wrapper = Wrapper()
    marker = object()
    output = OutputNode.__new__(OutputNode)
    scheduling = SimpleNamespace(
        scheduler=SimpleNamespace(name_to_buf={"buf7": SimpleNamespace(users=[SimpleNamespace(node=output)])})
    )

    def codegen(scheduling: object, node1: object, node2: object) -> str:
        V.graph.wrapper_code.writeline("buf1 = some_kernel(buf0)")
        V.graph.wrapper_code.writeline(FINAL_SUM)
        V.graph.wrapper_code.writeline(marker)
        return f"{node1}{node2}"

    ours = SimpleNamespace(nodes=[SimpleNamespace(target=torch.ops.alpha.column_sum_deferred.default)])
    plain = SimpleNamespace(nodes=[SimpleNamespace(target=torch.ops.aten.sum.dim_IntList)])
    graph = SimpleNamespace(wrapper_code=wrapper, graph=ours)
    with V.set_graph_handler(graph):  # type: ignore[arg-type]
        assert column_sums.routed(codegen)(scheduling, "a", "b") == "ab"
        wrapper.writeline(FINAL_SUM)  # after the method: untouched
        graph.graph = plain  # a graph that calls none of our ops (a plain PyTorch model): untouched
        column_sums.routed(codegen)(scheduling, "a", "b")
    assert written == [
        "buf1 = some_kernel(buf0)",
        column_sums.rewrite_final_sum(FINAL_SUM, everything_returned_only),
        marker,
        FINAL_SUM,
        "buf1 = some_kernel(buf0)",
        FINAL_SUM,
        marker,
    ]
    assert "column_sum_deferred" in str(written[1])
    assert "writeline" not in wrapper.__dict__


def test_the_routing_installs_once_and_the_variable_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor.codegen.simd import SIMDScheduling

    assert column_sums.route_mix_order_sums()
    installed = SIMDScheduling.codegen_mix_order_reduction
    assert installed._alpha_routed
    assert column_sums.route_mix_order_sums()
    assert SIMDScheduling.codegen_mix_order_reduction is installed  # not wrapped twice
    on = ops_fingerprint()
    monkeypatch.setenv(column_sums.ENV, "0")
    assert not column_sums.route_mix_order_sums()
    assert ops_fingerprint() != on  # compile caches are keyed by it


class _ColumnScale(torch.autograd.Function):
    """y = x * w over rows, whose weight gradient is a column sum that the backward only returns,
    as a compiled LayerNorm backward returns its weight's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        return dy * w, torch.ops.alpha.column_sum_deferred(dy * x)


class _Scale(nn.Module):
    def __init__(self, columns: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(columns))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ColumnScale.apply(x, self.w)


def test_deferred_sums_are_computed_before_autograd_accumulates_them() -> None:
    """Two micro-batches in one scope: autograd's second accumulation adds the second sum to the
    first, and a later hook on the parameter already sees the sum, not an empty tensor."""
    torch.manual_seed(0)
    model = _Scale(5)
    xs = [torch.randn(40, 5, requires_grad=True) for _ in range(2)]
    dys = [torch.randn(40, 5) for _ in range(2)]
    want = sum((dy * x.detach()).sum(dim=0) for x, dy in zip(xs, dys, strict=True))
    seen: list[torch.Tensor] = []
    sums = DeferredSums(torch.device("cpu"))
    with sums.open(model):
        model.w.register_hook(lambda grad: seen.append(grad.clone()))  # runs after ours
        for x, dy in zip(xs, dys, strict=True):
            model(x).backward(dy)
        assert sums.pending == 0
    assert sums.deferred == 2
    assert column_sums.open_sums(torch.device("cpu")) is None
    torch.testing.assert_close(model.w.grad, want)
    torch.testing.assert_close(seen[0], (dys[0] * xs[0].detach()).sum(dim=0))
    torch.testing.assert_close(xs[1].grad, dys[1] * model.w.detach())


def test_the_scope_computes_what_no_hook_asked_for_and_attaches_each_parameter_once() -> None:
    sums = DeferredSums(torch.device("cpu"))
    model = _Scale(3)
    x = torch.randn(8, 3)
    with sums.open(model):
        y = torch.ops.alpha.column_sum_deferred(x)
        assert sums.pending == 1
    assert sums.pending == 0
    torch.testing.assert_close(y, x.sum(dim=0))
    sums.attach(model)
    assert len(model.w._backward_hooks) == 1


@pytest.mark.gpu
@ON_CUDA
def test_on_cuda_the_kernel_sums_the_columns_of_many_matrices_in_one_launch() -> None:
    from alpha.model import column_sum_kernels

    torch.manual_seed(0)
    shapes = [(2048, 384)] * (column_sum_kernels.MAX_PER_LAUNCH + 3) + [(5, 3), (1000, 1), (130, 17)]
    xs = [torch.randn(shape, device="cuda") for shape in shapes]
    ys = [torch.full(shape[1:], float("nan"), device="cuda") for shape in shapes]
    ys[-1] = torch.full((17, 2), float("nan"), device="cuda")[:, 0]  # a strided destination
    column_sum_kernels.sum_columns_into(xs, ys)
    for x, y in zip(xs, ys, strict=True):
        torch.testing.assert_close(y, x.sum(dim=0), rtol=1e-5, atol=1e-4)


class _LinearNormLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = Linear(384, 384)
        self.norm = nn.LayerNorm(384)
        self.out = Linear(384, 384)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.inp(x)))


@pytest.mark.gpu
@ON_CUDA
def test_on_cuda_a_large_layernorm_backward_defers_its_sums_compiled_and_captured() -> None:
    """A norm over 65,536 rows between two side-stream linears, two micro-batches a step: the
    compiled backward defers the norm's two sums, and the gradients match eager PyTorch's, compiled
    and replayed from a CUDA graph."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    plain = _LinearNormLinear().cuda()
    model = copy.deepcopy(plain)
    ws = WeightGradStream(torch.device("cuda"))
    ws.attach(model)
    sums = DeferredSums(torch.device("cuda"))  # the trainer's device may have no index
    x = torch.randn(128 * 512, 384, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(128 * 512, 384, device="cuda", dtype=torch.bfloat16)

    def backward_twice(module: nn.Module) -> None:
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = module(x)
            y.backward(dy)

    backward_twice(plain)
    compiled = torch.compile(model, options=compile_options(model))

    def step() -> None:
        model.norm.weight.grad = model.norm.bias.grad = None
        ws.begin_step()
        with sums.open(model):
            backward_twice(compiled)
        ws.join()

    _, codes = run_and_get_code(step)
    assert sum(code.count("torch.ops.alpha.column_sum_deferred(") for code in codes) == 2
    assert sums.deferred == 4  # two sums a micro-batch; "cuda" and x's "cuda:0" are one device
    for run in ("compiled", "graphed"):
        if run == "graphed":
            for p in model.parameters():
                p.grad = torch.full_like(p, float("nan"))
            graph, _ = capture(step, warmup=2)
            graph.replay()
        torch.cuda.synchronize()
        for (name, want), got in zip(plain.named_parameters(), model.parameters(), strict=True):
            # bf16 products summed over 65,536 rows round differently compiled; a sum that
            # autograd read before it was computed is off by a whole micro-batch, or NaN
            error = (got.grad - want.grad).norm() / want.grad.norm()
            assert error < 1e-2, f"{run}: {name} off by {error:.3g}"


def test_side_stream_models_compile_short_norm_backwards_fused_only_while_sums_are_deferred(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = nn.Sequential(Linear(8, 8), nn.LayerNorm(8))
    WeightGradStream(torch.device("cpu")).attach(model)
    key = "triton.mix_order_reduction_non_strict_mode"
    assert compile_options(model)[key] is True
    monkeypatch.setenv(column_sums.ENV, "0")
    assert key not in compile_options(model)
