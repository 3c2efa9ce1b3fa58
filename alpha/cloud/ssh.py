"""SSH provider: any machine you can ssh into (``--provider ssh --host USER@HOST[:PORT]``).

There is no instance to create, start or stop: the host is already there. The launcher runs the
same set-up, sync, detached training, follow, kill and download over plain ssh and rsync. Host
keys are checked as ssh normally does (known_hosts, or ``--ssh-option UserKnownHostsFile=...``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from alpha.cloud.shell import LaunchError, Runner, SshTarget, last_line
from alpha.errors import ConfigError

HOST_PATTERN = re.compile(r"(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9a-fA-F:]+\]|[^:@\s]+)(?::(?P<port>\d+))?")


def parse_host(spec: str) -> tuple[str, int | None]:
    """``USER@HOST[:PORT]`` -> (``USER@HOST``, port); IPv6 hosts go in brackets."""
    match = HOST_PATTERN.fullmatch(spec)
    if not match:
        raise ConfigError(f"--host {spec!r} is not USER@HOST[:PORT]")
    host = match.group("host").strip("[]")
    destination = f"{match.group('user')}@{host}" if match.group("user") else host
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--host {spec!r}: port must be 1..65535")
    return destination, port


class SshProvider:
    name = "ssh"
    bills = False
    require_cuda = False
    wait_gpu_seconds = 0.0

    def __init__(
        self, runner: Runner, *, host: str | None, identity: str | None, ssh_options: list[str]
    ) -> None:
        if not host:
            raise ConfigError("--provider ssh needs --host USER@HOST[:PORT]")
        destination, port = parse_host(host)
        options: list[str] = []
        if identity:
            options += ["-i", os.path.expanduser(identity)]
        for option in ssh_options:
            if "=" not in option:
                raise ConfigError(f"--ssh-option {option!r} must be KEY=VALUE")
            options += ["-o", option]
        self.runner = runner
        self.host = host
        self.identity = identity
        self.ssh_options = ssh_options
        self.target = SshTarget(destination, port, options)

    def preflight(self, training: bool) -> None:
        for tool in ("ssh", "rsync") if training else ("ssh",):
            if shutil.which(tool) is None:
                raise ConfigError(f"{tool} is not installed on this machine (needed for --provider ssh)")

    def reachable(self) -> SshTarget:
        result = self.runner.run(self.target.ssh("true"), check=False, what="ssh")
        if result.returncode != 0:
            raise LaunchError(
                f"cannot reach {self.host} over SSH: {last_line(result.stderr or result.stdout)}"
            )
        return self.target

    def bring_up(self) -> SshTarget:
        return self.reachable()

    def connect(self, quick: bool = False) -> SshTarget:
        return self.reachable()

    def is_running(self) -> bool:
        return True

    def machine_up(self) -> bool:
        return False  # nothing of ours bills on an SSH host

    def gpu_count(self) -> int | None:
        return None  # the set-up reports what the host has

    def target_flags(self) -> list[str]:
        flags = ["--provider", "ssh", "--host", self.host]
        if self.identity:
            flags += ["--identity", self.identity]
        for option in self.ssh_options:
            flags += ["--ssh-option", option]
        return flags

    def where(self) -> str:
        return self.host

    def show_status(self) -> bool:
        print(f"host {self.host}")
        return True

    def _no_instance(self, action: str) -> int:
        raise ConfigError(
            f"--action {action} manages a GCP instance; an SSH host has none "
            "(use --action kill to stop its training)"
        )

    def start(self) -> int:
        return self._no_instance("start")

    def stop(self) -> int:
        return self._no_instance("stop")

    def delete(self, yes: bool) -> int:
        return self._no_instance("delete")

    def ssh_session(self, remote_shell_dir: str) -> int:
        argv = self.target.interactive(f'cd {remote_shell_dir} 2>/dev/null; exec "$SHELL" -l')
        if self.runner.dry_run:
            self.runner.show(argv)
            return 0
        sys.stdout.flush()
        os.execvp("ssh", argv)
        return 0  # not reached
