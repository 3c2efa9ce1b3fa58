"""Host buffers reserved ahead of the first copy (``alpha.train.host_buffers``), by the trainer
for its checkpoints and by the sampler process for its weights."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from alpha.events import EventBus
from alpha.train.host_buffers import HostBuffers, specs
from alpha.train.sampler_process import HostWeights
from tests.conftest import tiny_trainer


def test_a_copy_fills_the_reserved_buffers_and_a_changed_shape_gets_a_new_one() -> None:
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    buffers = HostBuffers()
    reserved = {name: buf.data_ptr() for name, buf in buffers.reserve(specs(tensors)).items()}
    copied = buffers.copy(tensors)
    assert {name: buf.data_ptr() for name, buf in copied.items()} == reserved
    assert torch.equal(copied["a"], tensors["a"]) and torch.equal(copied["b"], tensors["b"])
    grown = buffers.copy({"a": torch.randn(4, 4), "b": tensors["b"]})
    assert grown["a"].data_ptr() != reserved["a"] and grown["b"].data_ptr() == reserved["b"]


def test_shared_buffers_are_reserved_in_shared_memory() -> None:
    reserved = HostBuffers("shared").reserve({"w": (torch.Size([8, 8]), torch.float32)})
    assert reserved["w"].is_shared()


def test_the_sampler_weights_are_reserved_on_a_thread_and_the_first_copy_only_fills_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allocated_on: list[str] = []
    allocate = HostBuffers._allocate

    def recording(self: HostBuffers, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        allocated_on.append(threading.current_thread().name)
        return allocate(self, shape, dtype)

    monkeypatch.setattr(HostBuffers, "_allocate", recording)
    model = torch.nn.Linear(16, 8)
    weights = HostWeights()
    weights.reserve_in_background(model)
    first = weights.copy(model)
    assert isinstance(first, dict) and weights._reserving is None
    assert allocated_on == ["alpha-sampler-buffers"] * 2  # weight and bias, none by the copy
    assert all(buf.is_shared() for buf in first.values())
    assert torch.equal(first["weight"], model.weight.detach())


def test_without_room_in_shared_memory_the_weights_go_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_room(self: HostBuffers, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        raise RuntimeError("unable to allocate shared memory(shm)")

    monkeypatch.setattr(HostBuffers, "_allocate", no_room)
    model = torch.nn.Linear(4, 2)
    weights = HostWeights()
    weights.reserve_in_background(model)  # fails quietly on its thread
    assert isinstance(weights.copy(model), bytes)
    assert not weights.shared


def test_the_first_checkpoint_copies_into_buffers_reserved_after_the_first_step(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, EventBus([]))
    trainer.tokenizer.to_json = lambda: {}  # the stand-in tokenizer, written into the checkpoint
    allocated: list[str] = []
    allocate = HostBuffers._allocate

    def counting(self: HostBuffers, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        allocated.append(f"{tuple(shape)} {dtype}")
        return allocate(self, shape, dtype)

    trainer.host_buffers._allocate = counting.__get__(trainer.host_buffers)  # type: ignore[method-assign]
    trainer.train_steps(1)
    trainer.writer.drain()
    reserved = len(allocated)
    assert reserved == len(trainer._checkpoint_tensors())
    assert trainer.save_checkpoint() is not None
    trainer.writer.drain()
    assert len(allocated) == reserved  # the checkpoint allocated nothing
