"""Non-finite gradients never reach the weights; the step is counted, recorded and skipped."""

from __future__ import annotations

from pathlib import Path

import torch

from alpha.events import Alert, EventBus, Step
from alpha.train.trainer import Trainer
from tests.conftest import Recorder, tiny_trainer


def make_trainer(tmp_path: Path) -> tuple[Trainer, Recorder]:
    recorder = Recorder()
    return tiny_trainer(tmp_path, EventBus([recorder])), recorder


def test_a_nan_gradient_skips_the_update_and_leaves_weights_and_moments_untouched(tmp_path: Path) -> None:
    trainer, recorder = make_trainer(tmp_path)
    trainer.train_steps(3)
    weight = trainer.model.layers[0].mlp.fc1.weight
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = trainer.optimizer.state[weight]["exp_avg"].clone()
    steps_before = float(trainer.optimizer.state[weight]["step"])
    handle = weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    trainer.train_steps(2)
    handle.remove()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(trainer.optimizer.state[weight]["exp_avg"], moments)
    assert float(trainer.optimizer.state[weight]["step"]) == steps_before
    steps = [e.metrics for e in recorder.events if isinstance(e, Step)]
    assert [m.get("skipped") for m in steps] == [None, None, None, "nonfinite", "nonfinite"]
    assert steps[-1]["gradNorm"] is None
    alerts = [e for e in recorder.events if isinstance(e, Alert)]
    assert [a.kind for a in alerts] == ["grad_norm_nan", "grad_norm_nan"]
    trainer.train_steps(2)  # training goes on normally once gradients are finite again
    assert not torch.equal(
        trainer.model.state_dict()["layers.0.mlp.fc1.weight"], before["layers.0.mlp.fc1.weight"]
    )
    assert trainer.step == 7


def test_clipping_bounds_the_applied_update(tmp_path: Path) -> None:
    trainer, recorder = make_trainer(tmp_path)
    trainer.cfg.grad_clip = 1e-3
    trainer.train_steps(2)
    steps = [e.metrics for e in recorder.events if isinstance(e, Step)]
    assert all(m["clip_coef"] < 1 for m in steps)
    assert steps[-1]["clip_pct"] == 100.0
    assert all(abs(m["clip_coef"] * m["gradNorm"] - 1e-3) < 1e-6 for m in steps)
