"""alpha's AdamW: PyTorch's fused AdamW everywhere, one Triton kernel over every parameter on
CUDA; both against ``torch.optim.AdamW`` step by step, with clipping (``grad_scale``), skipped
steps (``found_inf``), two groups with and without decay, and 16-bit shadows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alpha.model.kernel_support import kernels_available
from alpha.model.linear import Linear
from alpha.train.adamw import AdamW
from tests.conftest import tiny_trainer

SHAPES = [(384, 1152), (4000, 384), (384,), (7, 3), (1,)]
BETAS, EPS, LR = (0.9, 0.95), 1e-8, 3e-3


def needs_kernels(test):  # type: ignore[no-untyped-def]
    missing = not kernels_available(torch.device("cuda"))
    return pytest.mark.gpu(pytest.mark.skipif(missing, reason="needs CUDA and Triton")(test))


def _params(device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(device).requires_grad_() for s in SHAPES]


def _groups(params: list[torch.Tensor]) -> list[dict]:
    return [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]


def _run(
    make: type[torch.optim.AdamW], device: str, lr: float | torch.Tensor = LR, **kwargs: object
) -> tuple[list[torch.Tensor], torch.optim.AdamW, list[torch.Tensor]]:
    """Five steps with scaled gradients; the fourth is skipped (found_inf), the others clipped."""
    params = _params(device)
    opt = make(_groups(params), lr=lr, betas=BETAS, eps=EPS, **kwargs)
    shadows = [torch.empty_like(p, dtype=torch.bfloat16) for p in params[:2]]
    if isinstance(opt, AdamW):
        opt.shadows = dict(zip(params[:2], shadows, strict=True))
    g = torch.Generator().manual_seed(1)
    for i in range(5):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * 8).to(device)
        opt.grad_scale = torch.tensor(4.0 + i, device=device)  # type: ignore[attr-defined]
        opt.found_inf = torch.tensor(float(i == 3), device=device)  # type: ignore[attr-defined]
        opt.step()
    return params, opt, shadows


def _reference_run() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``_run``'s five steps written out in float64: (param, exp_avg, exp_avg_sq) per parameter."""
    out = []
    g = torch.Generator().manual_seed(1)
    grads = [[(torch.randn(s, generator=g) * 8).double() for s in SHAPES] for _ in range(5)]
    for k, p in enumerate(_params("cpu")):
        p = p.detach().double()
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        decay = 0.1 if k < 2 else 0.0
        step = 0
        for i in range(5):
            if i == 3:
                continue
            step += 1
            grad = grads[i][k] / (4.0 + i)
            p = p * (1 - LR * decay)
            m = BETAS[0] * m + (1 - BETAS[0]) * grad
            v = BETAS[1] * v + (1 - BETAS[1]) * grad * grad
            denom = (v.sqrt() / (1 - BETAS[1] ** step) ** 0.5) + EPS
            p = p - LR / (1 - BETAS[0] ** step) * m / denom
        out.append((p, m, v))
    return out


