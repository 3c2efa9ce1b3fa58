"""The model's own ops (GELU, the loss's log-sum-exp): the PyTorch form everywhere, the Triton
kernels on CUDA, each against the plain PyTorch maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import alpha.model.gelu  # noqa: F401  (registers alpha::gelu)
from alpha.model.kernel_support import kernels_available
from alpha.model.losses import cross_entropy  # (and registers alpha::logsumexp_target)


def needs_kernels(test):  # type: ignore[no-untyped-def]
    missing = not kernels_available(torch.device("cuda"))
    return pytest.mark.gpu(pytest.mark.skipif(missing, reason="needs CUDA and Triton")(test))


def test_the_gelu_op_is_torchs_tanh_gelu_in_value_and_gradient_eager_and_compiled() -> None:
    x = torch.randn(7, 33, dtype=torch.float64) * 3
    x1, x2, x3 = (x.clone().requires_grad_() for _ in range(3))
    dy = torch.randn_like(x)
    F.gelu(x1, approximate="tanh").backward(dy)
    y2 = torch.ops.alpha.gelu(x2)
    y2.backward(dy)
    y3 = torch.compile(torch.ops.alpha.gelu, fullgraph=True)(x3)
    y3.backward(dy)
    torch.testing.assert_close(y2, F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(y3, y2)
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(x3.grad, x1.grad)


def test_the_loss_op_is_torchs_logsumexp_and_gather_off_cuda() -> None:
    logits = (torch.randn(37, 132, dtype=torch.bfloat16) * 4)[:, :130]  # strided rows
    targets = torch.randint(0, 130, (37,))
    lse, target_logit = torch.ops.alpha.logsumexp_target(logits, targets)
    assert lse.dtype == target_logit.dtype == torch.float32
    torch.testing.assert_close(lse, torch.logsumexp(logits.float(), dim=-1))
    assert torch.equal(target_logit, logits.float()[torch.arange(37), targets])


def test_the_compiled_loss_hands_the_padded_logits_to_the_op_without_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inductor pads the head's output rows to 128 bytes (4001 -> 4032 floats); the op takes any
    layout, so the logits reach it as the GEMM wrote them, not through a copy of the whole
    (tokens x vocab) tensor. Padding is on here as on a GPU; the gate opened for tracing only."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    from alpha.model import losses
    from alpha.model.inductor_ops import register_fallbacks

    real = losses._kernel_applies
    monkeypatch.setattr(losses, "_kernel_applies", lambda x: torch.compiler.is_compiling() or real(x))
    register_fallbacks()

    def loss_of(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(x @ w.t(), y)

    torch.manual_seed(0)
    x, w = torch.randn(64, 32), torch.randn(4001, 32, requires_grad=True)  # a training graph
    y = torch.randint(0, 4001, (64,))
    with config.patch(disable_padding_cpu=False, force_disable_caches=True):
        loss, (code,) = run_and_get_code(torch.compile(loss_of, fullgraph=True), x, w, y)
    assert "4032" in code  # the head's output is padded
    calls = [line for line in code.splitlines() if "logsumexp_target" in line and "(" in line]
    assert calls and all("torch.ops.alpha.logsumexp_target" in line for line in calls), calls
    torch.testing.assert_close(loss, F.cross_entropy(x @ w.t(), y))
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_gelu_kernels_stay_within_a_unit_in_the_last_place(dtype: torch.dtype) -> None:
    x = (torch.linspace(-8, 8, 300_007, device="cuda") + 0.3 * torch.randn(300_007, device="cuda")).to(dtype)
    dy = torch.randn_like(x)
    xr = x.double().requires_grad_()
    F.gelu(xr, approximate="tanh").backward(dy.double())
    y = torch.ops.alpha.gelu(x)
    dx = torch.ops.alpha.gelu_backward(dy, x)
    assert y.dtype == dtype and dx.dtype == dtype
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2**-7}
    torch.testing.assert_close(y.double(), F.gelu(x.double(), approximate="tanh"), **tol)
    slope_tol = tol if dtype == torch.float32 else tol | {"atol": 8e-3}
    torch.testing.assert_close(dx.double(), xr.grad, **slope_tol)


@needs_kernels
def test_the_loss_kernel_reads_strided_logits_and_matches_torch() -> None:
    full = torch.randn(3001, 4032, device="cuda", dtype=torch.bfloat16) * 4
    logits = full[:, :4000]  # the head's output as Inductor pads it: row stride 4032
    targets = torch.randint(0, 4000, (3001,), device="cuda")
    lse, target_logit = torch.ops.alpha.logsumexp_target(logits, targets)
    torch.testing.assert_close(lse, torch.logsumexp(logits.float(), dim=-1), atol=1e-4, rtol=1e-5)
    assert torch.equal(target_logit, logits.gather(1, targets[:, None]).squeeze(1).float())
    a = logits.float().requires_grad_()
    b = logits.clone().requires_grad_()
    F.cross_entropy(a, targets).backward()
    loss = cross_entropy(b, targets)
    loss.backward()
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), targets), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(b.grad.float(), a.grad, atol=1e-6, rtol=2**-7)
