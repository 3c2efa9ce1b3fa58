"""Training samples in the sampler process: a real spawned child, on the CPU.

It must give the inline samples exactly (weights in shared memory or sent by value), skip a round
while one is in flight (the last round waits instead), turn a round that raises or a child that
dies into an Alert, start a new child after one died, and leave no process behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from alpha.config import domain_for, resolve
from alpha.data.tokenizer import CharTokenizer
from alpha.data.tokens import TokenData
from alpha.errors import ConfigError
from alpha.events import EventBus, Samples
from alpha.model.gpt import GPT
from alpha.train.sampler_process import sampler_mode
from alpha.train.sampling import sample_prompts
from alpha.train.trainer import RunContext, Trainer
from tests import conftest


class Recorder(conftest.Recorder):
    def samples(self) -> list[Samples]:
        return [e for e in self.events if isinstance(e, Samples)]


def make_trainer(tmp_path: Path) -> tuple[Trainer, Recorder]:
    domain = domain_for("chat")
    tokenizer = CharTokenizer.train(iter(domain.prompts + ["abcdefghijklmnopqrstuvwxyz .,?"]))
    model_cfg, cfg = resolve(
        {"n_embd": 32, "n_head": 2, "n_layer": 2, "block_size": 32, "dropout": 0.0},
        {"data": "x", "iters": 20, "batch_size": 4, "eval_interval": 1000, "sample_interval": 0,
         "sample_tokens": 16, "checkpoint_interval": 1000, "compile": False},
    )  # fmt: skip
    model_cfg.vocab_size = tokenizer.vocab_size
    tokens = np.random.default_rng(0).integers(0, tokenizer.vocab_size, 3000).astype(np.uint16)
    recorder = Recorder()
    torch.manual_seed(0)
    ctx = RunContext("sampler", tmp_path, torch.device("cpu"), None)
    data = TokenData(tokens, tokens[:500], {})
    trainer = Trainer(GPT(model_cfg), cfg, tokenizer, data, EventBus([recorder]), ctx, domain)
    return trainer, recorder


def inline_outputs(trainer: Trainer, step: int) -> list[str]:
    texts = trainer.domain.prompts[: trainer.cfg.sample_prompts]
    prompts = [trainer.tokenizer.encode(trainer.domain.format_prompt(p)) for p in texts]
    seed = trainer.cfg.seed * 1_000_003 + step
    ids = sample_prompts(
        trainer.model, prompts, trainer.cfg.sample_tokens, seed=seed, stop_id=trainer.tokenizer.eot_id
    )
    return [trainer.tokenizer.decode(i) for i in ids]


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_sampler_mode_defaults_by_device_and_rejects_unknown_values(monkeypatch) -> None:
    monkeypatch.delenv("ALPHA_SAMPLER", raising=False)
    assert sampler_mode(torch.device("cpu")) == "inline"
    assert sampler_mode(torch.device("cuda")) == "process"
    monkeypatch.setenv("ALPHA_SAMPLER", "process")
    assert sampler_mode(torch.device("cpu")) == "process"
    monkeypatch.setenv("ALPHA_SAMPLER", "thread")
    with pytest.raises(ConfigError, match="ALPHA_SAMPLER"):
        sampler_mode(torch.device("cpu"))


def test_failures_become_alerts_and_a_dead_child_is_replaced(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALPHA_SAMPLER", "process")
    trainer, rec = make_trainer(tmp_path)
    assert trainer.sampler is not None
    try:
        # a model config the child cannot build: the round raises there, the child lives on
        good = trainer.model_cfg.activation_graph, trainer.model_cfg.ffn_activation
        trainer.model_cfg.ffn_activation, trainer.model_cfg.activation_graph = "composed", {"type": "nope"}
        trainer.step = 5
        trainer.sample()
        first_pid = trainer.sampler.pid
        assert [a.data["pid"] for a in rec.alerts("sampler_started")] == [first_pid]
        trainer.step = 6  # still in flight (the child is still starting): skipped, not queued
        trainer.sample()
        assert [a.level for a in rec.alerts("sample_skipped")] == ["debug"]
        trainer.collect_samples(wait=True)
        (failed,) = rec.alerts("sample_failed")
        assert failed.level == "warn" and failed.step == 5 and "GraphError" in failed.text
        assert trainer.sampler.running and trainer.sampler.pid == first_pid
        trainer.model_cfg.activation_graph, trainer.model_cfg.ffn_activation = good

        # the child dies while a round is in flight (stopped first, so it cannot answer in time)
        os.kill(first_pid, signal.SIGSTOP)
        trainer.step = 7
        trainer.sample()
        os.kill(first_pid, signal.SIGKILL)
        trainer.collect_samples(wait=True)
        assert "exited with code -9" in rec.alerts("sample_failed")[-1].text
        assert not process_exists(first_pid) and not rec.samples()

        # the next round starts a new child; the run's last round waits for the one in flight
        trainer.step = 19
        trainer.sample()
        second_pid = trainer.sampler.pid
        assert second_pid != first_pid and len(rec.alerts("sampler_started")) == 2
        trainer.sampler.host.shared = False  # as when /dev/shm is too small: the weights go by value
        trainer.step = 20
        trainer.sample()
        assert [s.step for s in rec.samples()] == [19]
        trainer.collect_samples(wait=True)
        assert [s.step for s in rec.samples()] == [19, 20]
        for event in rec.samples():
            assert [s["output"] for s in event.samples] == inline_outputs(trainer, event.step)
        assert len(rec.alerts("sample_skipped")) == 1 and len(rec.alerts("sample_failed")) == 2
    finally:
        trainer.close_sampler()
    assert not process_exists(second_pid)
