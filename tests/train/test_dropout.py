"""Dropout by a hashed mask (``alpha.model.dropout``): the hash is lowbias32 exactly, the mask keeps
1 - p of the elements independently of their neighbours and of other seeds, compiled code draws the
same mask as eager code and a new seed at every call, the backward applies the forward's mask, and
outside compiled code (and on the CPU by default) the module is PyTorch's dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alpha.config import ModelConfig
from alpha.model import dropout
from alpha.model.gpt import GPT
from alpha.model.linear import compile_options
from tests.conftest import capture


def _lowbias32(x: int) -> int:
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_the_int32_hash_is_lowbias32() -> None:
    xs = [0, 1, 2, 12345, 2**31 - 1, -1, -(2**31), -7]
    got = dropout._lowbias32(torch.tensor(xs, dtype=torch.int32)).tolist()
    assert [g & 0xFFFFFFFF for g in got] == [_lowbias32(x) for x in xs]


def test_the_mask_keeps_one_minus_p_and_scales_what_it_keeps() -> None:
    x = torch.ones(1000, 1000)
    y = dropout.hashed_dropout(x, 0.1, torch.tensor([123], dtype=torch.int32))
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # six binomial standard deviations
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y = dropout.hashed_dropout(x, 0.5, torch.tensor([7], dtype=torch.int32))
    assert abs((y != 0).float().mean().item() - 0.5) < 0.003


def test_masks_are_independent_of_neighbours_and_of_other_seeds() -> None:
    shape = torch.Size([512, 1024])
    mask = dropout.keep_mask(shape, 0.1, torch.tensor([1], dtype=torch.int32)).float()
    for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 0.01
    other = dropout.keep_mask(shape, 0.1, torch.tensor([2], dtype=torch.int32)).float()
    agreement = (mask == other).float().mean().item()
    assert abs(agreement - (0.9**2 + 0.1**2)) < 0.005  # what two independent masks give


def test_compiled_code_draws_the_eager_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 384)
    seed = torch.tensor([987], dtype=torch.int32)
    eager = dropout.hashed_dropout(x, 0.1, seed)
    assert torch.equal(torch.compile(dropout.hashed_dropout)(x, 0.1, seed), eager)


def test_compiled_module_draws_a_new_mask_each_call_and_its_backward_applies_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dropout, "DEVICES", ("cpu",))
    module = dropout.Dropout(0.2).train()
    calls: list[bool] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        calls.append(dropout.applies(x))
        return module(x)

    compiled = torch.compile(f, fullgraph=True)
    torch.manual_seed(0)
    x = torch.randn(256, 384, requires_grad=True)
    w = torch.randn(256, 384)
    first = compiled(x)
    (first * w).sum().backward()
    assert calls and all(calls)  # traced through the hashed path
    kept = first != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.01
    torch.testing.assert_close(x.grad, torch.where(kept, w / 0.8, 0.0))
    second = compiled(x)
    assert not torch.equal(second != 0, kept)


def test_outside_compiled_code_it_is_pytorchs_dropout() -> None:
    x = torch.randn(64, 64)
    module = dropout.Dropout(0.1).train()
    torch.manual_seed(3)
    ours = module(x)
    torch.manual_seed(3)
    assert torch.equal(ours, F.dropout(x, 0.1, training=True))
    assert torch.equal(module.eval()(x), x)
    assert not dropout.applies(x)  # eager code


def test_by_default_compiled_cpu_code_keeps_pytorchs_dropout() -> None:
    seen: list[bool] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(dropout.applies(x))
        return x * 2

    torch.compile(f)(torch.randn(8))
    assert seen == [False]  # DEVICES is CUDA only unless told otherwise


def test_two_sites_in_one_graph_draw_two_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dropout, "DEVICES", ("cpu",))
    first, second = dropout.Dropout(0.5).train(), dropout.Dropout(0.5).train()
    x = torch.ones(64, 64)
    a, b = torch.compile(lambda x: (first(x), second(x)), fullgraph=True)(x)
    assert abs((a == b).float().mean().item() - 0.5) < 0.05  # not one seed shared by both


def test_a_compiled_model_trains_with_the_hashed_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dropout, "DEVICES", ("cpu",))
    cfg = ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    torch.manual_seed(0)
    model = GPT(cfg).train()
    for module in model.modules():  # the residual stream's dropout the only randomness left
        if hasattr(module, "dropout_p"):
            module.dropout_p = 0.0
    x, y = torch.randint(0, 64, (4, 32)), torch.randint(0, 64, (4, 32))
    compiled = torch.compile(model, options=compile_options(model), fullgraph=True)
    first, second = compiled(x, y), compiled(x, y)
    assert first.item() != second.item()  # a new mask at each call
    second.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert compiled(x, y).item() == compiled(x, y).item()  # no dropout in eval


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_captured_compiled_step_draws_a_new_mask_at_every_replay() -> None:
    from torch._inductor.utils import run_and_get_code

    module = dropout.Dropout(0.1).train()
    # x in [0.5, 1.5): no element is zero, so y == 0 exactly where the mask dropped it
    # (a bf16 randn of this size holds an exact 0 about one draw in three on the H200)
    x = (torch.rand(20 * 512, 384, device="cuda") + 0.5).to(torch.bfloat16).requires_grad_()
    w = torch.randn_like(x)
    compiled = torch.compile(module, fullgraph=True)

    def fn() -> tuple[torch.Tensor, torch.Tensor]:
        y = compiled(x)
        (grad,) = torch.autograd.grad((y.float() * w).sum(), x)
        return y, grad

    # compiled (and its kernels tuned) before the capture, which must not compile anything, and
    # on a side stream: the stream x is first used on is the one autograd accumulates its
    # gradient on, and the legacy default stream cannot wait on a capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _, codes = run_and_get_code(fn)
    torch.cuda.current_stream().wait_stream(side)
    assert any("torch.ops.alpha.dropout_seed" in code for code in codes)  # the hashed mask
    graph, (y, grad) = capture(fn, warmup=2)
    masks = []
    for _ in range(2):
        graph.replay()
        kept = y != 0
        assert abs(kept.float().mean().item() - 0.9) < 0.005
        torch.testing.assert_close(grad, torch.where(kept, w / 0.9, 0.0).to(grad.dtype))
        masks.append(kept.clone())
    assert not torch.equal(masks[0], masks[1])


def test_a_module_told_not_to_hash_keeps_pytorchs_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dropout, "DEVICES", ("cpu",))
    module = dropout.Dropout(0.1).train()
    module.hashed = False
    x = torch.randn(64, 64)
    torch.manual_seed(5)
    ours = torch.compile(module)(x)
    torch.manual_seed(5)
    assert torch.equal(ours, torch.compile(lambda x: F.dropout(x, 0.1, training=True))(x))
