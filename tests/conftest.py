"""Shared fixtures: a small chat corpus, an isolated cache directory, a CLI runner, an event recorder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alpha.data.synth import synth_chat
from alpha.events import Alert, Event

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--dim", "32", "--heads", "2", "--layers", "2", "--block", "32", "--batch", "4"]
TINY_DATA = ["--domain", "chat", "--vocab-size", "300"]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("alpha-cache")
    os.environ["ALPHA_CACHE_DIR"] = str(cache)
    return cache


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
