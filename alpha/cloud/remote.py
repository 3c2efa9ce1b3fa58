"""The launcher's helper on the training host: set up, start a detached run, follow, kill, report.

The launcher runs ``cd ~/alpha && python3 -m alpha.cloud.remote <command>`` over SSH, on the code
it has just synced. Standard library only (it runs before the venv exists), Python >= 3.8.

A run started here is detached from the SSH session: ``start`` spawns a *supervisor* in a new
session (setsid) that ignores SIGHUP (nohup), loads the secrets from the 0600 env file into the
trainer's environment (never its argv), starts ``alpha train`` as its child and records, in
``runs/<run_id>/``:

- ``launch.json``: ``{run_id, supervisor_pid, pid, host, started, python, argv}``
- ``stdout.log``: the trainer's stdout and stderr (a crash's traceback lands here)
- ``exit.json``: ``{code, status, ended}`` when the trainer has exited

The trainer itself writes ``runs/train_<run_id>.log`` (the human log that ``follow`` shows),
``train.pid``, metrics and checkpoints. ``kill`` sends SIGTERM to the supervisor, which forwards
it to the trainer (a checkpoint is saved before it exits); nothing is signalled by name pattern.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

RUNS = Path("runs")
SECRETS_FILE = Path(".secrets.env")
LAST_LAUNCH = RUNS / ".last_launch"
MARK = "@@alpha "  # prefix of machine-readable lines the launcher intercepts
EXIT_RUNNING = 3
EXIT_NO_RUN = 4
STATUS_BY_CODE = {
    0: "completed",
    1: "failed",
    2: "bad input",
    3: "unhealthy",
    130: "interrupted",
    143: "interrupted",
    137: "killed",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def mark(kind: str, **fields: object) -> None:
    say(MARK + json.dumps({"kind": kind, **fields}))


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def process_cmdline(pid: int) -> str | None:
    """The command line of a live process, or None when it is gone (zombies count as gone)."""
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            status = (proc / "status").read_text()
            if "\nState:\tZ" in status:
                return None
            return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
    try:  # no /proc (macOS, BSD)
        out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True)
    except OSError:
        return None
    line = out.stdout.strip()
    if not line or line.startswith("Z"):
        return None
    return line.split(None, 1)[1] if " " in line else ""


def supervisor_alive(run_id: str, info: dict) -> bool:
    """True when the run's supervisor still runs: its pid is alive and is really ours."""
    pid = info.get("supervisor_pid")
    if not isinstance(pid, int):
        return False
    cmdline = process_cmdline(pid)
    return cmdline is not None and "alpha.cloud.remote" in cmdline and run_id in cmdline


def trainer_alive(run_id: str, info: dict) -> bool:
    """True when the trainer itself still runs (its command line names the run directory)."""
    pid = info.get("pid")
    cmdline = process_cmdline(pid) if isinstance(pid, int) else None
    return cmdline is not None and f"runs/{run_id}" in cmdline


def run_state(run_id: str) -> tuple[str, dict]:
    """('running' | 'ended' | 'crashed' | 'starting' | 'missing', details)."""
    run_dir = RUNS / run_id
    ended = read_json(run_dir / "exit.json")
    if ended is not None:
        return "ended", ended
    info = read_json(run_dir / "launch.json")
    if info is None:
        return ("starting", {}) if run_dir.is_dir() else ("missing", {})
    if supervisor_alive(run_id, info) or trainer_alive(run_id, info):
        return "running", info
    return "crashed", info


def all_runs() -> list[str]:
    """Run ids launched on this host, newest first."""
    if not RUNS.is_dir():
        return []
    launched = [p.parent for p in RUNS.glob("*/launch.json")]
    launched.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name for p in launched]


def resolve_run(run: str) -> str:
    if run != "latest":
        return run
    try:
        return LAST_LAUNCH.read_text().strip()
    except OSError:
        runs = all_runs()
        if runs:
            return runs[0]
    say("no run has been launched on this host yet")
    raise SystemExit(EXIT_NO_RUN)


