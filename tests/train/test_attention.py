"""alpha::causal_attention: the PyTorch form on the CPU and the Triton kernels on CUDA, each against
``scaled_dot_product_attention``; where the model takes the op and where it keeps SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alpha.config import ModelConfig
from alpha.model import attention
from alpha.model.dropout import dropout_seed
from alpha.model.gpt import GPT
from alpha.model.kernel_support import kernels_available
from tests.conftest import capture


def needs_kernels(test):  # type: ignore[no-untyped-def]
    missing = not kernels_available(torch.device("cuda"))
    return pytest.mark.gpu(pytest.mark.skipif(missing, reason="needs CUDA and Triton")(test))


def sdpa(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, c3 = qkv.shape
    C = c3 // 3
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)


def logsumexp(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, c3 = qkv.shape
    d = c3 // 3 // n_head
    q, k, _ = qkv.double().view(B, T, 3, n_head, d).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=qkv.device).triu(1), float("-inf"))
    return torch.logsumexp(scores, dim=-1)


def test_the_op_is_causal_sdpa_in_value_and_gradient_off_cuda() -> None:
    torch.manual_seed(0)
    qkv = torch.randn(2, 40, 3 * 3 * 16, dtype=torch.float64)
    a, b = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    out, lse = attention.causal_attention(a, 3)
    ref = sdpa(b, 3)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse.double(), logsumexp(qkv, 3))
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)  # lse is kept in fp32


def test_the_op_passes_torchs_op_checks() -> None:
    """Fake (meta) implementations, autograd registration and schema agree with the op."""
    qkv = torch.randn(2, 16, 3 * 2 * 16, requires_grad=True)
    torch.library.opcheck(torch.ops.alpha.causal_attention.default, (qkv, 2))


def test_the_ops_dropout_is_one_mask_a_seed_in_value_and_gradient_off_cuda() -> None:
    """With dropout the op is a deterministic function of qkv for a given seed (the same mask in
    the forward and the backward: gradcheck in float64), a different one for another seed, and
    its expected value is attention without dropout."""
    torch.manual_seed(0)
    qkv = torch.randn(1, 8, 3 * 2 * 16, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor([7])
    torch.autograd.gradcheck(lambda x: attention.causal_attention(x, 2, 0.3, seed)[0], (qkv,))
    a = attention.causal_attention(qkv, 2, 0.3, seed)[0]
    assert torch.equal(a, attention.causal_attention(qkv, 2, 0.3, seed)[0])
    assert not torch.equal(a, attention.causal_attention(qkv, 2, 0.3, torch.tensor([8]))[0])
    many = torch.stack([attention.causal_attention(qkv, 2, 0.3, torch.tensor([s]))[0] for s in range(400)])
    torch.testing.assert_close(many.mean(0), sdpa(qkv, 2), atol=0.1, rtol=0.1)


def test_the_op_with_dropout_passes_torchs_op_checks() -> None:
    qkv = torch.randn(2, 16, 3 * 2 * 16, requires_grad=True)
    torch.library.opcheck(torch.ops.alpha.causal_attention.default, (qkv, 2, 0.1, torch.tensor([3])))


def test_compiled_code_takes_where_the_op_applies_as_a_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    """``applies`` (CUDA and Triton faked here, the GPU generation included) traces into one
    graph: no graph break, no trace into CUDA queries."""
    monkeypatch.setattr(attention, "kernels_available", lambda device: True)
    monkeypatch.setitem(attention._AMPERE_OR_LATER, None, True)  # a CPU tensor's device index

    def gate(qkv: torch.Tensor) -> torch.Tensor:
        return qkv + 1 if attention.applies(qkv, 2) else qkv - 1

    compiled = torch.compile(gate, fullgraph=True, backend="eager")
    fits = torch.zeros(1, 64, 3 * 2 * 48, dtype=torch.bfloat16)
    torch.testing.assert_close(compiled(fits), torch.ones_like(fits))
    too_short = torch.zeros(1, 60, 3 * 2 * 48, dtype=torch.bfloat16)  # not a multiple of BLOCK
    torch.testing.assert_close(compiled(too_short), -torch.ones_like(too_short))


def test_the_compiled_model_traces_the_op_whole_and_trains_as_with_sdpa(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model compiled in one graph with the op in it (its CPU form running inside; the gate
    opened for tracing only): loss and gradients as the eager model's with SDPA."""
    from alpha.model.linear import compile_options

    real = attention.applies
    monkeypatch.setattr(attention, "applies", lambda qkv, n: torch.compiler.is_compiling() or real(qkv, n))
    cfg = ModelConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(cfg)
    x, y = torch.randint(0, 64, (2, 64)), torch.randint(0, 64, (2, 64))
    compiled = torch.compile(model, options=compile_options(model), fullgraph=True)
    loss = compiled(x, y)
    loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for block in model.layers:
        block.attn.use_kernels = False
    reference = model(x, y)
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for a, p in zip(ours, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-4)


