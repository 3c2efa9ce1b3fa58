"""The GPT's math: causality, KV-cache decoding, parameter count, the loss, precision, the lr schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alpha.config import ModelConfig, TrainConfig
from alpha.model.gpt import GPT, KVCache, flops_per_token
from alpha.model.losses import cross_entropy
from alpha.train.optim import lr_at, parameter_groups


def tiny(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_embd=32, n_head=4, **kw)


def test_changing_future_tokens_changes_no_earlier_logits() -> None:
    for soft_cap in (0.0, 30.0):
        torch.manual_seed(0)
        model = GPT(tiny(soft_cap=soft_cap)).eval()
        x = torch.randint(0, 97, (2, 16))
        y = x.clone()
        y[:, 9:] = torch.randint(0, 97, (2, 7))
        with torch.no_grad():
            a, b = model(x), model(y)
        assert torch.equal(a[:, :9], b[:, :9]), f"future tokens leaked (soft_cap={soft_cap})"
        assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_kv_cache_decoding_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(2)
        steps = [model(x[:, :5], cache=cache)[:, -1]]
        for t in range(5, 12):
            steps.append(model(x[:, t : t + 1], cache=cache)[:, -1])
    torch.testing.assert_close(torch.stack(steps[1:], 1), full[:, 5:12][:, :7], atol=1e-5, rtol=1e-5)


def test_seed_model_parameter_count_matches_the_reference() -> None:
    cfg = ModelConfig(vocab_size=4000, block_size=512, n_layer=8, n_embd=384, n_head=8)
    model = GPT(cfg)
    assert model.num_params() == 17_437_440  # reference/trainer.md §2.7
    assert abs(flops_per_token(cfg, model.num_params()) / 1e6 - 113.0) < 0.2  # reference/perf.md §7.1


def test_weight_decay_applies_to_matrices_only() -> None:
    model = GPT(tiny())
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "lm_head.weight" in decayed and "layers.0.attn.wqkv.weight" in decayed
    assert not any(n.startswith(("wte", "wpe")) or "ln" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(iters=100, lr=1e-3, lr_min=1e-4, warmup_iters=10)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == 1e-4 and abs(lrs[9] - 1e-3) < 1e-12
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert abs(lrs[-1] - 1e-4) < 1e-12


def test_cross_entropy_matches_torch_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(64, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (64,))
    ours = cross_entropy(logits, targets)
    (g_ours,) = torch.autograd.grad(ours * 3.0, logits)
    ref = F.cross_entropy(logits, targets)
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    torch.testing.assert_close(ours, ref.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-7, rtol=1e-6)


def test_cross_entropy_of_bf16_logits_is_computed_in_fp32() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(256, 1000) * 4).bfloat16().requires_grad_()
    targets = torch.randint(0, 1000, (256,))
    ours = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(ours, logits)
    exact = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(exact, targets)
    (g_ref,) = torch.autograd.grad(ref, exact)
    assert ours.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert abs(ours.item() - ref.item()) < 1e-5
    torch.testing.assert_close(grad.double(), g_ref, atol=1e-5, rtol=1e-2)


def test_residual_stream_is_bf16_under_bf16_autocast_unless_asked_for_fp32() -> None:
    seen: list[torch.dtype] = []
    for fp32_residual in (False, True):
        torch.manual_seed(0)
        model = GPT(tiny(fp32_residual=fp32_residual))
        handle = model.layers[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
        x = torch.randint(0, 97, (2, 16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, x)
        loss.backward()
        handle.remove()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert seen == [torch.bfloat16, torch.float32]
    with torch.no_grad():  # without autocast nothing changes: fp32 throughout
        model = GPT(tiny())
        model.layers[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
        model(torch.randint(0, 97, (1, 8)))
    assert seen[-1] == torch.float32


def test_fp32_residual_flag_reaches_the_model_config_and_its_wire_form() -> None:
    import argparse

    from alpha.commands.train import add_arguments, configs_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default, _ = configs_from_args(parser.parse_args(["--data", "x.txt"]))
    asked, _ = configs_from_args(parser.parse_args(["--data", "x.txt", "--fp32-residual"]))
    assert default.fp32_residual is False and asked.fp32_residual is True
    assert asked.to_wire()["fp32Residual"] is True
