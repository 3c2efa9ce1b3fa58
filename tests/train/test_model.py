"""The GPT's math: causality, KV-cache decoding, parameter count, the lr schedule."""

from __future__ import annotations

import torch

from alpha.config import ModelConfig, TrainConfig
from alpha.model.gpt import GPT, KVCache, flops_per_token
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
