"""The whole pipeline against a real sshd on 127.0.0.1 (``--provider ssh``), with CPU training.

The "host" is this machine reached over SSH, its project folder a temp dir, its Python the test's
own interpreter (``--python``), so set-up does not reinstall torch. A local web server stands in
for ``--data-url``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cloud.conftest import SCRIPT, free_port, launcher

TINY = shlex.split(
    "--domain chat --vocab-size 300 --dim 32 --heads 2 --layers 2 --block 32 --batch 4 "
    "--sample-interval 0 --log-every 1 --no-remote"
)
LONG = shlex.split("--iters 100000 --eval-interval 100000 --checkpoint-interval 100000 --run-id long")
SECRETS = {
    "ALPHA_REMOTE_URL": "http://127.0.0.1:9/remote-url-7f3a",
    "ALPHA_REMOTE_SECRET": "secret-value-5c1e9d",
    "DISCORD_WEBHOOK_URL": "http://127.0.0.1:9/webhook-b82c",
}


def chat_lines(n: int, start: int = 0) -> str:
    line = "<|user|> hi there number {i}, how are you <|assistant|> hello, I am fine {i} <|end_of_text|>\n"
    return "".join(line.format(i=i) for i in range(start, start + n))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


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


@pytest.fixture(scope="module")
def host(sshd, tmp_path_factory):
    work = tmp_path_factory.mktemp("launch")
    remote, local = work / "remote", work / "local"
    local.mkdir()
    (local / "chat.txt").write_text(chat_lines(400), encoding="utf-8")
    (local / "val.txt").write_text(chat_lines(60, start=1000), encoding="utf-8")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=local,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: port_open(port), 20, "the web server")
    flags = [*sshd.flags, "--remote-dir", str(remote), "--python", sys.executable]
    yield {"remote": remote, "local": local, "flags": flags, "url": f"http://127.0.0.1:{port}/chat.txt"}
    server.terminate()
    server.wait(timeout=10)
    # Training runs detached from everything: end any the tests left, by their recorded pid.
    for launch in (remote / "runs").glob("*/launch.json"):
        if not (launch.parent / "exit.json").exists():
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(json.loads(launch.read_text())["supervisor_pid"], signal.SIGKILL)


def test_launch_detach_logs_kill_download_resume(host):
    remote, local, flags = host["remote"], host["local"], host["flags"]
    run_dir = remote / "runs" / "long"

    # 1. Launch; the dataset comes from --data-url (fetched on the host), the val file is uploaded.
    #    Ctrl+C while following detaches: the launcher exits, training goes on.
    out_path = local / "launch.out"
    args = [
        sys.executable,
        str(SCRIPT),
        "--data-url",
        host["url"],
        "--val-data",
        "val.txt",
        *TINY,
        *LONG,
        *flags,
    ]
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=local, env={**os.environ, **SECRETS}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: re.search(r"^step \d+/100000", out_path.read_text(), re.M), 240, "a step line")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C at the terminal
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    launch_out = out_path.read_text()
    assert "code synced" in launch_out and (remote / "alpha" / "cloud" / "remote.py").is_file()
    assert not (remote / ".git").exists() and not (remote / ".venv").exists()  # never synced
    assert (remote / "data" / "chat.txt").read_bytes() == (local / "chat.txt").read_bytes()
    assert "uploading" in launch_out and (remote / "data" / "val.txt").is_file()
    assert "detached from long" in launch_out and "--action logs --follow --run-id long" in launch_out
    assert "--action kill --run-id long" in launch_out and "--action diagnose --run-id long" in launch_out

    # 2. Training goes on without the launcher, in a session of its own.
    info = json.loads((run_dir / "launch.json").read_text())
    before = steps_done(run_dir)
    wait_for(lambda: steps_done(run_dir) > before, 120, "steps after the launcher died")
    assert alive(info["pid"]) and os.getsid(info["pid"]) != os.getsid(0)

    # Secrets: a 0600 file on the host, in the trainer's environment, never in its argv or our output.
    assert stat.S_IMODE((remote / ".secrets.env").stat().st_mode) == 0o600
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

    # 3. Re-attach, then kill: SIGTERM, the trainer saves a checkpoint; the follower sees the end.
    follower = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--action", "logs", "--follow", *flags],
        cwd=local, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
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
    checkpoints = sorted(run_dir.glob("checkpoint-*.safetensors"))
    assert checkpoints, "SIGTERM must leave a checkpoint"
    assert not alive(info["pid"])
    killed_at = int(checkpoints[-1].stem.split("-")[1])
    assert f"alpha upload runs/long/checkpoint-{killed_at}.safetensors" in follow_out

    # 4. Download the run directory and its log.
    download = launcher("--action", "download", *flags, cwd=local)
    assert download.returncode == 0, download.stderr
    local_run = local / "runs" / "long"
    assert {p.name for p in checkpoints} <= {p.name for p in local_run.glob("checkpoint-*")}
    assert (local_run / "metrics.jsonl").is_file() and (local / "runs" / "train_long.log").is_file()

    # 5. Relaunch from the checkpoint, followed to the end; the unchanged dataset is not re-sent.
    final = killed_at + 3
    resume = [
        "--data",
        "chat.txt",
        *TINY,
        "--resume",
        "latest",
        "--iters",
        str(final),
        "--eval-interval",
        "3",
    ]
    result = launcher(*resume, *flags, cwd=local, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "data/chat.txt: unchanged on the host" in out  # same sha256 as the file fetched in step 1
    assert re.search(rf"^step {final}/{final} ", out, re.M), out
    assert "── long ended: exit 0 (completed) ──" in out
    assert "--action download --run-id long" in out
    steps = [json.loads(line)["step"] for line in (local_run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == final  # downloaded again when it ended


def test_a_run_that_fails_on_the_host_shows_its_error_and_exit_code(host):
    # Preflight cannot know the host's runs, so this fails there: alpha train exits 2.
    result = launcher(*TINY, "--resume", "runs/missing", *host["flags"], cwd=host["local"], timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "── missing ended: exit 2 (bad input) ──" in result.stdout
    assert "no checkpoint" in result.stdout  # the trainer's error, from the run's stdout.log


def test_diagnose_runs_alpha_diagnose_on_the_host(host):
    result = launcher("--action", "diagnose", "--run-id", "long", *host["flags"], cwd=host["local"])
    assert result.returncode in (0, 1), result.stdout + result.stderr  # healthy, or a check fired
    assert "runs/long" in result.stdout and "crash:" in result.stdout  # its report on the host's run
