"""The launch pipeline, the same for every provider, and the actions on a launched run.

    preflight -> instance -> host check -> code sync -> set-up -> data -> secrets
              -> training started detached -> follow the log -> finish (download, stop, next steps)

Every remote step is one ssh (or rsync) command, run through ``Runner`` so that ``--dry-run``
prints it instead. The host side of each step is ``python3 -m alpha.cloud.remote`` on the synced
code. Secrets travel only on ssh's stdin into a 0600 file; they are never in argv or output.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from alpha.cloud.options import DEFAULT_REMOTE_DIR, TrainPlan, secrets_file_text
from alpha.cloud.remote import EXIT_NO_RUN, EXIT_RUNNING, MARK
from alpha.cloud.shell import LaunchError, RemoteDir, Runner, SshTarget, last_line

# rsync excludes, anchored at the project root ("/runs/" does not hide alpha/server/runs/).
# Excluded paths on the host survive --delete: its datasets, runs, venv and secrets stay.
SYNC_EXCLUDES = [
    "/.git",  # a directory, or a file in a git worktree
    "/.venv/",
    "/data/",
    "/runs/",
    "/build/",
    "/dist/",
    "/.secrets.env",
    "/.env*",
    "/shared/",
    "/.cache/",
    "__pycache__/",
    "*.pyc",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
]
EXCLUDED_TOP = ("data", "runs", ".venv", ".git", "build", "dist", "shared", ".cache")


class Provider(Protocol):
    """Where training runs: a GCP instance or an SSH host."""

    name: str
    bills: bool  # the machine costs money while it runs
    require_cuda: bool
    wait_gpu_seconds: float

    def preflight(self, training: bool) -> None: ...
    def bring_up(self) -> SshTarget: ...
    def connect(self, quick: bool = False) -> SshTarget: ...
    def is_running(self) -> bool: ...
    def machine_up(self) -> bool: ...  # this launch started or found a billing machine
    def gpu_count(self) -> int | None: ...
    def target_flags(self) -> list[str]: ...
    def where(self) -> str: ...
    def show_status(self) -> bool: ...
    def start(self) -> int: ...
    def stop(self) -> int: ...
    def delete(self, yes: bool) -> int: ...
    def ssh_session(self, remote_shell_dir: str) -> int: ...


def code_root() -> Path:
    """The project tree that is synced to the host (the one this package was loaded from)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "alpha").is_dir():
        raise LaunchError(f"{root} is not an alpha project tree (run the launcher from a checkout)")
    return root


def parse_marks(lines: Iterable[str], marks: list[dict[str, Any]]) -> Iterable[str]:
    """Pass output lines through; collect the helper's machine-readable lines instead."""
    for line in lines:
        if line.startswith(MARK):
            try:
                marks.append(json.loads(line[len(MARK) :]))
            except ValueError:
                yield line
            continue
        yield line


def read_marks(text: str) -> list[dict[str, Any]]:
    """The helper's machine-readable lines in a command's captured output."""
    marks: list[dict[str, Any]] = []
    for _ in parse_marks(text.splitlines(), marks):
        pass
    return marks


