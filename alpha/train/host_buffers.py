"""Host copies of tensors in buffers kept from one copy to the next.

Checkpoints and sample rounds both need, every so often, a host copy of the model's state that
training can no longer change. Allocating it each time costs more than copying into it: pinned
memory (a device-to-host copy at full bandwidth) and shared memory (which a child process maps
without another copy) are slow to allocate, and fresh pages fault on their first write. A buffer
is reallocated only when its tensor's shape or dtype changes. ``reserve`` allocates and touches
the buffers ahead of the first copy, on any thread, so that the first checkpoint or sample round
of a run does not pay for them in the middle of training. The caller makes sure the previous copy
is no longer being read before copying again, and that no copy runs while a reservation does.
"""

from __future__ import annotations

from typing import Literal

import torch

Memory = Literal["pageable", "pinned", "shared"]
Spec = tuple[torch.Size, torch.dtype]


def specs(tensors: dict[str, torch.Tensor]) -> dict[str, Spec]:
    """The shape and dtype of each tensor: what ``HostBuffers.reserve`` allocates for."""
    return {name: (value.shape, value.dtype) for name, value in tensors.items()}


class HostBuffers:
    def __init__(self, memory: Memory = "pageable") -> None:
        self.memory = memory
        self._buffers: dict[str, torch.Tensor] = {}

    def reserve(self, wanted: dict[str, Spec]) -> dict[str, torch.Tensor]:
        """Allocate the buffers that copies of tensors of these shapes will fill, write them once
        (the pages are then resident) and return them. Raises RuntimeError when shared memory
        cannot be allocated."""
        buffers = dict(self._buffers)
        for name, (shape, dtype) in wanted.items():
            if not _fits(buffers.get(name), shape, dtype):
                buffers[name] = self._allocate(shape, dtype).zero_()
        self._buffers = buffers
        return buffers

    def copy(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy ``tensors`` (on any device) into the host buffers of the same names and return them.

        Raises RuntimeError when shared memory cannot be allocated."""
        buffers = {}
        for name, value in tensors.items():
            value = value.detach()
            buf = self._buffers.get(name)
            if not _fits(buf, value.shape, value.dtype):
                buf = self._allocate(value.shape, value.dtype)
            buffers[name] = buf.copy_(value, non_blocking=self.memory == "pinned")
        self._buffers = buffers
        if self.memory == "pinned" and torch.cuda.is_available():
            torch.cuda.synchronize()  # the non-blocking copies have landed
        return buffers

    def _allocate(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        buf = torch.empty(shape, dtype=dtype, pin_memory=self.memory == "pinned")
        return buf.share_memory_() if self.memory == "shared" else buf


def _fits(buf: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype) -> bool:
    """Whether ``buf`` can hold a copy of a tensor of this shape and dtype."""
    return buf is not None and buf.shape == shape and buf.dtype == dtype
