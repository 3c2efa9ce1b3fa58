"""Running local commands for the launcher: printed in dry-run mode, never with a secret in argv.

``Runner`` is the one place where the launcher starts a process, so ``--dry-run`` can print every
command instead of running it. ``SshTarget`` builds ssh and rsync command lines for one host with
host-key checking left on. ``RemoteDir`` turns ``~/alpha`` into the forms a remote shell and
rsync each understand.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


class LaunchError(Exception):
    """A step failed (gcloud, ssh, the host): one message, exit code 1."""


@dataclass
class Completed:
    returncode: int
    stdout: str = ""
    stderr: str = ""


@dataclass
class Runner:
    """Runs (or, with ``dry_run``, prints) commands. Stdin may carry secrets; argv never does."""

    dry_run: bool = False
    last_returncode: int = 0  # of the last `lines` command

    def show(self, argv: Sequence[str], stdin_note: str | None = None) -> None:
        line = "$ " + shlex.join(argv)
        if stdin_note:
            line += f"  < {stdin_note}"
        print(line, flush=True)

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin_text: str | None = None,
        stdin_note: str | None = None,
        check: bool = True,
        what: str = "",
    ) -> Completed:
        """Run and capture. ``stdin_note`` is what dry-run prints instead of stdin's content."""
        if self.dry_run:
            self.show(argv, stdin_note if stdin_text is not None else None)
            return Completed(0)
        try:
            proc = subprocess.run(
                list(argv),
                input=stdin_text if stdin_text is not None else "",
                capture_output=True,
                text=True,
                errors="replace",
            )
        except FileNotFoundError:
            raise LaunchError(f"{argv[0]} is not installed (needed to {what or 'run ' + argv[0]})") from None
        result = Completed(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise LaunchError(f"{what or argv[0]} failed: {last_line(proc.stderr or proc.stdout)}")
        return result

    def lines(self, argv: Sequence[str]) -> Iterator[str]:
        """Yield the command's stdout line by line as it arrives (stderr passes through)."""
        if self.dry_run:
            self.show(argv)
            return
        # Its own session: Ctrl+C reaches only the launcher, which then ends this child itself.
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            yield from proc.stdout
            proc.wait()
        finally:
            if proc.poll() is None:  # left early (Ctrl+C): end the ssh client
                proc.terminate()
                proc.wait()
            self.last_returncode = proc.returncode


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@dataclass(frozen=True)
class RemoteDir:
    """A directory on the host, given as ``~/alpha``, ``~`` or an absolute path."""

    path: str

    def shell(self, *parts: str) -> str:
        """The path as a remote shell word (``~`` becomes ``"$HOME"``)."""
        rel = self._home_relative()
        tail = "/".join(p for p in ((rel or ""), *parts) if p)
        if rel is None:
            return shlex.quote("/".join([self.path.rstrip("/"), *parts]) if parts else self.path)
        return '"$HOME"' + ("/" + shlex.quote(tail) if tail else "")

    def rsync(self, *parts: str) -> str:
        """The path as rsync's remote side reads it (relative paths start at the login directory)."""
        rel = self._home_relative()
        base = self.path.rstrip("/") if rel is None else rel
        joined = "/".join(p for p in (base, *parts) if p)
        return joined or "."

    def _home_relative(self) -> str | None:
        if self.path == "~":
            return ""
        if self.path.startswith("~/"):
            return self.path[2:].strip("/")
        return None


@dataclass
class SshTarget:
    """One SSH destination and the options to reach it. Host keys are always checked."""

    destination: str  # user@host or host
    port: int | None = None
    options: list[str] = field(default_factory=list)  # extra ssh arguments (-i KEY, -o K=V ...)

    def base(self, *, batch: bool = True) -> list[str]:
        # BatchMode makes a missing key or an unknown host key fail at once instead of prompting;
        # only the interactive session (--action ssh) may prompt.
        args = ["-o", "BatchMode=yes"] if batch else []
        args += [
            "-o",
            "ConnectTimeout=15",
            "-o",
            "ServerAliveInterval=30",
            "-o",
            "ServerAliveCountMax=10",
            "-o",
            "LogLevel=ERROR",
        ]
        if self.port:
            args += ["-p", str(self.port)]
        return args + list(self.options)

    def ssh(self, command: str) -> list[str]:
        return ["ssh", *self.base(), self.destination, command]

    def interactive(self, command: str | None = None) -> list[str]:
        return ["ssh", "-t", *self.base(batch=False), self.destination, *([command] if command else [])]

    def rsync_shell(self) -> str:
        """The ``rsync -e`` value: the same ssh with the same options."""
        return shlex.join(["ssh", *self.base()])

    def rsync_path(self, remote_path: str) -> str:
        return f"{self.destination}:{remote_path}"
