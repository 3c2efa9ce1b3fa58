"""The launcher's flags: its own, plus every ``alpha train`` flag, forwarded to the instance.

The training flags are not copied here: ``alpha.commands.train.add_arguments`` adds them to the
launcher's parser, so a flag added to ``alpha train`` is accepted and forwarded by the launcher
with no change. Preflight re-parses the exact argument list that will run on the instance with
``alpha train``'s own parser and validation, so a bad model shape fails here, before anything is
billed. Everything in this module is standard library (the launcher runs without the venv).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from alpha.cloud import gcp
from alpha.cloud.remote import sha256_of
from alpha.commands import train as train_command
from alpha.config import load_json_object, new_run_id, validate
from alpha.errors import EXIT_BAD_INPUT, ConfigError

ACTIONS = ("train", "status", "start", "stop", "delete", "ssh", "logs", "kill", "diagnose", "download")
SECRET_NAMES = ("ALPHA_REMOTE_URL", "ALPHA_REMOTE_SECRET", "DISCORD_WEBHOOK_URL")
DEFAULT_REMOTE_DIR = "~/alpha"
# Flags of the reference launcher that have no counterpart here: accepted so old command lines
# keep working, and reported once as having no effect.
REFERENCE_ONLY_FLAGS = {
    "trace": "tracing of the reference's GPU backend",
    "checkpoint": "activation checkpointing (the seed-size models fit without it)",
    "packed": "packed batches (batches are always packed here)",
    "max_dataset_passes": "a cap on dataset passes (--iters decides the run's length)",
    "post_samples": "posting samples (they go to Discord whenever DISCORD_WEBHOOK_URL is set)",
    "no_fp16": "--fp16=false (the default precision is already chosen per device)",
}
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class LauncherParser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def train_parser() -> argparse.ArgumentParser:
    """``alpha train``'s own parser (its flags, choices and types)."""
    parser = _RaisingParser(prog="alpha train", add_help=False, allow_abbrev=False)
    train_command.add_arguments(parser)
    return parser


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = LauncherParser(
        prog=prog,
        allow_abbrev=False,
        description="Train alpha on a GCP GPU instance (or any SSH host): preflight, instance, set-up, "
        "code sync, detached training, live log, download. See docs/CLOUD.md.",
    )
    g = p.add_argument_group("launcher")
    g.add_argument(
        "--action",
        choices=ACTIONS,
        default="train",
        help="train (default): launch a run; status/start/stop/delete/ssh: the instance; "
        "logs/kill/diagnose/download: a run on it",
    )
    g.add_argument("--provider", choices=("gcp", "ssh"), default="gcp", help="where to train (default gcp)")
    g.add_argument("--dry-run", action="store_true", help="print every command it would run; run none")
    g.add_argument("--run-id", help="name of a new run; for actions, the run to act on (default: the latest)")
    g.add_argument("--data-url", help="dataset URL, downloaded on the instance instead of uploaded")
    g.add_argument("--extra-train-flags", default="", help="more `alpha train` flags, verbatim (one string)")
    g.add_argument("--download-dir", default="runs", help="local folder for downloaded runs (default runs)")
    g.add_argument("--no-download", action="store_true", help="do not download the run when training ends")
    g.add_argument("--stop-after", action="store_true", help="stop the instance when training ends")
    g.add_argument(
        "--remote-dir", default=DEFAULT_REMOTE_DIR, help="project folder on the host (default ~/alpha)"
    )
    g.add_argument(
        "--python",
        dest="remote_python",
        help="a Python on the host that already has torch: used instead of building ~/alpha/.venv",
    )
    g.add_argument(
        "--follow", action="store_true", help="with --action logs: follow the log until the run ends"
    )
    g.add_argument("--lines", type=int, default=50, help="log lines shown by --action logs (default 50)")
    g.add_argument("--force", action="store_true", help="with --action kill: SIGKILL at once (no checkpoint)")
    g.add_argument(
        "--kill-timeout",
        type=float,
        default=300.0,
        help="seconds --action kill waits for the checkpoint and exit (default 300)",
    )
    g.add_argument("--yes", action="store_true", help="with --action delete: do not ask for confirmation")

    g = p.add_argument_group("GCP (--provider gcp)")
    g.add_argument("--project", help="GCP project (default: gcloud's configured project)")
    g.add_argument(
        "--zone",
        help="zone, or 'auto' to try the GPU's zones in order (default: where "
        f"{gcp.INSTANCE} already is, else {gcp.DEFAULT_ZONE})",
    )
    g.add_argument("--zones", help="comma-separated zones for --zone auto (default: a list per GPU type)")
    g.add_argument(
        "--machine-type",
        default=gcp.DEFAULT_MACHINE_TYPE,
        help=f"GCE machine type (default {gcp.DEFAULT_MACHINE_TYPE}); sets the GPU type and count",
    )
    g.add_argument("--accelerator", help="GPU for n1-* machines: TYPE[:COUNT], e.g. nvidia-tesla-t4:1")
    g.add_argument(
        "--image-family", default=gcp.IMAGE_FAMILY, help=f"boot image family (default {gcp.IMAGE_FAMILY})"
    )
    g.add_argument(
        "--image-project", default=gcp.IMAGE_PROJECT, help=f"image project (default {gcp.IMAGE_PROJECT})"
    )
    g.add_argument("--disk-size", type=int, default=200, help="boot disk GB (default 200)")
    g.add_argument("--disk-type", default="pd-ssd", help="boot disk type (default pd-ssd)")
    g.add_argument("--spot", action="store_true", help="a Spot VM (cheaper; may be preempted, then stopped)")
    g.add_argument(
        "--ssh-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for SSH on a new or restarted instance (default 300)",
    )

    g = p.add_argument_group("any SSH host (--provider ssh)")
    g.add_argument("--host", help="USER@HOST[:PORT]")
    g.add_argument("--identity", help="private key file (ssh -i)")
    g.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ssh -o option, repeatable (e.g. UserKnownHostsFile=...)",
    )

    g = p.add_argument_group("reference launcher flags without effect here (accepted, reported)")
    g.add_argument("--trace", action="store_true", default=None, help=argparse.SUPPRESS)
    g.add_argument("--checkpoint", action="store_true", default=None, help=argparse.SUPPRESS)
    g.add_argument("--packed", action="store_true", default=None, help=argparse.SUPPRESS)
    g.add_argument("--max-dataset-passes", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--post-samples", action="store_true", default=None, help=argparse.SUPPRESS)
    g.add_argument("--no-fp16", action="store_true", default=None, help=argparse.SUPPRESS)

    # Every `alpha train` flag (its --data is the local file, uploaded to the instance).
    train_command.add_arguments(p)
    return p


def _forwardable_actions() -> list[argparse.Action]:
    return [a for a in train_parser()._actions if a.option_strings and a.dest != "help"]


def forwarded_flags(args: argparse.Namespace, skip: set[str]) -> list[str]:
    """``alpha train`` arguments for every training flag the user gave (dests in ``skip`` excepted)."""
    out: list[str] = []
    for action in _forwardable_actions():
        if action.dest in skip:
            continue
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:  # store_true
            if value:
                out.append(flag)
        else:
            out += [flag, str(value)]
    return out


@dataclass
class Upload:
    """A local file that goes to the host, and where it lands (relative to the remote dir)."""

    local: Path
    remote: str
    sha256: str


@dataclass
class TrainPlan:
    """Everything a training launch needs, decided and checked before anything is billed."""

    run_id: str  # "latest" until resolved on the host, for --resume latest
    train_args: list[str]  # `alpha train` arguments with host paths, without --run-dir and --gpus
    uploads: list[Upload] = field(default_factory=list)
    fetch: tuple[str, str] | None = None  # (url, remote path) for --data-url
    secrets: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    resume: bool = False  # continue runs/<run_id> from its latest checkpoint

    def argv(self, gpus: int) -> list[str]:
        """The full `alpha train` arguments. The run directory is always runs/<run_id>, so the
        trainer's log, runs/train_<run_id>.log, is the file the launcher follows."""
        args = [*self.train_args, "--run-dir", f"runs/{self.run_id}"]
        if self.resume:
            args += ["--resume", f"runs/{self.run_id}"]
        if gpus > 1:
            args += ["--gpus", str(gpus)]  # alpha train starts torchrun itself
        return args


def safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return cleaned or "dataset.txt"


def find_local_file(name: str, code_root: Path, what: str) -> Path:
    """A local file as given, else under the project's data/ (the reference looked there too)."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [path, code_root / path, code_root / "data" / path.name]
    for candidate in candidates:
        if candidate.is_file():
            if candidate.stat().st_size == 0:
                raise ConfigError(f"{what} {name} is empty")
            return candidate.resolve()
    if path.exists():
        raise ConfigError(f"{what} {name} is not a file")
    raise ConfigError(f"{what} {name} does not exist")


def in_synced_tree(path: Path, code_root: Path, excluded_top: tuple[str, ...]) -> str | None:
    """The path relative to the project tree when rsync carries it there, else None."""
    try:
        rel = path.resolve().relative_to(code_root.resolve())
    except ValueError:
        return None
    if rel.parts and rel.parts[0] in excluded_top:
        return None
    return rel.as_posix()


def check_symbio_config(path: Path) -> None:
    """The symbio config must load: with the search's own validation when it is installed."""
    try:
        from alpha.symbio.config import load_symbio_config  # type: ignore[import-not-found]
    except ImportError:  # not built yet, or torch missing where the launcher runs
        load_json_object(str(path), "symbio config")
        return
    load_symbio_config(str(path))


def validate_train_args(train_args: list[str]) -> None:
    """Parse and validate exactly what will run on the host, with `alpha train`'s own code."""
    namespace = train_parser().parse_args(train_args)
    model, train = train_command.configs_from_args(namespace)
    validate(model, train)


def resumed_run_id(resume: str) -> str:
    """The run that ``--resume`` continues: ``latest``, ``runs/<id>`` or a checkpoint in it."""
    if resume == "latest":
        return "latest"
    path = PurePosixPath(resume)
    run_id = path.parent.name if path.suffix else path.name
    if path.is_absolute() or not RUN_ID_PATTERN.fullmatch(run_id or "-"):
        raise ConfigError(
            f"--resume {resume!r}: give 'latest', runs/<run id> or a checkpoint in it (on the host)"
        )
    return run_id


def plan_data(
    args: argparse.Namespace, code_root: Path, excluded_top: tuple[str, ...], plan: TrainPlan
) -> tuple[dict[str, list[str]], str | None]:
    """Decide where each input file goes on the host; returns the replaced flags and the data name."""
    replaced: dict[str, list[str]] = {}
    data_remote = None
    if args.data_url:
        parsed = urllib.parse.urlparse(args.data_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--data-url must be an http(s) URL (got {args.data_url!r})")
        name = safe_name(Path(args.data).name if args.data else Path(urllib.parse.unquote(parsed.path)).name)
        data_remote = f"data/{name}"
        plan.fetch = (args.data_url, data_remote)
        plan.summary.append(f"data: {args.data_url} -> {data_remote} (downloaded on the host)")
    elif args.data:
        local = find_local_file(args.data, code_root, "data file")
        data_remote = f"data/{safe_name(local.name)}"
        plan.uploads.append(Upload(local, data_remote, sha256_of(local)))
        plan.summary.append(f"data: {local} ({local.stat().st_size / 1e6:.1f} MB) -> {data_remote}")
    if data_remote:
        replaced["data"] = ["--data", data_remote]
    if args.val_data:
        local = find_local_file(args.val_data, code_root, "validation file")
        remote = f"data/{safe_name(local.name)}"
        if remote == data_remote:
            raise ConfigError("--val-data must be a different file from --data")
        plan.uploads.append(Upload(local, remote, sha256_of(local)))
        replaced["val_data"] = ["--val-data", remote]
    if args.symbio_config:
        local = find_local_file(args.symbio_config, code_root, "symbio config")
        check_symbio_config(local)
        remote = in_synced_tree(local, code_root, excluded_top)
        if remote is None:  # outside the synced tree: send it like a dataset
            remote = f"data/{safe_name(local.name)}"
            plan.uploads.append(Upload(local, remote, sha256_of(local)))
        replaced["symbio_config"] = ["--symbio-config", remote]
        plan.summary.append(f"symbio config: {local} -> {remote}")
    return replaced, data_remote


def plan_training(
    args: argparse.Namespace, code_root: Path, excluded_top: tuple[str, ...], environ: dict[str, str]
) -> TrainPlan:
    """Preflight: check the data, symbio config and model shape; decide paths and the run id."""
    if args.run_dir is not None:
        raise ConfigError("--run-dir is chosen by the launcher (runs/<run id>); name the run with --run-id")
    if args.data is None and args.data_url is None and args.resume is None:
        raise ConfigError("--data FILE (uploaded) or --data-url URL (downloaded on the instance) is required")
    if args.resume is not None and args.run_id is not None:
        raise ConfigError("--run-id cannot be combined with --resume: the resumed run keeps its own id")
    if args.gpus is not None and args.gpus < 1:
        raise ConfigError("--gpus must be >= 1")
    plan = TrainPlan(run_id="", train_args=[], resume=args.resume is not None)
    replaced, data_remote = plan_data(args, code_root, excluded_top, plan)
    if args.resume is not None:
        plan.run_id = resumed_run_id(args.resume)
    else:
        plan.run_id = args.run_id or new_run_id(Path(data_remote or "run").name)
    if not RUN_ID_PATTERN.fullmatch(plan.run_id):
        raise ConfigError(f"--run-id {plan.run_id!r} may use only letters, digits, '.', '_' and '-'")
    try:
        extra = shlex.split(args.extra_train_flags)
    except ValueError as exc:
        raise ConfigError(f"--extra-train-flags: {exc}") from None
    plan.train_args = forwarded_flags(args, set(replaced) | {"run_dir", "gpus", "resume"})
    for dest in ("data", "val_data", "symbio_config"):
        plan.train_args += replaced.get(dest, [])
    plan.train_args += extra
    # alpha train's own parser and validation, on exactly what will run (a resumed run's data
    # path comes from its checkpoint, so a stand-in path is checked then).
    checked = plan.argv(args.gpus or 1)
    if "data" not in replaced:
        checked += ["--data", "data/(from the checkpoint)"]
    validate_train_args(checked)

    plan.warnings = [
        f"--{dest.replace('_', '-')} has no effect here: it set {what}"
        for dest, what in REFERENCE_ONLY_FLAGS.items()
        if getattr(args, dest, None)
    ]
    plan.secrets = {name: environ[name] for name in SECRET_NAMES if environ.get(name)}
    plan.summary.append(
        f"run id: {plan.run_id}" + (" (resumed from its latest checkpoint)" if plan.resume else "")
    )
    plan.summary.append("secrets forwarded (values never shown): " + (", ".join(plan.secrets) or "none"))
    return plan


def secrets_file_text(secrets: dict[str, str]) -> str:
    """The 0600 env file's content: KEY=VALUE lines, values shell-quoted."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in secrets.items())