def test_compiled_code_draws_a_new_dropout_seed_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from alpha.model.linear import compile_options

    real = attention.applies
    monkeypatch.setattr(attention, "applies", lambda qkv, n: torch.compiler.is_compiling() or real(qkv, n))
    cfg = ModelConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    torch.manual_seed(0)
    model = GPT(cfg)
    for module in model.modules():  # attention's dropout the only randomness left
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    x, y = torch.randint(0, 64, (2, 64)), torch.randint(0, 64, (2, 64))
    compiled = torch.compile(model, options=compile_options(model), fullgraph=True)
    first, second = compiled(x, y), compiled(x, y)
    assert first.item() != second.item()
    second.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_heads_split_into_two_power_of_two_column_blocks() -> None:
    from alpha.model.attention import head_split

    assert head_split(48) == (32, 16)
    assert head_split(64) == (32, 32)
    assert head_split(80) == (64, 16)
    assert head_split(96) == (64, 32)
    assert (
        head_split(40) is None and head_split(56) is None and head_split(8) is None and head_split(16) is None
    )
    assert head_split(32) == (16, 16)


def test_the_model_keeps_sdpa_where_the_kernels_do_not_apply() -> None:
    """On the CPU, under dropout and with a cache the model never reaches the op's kernels; its
    output is the same with the op's use switched off."""
    cfg = ModelConfig(vocab_size=50, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    x = torch.randint(0, 50, (2, 64))
    assert not attention.applies(torch.randn(2, 64, 96), 2)
    with torch.no_grad():
        on = model(x)
        for block in model.layers:
            block.attn.use_kernels = False
        off = model(x)
    torch.testing.assert_close(on, off)


@needs_kernels
@pytest.mark.parametrize("shape", [(2, 512, 8, 48), (3, 128, 4, 48), (1, 256, 2, 64), (2, 192, 3, 96)])
@pytest.mark.parametrize("forward", ["cudnn", "triton"])
def test_the_kernels_match_fp32_attention_as_closely_as_cudnn(
    shape: tuple[int, int, int, int], forward: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attention, "FORWARD_KERNEL", forward)
    B, T, H, d = shape
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3 * H * d, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(B, T, H * d, device="cuda", dtype=torch.bfloat16)
    assert attention.applies(qkv, H)
    exact = qkv.double().requires_grad_()
    ref = sdpa(exact, H)
    ref.backward(grad.double())
    ours = qkv.clone().requires_grad_()
    out, lse = attention.causal_attention(ours, H)
    out.backward(grad)
    bf16 = qkv.clone().requires_grad_()
    with torch.nn.attention.sdpa_kernel(
        [torch.nn.attention.SDPBackend.CUDNN_ATTENTION, torch.nn.attention.SDPBackend.FLASH_ATTENTION]
    ):
        theirs = sdpa(bf16, H)
    theirs.backward(grad)
    torch.testing.assert_close(lse.double(), logsumexp(qkv, H), atol=1e-3, rtol=1e-4)
    out_err = (out.double() - ref).abs().max().item()
    their_out_err = (theirs.double() - ref).abs().max().item()
    assert out_err <= max(2 * their_out_err, 1e-2)
    grad_err = (ours.grad.double() - exact.grad).abs().max().item()
    their_grad_err = (bf16.grad.double() - exact.grad).abs().max().item()
    assert grad_err <= max(2 * their_grad_err, 2e-2)


@needs_kernels
def test_the_compiled_model_with_the_op_trains_as_with_sdpa() -> None:
    cfg = ModelConfig(vocab_size=256, block_size=128, n_layer=2, n_head=4, n_embd=192, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    x = torch.randint(0, 256, (4, 128), device="cuda")
    y = torch.randint(0, 256, (4, 128), device="cuda")
    losses = {}
    grads = {}
    for use in (True, False):
        for block in model.layers:
            block.attn.use_kernels = use
        model.zero_grad(set_to_none=True)
        step = torch.compile(model)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(x, y)
        loss.backward()
        losses[use] = loss.item()
        grads[use] = torch.cat([p.grad.flatten().float() for p in model.parameters()])
        torch._dynamo.reset()
    assert abs(losses[True] - losses[False]) < 2e-3
    cos = F.cosine_similarity(grads[True], grads[False], dim=0).item()
    assert cos > 0.999


@needs_kernels
@pytest.mark.parametrize("shape", [(2, 512, 8, 48), (3, 128, 4, 64)])
def test_the_kernels_dropout_matches_attention_under_their_own_mask(shape: tuple[int, int, int, int]) -> None:
    from alpha.model.attention_kernels import dropout_mask

    B, T, H, d = shape
    p = 0.1
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3 * H * d, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(B, T, H * d, device="cuda", dtype=torch.bfloat16)
    seed = dropout_seed(torch.device("cuda"))
    ours = qkv.clone().requires_grad_()
    out, _ = attention.causal_attention(ours, H, p, seed)
    out.backward(grad)
    kept = dropout_mask(seed, B, H, T, p)
    causal = torch.ones(T, T, dtype=torch.bool, device="cuda").tril()
    rate = kept[..., causal].float().mean().item()
    assert abs(rate - (1 - p)) < 0.01
    assert not torch.equal(kept, dropout_mask(seed + 1, B, H, T, p))
    exact = qkv.double().requires_grad_()
    q, k, v = exact.view(B, T, 3, H, d).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, float("-inf"))
    ref = ((scores.softmax(-1) * kept / (1 - p)) @ v).transpose(1, 2).reshape(B, T, H * d)
    ref.backward(grad.double())
    assert (out.double() - ref).abs().max().item() < 2e-2
    assert (ours.grad.double() - exact.grad).abs().max().item() < 4e-2


@needs_kernels
def test_a_captured_graph_draws_a_new_dropout_mask_at_every_replay() -> None:
    qkv = torch.randn(2, 128, 3 * 4 * 48, device="cuda", dtype=torch.bfloat16)

    def step() -> torch.Tensor:
        return attention.causal_attention(qkv, 4, 0.1, dropout_seed(qkv.device))[0]

    for fn in (step, torch.compile(step)):
        graph, out = capture(fn)
        graph.replay()
        first = out.clone()
        graph.replay()
        assert not torch.equal(first, out)


@needs_kernels
def test_the_rowsum_pass_reads_in_16_byte_vectors() -> None:
    """rowsum(dO ∘ O) is a pass over two (B, T, C) tensors: with the head size known to the
    compiler its loads are vectors (computed at run time it gave scalar 2-byte loads)."""
    from alpha.model import attention_kernels

    rows, hd = 4096, 48
    out = torch.randn(rows, hd, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(out)
    delta = torch.empty(rows, device="cuda")
    compiled = attention_kernels._attention_delta_kernel[(rows // attention_kernels.DELTA_BLOCK,)](
        out, grad, delta, rows, BLOCK=attention_kernels.DELTA_BLOCK, HD=hd, D=64, num_warps=4
    )
    torch.testing.assert_close(delta, (out.float() * grad.float()).sum(1), atol=1e-3, rtol=1e-4)
    assert "ld.global.v4" in compiled.asm["ptx"]
