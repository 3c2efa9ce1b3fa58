"""Shared fixtures: a small chat corpus, an isolated cache directory, a CLI runner, an event recorder,
the capture of a function into a CUDA graph, and a fresh torch.compile state for every test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from alpha.data.synth import synth_chat
from alpha.events import Alert, Event

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--dim", "32", "--heads", "2", "--layers", "2", "--block", "32", "--batch", "4"]
TINY_DATA = ["--domain", "chat", "--vocab-size", "300"]
T = TypeVar("T")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("alpha-cache")
    os.environ["ALPHA_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Any:
    """Forget what torch.compile traced for the test before: its code caches are per process, and
    tests that compile the model with their own patches would otherwise add up to Dynamo's
    recompile limit in one worker."""
    yield
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


@pytest.fixture(scope="session")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chat.txt"
    path.write_text("\n".join(synth_chat(1500, seed=7)) + "\n", encoding="utf-8")
    return path


def run_alpha(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m alpha`` as a real subprocess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "alpha", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def torchrun(
    nproc: int, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m alpha ARGS`` as a real
    subprocess (NCCL on CUDA unless ``env`` sets ALPHA_DIST_BACKEND)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "alpha", *args]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def tiny_train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), *TINY_DATA, *TINY_MODEL, "--run-dir", str(run_dir), *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Recorder:
    """A sink that keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def alerts(self, kind: str) -> list[Alert]:
        return [e for e in self.events if isinstance(e, Alert) and e.kind == kind]


def tiny_trainer(
    tmp_path: Path, bus: Any = None, device: str = "cpu", precision: Any = "auto", **train: Any
) -> Any:
    """A Trainer of a 2-layer, 32-wide model on random tokens (vocab 50, block 16, batch 4), on the
    CPU in fp32 or on CUDA under bf16 autocast (``precision``: another autocast dtype, or None);
    ``train`` overrides TrainConfig fields."""
    import numpy as np
    import torch

    from alpha.config import domain_for, resolve
    from alpha.data.tokens import TokenData
    from alpha.events import EventBus
    from alpha.model.gpt import GPT
    from alpha.train.trainer import RunContext, Trainer

    model_cfg, cfg = resolve(
        {"n_embd": 32, "n_head": 2, "n_layer": 2, "block_size": 16, "dropout": 0.0},
        {
            "data": "x",
            "iters": 20,
            "batch_size": 4,
            "eval_interval": 1000,
            "sample_interval": 0,
            "checkpoint_interval": 1000,
            "log_every": 1,
            "compile": False,
        }
        | train,
    )
    model_cfg.vocab_size = 50
    tokens = np.random.default_rng(0).integers(0, 50, 5000).astype(np.uint16)
    torch.manual_seed(0)
    if precision == "auto":
        precision = torch.bfloat16 if device == "cuda" else None
    ctx = RunContext("tiny", tmp_path, torch.device(device), precision)

    class _Tokenizer:  # the trainer only reads the end-of-text id (samples are off)
        eot_id = 0

    data = TokenData(tokens, tokens[:500], {})
    return Trainer(GPT(model_cfg), cfg, _Tokenizer(), data, bus or EventBus(), ctx, domain_for("text"))


def capture(fn: Callable[[], T], warmup: int = 1) -> tuple[torch.cuda.CUDAGraph, T]:
    """``fn`` run ``warmup`` times on a side stream (compilation, workspaces), then captured: the
    graph and the outputs that its replays overwrite."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def assert_compiled_with_slots_matches_eager(cfg: Any) -> None:
    """``GPT(cfg)`` with the side stream's slots, compiled as one graph, gives the loss and every
    gradient (under a loss scale of 0.5) of an eager copy without slots. Callers open their op's
    gate for tracing only (``torch.compiler.is_compiling()``), so the compiled code runs the ops'
    PyTorch forms on the CPU."""
    import copy

    from alpha.model.gpt import GPT
    from alpha.model.linear import WeightGradStream, compile_options

    torch.manual_seed(0)
    plain = GPT(cfg)
    model = copy.deepcopy(plain)
    stream = WeightGradStream(torch.device("cpu"))  # kept: slots refer to it weakly
    stream.attach(model)
    compiled = torch.compile(model, options=compile_options(model), fullgraph=True)
    x, y = torch.randint(0, cfg.vocab_size, (3, 32)), torch.randint(0, cfg.vocab_size, (3, 32))
    loss = compiled(x, y)
    (loss * 0.5).backward()
    reference = plain(x, y)
    (reference * 0.5).backward()
    torch.testing.assert_close(loss, reference)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


def assert_gate_changes_nothing(cfg: Any, slots: bool, set_gate: Callable[[bool], None]) -> None:
    """``GPT(cfg)`` (with the side stream's slots or without) gives the same loss and every
    parameter's gradient, under a loss scale of 0.37 (a micro-batch's share), with its op's gate
    open (``set_gate(True)``) as shut; on the CPU the op runs its PyTorch form. One forward pass
    runs with the gate open, the first, for the caller's count of its op's calls."""
    from alpha.model.gpt import GPT
    from alpha.model.linear import WeightGradStream

    torch.manual_seed(0)
    model = GPT(cfg)
    stream = WeightGradStream(torch.device("cpu"))  # kept: slots refer to it weakly
    if slots:
        stream.attach(model)
    results = []
    for gate in (True, False):
        set_gate(gate)
        torch.manual_seed(1)
        x, y = torch.randint(0, cfg.vocab_size, (3, 32)), torch.randint(0, cfg.vocab_size, (3, 32))
        loss = model(x, y)
        (loss * 0.37).backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad(set_to_none=True)
    (fused_loss, fused), (plain_loss, plain) = results
    torch.testing.assert_close(fused_loss, plain_loss)
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
