"""``alpha serve``: run the training dashboard (ingest, checkpoint uploads, live and history pages).

Secrets are read from environment variables whose *names* are given on the command line, so they
never appear in process arguments. The server binds to 127.0.0.1 by default and refuses any other
address unless a write secret is set.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from alpha.errors import ConfigError

HELP = "run the training dashboard server (ingest API, live view, run history)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--data-dir", default="outputs", help="uploaded checkpoints and run files (default ./outputs)"
    )
    p.add_argument("--db", default=None, help="SQLite database file (default <data-dir>/alpha.db)")
    p.add_argument(
        "--secret-env",
        default="UPLOAD_SECRET",
        metavar="NAME",
        help="environment variable holding the write secret for ingest and uploads (default UPLOAD_SECRET)",
    )
    p.add_argument(
        "--read-secret-env",
        default=None,
        metavar="NAME",
        help="environment variable holding a secret that pages and read APIs then require",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="an active run with no ingest for this long is shown as stale (default 180)",
    )
    p.add_argument(
        "--max-checkpoint-mb",
        type=int,
        default=16384,
        metavar="MB",
        help="largest checkpoint an upload may decompress to (default 16384)",
    )
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(name: str | None, flag: str) -> str | None:
    if name is None:
        return None
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise ConfigError(f"{flag} must name an environment variable (got {name!r})")
    value = os.environ.get(name, "")
    return value if value.strip() else None


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535 (got {args.port})")
    if args.max_checkpoint_mb <= 0:
        raise ConfigError("--max-checkpoint-mb must be > 0")
    if args.stale_after <= 0:
        raise ConfigError("--stale-after must be > 0")
    write_secret = _secret(args.secret_env, "--secret-env")
    read_secret = _secret(args.read_secret_env, "--read-secret-env")
    if args.read_secret_env and read_secret is None:
        raise ConfigError(
            f"--read-secret-env {args.read_secret_env}: that environment variable is empty or unset"
        )
    if not is_loopback(args.host) and write_secret is None:
        raise ConfigError(
            f"refusing to listen on {args.host} without a write secret: set {args.secret_env} "
            "(or listen on 127.0.0.1)"
        )
    data_dir = Path(args.data_dir)
    db_path = Path(args.db) if args.db else data_dir / "alpha.db"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {exc.filename}: {exc.strerror}") from None
    _check_port_free(args.host, args.port)

    import sqlite3

    import uvicorn

    from alpha.server.app import ServerSettings, create_app
    from alpha.server.store import StorageError
    from alpha.server.uploads import UploadLimits

    settings = ServerSettings(
        db_path=db_path,
        data_dir=data_dir,
        write_secret=write_secret,
        read_secret=read_secret,
        stale_after_s=args.stale_after,
        upload_limits=UploadLimits(max_decompressed_bytes=args.max_checkpoint_mb * 1024 * 1024),
    )
    try:
        app = create_app(settings)
    except (StorageError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open database {db_path}: {exc}") from None
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    notes = [f"db {db_path}", f"data {data_dir}"]
    notes.append(
        "writes need the secret"
        if write_secret
        else f"writes are open ({args.secret_env} unset; loopback only)"
    )
    notes.append("reads need the read secret" if read_secret else "reads are public")
    print(
        f"alpha dashboard on http://{url_host}:{args.port}  ({'; '.join(notes)})", file=sys.stderr, flush=True
    )
    if not is_loopback(args.host) and read_secret is None:
        print(
            "[warn] pages and read APIs are public on this address; set --read-secret-env to protect them",
            file=sys.stderr,
            flush=True,
        )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        # reporters post every few seconds; a long keep-alive avoids reconnects (and the race
        # where a client reuses a connection the server is just closing)
        timeout_keep_alive=75,
    )
    return 0
