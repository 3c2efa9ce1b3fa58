"""Causal self-attention over the qkv projection's output as one op: ``alpha::causal_attention``.

The op takes the (B, T, 3C) output of the qkv projection and returns the (B, T, C) input of the
output projection; its backward returns the (B, T, 3C) gradient of the projection's output. On
CUDA the forward is cuDNN's flash attention (PyTorch's op, on views of q, k and v, writing its
output in their (B, T, H, d) layout, so no copy follows), and the backward is the Triton kernels
of ``alpha.model.attention_kernels``: they take a head dimension of 48 as 32 + 16 columns instead
of padding it to 64, accumulate dq without a float32 buffer, and write the three gradients into
one tensor. Around cuDNN's own backward the step paid for the padding, for its float32 dq and the
conversion, and for concatenating dq, dk and dv. (Our forward kernel is there too, a little slower
than cuDNN's without dropout: ``FORWARD_KERNEL``.)

Attention dropout (the chat preset's 0.1) runs in our kernels too, forward and backward: a seed
tensor drawn on the device each call (``alpha.model.dropout.dropout_seed``, the seed of every
dropout in the model, so a captured step draws a new one at every replay) keys a mask hashed from
the scores' coordinates, which both directions draw again, so nothing of the mask is stored.

Elsewhere the op is PyTorch: the same maths in at least float32 (the op's reference, and its form
on the CPU), with its own dropout mask from the seed. The model uses the op where its kernels
apply (``applies``); otherwise, and for soft-capped scores or a key/value cache, it keeps
``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from alpha.model.kernel_support import kernels_available

# which kernel runs the forward on CUDA: cuDNN's flash attention ("cudnn", through PyTorch's op,
# which writes its output in the (B, T, H, d) layout of q and returns the rows' log-sum-exp) or
# ours ("triton"); the backward is always ours
FORWARD_KERNEL = "cudnn"
# attention dropout through the op too (then the forward is ours: cuDNN's mask cannot be drawn
# again in our backward); False leaves dropout to scaled_dot_product_attention
KERNEL_DROPOUT = True
BLOCK = 64  # sequence lengths the kernels take are multiples of this


def head_split(head_dim: int) -> tuple[int, int] | None:
    """The head's two power-of-two column blocks (48 -> 32, 16), or None where it has no such split."""
    if head_dim < 16 or head_dim % 16:
        return None
    d0 = 1 << (head_dim.bit_length() - 1)
    d1 = head_dim - d0
    if d1 == 0:
        return (d0 // 2, d0 // 2) if d0 >= 32 else None
    if d1 & (d1 - 1) or d1 < 16:
        return None
    return d0, d1


def applies(qkv: torch.Tensor, n_head: int) -> bool:
    """Whether the op's kernels take this qkv (CUDA with Triton on an Ampere or later GPU, 16-bit,
    T a multiple of BLOCK, a head that splits into power-of-two column blocks)."""
    if not kernels_available(qkv.device) or qkv.dtype not in (torch.bfloat16, torch.float16):
        return False
    T, c3 = qkv.shape[1], qkv.shape[2]
    return T % BLOCK == 0 and head_split(c3 // 3 // n_head) is not None and _ampere_or_later(qkv.device.index)


_AMPERE_OR_LATER: dict[int, bool] = {}


@torch.compiler.assume_constant_result  # compiled code takes the answer as a constant
def _ampere_or_later(index: int) -> bool:
    if index not in _AMPERE_OR_LATER:
        _AMPERE_OR_LATER[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    return _AMPERE_OR_LATER[index]


@torch.library.custom_op("alpha::causal_attention", mutates_args=())
def causal_attention(
    qkv: torch.Tensor, n_head: int, dropout_p: float = 0.0, seed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dropout(softmax(q kᵀ / √d, causal)) v as (B, T, C), the rows' natural log-sum-exp as
    (B, H, T)). With ``dropout_p`` > 0 the one-element integer tensor ``seed`` draws the mask, the
    same in the forward and the backward."""
    if applies(qkv, n_head):
        if dropout_p == 0 and FORWARD_KERNEL == "cudnn" and torch.backends.cudnn.is_available():
            return _cudnn_forward(qkv, n_head)
        from alpha.model.attention_kernels import attention_forward

        return attention_forward(qkv.contiguous(), n_head, dropout_p, seed)
    return reference_forward(qkv, n_head, dropout_p, seed)


def _cudnn_forward(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, c3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, c3 // 3 // n_head).permute(2, 0, 3, 1, 4)
    result = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False)
    out, lse = result[0], result[1]
    return out.transpose(1, 2).reshape(B, T, c3 // 3), lse.reshape(B, n_head, T).float()


@causal_attention.register_fake
def _(
    qkv: torch.Tensor, n_head: int, dropout_p: float = 0.0, seed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, c3 = qkv.shape
    out = qkv.new_empty(B, T, c3 // 3)
    lse = qkv.new_empty(B, n_head, T, dtype=torch.float32)
    return out, lse


@torch.library.custom_op("alpha::causal_attention_backward", mutates_args=())
def causal_attention_backward(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    n_head: int,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (B, T, 3C) gradient of qkv."""
    if applies(qkv, n_head):
        from alpha.model.attention_kernels import attention_backward

        return attention_backward(
            grad_out.contiguous(),
            qkv.contiguous(),
            out.contiguous(),
            lse.contiguous(),
            n_head,
            dropout_p,
            seed,
        )
    return reference_backward(grad_out, qkv, out, lse, n_head, dropout_p, seed)


@causal_attention_backward.register_fake
def _(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    n_head: int,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    qkv, n_head, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse, seed)
    ctx.n_head = n_head
    ctx.dropout_p = dropout_p


def _backward(ctx: Any, grad_out: torch.Tensor, _grad_lse: torch.Tensor) -> tuple:
    qkv, out, lse, seed = ctx.saved_tensors
    grad = causal_attention_backward(grad_out, qkv, out, lse, ctx.n_head, ctx.dropout_p, seed)
    return grad, None, None, None


causal_attention.register_autograd(_backward, setup_context=_setup_context)


def reference_mask(
    seed: torch.Tensor, batch: int, n_head: int, T: int, dropout_p: float, device: torch.device
) -> torch.Tensor:
    """The reference's (B, H, T, T) mask of kept probabilities: a CPU generator seeded from
    ``seed`` (the kernels hash theirs on the GPU: another mask for the same seed)."""
    generator = torch.Generator().manual_seed(int(seed.item()))
    return (torch.rand(batch, n_head, T, T, generator=generator) >= dropout_p).to(device)


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _heads(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as (B, H, T, d), at least in float32."""
    B, T, c3 = qkv.shape
    d = c3 // 3 // n_head
    q, k, v = qkv.to(_wide(qkv.dtype)).view(B, T, 3, n_head, d).permute(2, 0, 3, 1, 4)
    return q, k, v


def _probabilities(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal softmax(q kᵀ / √d) and its rows' log-sum-exp (``lse`` where given)."""
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1) if lse is None else lse
    return torch.exp(scores - lse[..., None]), lse


def reference_forward(
    qkv: torch.Tensor, n_head: int, dropout_p: float = 0.0, seed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's maths in PyTorch, at least in float32."""
    B, T, c3 = qkv.shape
    q, k, v = _heads(qkv, n_head)
    p, lse = _probabilities(q, k)
    if dropout_p > 0:
        p = p * reference_mask(seed, B, n_head, T, dropout_p, qkv.device) / (1 - dropout_p)
    out = (p @ v).transpose(1, 2).reshape(B, T, c3 // 3)
    return out.to(qkv.dtype), lse.float().contiguous()


def reference_backward(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    n_head: int,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The gradient of qkv in PyTorch (at least float32), from the forward's saved log-sum-exp."""
    B, T, c3 = qkv.shape
    d = c3 // 3 // n_head
    q, k, v = _heads(qkv, n_head)
    p, _ = _probabilities(q, k, lse)
    do = grad_out.to(q.dtype).view(B, T, n_head, d).transpose(1, 2)
    o = out.to(q.dtype).view(B, T, n_head, d).transpose(1, 2)
    kept = 1.0
    if dropout_p > 0:
        kept = reference_mask(seed, B, n_head, T, dropout_p, qkv.device) / (1 - dropout_p)
    dv = (p * kept).transpose(-1, -2) @ do
    dp = (do @ v.transpose(-1, -2)) * kept
    delta = (do * o).sum(-1, keepdim=True)
    ds = p * (dp - delta) / math.sqrt(d)
    dq = ds @ k
    dk = ds.transpose(-1, -2) @ q
    grads = torch.stack([dq, dk, dv]).permute(1, 3, 0, 2, 4).reshape(B, T, c3)
    return grads.to(qkv.dtype)