def launched_run(run: str) -> tuple[str, str, dict]:
    """The run an action names (``latest`` resolved), its state and details; exit 4 when the host
    has no such run."""
    run_id = resolve_run(run)
    state, info = run_state(run_id)
    if state == "missing":
        say(f"no run {run_id} on this host")
        raise SystemExit(EXIT_NO_RUN)
    return run_id, state, info


def running_runs() -> list[str]:
    return [run_id for run_id in all_runs() if run_state(run_id)[0] == "running"]


def load_secrets() -> dict[str, str]:
    """KEY=VALUE lines (values shell-quoted) from the 0600 file the launcher wrote."""
    values: dict[str, str] = {}
    try:
        text = SECRETS_FILE.read_text(encoding="utf-8")
    except OSError:
        return values
    for line in text.splitlines():
        key, sep, rest = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            words = shlex.split(rest)
            values[key.strip()] = words[0] if words else ""
    return values


# ---- commands -------------------------------------------------------------------------------


def cmd_running(args: argparse.Namespace) -> int:
    runs = running_runs()
    for run_id in runs:
        info = run_state(run_id)[1]
        say(f"{run_id} pid {info.get('pid')} started {info.get('started')}")
    return EXIT_RUNNING if runs else 0


def find_system_torch_python() -> str | None:
    """A Python on this host whose torch sees CUDA (GPU images ship one, often outside PATH)."""
    candidates = ["python3", "/opt/conda/bin/python3", "/opt/conda/bin/python", "/usr/bin/python3"]
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    for exe in candidates:
        try:
            if subprocess.run([exe, "-c", probe], capture_output=True, timeout=120).returncode == 0:
                return exe
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def wait_for_gpu_driver(seconds: float) -> bool:
    """GPU images install the NVIDIA driver on first boot: wait until nvidia-smi answers."""
    deadline = time.monotonic() + seconds
    announced = False
    while True:
        try:
            if subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=60).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() >= deadline:
            return False
        if not announced:
            say("waiting for the NVIDIA driver (first boot installs it)...")
            announced = True
        time.sleep(10)


PROBE = (
    "import json, torch; n = torch.cuda.device_count() if torch.cuda.is_available() else 0; "
    "print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'gpus': n, "
    "'names': [torch.cuda.get_device_name(i) for i in range(n)]}))"
)


