"""Entry point of the cloud launcher (``scripts/gcp_train.py``): parse, preflight, dispatch.

Exit codes: 0 done · 1 a step failed (gcloud, ssh, the host, or the training itself) · 2 bad input
(nothing was touched) · 130 detached with Ctrl+C (training goes on) · after a followed run, the
trainer's own exit code (143 when it was stopped with --action kill).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from alpha.cloud.gcp import GcpProvider
from alpha.cloud.launcher import EXCLUDED_TOP, Launcher, Provider, code_root
from alpha.cloud.options import build_parser, plan_training
from alpha.cloud.shell import LaunchError, Runner
from alpha.cloud.ssh import SshProvider
from alpha.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_SIGINT, ConfigError

DEFAULT_PROG = "python3 scripts/gcp_train.py"


def make_provider(args, runner: Runner) -> Provider:  # noqa: ANN001 - argparse namespace
    if args.provider == "ssh":
        return SshProvider(runner, host=args.host, identity=args.identity, ssh_options=args.ssh_option)
    if args.host:
        raise ConfigError("--host is for --provider ssh")
    return GcpProvider(
        runner,
        project=args.project,
        zone=args.zone,
        zones=args.zones,
        machine_type=args.machine_type,
        accelerator=args.accelerator,
        image_family=args.image_family,
        image_project=args.image_project,
        disk_size=args.disk_size,
        disk_type=args.disk_type,
        spot=args.spot,
        ssh_timeout=args.ssh_timeout,
        gpus=args.gpus,
    )


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args, prog: str) -> int:  # noqa: ANN001
    runner = Runner(dry_run=args.dry_run)
    provider = make_provider(args, runner)
    launcher = Launcher(args, provider, runner, prog)
    action = args.action
    if action == "train":
        # Everything that can be checked locally is checked before any instance is touched.
        plan = plan_training(args, code_root(), EXCLUDED_TOP, dict(os.environ))
        provider.preflight(training=True)
        return launcher.launch(plan)
    provider.preflight(training=False)
    if action == "status":
        return launcher.status()
    if action == "start":
        return provider.start()
    if action == "stop":
        return launcher.stop()
    if action == "delete":
        return provider.delete(args.yes)
    if action == "ssh":
        return provider.ssh_session(launcher.remote.shell())
    if action == "logs":
        return launcher.logs()
    if action == "kill":
        return launcher.kill()
    if action == "diagnose":
        return launcher.diagnose()
    if action == "download":
        return launcher.download()
    raise ConfigError(f"unknown action {action!r}")


def main(argv: Sequence[str] | None = None, prog: str = DEFAULT_PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # `kill <launcher>` detaches like Ctrl+C
    name = prog.split()[-1].rsplit("/", 1)[-1]
    try:
        return run(args, prog)
    except ConfigError as exc:
        sys.stderr.write(f"{name}: error: {exc}\n")
        return EXIT_BAD_INPUT
    except LaunchError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{name}: error: {exc}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.write(f"{name}: interrupted\n")
        return EXIT_SIGINT
