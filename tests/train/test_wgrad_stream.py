"""Weight gradients through WeightGradStream equal autograd's, eager and compiled, in the trainer too."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from alpha.config import ModelConfig
from alpha.model.gpt import GPT
from alpha.model.linear import Linear, WeightGradStream, compile_options
from alpha.train.trainer import wgrad_sm_count
from tests.conftest import capture, tiny_trainer

TINY = ModelConfig(n_embd=32, n_head=2, n_layer=2, block_size=16, vocab_size=50, dropout=0.0)


def _pair(device: str = "cpu", sm_count: int | None = None) -> tuple[GPT, GPT, WeightGradStream]:
    torch.manual_seed(0)
    plain = GPT(TINY).to(device)
    streamed = copy.deepcopy(plain)
    ws = WeightGradStream(torch.device(device), sm_count=sm_count)
    ws.attach(streamed)
    return plain, streamed, ws


def _tokens(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.randint(0, 50, (3, 17), generator=torch.Generator().manual_seed(1)).to(device)
    return t[:, :-1], t[:, 1:]


def _assert_same_grads(a: GPT, b: GPT, atol: float, rtol: float = 1e-4) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert pb.grad is not None, name
        torch.testing.assert_close(pb.grad, pa.grad, atol=atol, rtol=rtol, msg=name)


def _backward_both(plain: GPT, streamed: GPT, ws: WeightGradStream, run: Callable | None = None) -> None:
    """One backward pass of each model (``run``: how to call the streamed one) on the same tokens."""
    x, y = _tokens()
    plain(x, y).backward()
    ws.begin_step()
    (streamed if run is None else run)(x, y).backward()
    ws.join()


def test_every_linear_gets_a_slot_and_its_weight_gradient_equals_autograds() -> None:
    plain, streamed, ws = _pair()
    linears = [m for m in streamed.modules() if isinstance(m, Linear)]
    assert len(linears) == 2 * 4 + 1
    assert sorted(ws.weights) == sorted(m.grad_slot for m in linears)
    assert all(ws.weights[m.grad_slot] is m.weight for m in linears)
    _backward_both(plain, streamed, ws)
    _assert_same_grads(plain, streamed, atol=1e-6)


def test_a_steps_first_gradient_overwrites_and_later_ones_accumulate() -> None:
    plain, streamed, ws = _pair()
    x, y = _tokens()
    for _ in range(2):  # autograd accumulates two backward passes
        plain(x, y).backward()
    for p in streamed.parameters():  # stale gradients that begin_step must not add to
        p.grad = torch.full_like(p, 7.0)
    ws.begin_step()
    for p in streamed.parameters():
        if not any(p is w for w in ws.weights.values()):
            p.grad = None
    for _ in range(2):
        streamed(x, y).backward()
    ws.join()
    _assert_same_grads(plain, streamed, atol=1e-6)


def test_a_model_keeps_its_own_slots_when_another_is_attached_later() -> None:
    plain, streamed, ws = _pair()
    _, _, later = _pair()  # another stream, attached after
    assert not set(later.weights) & set(ws.weights)
    _backward_both(plain, streamed, ws)
    _assert_same_grads(plain, streamed, atol=1e-6)
    assert all(w.grad is None for w in later.weights.values())


def test_without_grad_or_for_a_frozen_weight_the_layer_is_a_plain_linear() -> None:
    _, streamed, ws = _pair()
    x, y = _tokens()
    with torch.no_grad():
        logits = streamed(x)
    assert logits.shape == (3, 16, 50)
    assert all(w.grad is None for w in ws.weights.values())
    streamed.lm_head.weight.requires_grad_(False)
    streamed(x, y).backward()
    ws.join()
    assert streamed.lm_head.weight.grad is None
    assert streamed.layers[0].mlp.fc1.weight.grad is not None


def test_compiled_model_gives_the_same_gradients() -> None:
    plain, streamed, ws = _pair()
    assert compile_options(plain) is None  # nothing attached: PyTorch's defaults
    _backward_both(plain, streamed, ws, torch.compile(streamed, options=compile_options(streamed)))
    _assert_same_grads(plain, streamed, atol=1e-5)


def test_weight_shadows_are_refreshed_each_step_and_train_like_casting() -> None:
    torch.manual_seed(0)
    plain = GPT(TINY)
    streamed = copy.deepcopy(plain)
    ws = WeightGradStream(torch.device("cpu"), shadow_dtype=torch.bfloat16)
    ws.attach(streamed)
    linears = [m for m in streamed.modules() if isinstance(m, Linear)]
    assert all(m.weight_shadow is not None and m.weight_shadow.dtype == torch.bfloat16 for m in linears)
    assert "weight_shadow" not in "".join(streamed.state_dict())  # not saved with the model
    x, y = _tokens()
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain(x, y).backward()
            ws.begin_step()
            streamed(x, y).backward()
        ws.join()
        _assert_same_grads(plain, streamed, atol=1e-2, rtol=5e-2)
        with torch.no_grad():  # a weight update: the next step's shadows must follow it
            for a, b in zip(plain.parameters(), streamed.parameters(), strict=True):
                a.add_(a.grad, alpha=-0.5)
                b.copy_(a)
                a.grad, b.grad = None, None
    ws.begin_step()
    torch.testing.assert_close(linears[0].weight_shadow, linears[0].weight.to(torch.bfloat16))


def test_the_side_streams_sm_count_follows_the_micro_batch_unless_given(tmp_path: Path) -> None:
    def sms(sm_total: int = 132, **train: object) -> int | None:
        return wgrad_sm_count(tiny_trainer(tmp_path, **train).cfg, block_size=512, sm_total=sm_total)

    assert sms(batch_size=20) == 42  # 10,240 tokens leave an H200's SMs idle: 42 of 132
    assert sms(batch_size=32) == 42  # 16,384 tokens: still short
    assert sms(batch_size=40) is None  # 20,480 tokens: every SM
    assert sms(batch_size=20, sm_total=58) is None  # an L4: 10,240 tokens fill its 58 SMs
    assert sms(batch_size=8, sm_total=58) == 18
    assert sms(batch_size=128, wgrad_sms=60) == 60  # given: as given
    assert sms(batch_size=20, wgrad_sms=0) is None  # 0: every SM
    assert WeightGradStream(torch.device("cpu"), sm_count=42).sm_count is None  # no stream, no limit


def test_trainer_steps_with_and_without_the_stream_train_the_same_weights(tmp_path: Path) -> None:
    with_stream = tiny_trainer(tmp_path / "a", batch_size=2, grad_accum_steps=2, wgrad_stream=True)
    without = tiny_trainer(tmp_path / "b", batch_size=2, grad_accum_steps=2, wgrad_stream=False)
    assert with_stream.wgrad_stream is not None and without.wgrad_stream is None
    for i in range(4):  # two micro-batches a step: overwrite, then accumulate
        with_stream._train_step((0, i), i)
        without._train_step((0, i), i)
    for (name, a), b in zip(without.model.named_parameters(), with_stream.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


def test_one_process_with_the_flat_gradient_buffer_trains_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout AdamW's kernel gets on CUDA: every gradient a view into one buffer, the side
    stream's gradients written there, the others gathered there after the backward."""
    plain = tiny_trainer(tmp_path / "a", batch_size=2, grad_accum_steps=2, wgrad_stream=False)
    monkeypatch.setattr("alpha.train.trainer.kernels_available", lambda device: True)
    flat = tiny_trainer(tmp_path / "b", batch_size=2, grad_accum_steps=2, wgrad_stream=True)
    assert plain.reduce_buffer is None and flat.reduce_buffer is not None
    side = {id(w) for w in flat.wgrad_stream.weights.values()}
    assert {id(p) for p, _ in flat._loose} == {id(p) for p in flat.params} - side
    for i in range(4):  # two micro-batches a step: overwrite (or assign), then accumulate
        plain._train_step((0, i), i)
        flat._train_step((0, i), i)
        assert all(p.grad is not None and p.grad.data_ptr() == view.data_ptr() for p, view in flat._loose)
    for (name, a), b in zip(plain.model.named_parameters(), flat.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_side_stream_gradients_under_bf16_autocast_and_graph_capture() -> None:
    plain, streamed, ws = _pair("cuda")
    compiled = torch.compile(streamed, options=compile_options(streamed))
    x, y = _tokens("cuda")

    def step(model: torch.nn.Module, graphed: bool) -> None:
        for p in model.parameters():
            p.grad = None
        if graphed:
            ws.begin_step()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        if graphed:
            ws.join()

    step(plain, False)
    graph, _ = capture(lambda: step(compiled, True), warmup=3)
    for w in ws.weights.values():
        w.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    # fp32 weight gradients against autograd's bf16-rounded ones
    _assert_same_grads(plain, streamed, atol=1e-3, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_side_stream_gemms_held_to_fewer_sms_give_the_same_gradients_and_restore_settings() -> None:
    backend = torch.backends.cuda.preferred_blas_library()
    plain, streamed, ws = _pair("cuda", sm_count=16)
    assert ws.sm_count == 16
    x, y = _tokens("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain(x, y).backward()
        ws.begin_step()
        streamed(x, y).backward()
    ws.join()
    torch.cuda.synchronize()
    _assert_same_grads(plain, streamed, atol=1e-3, rtol=2e-2)
    assert torch._C._get_sm_carveout_experimental() is None
    assert torch.backends.cuda.preferred_blas_library() == backend