def cmd_setup(args: argparse.Namespace) -> int:
    if args.wait_gpu and not wait_for_gpu_driver(args.wait_gpu):
        say(f"error: nvidia-smi still fails after {args.wait_gpu:.0f}s: the GPU driver is not ready")
        return 1
    python = args.python
    if python is None:
        # `make setup` is idempotent: it (re)installs only when pyproject.toml changed, and gives
        # the venv the system's CUDA torch when there is one.
        make = ["make", "--no-print-directory", "setup"]
        if not Path(".venv/bin/python").exists():  # only the first build picks the base Python
            make.append(f"PYTHON={find_system_torch_python() or 'python3'}")
        code = subprocess.call(make, stdin=subprocess.DEVNULL)
        if code != 0:
            say(f"error: `make setup` failed with exit code {code}")
            return 1
        python = os.path.abspath(".venv/bin/python")  # not resolve(): the venv's symlink is the point
    probe = subprocess.run([python, "-c", PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        say(f"error: {python} cannot import torch: {tail}")
        return 1
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    if args.require_cuda and not info["cuda"]:
        say(
            f"error: torch {info['torch']} in {python} does not see a GPU; remove ~/alpha/.venv "
            "on the host and re-run, so the set-up rebuilds it over the image's CUDA torch"
        )
        return 1
    gpus = ", ".join(info["names"]) or "none (CPU)"
    say(f"python {python}: torch {info['torch']}, GPUs: {gpus}")
    mark("setup", python=python, **info)
    return 0


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cmd_hash(args: argparse.Namespace) -> int:
    path = Path(args.path)
    mark("hash", path=args.path, sha256=sha256_of(path) if path.is_file() else None)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    if dest.is_file() and dest.stat().st_size > 0:
        say(f"dataset {dest} already downloaded ({dest.stat().st_size / 1e6:.1f} MB)")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name("." + dest.name + ".part")
    say(f"downloading {args.url} -> {dest}")
    # Download to a hidden partial file and rename only when complete, so an interrupted download
    # is never mistaken for the dataset.
    for attempt in range(1, 4):
        try:
            with urllib.request.urlopen(args.url, timeout=60) as response, part.open("wb") as out:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
            break
        except OSError as exc:
            say(f"download attempt {attempt} failed: {exc}")
            if attempt == 3:
                return 1
            time.sleep(3 * attempt)
    if part.stat().st_size == 0:
        say("error: the download is empty")
        return 1
    os.replace(part, dest)
    say(f"downloaded {dest.stat().st_size / 1e6:.1f} MB")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    import fcntl

    RUNS.mkdir(exist_ok=True)
    with open(RUNS / ".launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two launchers at once cannot both start
        busy = running_runs()
        if busy:
            say(f"a training run is already running here: {busy[0]}")
            return EXIT_RUNNING
        run_dir = RUNS / args.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("launch.json", "exit.json"):  # a resumed run's records from its last launch
            with contextlib.suppress(FileNotFoundError):
                (run_dir / stale).unlink()
        argv = [args.python, "-m", "alpha", "train", *args.train_args]
        with open(run_dir / "supervisor.log", "ab") as supervisor_log:
            subprocess.Popen(
                [sys.executable, "-m", "alpha.cloud.remote", "supervise", args.run_id, "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=supervisor_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: no controlling terminal, its own process group
                close_fds=True,
            )
        LAST_LAUNCH.write_text(args.run_id + "\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = read_json(run_dir / "launch.json")
            if info is not None:
                say(f"started {args.run_id}: pid {info['pid']} on {info['host']}")
                mark("started", run_id=args.run_id, pid=info["pid"], supervisor_pid=info["supervisor_pid"])
                return 0
            ended = read_json(run_dir / "exit.json")
            if ended is not None:
                say(f"the trainer exited at once with code {ended.get('code')}")
                return 1
            time.sleep(0.1)
    say(f"error: the supervisor did not start; see {run_dir / 'supervisor.log'}")
    return 1


def cmd_supervise(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: survive the SSH session ending
    run_dir = RUNS / args.run_id
    env = dict(os.environ)
    env.update(load_secrets())
    env["PYTHONUNBUFFERED"] = "1"
    # Tokenizer and token caches stay inside the project folder, beside the data they come from.
    env.setdefault("ALPHA_CACHE_DIR", str(Path(".cache").resolve()))
    children: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):  # installed first: no window where SIGTERM kills us
        signal.signal(sig, forward)
    with open(run_dir / "stdout.log", "ab") as out:
        child = subprocess.Popen(
            args.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    children.append(child)
    if received:  # a stop request arrived while the trainer was being spawned
        child.send_signal(received[0])
    write_json(
        run_dir / "launch.json",
        {
            "run_id": args.run_id,
            "supervisor_pid": os.getpid(),
            "pid": child.pid,
            "host": socket.gethostname(),
            "started": now_iso(),
            "python": args.argv[0],
            "argv": args.argv,
        },
    )
    code = child.wait()
    if code < 0:
        code = 128 - code  # killed by a signal: the shell's convention
    write_json(
        run_dir / "exit.json",
        {"code": code, "status": STATUS_BY_CODE.get(code, "failed"), "ended": now_iso()},
    )
    return 0


def train_log(run_id: str) -> Path:
    return RUNS / f"train_{run_id}.log"


def tail_lines(path: Path, n: int) -> tuple[list[str], int]:
    """The last ``n`` complete lines of a file, and the offset just after them."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - 256 * max(n, 1) - 4096)
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return [], 0
    complete = data.rfind(b"\n") + 1  # a line still being written is left for later
    lines = data[:complete].decode("utf-8", errors="replace").splitlines()
    return (lines[-n:] if n > 0 else []), start + complete


def checkpoints(run_id: str) -> list[str]:
    run_dir = RUNS / run_id

    def step(p: Path) -> int:
        digits = "".join(c for c in p.stem.rsplit("-", 1)[-1] if c.isdigit())
        return int(digits) if digits else -1

    return [p.name for p in sorted(run_dir.glob("checkpoint-*"), key=step)]


def report_end(run_id: str) -> int:
    """Print how the run ended (with the stdout tail when it failed); return its exit code."""
    state, info = run_state(run_id)
    if state == "ended":
        code = int(info.get("code", 1))
        status = info.get("status", "failed")
    else:
        code, status = 1, "crashed (the supervisor died without recording an exit code)"
    if code not in (0, 130, 143):
        out, _ = tail_lines(RUNS / run_id / "stdout.log", 30)
        if out:
            say(f"── last lines of runs/{run_id}/stdout.log ──")
            for line in out:
                say(line)
    mark("ended", run_id=run_id, code=code, status=status, checkpoints=checkpoints(run_id))
    return code


def cmd_follow(args: argparse.Namespace) -> int:
    run_id = launched_run(args.run)[0]
    log = train_log(run_id)
    mark("following", run_id=run_id, log=str(log))
    position = 0
    if log.exists():
        lines, position = tail_lines(log, args.lines)  # the tail, then everything after it
        for line in lines:
            say(line)
    pending = b""
    starting_since = time.monotonic()
    while True:
        state = run_state(run_id)[0]
        if state != "starting":
            starting_since = time.monotonic()
        elif time.monotonic() - starting_since > 60:  # the supervisor never came up
            state = "crashed"
        try:
            size = log.stat().st_size
        except OSError:
            size = 0
        if size < position:  # the log was replaced: start over
            position = 0
        if size > position:
            with log.open("rb") as f:
                f.seek(position)
                data = f.read(size - position)
            position += len(data)
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                say(line.decode("utf-8", errors="replace"))
            continue
        if state not in ("running", "starting"):
            if pending:
                say(pending.decode("utf-8", errors="replace"))
            return report_end(run_id)
        time.sleep(0.5)


def cmd_logs(args: argparse.Namespace) -> int:
    run_id, state, info = launched_run(args.run)
    log = train_log(run_id)
    source = log if log.exists() else RUNS / run_id / "stdout.log"
    say(f"── {source} ──")
    for line in tail_lines(source, args.lines)[0]:
        say(line)
    if state == "running":
        say(f"── {run_id} is running (pid {info.get('pid')}) ──")
    elif state == "ended":
        say(f"── {run_id} ended: exit {info.get('code')} ({info.get('status')}) ──")
    else:
        say(f"── {run_id}: {state} ──")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    run_id, state, info = launched_run(args.run)
    if state != "running":
        say(f"{run_id} is not running ({state}); nothing to stop")
        mark("killed", run_id=run_id, code=info.get("code"), checkpoints=checkpoints(run_id))
        return 0
    supervisor = int(info["supervisor_pid"])
    if args.force:
        # The whole process group: the supervisor is the session leader, so its group id is its
        # pid, and every process of the run (torchrun workers included) is in it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor, signal.SIGKILL)
        write_json(RUNS / run_id / "exit.json", {"code": 137, "status": "killed", "ended": now_iso()})
        say(f"killed {run_id} (SIGKILL to process group {supervisor}): no checkpoint was saved now")
        mark("killed", run_id=run_id, code=137, checkpoints=checkpoints(run_id))
        return 0
    if supervisor_alive(run_id, info):
        os.kill(supervisor, signal.SIGTERM)  # forwarded to the trainer, which saves a checkpoint
    else:  # the supervisor is gone (killed on its own): signal the verified trainer directly
        os.kill(int(info["pid"]), signal.SIGTERM)
    say(f"sent SIGTERM to {run_id} (pid {info.get('pid')}); waiting for its checkpoint...")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state, ended = run_state(run_id)
        if state != "running":
            code = ended.get("code") if state == "ended" else None
            ckpts = checkpoints(run_id)
            say(f"{run_id} stopped (exit {code}); checkpoints: {', '.join(ckpts) or 'none'}")
            mark("killed", run_id=run_id, code=code, checkpoints=ckpts)
            return 0
        time.sleep(0.5)
    say(f"{run_id} is still running after {args.timeout:.0f}s; --force sends SIGKILL (no checkpoint)")
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    runs = all_runs()
    if not runs:
        say("no runs launched on this host")
        return 0
    for run_id in runs[: args.limit]:
        state, info = run_state(run_id)
        if state == "running":
            detail = f"running, pid {info.get('pid')}, started {info.get('started')}"
        elif state == "ended":
            detail = f"ended {info.get('ended')}: exit {info.get('code')} ({info.get('status')})"
        else:
            detail = state
        ckpts = checkpoints(run_id)
        say(f"{run_id}  {detail}  checkpoints: {len(ckpts)}{' (last ' + ckpts[-1] + ')' if ckpts else ''}")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    run_id = launched_run(args.run)[0]
    mark("run", run_id=run_id)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    run_id = resolve_run(args.run)
    info = read_json(RUNS / run_id / "launch.json") or {}
    python = info.get("python") or args.python or sys.executable
    return subprocess.call(
        [python, "-m", "alpha", "diagnose", str(RUNS / run_id), *args.extra], stdin=subprocess.DEVNULL
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m alpha.cloud.remote", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("running").set_defaults(fn=cmd_running)
    s = sub.add_parser("setup")
    s.add_argument("--python")
    s.add_argument("--require-cuda", action="store_true")
    s.add_argument("--wait-gpu", type=float, default=0.0)
    s.set_defaults(fn=cmd_setup)
    s = sub.add_parser("hash")
    s.add_argument("path")
    s.set_defaults(fn=cmd_hash)
    s = sub.add_parser("fetch")
    s.add_argument("url")
    s.add_argument("dest")
    s.set_defaults(fn=cmd_fetch)
    s = sub.add_parser("start")
    s.add_argument("run_id")
    s.add_argument("--python", required=True)
    s.add_argument("train_args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_start)
    s = sub.add_parser("supervise")
    s.add_argument("run_id")
    s.add_argument("argv", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_supervise)
    for name, fn in (("follow", cmd_follow), ("logs", cmd_logs)):
        s = sub.add_parser(name)
        s.add_argument("run", nargs="?", default="latest")
        s.add_argument("--lines", type=int, default=50)
        s.set_defaults(fn=fn)
    s = sub.add_parser("kill")
    s.add_argument("run", nargs="?", default="latest")
    s.add_argument("--timeout", type=float, default=300.0)
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_kill)
    s = sub.add_parser("status")
    s.add_argument("--limit", type=int, default=10)
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("resolve")
    s.add_argument("run", nargs="?", default="latest")
    s.set_defaults(fn=cmd_resolve)
    s = sub.add_parser("diagnose")
    s.add_argument("run", nargs="?", default="latest")
    s.add_argument("--python")
    s.add_argument("extra", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_diagnose)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("train_args", "argv", "extra"):
        value = getattr(args, name, None)
        if value and value[0] == "--":
            setattr(args, name, value[1:])
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
