"""AdamW with decay on matrices only, and the learning-rate schedule.

Weight decay applies to every 2-D weight that is a matrix multiply (attention, MLP, the untied
head) and to nothing else: not the embeddings, LayerNorms or biases. The schedule is a linear
warmup to the peak lr followed by a cosine to ``lr_min`` that lands exactly on the last step.
It depends only on the absolute step, so it continues correctly after a resume.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alpha.config import TrainConfig
from alpha.train.adamw import AdamW, initial_state

NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    no_decay_ids = {
        id(p) for m in model.modules() if isinstance(m, NO_DECAY_MODULES) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in no_decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> AdamW:
    """Fused AdamW (CPU and CUDA; one Triton kernel where it runs): it also applies clipping and
    skips on device (``grad_scale`` and ``found_inf``)."""
    return AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )


def ensure_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's per-parameter state now, as its first step would (zero moments, step 0),
    so that every process holds the same tensors before any of them has stepped."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state.update(initial_state(p, on_device=bool(group.get("fused") or group.get("capturable"))))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    assert cfg.warmup_iters is not None and cfg.lr_min is not None
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    span = max(1, cfg.iters - 1 - cfg.warmup_iters)
    progress = min(1.0, (step - cfg.warmup_iters) / span)
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
