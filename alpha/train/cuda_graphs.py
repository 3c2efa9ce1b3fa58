"""Getting batches onto the GPU without stalls, and replaying the whole training step as one
CUDA graph.

``PinnedStaging`` copies each step's token windows through a ring of pinned host buffers with
non-blocking transfers, so the host can run several steps ahead of the GPU; a slot is reused only
once the GPU has finished reading it (a CUDA event per slot). On the CPU it just wraps the array.

``GraphedStep`` captures ``Trainer._step_body`` — forward and backward of every micro-batch, the
gradient all-reduce, norm, guards and the fused AdamW update — in one ``torch.cuda.CUDAGraph``
and replays it each step: the launch cost of a few hundred kernels becomes one replay. Capture
needs a few warm-up steps (compilation, allocator, cuBLAS workspaces); they run on a snapshot that
is restored afterwards in place, so warm-up never changes the model. Whatever changes the traced
computation (a new activation) calls ``invalidate`` and the next step captures again; graphs are
kept per activation key so returning to an earlier activation costs nothing. A change that needs
no compilation (an eager activation swapped during a search) is captured without warm-up: the
capture itself executes nothing, so a 25-step candidate pays one capture, not four extra steps.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from alpha.train.trainer import Trainer

WARMUP_STEPS = 3
STAGING_SLOTS = 8
MAX_GRAPHS = 16


class PinnedStaging:
    def __init__(self, device: torch.device, slots: int = STAGING_SLOTS) -> None:
        self.device = device
        self.slots = slots
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._events: list[torch.cuda.Event | None] = [None] * slots
        self._next = 0

    def to_device(self, windows: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Copy (K, B, T + 1) windows to the device, into ``out`` when given."""
        host = torch.from_numpy(windows)
        if self.device.type != "cuda":
            return host if out is None else out.copy_(host)
        slot = self._next
        self._next = (slot + 1) % self.slots
        event = self._events[slot]
        if event is not None:
            event.synchronize()  # the GPU has finished reading this slot's previous contents
        buf = self._buffers[slot]
        if buf is None or buf.shape != host.shape:
            buf = self._buffers[slot] = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        buf.copy_(host)
        if out is None:
            out = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        out.copy_(buf, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[slot] = event
        return out


class GraphedStep:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        cfg = trainer.cfg
        shape = (cfg.grad_accum_steps, cfg.batch_size, trainer.model_cfg.block_size + 1)
        self.tokens = torch.zeros(shape, dtype=torch.int64, device=trainer.device)
        self.lr = torch.zeros((), dtype=torch.float32, device=trainer.device)
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.lr  # fused AdamW reads the lr from this device tensor at replay
            group["capturable"] = True
        self.key: object = None
        # the modes (rank alone / all-reduce) warmed up since the computation last needed it: the
        # first capture of each always warms up (compilation, workspaces, communicators)
        self._warmed_modes: set[bool] = set()
        self.graphs: OrderedDict[object, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle()

    def release(self) -> None:
        """Free every captured graph (before the process group goes: NCCL work lives in them)."""
        torch.cuda.synchronize()
        for graph, _ in self.graphs.values():
            graph.reset()
        self.graphs.clear()

    def invalidate(self, key: object, *, warmup: bool = True) -> None:
        """The computation changed (e.g. a new activation); ``key`` names the new one.

        ``warmup=False``: the new computation compiles nothing new (e.g. an eager activation
        behind a graph break), so it can be captured directly.
        """
        self.key = key
        if warmup:
            self._warmed_modes.clear()

    def run(self, windows: np.ndarray, lr: float) -> torch.Tensor:
        self.trainer.staging.to_device(windows, out=self.tokens)
        self.lr.fill_(lr)
        key = (self.key, self.trainer.local)  # a rank training alone runs no all-reduce
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(key)
        else:
            self.graphs.move_to_end(key)
        graph, values = entry
        graph.replay()
        return values.clone()

    def _capture(self, key: object) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        trainer = self.trainer
        local = self.trainer.local
        if local not in self._warmed_modes:
            snap = trainer.snapshot()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    trainer._step_body(self.tokens, self.lr)
            torch.cuda.current_stream().wait_stream(side)
            trainer.restore(snap)
            self._warmed_modes.add(local)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            values = trainer._step_body(self.tokens, self.lr)
        self.graphs[key] = (graph, values)
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return graph, values
