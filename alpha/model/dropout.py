"""Dropout whose mask is a hash of each element's index, for compiled CUDA code.

``nn.Dropout`` under ``torch.compile`` becomes Inductor's ``rand`` inside the kernel around it, and
Triton's ``rand`` runs a whole Philox (ten rounds of multiplies, for four numbers of which one is
used) for every element: on the seed model's residual stream the add + dropout + LayerNorm kernel
took 25 µs against 9 µs without dropout. Here the mask is Wellons' lowbias32 hash (two multiplies,
three xor-shifts) of the element's flat index xor a random seed drawn once per call, written as
int32 tensor operations that Inductor fuses into the same kernel; the backward can draw the mask
again from the saved seed instead of storing it (Inductor's partitioner decides which). Attention's
dropout uses the same hash in its kernels (``alpha.model.attention_kernels``); here a dropped
element is one whose hash's top 24 bits fall below ``p · 2²⁴``, so the keep rate is 1 − p to within
2⁻²⁴.

The seed comes from ``alpha::dropout_seed``, an op tagged as seeded randomness: compiled code keeps
every call (no two sites share a seed), never recomputes it in the backward, and reads it from a
one-element buffer instead of inlining the random draw into every element. Inside a captured CUDA
graph the draw advances with each replay, as any random op's does. Attention's dropout takes its
seed from the same op.

``Dropout`` is a drop-in ``nn.Dropout``: the hashed mask where it pays (``applies``: while
compiling, on CUDA), PyTorch's dropout elsewhere (eager code, where the hash would be a dozen
kernels, and the CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# where the hashed mask is used while compiling (tests add "cpu")
DEVICES: tuple[str, ...] = ("cuda",)
_MASK_BITS = 24  # the hash's top bits compared with p · 2^24


@torch.library.custom_op("alpha::dropout_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def dropout_seed(device: torch.device) -> torch.Tensor:
    """A fresh one-element int32 seed on ``device``, from the device's generator."""
    return torch.randint(-(2**31), 2**31 - 1, (1,), device=device, dtype=torch.int32)


@dropout_seed.register_fake
def _(device: torch.device) -> torch.Tensor:
    return torch.empty(1, device=device, dtype=torch.int32)


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 on int32 tensors: multiplies wrap, right shifts are made logical by masking."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -2073254261  # 0x846CA68B as int32
    return x ^ ((x >> 16) & 0xFFFF)


def keep_mask(shape: torch.Size, p: float, seed: torch.Tensor) -> torch.Tensor:
    """The mask of ``hashed_dropout`` (True: kept) for a tensor of ``shape`` and a one-element int32 seed."""
    index = torch.arange(math.prod(shape), device=seed.device, dtype=torch.int32).view(shape)
    bits = (_lowbias32(index ^ seed) >> (32 - _MASK_BITS)) & ((1 << _MASK_BITS) - 1)
    return bits >= round(p * (1 << _MASK_BITS))


def hashed_dropout(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    """Dropout of ``x`` with probability ``p`` by ``keep_mask``, the kept elements scaled by 1 / (1 − p)."""
    return torch.where(keep_mask(x.shape, p, seed), x * (1.0 / (1.0 - p)), 0.0).to(x.dtype)


def applies(x: torch.Tensor) -> bool:
    """Whether ``Dropout`` uses the hashed mask for ``x``: compiling, on a device of ``DEVICES``,
    with fewer than 2³¹ elements (the index is int32)."""
    return torch.compiler.is_compiling() and x.device.type in DEVICES and x.numel() < 2**31


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the hashed mask where ``applies``; ``hashed = False`` keeps PyTorch's
    dropout everywhere (the plain loop of ``alpha bench``)."""

    hashed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.hashed and applies(x) and self.p < 1.0 and not self.inplace:
            return hashed_dropout(x, self.p, dropout_seed(x.device))
        return F.dropout(x, self.p, training=True, inplace=self.inplace)