@dataclass
class Launcher:
    args: argparse.Namespace
    provider: Provider
    runner: Runner
    prog: str

    def __post_init__(self) -> None:
        self.remote = RemoteDir(self.args.remote_dir)
        self.helper_python = self.args.remote_python or "python3"

    # ---- small helpers --------------------------------------------------------------------

    def helper(self, *words: str) -> str:
        """The shell command that runs the host-side helper in the project folder."""
        return (
            f"cd {self.remote.shell()} && {shlex.quote(self.helper_python)} -m alpha.cloud.remote "
            f"{shlex.join(words)}"
        )

    def command(self, *flags: str) -> str:
        """A launcher command line to print for the user (the provider's flags included)."""
        remote = [] if self.args.remote_dir == DEFAULT_REMOTE_DIR else ["--remote-dir", self.args.remote_dir]
        python = ["--python", self.args.remote_python] if self.args.remote_python else []
        return shlex.join([*shlex.split(self.prog), *flags, *self.provider.target_flags(), *remote, *python])

    def stream_helper(self, target: SshTarget, *words: str) -> tuple[int, list[dict[str, Any]]]:
        marks: list[dict[str, Any]] = []
        for line in parse_marks(self.runner.lines(target.ssh(self.helper(*words))), marks):
            sys.stdout.write(line)
            sys.stdout.flush()
        return self.runner.last_returncode, marks

    def resolve_run(self, target: SshTarget, run: str | None = None) -> str:
        """The run an action is about: --run-id, or the host's latest launch."""
        if run is None and self.args.run_id:
            return self.args.run_id
        result = self.runner.run(
            target.ssh(self.helper("resolve", run or "latest")), check=False, what="find the run"
        )
        if self.runner.dry_run:
            return "RUN_ID"
        found = next((m for m in read_marks(result.stdout) if m.get("kind") == "run"), None)
        if found is not None:
            return str(found["run_id"])
        raise LaunchError(
            f"no run found on {self.provider.where()}: {last_line(result.stdout + result.stderr)}"
        )

    # ---- the training pipeline ------------------------------------------------------------

    def launch(self, plan: TrainPlan) -> int:
        for line in plan.summary:
            print(f"# {line}" if self.runner.dry_run else line)
        for warning in plan.warnings:
            print(f"[warn] {warning}", file=sys.stderr)
        started = False
        try:
            target = self.provider.bring_up()
            self.check_host(target)
            self.sync_code(target)
            python, host_gpus = self.set_up(target)
            self.send_data(target, plan)
            self.send_secrets(target, plan)
            gpus = self.args.gpus or self.provider.gpu_count() or host_gpus or 1
            self.start_training(target, plan, python, gpus)
            started = True
        except (LaunchError, KeyboardInterrupt) as exc:
            if not started and self.provider.machine_up() and not self.runner.dry_run:
                if self.args.stop_after:
                    reason = str(exc) or "interrupted"
                    print(f"launch failed before training started ({reason}); --stop-after: stopping")
                    self.provider.stop()
                else:
                    print(
                        f"the instance is still running (and billing): {self.command('--action', 'stop')}",
                        file=sys.stderr,
                    )
            raise
        return self.follow(target, plan.run_id, lines=200, launched=True)

    def check_host(self, target: SshTarget) -> None:
        """Folders exist, rsync and Python are there, and no other training is running."""
        py = shlex.quote(self.helper_python)
        root = self.remote.shell()
        script = f"""set -e
mkdir -p {root}/runs {root}/data
if ! command -v rsync >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n apt-get update -qq >/dev/null && sudo -n apt-get install -y -qq rsync >/dev/null
  else
    echo "rsync is not installed on the host" >&2; exit 10
  fi
fi
if ! command -v {py} >/dev/null 2>&1; then echo "no Python at {py} on the host" >&2; exit 10; fi
if [ -f {root}/alpha/cloud/remote.py ]; then cd {root} && exec {py} -m alpha.cloud.remote running; fi
"""
        result = self.runner.run(target.ssh(script), check=False, what="check the host")
        if result.returncode == EXIT_RUNNING:
            run = result.stdout.split()[0] if result.stdout.split() else "?"
            raise LaunchError(
                f"a training run is already running on {self.provider.where()}: {run}. "
                f"Follow it: {self.command('--action', 'logs', '--follow')}; "
                f"stop it: {self.command('--action', 'kill')}"
            )
        if result.returncode != 0:
            raise LaunchError(f"host check failed: {last_line(result.stderr or result.stdout)}")

    def sync_code(self, target: SshTarget) -> None:
        """rsync the project (not data, runs, venv or git); --delete keeps the host an exact copy."""
        root = code_root()
        argv = [
            "rsync",
            "-az",
            "--delete",
            "--itemize-changes",
            "-e",
            target.rsync_shell(),
            "--filter=:- .gitignore",  # what git ignores is not sent either
            *[f"--exclude={pattern}" for pattern in SYNC_EXCLUDES],
            f"{root}/",
            target.rsync_path(self.remote.rsync()) + "/",
        ]
        result = self.runner.run(argv, what="sync the code")
        if not self.runner.dry_run:
            itemized = result.stdout.splitlines()
            changed = [line for line in itemized if line[:1] in "<>c*" and not line.endswith("/")]
            where = f"{self.provider.where()}:{self.args.remote_dir}"
            print(f"code synced to {where} ({len(changed)} files changed)")

    def set_up(self, target: SshTarget) -> tuple[str, int | None]:
        """Idempotent: builds the venv once (again only when pyproject.toml changed)."""
        words = ["setup"]
        if self.args.remote_python:
            words += ["--python", self.args.remote_python]
        if self.provider.require_cuda:
            words += ["--require-cuda", "--wait-gpu", f"{self.provider.wait_gpu_seconds:.0f}"]
        code, marks = self.stream_helper(target, *words)
        if self.runner.dry_run:
            return self.args.remote_python or ".venv/bin/python", None
        setup = next((m for m in marks if m.get("kind") == "setup"), None)
        if code != 0 or setup is None:
            raise LaunchError(f"set-up on {self.provider.where()} failed (exit {code}); see the lines above")
        return str(setup["python"]), int(setup.get("gpus") or 0) or None

    def send_data(self, target: SshTarget, plan: TrainPlan) -> None:
        """Upload each file whose sha256 differs from the host's copy; or download --data-url there."""
        for upload in plan.uploads:
            result = self.runner.run(
                target.ssh(self.helper("hash", upload.remote)), what="hash the host's copy"
            )
            hashed = next((m for m in read_marks(result.stdout) if m.get("kind") == "hash"), {})
            remote_sha = hashed.get("sha256")
            if self.runner.dry_run:
                print(f"# only if the host's sha256 differs from {upload.sha256[:12]}...:")
            elif remote_sha == upload.sha256:
                print(f"{upload.remote}: unchanged on the host (sha256 {upload.sha256[:12]}), not uploaded")
                continue
            else:
                size_mb = upload.local.stat().st_size / 1e6
                print(f"uploading {upload.local} -> {upload.remote} ({size_mb:.1f} MB)")
            self.runner.run(
                [
                    "rsync",
                    "-az",
                    "--partial",
                    "-e",
                    target.rsync_shell(),
                    str(upload.local),
                    target.rsync_path(self.remote.rsync(upload.remote)),
                ],
                what=f"upload {upload.local.name}",
            )
        if plan.fetch:
            url, remote_path = plan.fetch
            code, _ = self.stream_helper(target, "fetch", url, remote_path)
            if code != 0:
                raise LaunchError(f"downloading {url} on the host failed (exit {code})")

    def send_secrets(self, target: SshTarget, plan: TrainPlan) -> None:
        """Write the env file (mode 0600) through ssh's stdin; the values never reach a command line."""
        root = self.remote.shell()
        script = (
            f"umask 077 && cat > {root}/.secrets.env.tmp && chmod 600 {root}/.secrets.env.tmp "
            f"&& mv -f {root}/.secrets.env.tmp {root}/.secrets.env"
        )
        names = ", ".join(plan.secrets) or "no secrets set"
        self.runner.run(
            target.ssh(script),
            stdin_text=secrets_file_text(plan.secrets),
            stdin_note=f"[{names} from this environment; values not shown]",
            what="write the env file",
        )

    def start_training(self, target: SshTarget, plan: TrainPlan, python: str, gpus: int) -> None:
        if plan.run_id == "latest":  # --resume latest: the host knows which run that is
            plan.run_id = self.resolve_run(target, "latest")
        train_args = plan.argv(gpus)
        print(f"training: {shlex.join([python, '-m', 'alpha', 'train', *train_args])}")
        result = self.runner.run(
            target.ssh(self.helper("start", "--python", python, plan.run_id, "--", *train_args)),
            check=False,
            what="start training",
        )
        if result.returncode == EXIT_RUNNING:
            raise LaunchError(f"another training run is already running on {self.provider.where()}")
        if result.returncode != 0:
            raise LaunchError(f"starting training failed: {last_line(result.stdout + result.stderr)}")
        if not self.runner.dry_run:
            print(
                result.stdout.strip().splitlines()[0] if result.stdout.strip() else f"started {plan.run_id}"
            )
            print(
                f"log on the host: {self.args.remote_dir}/runs/train_{plan.run_id}.log "
                f"(Ctrl+C detaches; training goes on)"
            )

    def follow(self, target: SshTarget, run: str, lines: int, launched: bool = False) -> int:
        """Show the log until the run ends. Ctrl+C detaches and leaves the run going."""
        marks: list[dict[str, Any]] = []
        try:
            code, marks = self.stream_helper(target, "follow", run, "--lines", str(lines))
        except KeyboardInterrupt:
            run_id = next((m["run_id"] for m in marks if "run_id" in m), run)
            self.print_detached(run_id)
            return 130
        if self.runner.dry_run:
            if launched:
                print(
                    "# when training ends: download the run"
                    + (", then stop the instance" if self.args.stop_after else "")
                )
                self.download(target, "RUN_ID" if run == "latest" else run)
            return 0
        ended = next((m for m in marks if m.get("kind") == "ended"), None)
        if ended is None:
            if code == EXIT_NO_RUN:
                raise LaunchError(f"no run {run} on {self.provider.where()}")
            run_id = next((m["run_id"] for m in marks if "run_id" in m), run)
            print(
                f"lost the connection to {self.provider.where()} (exit {code}); the run may still be going",
                file=sys.stderr,
            )
            self.print_detached(run_id)
            return 1
        return self.finish(target, ended, launched)

    def finish(self, target: SshTarget, ended: dict[str, Any], launched: bool) -> int:
        run_id, code = str(ended["run_id"]), int(ended["code"])
        print(f"── {run_id} ended: exit {code} ({ended.get('status')}) ──")
        local_dir = Path(self.args.download_dir) / run_id
        if launched and not self.args.no_download:
            try:
                self.download(target, run_id)
            except LaunchError as exc:  # the run is still safe on the host
                print(f"[warn] download failed: {exc}", file=sys.stderr)
        stopped = False
        if launched and self.args.stop_after and self.provider.bills:
            self.provider.stop()
            stopped = True
        checkpoints = ended.get("checkpoints") or []
        print("next:")
        print(f"  download the run:  {self.command('--action', 'download', '--run-id', run_id)}")
        if checkpoints:
            print(f"  upload checkpoint: alpha upload {shlex.quote(str(local_dir / checkpoints[-1]))}")
        else:
            print("  (no checkpoint was saved, so there is nothing to upload)")
        if self.provider.bills and not stopped:
            print(f"  stop the instance: {self.command('--action', 'stop')}   (it bills while running)")
        return code

    def print_detached(self, run_id: str) -> None:
        print(f"\ndetached from {run_id}: training goes on on {self.provider.where()}.")
        print(f"  re-attach:  {self.command('--action', 'logs', '--follow', '--run-id', run_id)}")
        print(
            f"  stop it:    {self.command('--action', 'kill', '--run-id', run_id)}   (a checkpoint is saved)"
        )
        print(f"  diagnose:   {self.command('--action', 'diagnose', '--run-id', run_id)}")
        if self.provider.bills:
            print(f"  the instance keeps running (and billing) until: {self.command('--action', 'stop')}")

    # ---- actions on a run -----------------------------------------------------------------

    def logs(self) -> int:
        target = self.provider.connect()
        run = self.args.run_id or "latest"
        if self.args.follow:
            return self.follow(target, run, lines=self.args.lines)
        code, _ = self.stream_helper(target, "logs", run, "--lines", str(self.args.lines))
        if code == EXIT_NO_RUN:
            return 1
        return code

    def kill(self) -> int:
        target = self.provider.connect()
        words = ["kill", self.args.run_id or "latest", "--timeout", f"{self.args.kill_timeout:.0f}"]
        code, marks = self.stream_helper(target, *[*words, *(["--force"] if self.args.force else [])])
        killed = next((m for m in marks if m.get("kind") == "killed"), None)
        if killed is not None:
            run_id = str(killed["run_id"])
            print(f"download it: {self.command('--action', 'download', '--run-id', run_id)}")
            if self.provider.bills:
                print(f"stop the instance: {self.command('--action', 'stop')}")
        return 0 if code == 0 else 1

    def diagnose(self) -> int:
        target = self.provider.connect()
        code, _ = self.stream_helper(target, "diagnose", self.args.run_id or "latest")
        return code

    def download(self, target: SshTarget | None = None, run_id: str | None = None) -> int:
        target = target or self.provider.connect()
        run_id = run_id or self.resolve_run(target)
        local_dir = Path(self.args.download_dir) / run_id
        if not self.runner.dry_run:
            local_dir.mkdir(parents=True, exist_ok=True)
        ssh = target.rsync_shell()
        self.runner.run(
            [
                "rsync",
                "-az",
                "--partial",
                "-e",
                ssh,
                target.rsync_path(self.remote.rsync("runs", run_id)) + "/",
                f"{local_dir}/",
            ],
            what="download the run",
        )
        log = f"train_{run_id}.log"
        self.runner.run(
            [
                "rsync",
                "-az",
                "-e",
                ssh,
                target.rsync_path(self.remote.rsync("runs", log)),
                str(local_dir.parent / log),
            ],
            check=False,
            what="download the log",
        )
        if not self.runner.dry_run:
            files = sorted(p for p in local_dir.rglob("*") if p.is_file())
            total = sum(p.stat().st_size for p in files)
            print(f"downloaded {run_id} to {local_dir}/ ({len(files)} files, {total / 1e6:.1f} MB)")
            for path in files:
                print(f"  {path.relative_to(local_dir)}  {path.stat().st_size / 1e6:.2f} MB")
        return 0

    # ---- actions on the machine -----------------------------------------------------------

    def status(self) -> int:
        if not self.provider.show_status():
            return 0
        try:
            target = self.provider.connect(quick=True)
        except LaunchError as exc:
            print(f"  (runs not listed: {exc})")
            return 0
        code, _ = self.stream_helper(target, "status")
        if code != 0:
            print(f"  (no runs launched in {self.args.remote_dir} yet)")
        return 0

    def stop(self) -> int:
        """Stop the instance, after stopping its training gracefully (checkpoint first)."""
        if self.provider.bills and not self.runner.dry_run and self.provider.is_running():
            try:
                target = self.provider.connect(quick=True)
                self.stream_helper(target, "kill", "latest", "--timeout", f"{self.args.kill_timeout:.0f}")
            except LaunchError as exc:
                print(
                    f"[warn] could not reach the instance to stop its training first ({exc}); the shutdown "
                    "sends SIGTERM, so a running trainer still saves a checkpoint",
                    file=sys.stderr,
                )
        return self.provider.stop()
