"""Fixtures for the launcher tests: a real sshd on 127.0.0.1 and a recording stand-in gcloud.

The sshd runs with its own host key, config and authorized_keys in a temp dir, on a free port;
the client side checks that host key through a known_hosts file the fixture writes. The stand-in
``gcloud`` keeps instances in a JSON file, appends every argv to a log and answers with gcloud's
output shapes, including its capacity and quota errors.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gcp_train.py"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """Run scripts/gcp_train.py as a user would."""
    return subprocess.run(
        [python, str(SCRIPT), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Sshd:
    """A running sshd and the launcher flags that reach it."""

    host: str
    identity: Path
    known_hosts: Path
    flags: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    if not Path(SSHD).exists() or shutil.which("rsync") is None or shutil.which("ssh") is None:
        pytest.skip(
            "needs openssh-server, openssh-client and rsync (scripts/ci-system-deps.sh installs them)"
        )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    elif not Path("/run/sshd").is_dir():
        pytest.skip("sshd needs /run/sshd, which only root can create")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    user = getpass.getuser()
    config = d / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {d}/host_key
        PidFile {d}/sshd.pid
        AuthorizedKeysFile {d}/authorized_keys
        AllowUsers {user}
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        PrintMotd no
        LogLevel ERROR
        """)
    )
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log)
    known_hosts = d / "known_hosts"
    host_key = (d / "host_key.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
    flags = [
        "--provider",
        "ssh",
        "--host",
        f"{user}@127.0.0.1:{port}",
        "--identity",
        str(d / "client_key"),
        "--ssh-option",
        f"UserKnownHostsFile={known_hosts}",
        "--ssh-option",
        "StrictHostKeyChecking=yes",
        "--ssh-option",
        "GlobalKnownHostsFile=/dev/null",
    ]
    yield Sshd(f"{user}@127.0.0.1:{port}", d / "client_key", known_hosts, flags)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class FakeGcloud:
    bin_dir: Path
    state_path: Path
    calls_path: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_GCLOUD_STATE": str(self.state_path),
            "FAKE_GCLOUD_CALLS": str(self.calls_path),
        }

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def set_state(self, **values: object) -> None:
        self.state_path.write_text(json.dumps({**self.state(), **values}))

    def calls(self) -> list[list[str]]:
        if not self.calls_path.exists():
            return []
        return [json.loads(line) for line in self.calls_path.read_text().splitlines()]

    def clear_calls(self) -> None:
        self.calls_path.write_text("")


@pytest.fixture
def fake_gcloud(tmp_path: Path) -> FakeGcloud:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "gcloud"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / "fake_gcloud.py"} "$@"\n')
    exe.chmod(0o755)
    return FakeGcloud(bin_dir, tmp_path / "gcloud-state.json", tmp_path / "gcloud-calls.jsonl")
