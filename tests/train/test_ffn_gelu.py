"""The GELU FFN with its activation in the GEMMs' epilogues (``alpha.model.ffn_gelu``): the loss
and every gradient as fc1 → GELU → fc2 gives them, eager and compiled, with and without the side
stream's slots (on the CPU the ops run their PyTorch forms); on a GPU, cuBLASLt's epilogues
against PyTorch's maths, its GELU pinned to the tanh approximation, and the step on CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from alpha.config import ModelConfig
from alpha.model import cublaslt, ffn_gelu
from alpha.model.activations import Elementwise, plain_gelu
from alpha.model.gelu import reference_backward
from alpha.model.gpt import GPT
from alpha.model.linear import WeightGradStream
from tests.conftest import assert_compiled_with_slots_matches_eager, assert_gate_changes_nothing

CFG = ModelConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
needs_cublaslt = pytest.mark.skipif(not cublaslt.available(), reason="needs CUDA")


@pytest.mark.parametrize("slots", [False, True])
def test_the_model_trains_through_the_fused_ffn_as_through_fc1_gelu_fc2(
    slots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = ffn_gelu._GeluFFN.apply
    monkeypatch.setattr(ffn_gelu._GeluFFN, "apply", lambda *a: calls.append(1) or real(*a))

    def set_gate(gate: bool) -> None:
        monkeypatch.setattr(ffn_gelu, "applies", lambda x, fc1, fc2: gate)

    assert_gate_changes_nothing(CFG, slots, set_gate)
    assert len(calls) == CFG.n_layer, "the fused FFN did not run once in every block"


def test_the_fused_ffn_applies_only_to_16_bit_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ffn_gelu, "_epilogues_here", lambda t: True)
    mlp = GPT(CFG).layers[0].mlp
    x = torch.randn(2, 8, 32)
    assert not ffn_gelu.applies(x, mlp.fc1, mlp.fc2)  # fp32
    assert ffn_gelu.applies(x.half(), mlp.fc1, mlp.fc2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ffn_gelu.applies(x, mlp.fc1, mlp.fc2)
        with torch.no_grad():
            assert not ffn_gelu.applies(x, mlp.fc1, mlp.fc2)
        monkeypatch.setattr(ffn_gelu, "ENABLED", False)  # ALPHA_GELU_EPILOGUE=0
        assert not ffn_gelu.applies(x, mlp.fc1, mlp.fc2)


@pytest.mark.parametrize("activation", ["plain", "relu2"])
def test_other_activations_keep_their_own_path(activation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain loop's PyTorch GELU and every other activation never take the fused FFN."""
    monkeypatch.setattr(ffn_gelu, "applies", lambda x, fc1, fc2: True)
    monkeypatch.setattr(ffn_gelu._GeluFFN, "apply", lambda *a: pytest.fail("the fused FFN ran"))
    cfg = copy.deepcopy(CFG)
    if activation == "relu2":
        cfg.ffn_activation = "relu2"
    model = GPT(cfg)
    if activation == "plain":
        for block in model.layers:
            block.mlp.act = Elementwise("gelu", plain_gelu)
    x, y = torch.randint(0, 61, (2, 32)), torch.randint(0, 61, (2, 32))
    model(x, y).backward()


def test_the_compiled_model_with_slots_matches_the_eager_unfused_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One graph with both ops of the fused FFN and the side stream's (the gate opened for tracing
    only, so the compiled code runs the ops' PyTorch forms)."""
    monkeypatch.setattr(ffn_gelu, "applies", lambda x, fc1, fc2: torch.compiler.is_compiling())
    assert_compiled_with_slots_matches_eager(CFG)


def _gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float())


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float(), approximate="tanh")


@pytest.mark.gpu
@needs_cublaslt
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cublaslt_gelu_epilogue_is_the_tanh_approximation(dtype: torch.dtype) -> None:
    """With W = I the pre-activation is x itself. On [-4, -1] tanh-GELU and erf-GELU differ by
    3-45%: cuBLASLt's values sit within 16-bit rounding of the first (and 1e-4 in the far tail,
    where its tanh is approximate), and on average several times closer to it than to erf's."""
    x = torch.linspace(-4, -1, 64 * 384, device="cuda").to(dtype).view(64, 384)
    act, pre = cublaslt.linear_gelu(x, torch.eye(384, device="cuda", dtype=dtype))
    torch.testing.assert_close(pre, x, atol=0, rtol=0)
    torch.testing.assert_close(act.float(), _gelu_tanh(x), atol=1e-4, rtol=2**-7)
    from_tanh = (act.float() - _gelu_tanh(x)).abs().mean()
    from_erf = (act.float() - _gelu_erf(x)).abs().mean()
    assert from_tanh < 0.5 * from_erf


@pytest.mark.gpu
@needs_cublaslt
@pytest.mark.parametrize("rows", [1001, 10240])
@pytest.mark.parametrize("offset", [0, 8])
def test_cublaslt_epilogues_match_pytorch(rows: int, offset: int) -> None:
    """Both epilogues against fp32 PyTorch, within the 16-bit rounding of their outputs; ``offset``
    elements of the inputs' storage before them, so the operands are 16-byte aligned only."""
    torch.manual_seed(0)

    def tensor(*shape: int, scale: float = 1.0) -> torch.Tensor:
        n = torch.Size(shape).numel()
        storage = torch.randn(n + offset, device="cuda", dtype=torch.bfloat16) * scale
        return storage[offset:].view(*shape)

    x, dy = tensor(rows, 384), tensor(rows, 384)
    w1, w2 = tensor(1536, 384, scale=384**-0.5), tensor(384, 1536, scale=1536**-0.5)
    act, pre = cublaslt.linear_gelu(x, w1)
    ref_pre = x.float() @ w1.float().t()
    torch.testing.assert_close(pre.float(), ref_pre, atol=1e-2, rtol=2**-7)
    torch.testing.assert_close(act.float(), _gelu_tanh(ref_pre), atol=1e-2, rtol=2**-7)
    dh = cublaslt.linear_input_grad_dgelu(dy, w2, pre)
    ref_dh = reference_backward(dy.float() @ w2.float(), pre.float())
    torch.testing.assert_close(dh.float(), ref_dh, atol=1e-2, rtol=2**-7)


@pytest.mark.gpu
@needs_cublaslt
def test_the_fused_ffn_on_cuda_matches_fc1_gelu_fc2_with_the_side_stream() -> None:
    """Under bf16 autocast with the side stream's slots, the block's gradients match the unfused
    path's within bf16 rounding, and the fused path ran."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=500, block_size=64, n_layer=2, n_head=4, n_embd=128, dropout=0.0)
    plain = GPT(cfg).cuda()
    model = copy.deepcopy(plain)
    stream = WeightGradStream(torch.device("cuda"), shadow_dtype=torch.bfloat16)
    stream.attach(model)
    x, y = torch.randint(0, 500, (4, 64), device="cuda"), torch.randint(0, 500, (4, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = torch.randn(4, 64, 128, device="cuda")
        assert ffn_gelu.applies(h, model.layers[0].mlp.fc1, model.layers[0].mlp.fc2)
        stream.begin_step()
        model(x, y).backward()
        stream.join()
        plain(x, y).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, atol=0.03 * scale, rtol=0.05, msg=name)
