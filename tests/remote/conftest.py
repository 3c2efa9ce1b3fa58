"""Fixtures for the remote outputs: a real recording dashboard server process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


class Dashboard:
    """``fake_dashboard.py`` as a subprocess that can be killed and brought back on the same port."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.secret = "s3cret-" + secrets.token_hex(12)
        self.webhook_token = "hooktoken-" + secrets.token_hex(12)
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook(self) -> str:
        return f"{self.url}/webhooks/4242/{self.webhook_token}"

    def start(self) -> Dashboard:
        env = {**os.environ, "UPLOAD_SECRET": self.secret, "WEBHOOK_URL_UNDER_TEST": self.webhook_token}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "fake_dashboard.py"),
                "--dir",
                str(self.dir),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("READY"), line
        self.port = int(line.split()[1])
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def control(self, **settings: Any) -> None:
        request = urllib.request.Request(
            f"{self.url}/_control", data=json.dumps(settings).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=5).read()

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_state", timeout=10) as response:
            return json.loads(response.read())

    def env(self, **extra: str) -> dict[str, str]:
        """What a training process sees: the credentials, and short timers for the tests."""
        return {
            "ALPHA_REMOTE_URL": self.url,
            "ALPHA_REMOTE_SECRET": self.secret,
            "DISCORD_WEBHOOK_URL": self.webhook,
            "ALPHA_DISCORD_MIN_INTERVAL_SECONDS": "0.05",
            "ALPHA_REMOTE_FLUSH_SECONDS": "0.2",
            "ALPHA_REMOTE_RETRY_MAX_SECONDS": "0.5",
            "ALPHA_REMOTE_RETRY_BASE_SECONDS": "0.1",
            **extra,
        }

    @property
    def credentials(self) -> list[str]:
        return [self.secret, self.webhook_token, self.url]


@pytest.fixture
def dashboard(tmp_path: Path) -> Any:
    server = Dashboard(tmp_path / "dashboard").start()
    yield server
    server.kill()


def wait_for(condition: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def assert_no_credentials(paths: list[Path], credentials: list[str]) -> int:
    """No credential appears in any file under ``paths``; returns how many files were read."""
    files = [p for root in paths for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for value in credentials:
            assert value.encode() not in data, f"a credential leaked into {path}"
    return len(files)
