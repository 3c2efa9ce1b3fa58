"""``alpha upload CHECKPOINT``: push a checkpoint to the dashboard server for inference.

The optimizer and trainer state are stripped, the rest is gzipped and sent in chunks of at most
1 MiB with a sha256 per chunk and for the whole; an interrupted upload resumes where it stopped
when the same command is run again. The server and its secret come from the environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alpha.errors import EXIT_FAILURE, ConfigError
from alpha.remote.credentials import SECRET_ENV, URL_ENV
from alpha.train.checkpoint_files import find_checkpoint

HELP = "upload a checkpoint (optimizer stripped, chunked, resumable) to the dashboard server"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a checkpoint file, or a run directory (its latest)"
    )
    p.add_argument("--run-id", help="name on the server (default: the checkpoint's run id)")
    p.add_argument(
        "--chunk-kib", type=int, default=1024, help="chunk size in KiB, at most 1024 (default 1024)"
    )
    p.add_argument("--url-env", default=URL_ENV, help=f"variable holding the server URL (default {URL_ENV})")
    p.add_argument(
        "--secret-env", default=SECRET_ENV, help=f"variable holding the bearer secret (default {SECRET_ENV})"
    )


def run(args: argparse.Namespace) -> int:
    from alpha.remote.credentials import RemoteSettings

    if not 1 <= args.chunk_kib <= 1024:
        raise ConfigError(f"--chunk-kib must be between 1 and 1024 (got {args.chunk_kib})")
    checkpoint = find_checkpoint(Path(args.checkpoint), "checkpoint")
    settings = RemoteSettings.from_env(args.url_env, args.secret_env)
    if settings is None:
        raise ConfigError(f"set ${args.url_env} and ${args.secret_env} to upload to a dashboard server")

    from alpha.remote.client import RemoteError, ServerClient  # heavy (httpx, torch): after validation
    from alpha.remote.upload import record_upload, upload_checkpoint, upload_event

    with ServerClient(settings) as client:
        try:
            result = upload_checkpoint(
                client,
                checkpoint,
                run_id=args.run_id,
                chunk_bytes=args.chunk_kib * 1024,
                log=lambda line: print(line, file=sys.stderr),
            )
        except RemoteError as exc:
            sys.stderr.write(f"alpha upload: error: {exc} (run the same command again to resume)\n")
            record_upload(client, checkpoint, upload_event(0, None, str(exc)), args.run_id)
            return EXIT_FAILURE
        record_upload(client, checkpoint, upload_event(result.step, result), result.run_id)
    resumed = " (resumed)" if result.resumed else ""
    print(
        f"uploaded {checkpoint.name} (step {result.step}) as {result.run_id}{resumed}: "
        f"{result.gzip_bytes / 1e6:.2f} MB gzip in {result.chunks} chunks "
        f"({result.chunks_sent} sent now), sha256 {result.sha256[:16]}… -> {result.server_path}"
    )
    return 0
