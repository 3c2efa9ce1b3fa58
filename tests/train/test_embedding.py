"""The embeddings as one function (``alpha.model.embedding``): its gradients against PyTorch's
lookups, on the CPU and through the run-sums kernel on CUDA, and where the model takes it."""

from __future__ import annotations

import pytest
import torch

from alpha.config import ModelConfig
from alpha.model import embedding
from alpha.model.gpt import GPT
from alpha.model.kernel_support import kernels_available


def needs_kernels(test):  # type: ignore[no-untyped-def]
    missing = not kernels_available(torch.device("cuda"))
    return pytest.mark.gpu(pytest.mark.skipif(missing, reason="needs CUDA and Triton")(test))


def skewed_tokens(shape: tuple[int, ...], vocab: int, device: str = "cpu") -> torch.Tensor:
    """Token ids as a corpus has them: a few tokens most of the time (runs spanning many chunks)."""
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(shape, generator=generator) ** 4 * vocab).long().to(device)


def lookup_grads(
    idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    wte, wpe = wte.detach().requires_grad_(), wpe.detach().requires_grad_()
    pos = torch.arange(idx.shape[1], device=idx.device)
    (torch.nn.functional.embedding(idx, wte) + wpe[pos]).to(dtype).backward(grad)
    return wte.grad, wpe.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_function_is_the_lookups_in_value_and_gradient(dtype: torch.dtype) -> None:
    idx = skewed_tokens((3, 40), 50)
    wte = torch.randn(50, 24, requires_grad=True)
    wpe = torch.randn(64, 24, requires_grad=True)
    grad = torch.randn(3, 40, 24).to(dtype)
    x = embedding.embeddings(idx, wte, wpe, dtype)
    assert x.dtype == dtype
    torch.testing.assert_close(x, (wte[idx] + wpe[:40]).to(dtype))
    x.backward(grad)
    want_wte, want_wpe = lookup_grads(idx, wte, wpe, grad, dtype)
    torch.testing.assert_close(wte.grad, want_wte)
    torch.testing.assert_close(wpe.grad, want_wpe)
    assert wpe.grad[40:].abs().max() == 0


def test_the_op_passes_torchs_op_checks() -> None:
    idx = skewed_tokens((2, 16), 30)
    grad = torch.randn(2, 16, 8)
    torch.library.opcheck(embedding.embedding_backward, (grad, idx, 30))


def test_the_model_takes_the_function_only_while_gradients_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = embedding.embeddings
    monkeypatch.setattr(embedding, "embeddings", lambda *a: calls.append(1) or original(*a))
    cfg = ModelConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    model = GPT(cfg)
    idx = skewed_tokens((2, 32), 64)
    loss = model(idx, idx)
    assert calls == [1]
    with torch.no_grad():
        model(idx)
    assert calls == [1]
    monkeypatch.setattr(embedding, "ENABLED", False)
    torch.manual_seed(0)
    off = GPT(cfg)
    off.load_state_dict(model.state_dict())
    loss_off = off(idx, idx)
    torch.testing.assert_close(loss, loss_off)
    loss.backward()
    loss_off.backward()
    assert calls == [1]
    for (name, p), q in zip(model.named_parameters(), off.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "dim", "vocab"), [(65536, 384, 4000), (1000, 200, 7), (130, 48, 3000)])
def test_the_run_sums_kernel_is_index_add_in_float32(
    n: int, dim: int, vocab: int, dtype: torch.dtype
) -> None:
    from alpha.model.embedding_kernels import run_sums

    idx = skewed_tokens((n,), vocab, "cuda")
    grad = torch.randn(n, dim, device="cuda").to(dtype)
    want = torch.zeros(vocab, dim, device="cuda").index_add_(0, idx, grad.double().float())
    exact = torch.zeros(vocab, dim, device="cuda", dtype=torch.float64).index_add_(0, idx, grad.double())
    got = run_sums(grad, idx, vocab)
    # float32 sums in another order: as close to the exact sums as index_add_'s own
    assert (got.double() - exact).abs().max() <= 2 * (want.double() - exact).abs().max() + 1e-6


@needs_kernels
def test_the_compiled_model_sums_the_token_gradient_by_runs_as_the_lookup_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from alpha.model import embedding_kernels

    calls = []
    original = embedding_kernels.run_sums
    monkeypatch.setattr(embedding_kernels, "run_sums", lambda *a: calls.append(1) or original(*a))
    cfg = ModelConfig(vocab_size=256, block_size=128, n_layer=2, n_head=4, n_embd=192, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    idx = skewed_tokens((8, 128), 256, "cuda")
    grads = {}
    for enabled in (True, False):
        monkeypatch.setattr(embedding, "ENABLED", enabled)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.compile(model)(idx, idx)
        loss.backward()
        grads[enabled] = (model.wte.weight.grad.clone(), model.wpe.weight.grad.clone())
        torch._dynamo.reset()
    assert calls == [1]
    for ours, theirs in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-3)
