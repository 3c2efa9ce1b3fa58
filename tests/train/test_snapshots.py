"""Trainer snapshots: a restore brings back weights, optimizer moments and guards exactly, and a
snapshot taken into an earlier one reuses its tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import tiny_trainer


def _state(trainer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in trainer.model.parameters()]
    for state in trainer.optimizer.state.values():
        tensors += [v.clone() for _, v in sorted(state.items())]
    return tensors + [v.clone() for v in trainer.guards.values()]


def _assert_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_a_snapshot_into_an_earlier_one_reuses_its_tensors_and_restores_exactly(tmp_path: Path) -> None:
    t = tiny_trainer(tmp_path)
    t.train_steps(2)
    first = t.snapshot()
    held = [id(v) for v in first.model.values()]
    t.train_steps(3)
    after_five = _state(t)
    again = t.snapshot(into=first)  # now holds step 5, in the same tensors
    assert again is first and [id(v) for v in again.model.values()] == held
    assert again.step == 5
    t.train_steps(2)
    assert any(not torch.equal(x, y) for x, y in zip(_state(t), after_five, strict=True))  # training moved on
    t.restore(again)
    _assert_equal(_state(t), after_five)


def test_a_snapshot_before_the_first_step_restores_a_fresh_optimizer(tmp_path: Path) -> None:
    t = tiny_trainer(tmp_path)
    fresh = t.snapshot()  # no optimizer state yet: the other layout, restored the long way
    weights = [p.detach().clone() for p in t.model.parameters()]
    t.train_steps(2)
    t.restore(fresh)
    _assert_equal([p.detach() for p in t.model.parameters()], weights)
    for state in t.optimizer.state.values():
        assert all(torch.count_nonzero(v) == 0 for k, v in state.items() if k != "step")
