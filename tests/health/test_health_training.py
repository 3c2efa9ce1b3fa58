"""Real ``alpha train`` subprocesses (tiny CPU model): a killed run is diagnosed as a crash, and an
absurd learning rate trips the live watchdog, which stops the run with a checkpoint and exit 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["--domain", "chat", "--tokenizer", "char", "--batch", "4", "--block", "32", "--dim", "32",
        "--heads", "2", "--layers", "2", "--sample-interval", "0", "--backend", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("health_train")
    # one thread: a dim-32 model gains nothing from more, and loses a lot on a shared machine
    env = {**os.environ, "ALPHA_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "alpha", "data", "synth", "--conversations", "300", "--out", "chat.txt"],
        cwd=root, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return root, env


def alpha(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alpha", *args], cwd=root, env=env, capture_output=True, text=True
    )


def test_killed_training_is_diagnosed_as_a_crash(workdir):
    root, env = workdir
    run = root / "runs" / "killed"
    train = subprocess.Popen(
        [sys.executable, "-m", "alpha", "train", "--data", "chat.txt", "--iters", "100000", "--eval-interval",
         "50", "--run-dir", str(run), *TINY],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 30):
            assert train.poll() is None, train.stderr.read().decode() if train.stderr else ""
            assert time.monotonic() < deadline, "training produced no metrics"
            time.sleep(0.2)
        live = alpha(root, env, "diagnose", str(run), "--json")
        crash = {f["check"]: f for f in json.loads(live.stdout)["findings"]}["crash"]
        assert crash["status"] == "ok" and "still running" in crash["summary"]
    finally:
        train.kill()
        train.wait()

    proc = alpha(root, env, "diagnose", str(run))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("UNHEALTHY: crash")
    assert "without a training_complete event" in proc.stdout
    assert f"train.pid names dead pid {train.pid}" in proc.stdout
    assert "advice:" in proc.stdout


def test_absurd_learning_rate_trips_the_watchdog_which_stops_the_run(workdir):
    root, env = workdir
    run = root / "runs" / "absurd"
    proc = alpha(
        root, env, "train", "--data", "chat.txt", "--iters", "2000", "--lr", "1e4", "--warmup", "0",
        "--eval-interval", "40", "--log-every", "10", "--run-dir", str(run), "--on-unhealthy", "stop", *TINY,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    final = proc.stderr.strip().splitlines()[-1]
    assert final.startswith("stopped by the watchdog (--on-unhealthy stop, exit 3): gradient instability:")

    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    (alert,) = [e for e in events if e["kind"] == "health_instability"]
    end = events[-1]
    assert end["kind"] == "training_complete" and end["payload"]["status"] == "unhealthy"
    assert end["payload"]["reason"].startswith("gradient instability")
    stopped_at = end["step"]
    assert alert["step"] <= stopped_at < 2000  # stopped early, not at --iters
    assert (run / f"checkpoint-{stopped_at}.safetensors").is_file()
    assert f"checkpoint-{stopped_at}.safetensors" in final
    assert "── training stopped: unhealthy ──" in proc.stdout

    report = alpha(root, env, "diagnose", str(run), "--json")
    assert report.returncode == 1
    findings = {f["check"]: f for f in json.loads(report.stdout)["findings"]}
    assert findings["instability"]["status"] == "fired"
    assert findings["crash"]["status"] == "ok" and "stopped by the watchdog" in findings["crash"]["summary"]
