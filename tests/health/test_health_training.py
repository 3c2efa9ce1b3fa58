"""Real ``alpha train`` subprocesses (tiny CPU model): a killed run is diagnosed as a crash, and an
absurd learning rate trips the live watchdog, which stops the run with a checkpoint and exit 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, run_alpha, tiny_train_args

# one thread: a dim-32 model gains nothing from more, and loses a lot on a busy 2-core machine
ENV = {"OMP_NUM_THREADS": "1"}
NO_SAMPLES = ["--sample-interval", "0"]


def diagnose(path: Path) -> subprocess.CompletedProcess[str]:
    return run_alpha("diagnose", str(path))


def diagnose_json(path: Path) -> dict:
    proc = run_alpha("diagnose", str(path), "--json")
    return {f["check"]: f for f in json.loads(proc.stdout)["findings"]}


def test_killed_training_is_diagnosed_as_a_crash(chat_file, tmp_path):
    run = tmp_path / "runs" / "killed"
    args = tiny_train_args(chat_file, run, "--iters", "100000", "--eval-interval", "50", *NO_SAMPLES)
    env = {**os.environ, "PYTHONPATH": str(REPO), **ENV}
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err:
        train = subprocess.Popen(
            [sys.executable, "-m", "alpha", *args], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 30):
            assert train.poll() is None, stderr.read_text()[-2000:]
            assert time.monotonic() < deadline, "training produced no metrics"
            time.sleep(0.2)
        crash = diagnose_json(run)["crash"]
        assert crash["status"] == "ok" and "still running" in crash["summary"]
    finally:
        train.kill()
        train.wait()

    proc = diagnose(run)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("UNHEALTHY: crash")
    assert "without a training_complete event" in proc.stdout
    assert f"train.pid names dead pid {train.pid}" in proc.stdout
    assert "advice:" in proc.stdout


def test_absurd_learning_rate_trips_the_watchdog_which_stops_the_run(chat_file, tmp_path):
    run = tmp_path / "runs" / "absurd"
    args = ["--iters", "2000", "--lr", "1e4", "--warmup", "0", "--eval-interval", "40", *NO_SAMPLES]
    proc = run_alpha(*tiny_train_args(chat_file, run, *args, "--on-unhealthy", "stop"), env=ENV)
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

    assert diagnose(run).returncode == 1
    findings = diagnose_json(run)
    assert findings["instability"]["status"] == "fired"
    assert findings["crash"]["status"] == "ok" and "stopped by the watchdog" in findings["crash"]["summary"]
