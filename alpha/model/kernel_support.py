"""Whether the model's Triton kernels run here: on CUDA tensors, with Triton installed (the
CUDA builds of PyTorch bring it; the CPU wheel does not, and there the ops run as PyTorch)."""

from __future__ import annotations

import importlib.util

import torch

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def kernels_available(device: torch.device) -> bool:
    return device.type == "cuda" and TRITON_INSTALLED
