"""The whole pipeline against a real sshd on 127.0.0.1 (``--provider ssh``), with CPU training.

The "host" is this machine reached over SSH, its project folder a temp dir, its Python the test's
own interpreter (``--python``), so set-up does not reinstall torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cloud.conftest import SCRIPT, launcher

TINY = [
    "--domain",
    "chat",
    "--vocab-size",
    "300",
    "--dim",
    "32",
    "--heads",
    "2",
    "--layers",
    "2",
    "--block",
    "32",
    "--batch",
    "4",
    "--sample-interval",
    "0",
    "--no-remote",
]
SECRETS = {
    "ALPHA_REMOTE_URL": "http://127.0.0.1:9/remote-url-7f3a",
    "ALPHA_REMOTE_SECRET": "secret-value-5c1e9d",
    "DISCORD_WEBHOOK_URL": "http://127.0.0.1:9/webhook-b82c",
}


def chat_lines(n: int) -> str:
    line = "<|user|> hi there number {i}, how are you <|assistant|> hello, I am fine {i} <|end_of_text|>\n"
    return "".join(line.format(i=i) for i in range(n))


@pytest.fixture(scope="module")
def host(sshd, tmp_path_factory):
    work = tmp_path_factory.mktemp("launch")
    remote, local = work / "remote", work / "local"
    local.mkdir()
    (local / "chat.txt").write_text(chat_lines(400), encoding="utf-8")
    flags = [*sshd.flags, "--remote-dir", str(remote), "--python", sys.executable]
    yield {"remote": remote, "local": local, "flags": flags}
    # Training runs detached from everything: end any the tests left, by their recorded pid.
    for launch in (remote / "runs").glob("*/launch.json"):
        if not (launch.parent / "exit.json").exists():
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(json.loads(launch.read_text())["supervisor_pid"], signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def steps_done(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_short_run_is_followed_to_the_end_and_downloaded(host):
    result = launcher(
        "--data",
        "chat.txt",
        *TINY,
        "--iters",
        "3",
        "--eval-interval",
        "3",
        "--run-id",
        "short",
        *host["flags"],
        cwd=host["local"],
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "code synced" in out and "uploading" in out
    assert re.search(r"^step 3/3 ", out, re.M), out  # the trainer's own log, followed live
    assert "── short ended: exit 0 (completed) ──" in out
    local_run = host["local"] / "runs" / "short"
    assert (local_run / "metrics.jsonl").is_file() and list(local_run.glob("checkpoint-*"))
    assert (host["local"] / "runs" / "train_short.log").is_file()
    # The last lines say how to download, upload and (for a cloud instance) stop.
    assert "--action download --run-id short" in out
    assert "alpha upload runs/short/checkpoint-3.safetensors" in out
    remote = host["remote"]
    assert (remote / "alpha" / "cloud" / "remote.py").is_file()  # the code was synced
    assert not (remote / ".git").exists() and not (remote / ".venv").exists()


def test_detached_run_survives_the_launcher_then_logs_kill_download(host):
    remote, local, flags = host["remote"], host["local"], host["flags"]
    run_dir = remote / "runs" / "long"
    out_path = local / "launch.out"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "--data",
                "chat.txt",
                *TINY,
                "--iters",
                "100000",
                "--eval-interval",
                "100000",
                "--checkpoint-interval",
                "100000",
                "--run-id",
                "long",
                *flags,
            ],
            cwd=local,
            env={**os.environ, **SECRETS},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: re.search(r"^step \d+/100000", out_path.read_text(), re.M), 240, "the first step line"
        )
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C at the terminal
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    launch_out = out_path.read_text()
    assert "data/chat.txt: unchanged on the host" in launch_out  # same data as the short run
    assert "detached from long" in launch_out and "--action logs --follow --run-id long" in launch_out
    assert "--action kill --run-id long" in launch_out and "--action diagnose --run-id long" in launch_out

    # Training goes on without the launcher, in its own session.
    info = json.loads((run_dir / "launch.json").read_text())
    before = steps_done(run_dir)
    wait_for(lambda: steps_done(run_dir) > before, 120, "steps after the launcher died")
    assert alive(info["pid"]) and os.getsid(info["pid"]) != os.getsid(0)

    # Secrets: a 0600 file on the host, in the trainer's environment, never in its argv or our output.
    secrets_file = remote / ".secrets.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    environ = Path(f"/proc/{info['pid']}/environ").read_bytes().decode()
    cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes().decode()
    for name, value in SECRETS.items():
        assert f"{name}={value}" in environ
        assert value not in cmdline and value not in launch_out

    # A second launch while this one runs is refused before anything is synced or started.
    again = launcher("--data", "chat.txt", *TINY, "--iters", "5", *flags, cwd=local)
    assert again.returncode == 1 and "already running" in again.stderr and "long" in again.stderr

    logs = launcher("--action", "logs", "--lines", "5", *flags, cwd=local)
    assert logs.returncode == 0, logs.stderr
    assert re.search(r"^step \d+/100000", logs.stdout, re.M) and "long is running" in logs.stdout

    status = launcher("--action", "status", *flags, cwd=local)
    assert status.returncode == 0 and re.search(r"^long\s+running", status.stdout, re.M), status.stdout

    follower = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--action", "logs", "--follow", *flags],
        cwd=local,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        killed = launcher("--action", "kill", *flags, cwd=local)
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert "long stopped (exit 143)" in killed.stdout
        follow_out, _ = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 143, follow_out
    assert "── long ended: exit 143 (interrupted) ──" in follow_out
    assert "training interrupted" in follow_out  # the trainer's own last log lines
    checkpoints = list(run_dir.glob("checkpoint-*.safetensors"))
    assert checkpoints, "SIGTERM must leave a checkpoint"
    assert not alive(info["pid"])

    download = launcher("--action", "download", *flags, cwd=local)
    assert download.returncode == 0, download.stderr
    local_run = local / "runs" / "long"
    assert {p.name for p in checkpoints} <= {p.name for p in local_run.glob("checkpoint-*")}
    assert (local_run / "metrics.jsonl").is_file() and (local / "runs" / "train_long.log").is_file()
