"""The head and the loss as one function (``alpha.model.head_loss``): the loss and every gradient
as the logits-then-``cross_entropy`` path gives them, eager and compiled, with and without the
side stream's slots; the gradient op against PyTorch, and its Triton kernel on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alpha.config import ModelConfig
from alpha.model import head_loss
from alpha.model.gpt import GPT
from alpha.model.kernel_support import kernels_available
from alpha.model.losses import reference_cross_entropy_grad
from tests.conftest import assert_compiled_with_slots_matches_eager, assert_gate_changes_nothing

CFG = ModelConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def test_the_gradient_op_is_the_mean_cross_entropys_gradient() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(40, 70) * 3)[:, :61]  # strided rows, as Inductor pads them
    targets = torch.randint(0, 61, (40,))
    row_loss, grad = torch.ops.alpha.cross_entropy_grad(logits, targets)
    torch.testing.assert_close(row_loss, F.cross_entropy(logits, targets, reduction="none"))
    leaf = logits.clone().requires_grad_()
    F.cross_entropy(leaf, targets).backward()
    torch.testing.assert_close(grad, leaf.grad)
    half = logits.to(torch.bfloat16)
    row_loss16, grad16 = reference_cross_entropy_grad(half, targets)
    assert row_loss16.dtype == torch.float32 and grad16.dtype == torch.bfloat16


@pytest.mark.parametrize("slots", [False, True])
def test_the_model_trains_through_the_fused_head_as_through_the_logits(
    slots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate opened on the CPU (the op runs its PyTorch form): the loss and every parameter's
    gradient, under a loss scale of 0.37 (a micro-batch's share), equal the unfused path's."""
    calls = []
    real = head_loss._HeadLoss.apply
    monkeypatch.setattr(head_loss._HeadLoss, "apply", lambda *a: calls.append(1) or real(*a))

    def set_gate(gate: bool) -> None:
        monkeypatch.setattr(head_loss, "kernels_available", lambda device: gate)

    assert_gate_changes_nothing(CFG, slots, set_gate)
    assert len(calls) == 1, "the fused head did not run exactly once"


def test_the_fused_head_stays_out_of_evaluation_and_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head_loss, "kernels_available", lambda device: True)
    model = GPT(CFG)
    h = torch.randn(2, 8, 32)
    assert head_loss.applies(h, model.lm_head)
    with torch.no_grad():
        assert not head_loss.applies(h, model.lm_head)
    with torch.autocast("cpu", dtype=torch.float16):  # fp16: the gradient would underflow
        assert not head_loss.applies(h, model.lm_head)
    assert not head_loss.applies(h.half(), model.lm_head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_loss.applies(h, model.lm_head)
    model.lm_head.weight.requires_grad_(False)
    assert not head_loss.applies(h, model.lm_head)


def test_the_compiled_model_with_slots_matches_the_eager_unfused_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One graph with the gradient op and the side stream's op in it (the gate opened for tracing
    only, so the compiled code runs the ops' PyTorch forms)."""
    monkeypatch.setattr(head_loss, "kernels_available", lambda device: torch.compiler.is_compiling())
    assert_compiled_with_slots_matches_eager(CFG)


@pytest.mark.gpu
@pytest.mark.skipif(not kernels_available(torch.device("cuda")), reason="needs CUDA and Triton")
def test_the_gradient_kernel_matches_pytorch_on_padded_bf16_logits() -> None:
    full = torch.randn(3001, 4032, device="cuda", dtype=torch.bfloat16) * 4
    logits = full[:, :4000]
    targets = torch.randint(0, 4000, (3001,), device="cuda")
    row_loss, grad = torch.ops.alpha.cross_entropy_grad(logits, targets)
    ref_loss, ref_grad = reference_cross_entropy_grad(logits, targets)
    assert grad.dtype == torch.bfloat16 and grad.is_contiguous()
    torch.testing.assert_close(row_loss, ref_loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.float(), atol=1e-9, rtol=2**-7)


def test_the_trainer_with_accumulation_and_the_flat_buffer_trains_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two micro-batches a step (the loss's scale 1/2 reaching the head's backward), the side
    stream's slots and the flat gradient buffer as on CUDA: four steps through the fused head
    train the weights the logits-then-loss path does."""
    from tests.conftest import tiny_trainer

    monkeypatch.setattr("alpha.train.trainer.kernels_available", lambda device: True)
    plain = tiny_trainer(tmp_path / "a", batch_size=2, grad_accum_steps=2, wgrad_stream=True)
    fused = tiny_trainer(tmp_path / "b", batch_size=2, grad_accum_steps=2, wgrad_stream=True)
    for i in range(4):
        plain._train_step((0, i), i)
    calls = []
    real = head_loss._HeadLoss.apply
    monkeypatch.setattr(head_loss._HeadLoss, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(head_loss, "kernels_available", lambda device: True)
    for i in range(4):
        fused._train_step((0, i), i)
    assert len(calls) == 8  # every micro-batch
    for (name, a), b in zip(plain.model.named_parameters(), fused.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
