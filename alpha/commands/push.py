"""``alpha push RUN_DIR``: replay a finished or crashed run to the dashboard server.

The server and its secret come from the environment (``ALPHA_REMOTE_URL``,
``ALPHA_REMOTE_SECRET``, or the variables named by ``--url-env``/``--secret-env``), never from
flags, so they stay out of shell history and process listings. Safe to repeat: the server stores
each metric and event once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alpha.errors import EXIT_FAILURE, ConfigError
from alpha.remote.credentials import SECRET_ENV, URL_ENV

HELP = "replay a run directory (metrics, events, samples, spool) to the dashboard server"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory, e.g. runs/<run id>")
    p.add_argument("--attempts", type=int, default=5, help="tries per message, with backoff (default 5)")
    p.add_argument("--url-env", default=URL_ENV, help=f"variable holding the server URL (default {URL_ENV})")
    p.add_argument(
        "--secret-env", default=SECRET_ENV, help=f"variable holding the bearer secret (default {SECRET_ENV})"
    )


def run(args: argparse.Namespace) -> int:
    from alpha.remote.client import RemoteError, ServerClient
    from alpha.remote.credentials import RemoteSettings
    from alpha.remote.replay import replay

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory")
    if args.attempts < 1:
        raise ConfigError(f"--attempts must be >= 1 (got {args.attempts})")
    settings = RemoteSettings.from_env(args.url_env, args.secret_env)
    if settings is None:
        raise ConfigError(f"set ${args.url_env} and ${args.secret_env} to push to a dashboard server")
    try:
        with ServerClient(settings) as client:
            summary = replay(
                run_dir, client, attempts=args.attempts, log=lambda line: print(line, file=sys.stderr)
            )
    except RemoteError as exc:
        sys.stderr.write(f"alpha push: error: {exc} (nothing is lost: push again when the server is back)\n")
        return EXIT_FAILURE
    counts = summary.counts
    events = counts.get("events", 0) + counts.get("event", 0)
    print(
        f"pushed run {summary.run_id} to ${args.url_env}: {counts.get('metrics', 0)} metrics, "
        f"{events} events, {counts.get('samples', 0)} sample batches; "
        f"status {summary.status} at step {summary.final_step}"
        + (f" ({summary.skipped_lines} unreadable lines skipped)" if summary.skipped_lines else "")
    )
    return 0