def _assert_matches_reference(run: tuple) -> None:
    params, opt, shadows = run
    for p, (ref_p, ref_m, ref_v) in zip(params, _reference_run(), strict=True):
        state = opt.state[p]
        torch.testing.assert_close(p.detach().cpu().double(), ref_p, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(state["exp_avg"].cpu().double(), ref_m, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(state["exp_avg_sq"].cpu().double(), ref_v, atol=1e-6, rtol=1e-5)
        assert state["step"].item() == 4  # the skipped step is not counted
    for p, s in zip(params[:2], shadows, strict=True):
        assert torch.equal(s, p.detach().to(torch.bfloat16))


def test_on_the_cpu_it_is_torchs_fused_adamw_and_refreshes_the_shadows() -> None:
    run = _run(AdamW, "cpu")
    assert run[1]._launch is None  # no kernel on the CPU
    _assert_matches_reference(run)


@needs_kernels
def test_the_kernel_clips_skips_decays_and_writes_the_shadows_as_the_reference() -> None:
    run = _run(AdamW, "cuda")
    assert run[1]._launch is not None
    _assert_matches_reference(run)


@needs_kernels
def test_the_kernel_reads_the_lr_from_a_device_tensor_and_replays_in_a_cuda_graph() -> None:
    lr = torch.tensor(LR, device="cuda")
    params = _params("cuda")
    reference = [p.detach().clone().requires_grad_() for p in params]
    opt = AdamW(_groups(params), lr=lr, betas=BETAS, eps=EPS)
    ref_opt = torch.optim.AdamW(_groups(reference), lr=LR, betas=BETAS, eps=EPS, foreach=False)
    grads = [torch.randn_like(p) for p in params]
    for p, r, g in zip(params, reference, grads, strict=True):
        p.grad, r.grad = g, g.clone()
    opt.step()  # eager: state and address table
    ref_opt.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # recorded, not run
        opt.step()
    for _ in range(3):
        graph.replay()
        ref_opt.step()
    torch.cuda.synchronize()
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p, r, atol=1e-6, rtol=1e-5)
    assert opt.state[params[0]]["step"].item() == 4


@needs_kernels
def test_the_address_table_follows_a_gradient_that_moved() -> None:
    params = _params("cuda")
    opt = AdamW(_groups(params), lr=LR, betas=BETAS, eps=EPS)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    before = params[2].detach().clone()
    params[2].grad = torch.ones_like(params[2])  # a new tensor: the kernel must read it
    opt.step()
    assert not torch.equal(params[2], before)


def test_where_the_optimizer_keeps_the_shadows_they_follow_steps_restores_and_fusion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's hand-off on CUDA (played on the CPU under bf16 autocast, where AdamW's own
    path copies the shadows): no refresh per step, and every other change of the weights
    refreshes them."""
    monkeypatch.setattr("alpha.train.trainer.kernels_available", lambda device: True)
    t = tiny_trainer(tmp_path, precision=torch.bfloat16, wgrad_stream=True, lr=0.05, warmup_iters=1)
    linears = [m for m in t.model.modules() if isinstance(m, Linear)]
    assert t.optimizer.shadows and not t.wgrad_stream.refresh_each_step

    def current() -> bool:
        return all(torch.equal(m.weight_shadow, m.weight.detach().to(torch.bfloat16)) for m in linears)

    assert current()
    t.train_steps(1, periodic=False)  # optimizer state exists: restores take the one-copy path
    snap = t.snapshot()
    before = t.model.lm_head.weight_shadow.clone()
    t.train_steps(3, periodic=False)
    assert current() and not torch.equal(t.model.lm_head.weight_shadow, before)  # the steps moved them
    t.restore(snap)
    assert current() and torch.equal(t.model.lm_head.weight_shadow, before)

    def halve() -> None:
        with torch.no_grad():
            for m in linears:
                m.weight.mul_(0.5)

    t.train_steps(2, periodic=False, after_step=halve)
    assert current()


@needs_kernels
def test_aligned_tensors_get_16_byte_accesses_and_others_a_correct_scalar_kernel() -> None:
    """The addresses come from memory, so only the hints of an aligned table let the compiler
    use vector loads and stores; a table with an odd-sized tensor runs without them."""
    from alpha.train.adamw_kernels import AdamWLaunch

    for shapes, aligned in (([(384, 1152), (384,)], True), ([(384, 1152), (7, 3)], False)):
        params = [torch.randn(s, device="cuda") for s in shapes]
        grads = [torch.randn_like(p) for p in params]
        state = [torch.zeros_like(p) for p in params for _ in range(2)]
        launch = AdamWLaunch(
            params, grads, state[0::2], state[1::2], [None] * len(params), [0.1] * len(params)
        )
        assert launch.aligned is aligned
        one, zero = torch.ones((), device="cuda"), torch.zeros((), device="cuda")
        compiled = launch(one * LR, zero, one, zero, *BETAS, EPS)
        ptx = compiled.asm["ptx"]
        assert ("ld.global.v4" in ptx) is aligned and ("st.global.v4" in ptx) is aligned
