#!/usr/bin/env python3
"""Load test for the dashboard's ingest: N simulated runs + one live (SSE) viewer.

Paced mode (the dashboard's real load): every run sends a metrics batch each second. Max mode:
every run sends batches back to back, to measure the most rows/s the server stores. Either way,
at the end every run's stored steps are read back and compared with what was sent (no lost or
duplicated rows), and the SSE viewer's count is checked too.

By default it starts its own ``alpha serve`` on a free 127.0.0.1 port with a temporary data dir;
``--url`` points it at a running server instead (secret from the env var named by --secret-env).

    python scripts/bench_ingest.py --runs 20 --seconds 30               # paced
    python scripts/bench_ingest.py --runs 20 --seconds 20 --mode max --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def step_record(step: int) -> dict:
    record = {
        "step": step,
        "loss": 6.0 / (1 + step / 500),
        "lr": 3e-4,
        "gradNorm": 0.8,
        "elapsed_ms": 46.0,
        "ms_per_iter": 46.0,
        "tokens_per_sec": 220513.0,
        "clip_coef": 1.0,
        "clip_pct": 0.0,
        "tokens": step * 4096,
    }
    if step % 50 == 0:
        record["valLoss"] = record["loss"] + 0.1
    return record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, secret: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "UPLOAD_SECRET": secret}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alpha", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


class Viewer:
    """An SSE client counting the metric rows it is sent, per run."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.rows: dict[str, int] = {}
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        async with (
            httpx.AsyncClient(timeout=None) as client,
            client.stream("GET", self.url + "/api/training/live") as stream,
        ):
            name = None
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    if name == "snapshot":
                        self.connected.set()
                    elif name == "metrics":
                        data = json.loads(line[6:])
                        self.rows[data["runId"]] = self.rows.get(data["runId"], 0) + len(data["metrics"])
                if stop.is_set():
                    return


async def simulate_run(
    client: httpx.AsyncClient,
    run_id: str,
    args: argparse.Namespace,
    t_end: float,
    latencies: list[float],
    errors: list[str],
    retries: list[str],
) -> int:
    await client.post(
        "/api/ingest",
        json={
            "type": "run_start",
            "runId": run_id,
            "domain": "chat",
            "totalParams": 1_000_000,
            "modelConfig": {"nLayer": 2, "nEmbd": 32, "nHead": 2},
            "trainConfig": {"iters": 10**6},
        },
    )
    step, next_send = 0, time.monotonic()
    while time.monotonic() < t_end:
        if args.mode == "paced":
            await asyncio.sleep(max(0.0, next_send - time.monotonic()))
            next_send += 1.0
        batch = [step_record(s) for s in range(step + 1, step + args.batch + 1)]
        started = time.monotonic()
        body = {"type": "metrics", "runId": run_id, "metrics": batch}
        try:
            try:
                response = await client.post("/api/ingest", json=body)
            except httpx.RemoteProtocolError:
                # a keep-alive connection the server closed just as we reused it: retry once
                # on a fresh one, as any client would; not a server error
                retries.append(run_id)
                response = await client.post("/api/ingest", json=body)
            ok = response.status_code == 200
            if not ok:
                errors.append(f"{run_id}: HTTP {response.status_code} {response.text[:100]}")
        except httpx.HTTPError as exc:
            ok = False
            errors.append(f"{run_id}: {type(exc).__name__}: {exc}")
        latencies.append(time.monotonic() - started)
        if ok:
            step += args.batch  # a failed batch is re-sent, as a durable client would
    return step


async def bench(args: argparse.Namespace, url: str, secret: str) -> dict:
    tag = secrets.token_hex(3)
    run_ids = [f"bench_{tag}_{i:02d}" for i in range(args.runs)]
    viewer, stop = Viewer(url), asyncio.Event()
    viewer_task = asyncio.create_task(viewer.run(stop))
    await asyncio.wait_for(viewer.connected.wait(), 30)
    latencies: list[float] = []
    errors: list[str] = []
    retries: list[str] = []
    limits = httpx.Limits(max_connections=args.runs + 4)
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        started = time.monotonic()
        t_end = started + args.seconds
        sent = await asyncio.gather(
            *(simulate_run(client, r, args, t_end, latencies, errors, retries) for r in run_ids)
        )
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)  # let the last SSE messages arrive
        stop.set()
        viewer_task.cancel()
        lost = duplicated = stored = 0
        for run_id, last_step in zip(run_ids, sent, strict=True):
            steps: list[int] = []
            after = -1
            while True:
                page = (
                    await client.get(
                        f"/api/runs/{run_id}/metrics", params={"after_step": after, "limit": 100_000}
                    )
                ).json()
                if not page:
                    break
                steps += [r["step"] for r in page]
                after = page[-1]["step"]
            stored += len(steps)
            duplicated += len(steps) - len(set(steps))
            lost += len(set(range(1, last_step + 1)) - set(steps))
    rows_sent = sum(sent)
    sse_rows = sum(viewer.rows.get(r, 0) for r in run_ids)
    latencies.sort()
    return {
        "mode": args.mode,
        "runs": args.runs,
        "batch": args.batch,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "connection_retries": len(retries),
        "rows_sent": rows_sent,
        "rows_stored": stored,
        "lost": lost,
        "duplicated": duplicated,
        "sse_rows": sse_rows,
        "sse_missing": rows_sent - sse_rows,
        "rows_per_s": round(stored / elapsed, 1),
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(1000 * latencies[-1], 1) if latencies else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=10, help="step records per metrics message")
    parser.add_argument("--mode", choices=("paced", "max"), default="paced")
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument(
        "--secret-env", default="UPLOAD_SECRET", help="env var with the server's write secret"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    if args.runs < 1 or args.seconds <= 0 or args.batch < 1:
        parser.error("--runs, --seconds and --batch must be positive")

    server = None
    with tempfile.TemporaryDirectory(prefix="alpha-bench-") as tmp:
        if args.url:
            url, secret = args.url.rstrip("/"), os.environ.get(args.secret_env, "")
        else:
            secret = secrets.token_hex(16)
            server, url = start_server(Path(tmp), secret)
        try:
            result = asyncio.run(bench(args, url, secret))
        finally:
            if server:
                server.terminate()
                server.wait(15)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['mode']}: {result['runs']} runs x batch {result['batch']} for {result['seconds']} s")
        print(
            f"  rows sent {result['rows_sent']}, stored {result['rows_stored']}, lost {result['lost']}, "
            f"duplicated {result['duplicated']}, SSE viewer got {result['sse_rows']}"
        )
        print(
            f"  ingest {result['rows_per_s']} rows/s; request latency ms {result['latency_ms']}; "
            f"errors {result['errors']}"
        )
    ok = (
        result["lost"] == 0
        and result["duplicated"] == 0
        and result["sse_missing"] == 0
        and not result["errors"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
