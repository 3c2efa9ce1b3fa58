"""The GPT: pre-LayerNorm decoder, learned positions, causal SDPA attention, untied head.

Follows GPT-2 (and nanoGPT): token + position embeddings, L blocks of ``x + attn(ln1(x))`` and
``x + mlp(ln2(x))``, a final LayerNorm and a linear head. No linear layer has a bias; LayerNorms
do. Initialisation is GPT-2's: N(0, 0.02), residual projections scaled by 1/sqrt(2L).

Under bf16 autocast the residual stream itself is bf16 (Megatron-LM's default; ``fp32_residual``
keeps it in fp32), which halves the memory traffic of every residual add and LayerNorm, forward
and backward. Attention is ``alpha::causal_attention`` (``alpha.model.attention``: cuDNN's forward,
or ours under dropout, and a Triton backward, over the qkv projection's output) where its kernels
apply, and otherwise (a key/value cache, the CPU) ``scaled_dot_product_attention``; a tanh
soft-cap on the scores needs the explicit path. The loss is ``losses.cross_entropy``, which never
materialises fp32 log-probabilities; while gradients are taken on CUDA the head and the loss are one
function (``alpha.model.head_loss``) that computes the logits' gradient in the forward pass.

``forward`` also runs incremental decoding with a per-layer KV cache (``KVCache``), used by
sampling; training never passes a cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alpha.config import ModelConfig
from alpha.model import attention as attention_op
from alpha.model import head_loss as head_loss_op
from alpha.model.activations import MLP
from alpha.model.dropout import Dropout, dropout_seed
from alpha.model.linear import Linear, autocast_dtype
from alpha.model.losses import cross_entropy


@dataclass
class LayerCache:
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


class KVCache:
    """Keys and values of every layer for the tokens decoded so far."""

    def __init__(self, n_layer: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layer)]

    @property
    def length(self) -> int:
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.soft_cap = cfg.soft_cap
        self.dropout_p = cfg.dropout
        self.wqkv = Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.wo = Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = Dropout(cfg.dropout)
        # alpha::causal_attention where its kernels apply (no cache or soft cap); False
        # keeps scaled_dot_product_attention everywhere (the plain loop of ``alpha bench``)
        self.use_kernels = True

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.wqkv(x)
        dropout = self.dropout_p if self.training else 0.0
        if (
            self.use_kernels
            and cache is None
            and (dropout == 0.0 or attention_op.KERNEL_DROPOUT)
            and self.soft_cap <= 0
            and attention_op.applies(qkv, self.n_head)
        ):
            seed = dropout_seed(qkv.device) if dropout > 0 else None
            y, _ = attention_op.causal_attention(qkv, self.n_head, dropout, seed)
            return self.resid_dropout(self.wo(y))
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        past = 0
        if cache is not None:
            if cache.k is not None:
                past = cache.k.shape[2]
                k = torch.cat([cache.k, k], dim=2)
                v = torch.cat([cache.v, v], dim=2)
            cache.k, cache.v = k, v
        if self.soft_cap > 0:
            y = self._soft_capped(q, k, v, past, dropout)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask = _causal_mask(T, past, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.wo(y))

    def _soft_capped(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int, dropout: float
    ) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        scores = self.soft_cap * torch.tanh(scores / self.soft_cap)
        mask = _causal_mask(q.shape[2], past, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.dropout(F.softmax(scores.float(), dim=-1).to(q.dtype), p=dropout, training=dropout > 0)
        return probs @ v


def _causal_mask(t_new: int, past: int, device: torch.device) -> torch.Tensor:
    """Boolean (t_new, past + t_new) mask: query i (at position past + i) sees keys <= its position."""
    rows = torch.arange(t_new, device=device)[:, None] + past
    cols = torch.arange(past + t_new, device=device)[None, :]
    return cols <= rows


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("attn.wo.weight") or name.endswith("mlp.fc2.weight"):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy when ``targets`` is given, else the logits of every position."""
        T = idx.shape[1]
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block size {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        if not self.config.fp32_residual and autocast_dtype(x.device) == torch.bfloat16:
            x = x.to(torch.bfloat16)
        for i, block in enumerate(self.layers):
            x = block(x, cache.layers[i] if cache is not None else None)
        h = self.ln_f(x)
        if targets is not None and head_loss_op.applies(h, self.lm_head):
            return head_loss_op.head_loss(h, self.lm_head, targets)
        logits = self.lm_head(h)
        if targets is None:
            return logits
        return cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params incl. the head) + attention (nanoGPT's
    estimate; 113.0 MFLOP/token for the seed model, as reference/perf.md uses)."""
    non_embedding = n_params - cfg.vocab_size * cfg.n_embd - cfg.block_size * cfg.n_embd
    return 6 * non_embedding + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
