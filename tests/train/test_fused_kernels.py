"""The Triton kernels (residual add + LayerNorm, cross-entropy) against PyTorch's own ops.

The kernels run on CUDA, or on the CPU under Triton's interpreter when Triton is installed (it is
not in the CPU-only CI, where those tests skip); the fallback path and the state-dict
compatibility with ``nn.LayerNorm`` are checked everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alpha.model.fused_norm import AddLayerNorm, fused_available
from alpha.model.losses import cross_entropy

ROOT = Path(__file__).resolve().parents[2]


def _reference(x, branch, ln, s_used):
    """Sum, LayerNorm (fp32) and gradients the PyTorch way; the LayerNorm reads ``s_used``."""
    x = x.detach().clone().requires_grad_()
    branch = branch.detach().clone().requires_grad_()
    s = x + branch
    s_for_norm = s + (s_used.to(s.dtype) - s).detach()  # the kernel's rounding, PyTorch's gradient
    y = F.layer_norm(s_for_norm.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return x, branch, s, y


def check_against_pytorch(device: str) -> None:
    """Forward values and every gradient, fp32 (tight) and bf16 (a few bf16 ulps)."""
    for dtype, rows, cols, tol in [(torch.float32, 37, 100, 1e-5), (torch.bfloat16, 50, 384, 3e-2)]:
        torch.manual_seed(0)
        ln = AddLayerNorm(cols).to(device)
        with torch.no_grad():
            ln.weight.copy_(torch.randn(cols))
            ln.bias.copy_(torch.randn(cols))
        x = torch.randn(rows, cols, device=device).to(dtype).requires_grad_()
        branch = torch.randn(rows, cols, device=device).to(dtype).requires_grad_()
        assert fused_available(x)
        s, y = ln(x, branch)
        assert s.dtype == dtype and y.dtype == dtype
        grad_s, grad_y = torch.randn_like(s), torch.randn_like(y)
        ((s.float() * grad_s.float()).sum() + (y.float() * grad_y.float()).sum()).backward()
        got = {"dx": x.grad, "dbranch": branch.grad, "dw": ln.weight.grad, "db": ln.bias.grad}
        ln.weight.grad = ln.bias.grad = None

        rx, rbranch, rs, ry = _reference(x, branch, ln, s.detach())
        ((rs.float() * grad_s.float()).sum() + (ry * grad_y.float()).sum()).backward()
        want = {"dx": rx.grad, "dbranch": rbranch.grad, "dw": ln.weight.grad, "db": ln.bias.grad}
        torch.testing.assert_close(s.float(), rs.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(y.float(), ry, atol=tol * 4, rtol=tol)
        for name in got:
            scale = want[name].float().abs().max().item()
            torch.testing.assert_close(
                got[name].float(), want[name].float(), atol=tol * scale, rtol=tol, msg=name
            )

        # the sum's gradient may be absent (the final LayerNorm's sum is not used again)
        ln.weight.grad = None
        x.grad = branch.grad = None
        _, y = ln(x, branch)
        y.float().sum().backward()
        rx, rbranch, _, ry = _reference(x, branch, ln, s.detach())
        ry.sum().backward()
        scale = rx.grad.float().abs().max().item()
        torch.testing.assert_close(x.grad.float(), rx.grad.float(), atol=tol * scale, rtol=tol)
    check_cross_entropy(device)


def check_cross_entropy(device: str) -> None:
    """Loss and gradient of bf16 logits (a vocabulary that is not a power of two) in fp32."""
    torch.manual_seed(0)
    logits = (torch.randn(300, 1000, device=device) * 4).bfloat16().requires_grad_()
    targets = torch.randint(0, 1000, (300,), device=device)
    assert fused_available(logits)
    loss = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    exact = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(exact, targets)
    (ref_grad,) = torch.autograd.grad(ref, exact)
    assert abs(loss.item() - ref.item()) < 1e-5
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-5, rtol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_match_pytorch_on_cuda() -> None:
    check_against_pytorch("cuda")


def test_kernels_match_pytorch_in_the_triton_interpreter() -> None:
    pytest.importorskip("triton")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    code = "from tests.train.test_fused_kernels import check_against_pytorch; check_against_pytorch('cpu')"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_without_the_kernels_it_is_an_add_and_a_layer_norm() -> None:
    torch.manual_seed(0)
    ln = AddLayerNorm(16)
    x, branch = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    assert not fused_available(x) or os.environ.get("TRITON_INTERPRET") == "1"
    s, y = ln(x, branch)
    torch.testing.assert_close(s, x + branch)
    torch.testing.assert_close(y, F.layer_norm(x + branch, (16,), ln.weight, ln.bias, ln.eps))
    same, y0 = ln(x)
    assert same is x
    torch.testing.assert_close(y0, F.layer_norm(x, (16,), ln.weight, ln.bias, ln.eps))


def test_state_dict_is_layer_norms() -> None:
    plain = nn.LayerNorm(24)
    with torch.no_grad():
        plain.weight.normal_()
    fused = AddLayerNorm(24)
    fused.load_state_dict(plain.state_dict())
    assert fused.state_dict().keys() == plain.state_dict().keys()
    torch.testing.assert_close(
        fused(torch.ones(2, 24) * torch.arange(24.0))[1], plain(torch.ones(2, 24) * torch.arange(24.0))
    )
