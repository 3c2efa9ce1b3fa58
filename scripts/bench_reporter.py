"""Measure the remote reporter: its cost per training step, and the metrics rate it sustains.

python scripts/bench_reporter.py overhead [--iters 300] [--repeats 3]
    Trains the tiny config (dim 32, 2 layers, block 32) as a subprocess with no reporter, with
    the reporter pointed at a dead server (connection refused) and at a hanging server (accepts,
    never answers), alternating, and compares the median step time (ms_per_iter in
    metrics.jsonl, first 10 steps dropped).

python scripts/bench_reporter.py throughput [--seconds 4]
    Drives a RemoteReporter in-process with Step events at increasing rates against a local
    counting server, and reports the highest rate delivered with nothing spilled to the spool
    and the backlog cleared within 1 s of the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dim", "32", "--heads", "2", "--layers", "2", "--block", "32", "--batch", "4"]


class CountingHandler(BaseHTTPRequestHandler):
    """Accepts every ingest message and counts metric records; ``hang`` never answers."""

    received = 0
    hang = False
    lock = threading.Lock()
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(json.dumps({"received": CountingHandler.received}).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if CountingHandler.hang:
            time.sleep(3600)
        message = json.loads(body)
        with CountingHandler.lock:
            CountingHandler.received += len(message.get("metrics", []))
        self._reply(b'{"ok":true}')


def serve_forever(hang: bool) -> None:
    CountingHandler.hang = hang
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Server:
    """The counting server in its own process, so that it does not share the GIL with the reporter."""

    def __init__(self, hang: bool = False) -> None:
        cmd = [sys.executable, __file__, "serve"] + (["--hang"] if hang else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"  # type: ignore[union-attr]

    def received(self) -> int:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return int(json.loads(response.read())["received"])

    def stop(self) -> None:
        self.proc.kill()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


def train(data: Path, run_dir: Path, iters: int, env: dict[str, str]) -> float:
    args = [
        sys.executable,
        "-m",
        "alpha",
        "train",
        "--data",
        str(data),
        "--domain",
        "chat",
        "--vocab-size",
        "300",
        *TINY,
        "--iters",
        str(iters),
        "--eval-interval",
        str(iters),
        "--sample-interval",
        "0",
        "--run-dir",
        str(run_dir),
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_REMOTE", "DISCORD"))}
    subprocess.run(args, env={**full_env, **env}, check=True, capture_output=True, cwd=run_dir.parent)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["ms_per_iter"] for r in records[10:])


def overhead(args: argparse.Namespace) -> None:
    from alpha.data.synth import synth_chat

    tmp = Path(tempfile.mkdtemp(prefix="bench-reporter-"))
    data = tmp / "chat.txt"
    data.write_text("\n".join(synth_chat(1500, seed=7)) + "\n")
    hanging = Server(hang=True)
    secret = {"ALPHA_REMOTE_SECRET": "bench-secret"}
    conditions = {
        "no reporter": {},
        "dead server": {"ALPHA_REMOTE_URL": f"http://127.0.0.1:{dead_port()}", **secret},
        "hanging server": {
            "ALPHA_REMOTE_URL": hanging.url,
            "ALPHA_REMOTE_DRAIN_SECONDS": "1",
            **secret,
        },
    }
    train(data, tmp / "warmup", 20, {})  # builds the tokenizer and token caches once
    results: dict[str, list[float]] = {name: [] for name in conditions}
    for r in range(args.repeats):
        for name, env in conditions.items():
            ms = train(data, tmp / f"{name.replace(' ', '_')}_{r}", args.iters, env)
            results[name].append(ms)
            print(f"  repeat {r + 1} {name:15s} median step {ms:.2f} ms", flush=True)
    base = statistics.median(results["no reporter"])
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:15s} median of medians {med:.2f} ms/step  ratio {med / base:.3f}  runs {values}")
    print(f"load average at the end: {os.getloadavg()}")
    hanging.stop()


STEP_RECORD = {
    "loss": 4.2,
    "lr": 6e-4,
    "gradNorm": 0.9,
    "elapsed_ms": 30.0,
    "tokens_per_sec": 4000.0,
    "ms_per_iter": 30.0,
    "clip_coef": 1.0,
    "clip_pct": 0.0,
    "tokens": 0,
}


def cost(args: argparse.Namespace) -> None:
    from alpha.events import EventBus, Step
    from alpha.remote.credentials import RemoteSettings
    from alpha.sinks.remote import RemoteReporter, ReporterOptions

    hanging, live = Server(hang=True), Server()
    servers = {
        "no reporter": None,
        "dead server": f"http://127.0.0.1:{dead_port()}",
        "hanging server": hanging.url,
        "live server": live.url,
    }
    interval = args.interval_ms / 1000
    for name, url in servers.items():
        bus, reporter = EventBus(), None
        if url is not None:
            run_dir = Path(tempfile.mkdtemp(prefix="bench-cost-"))
            options = ReporterOptions(drain_seconds=1.0)
            reporter = RemoteReporter(RemoteSettings(url, "bench-secret"), run_dir, options)
            bus.add(reporter)
            clock = time.pthread_getcpuclockid(reporter._thread.ident)  # the reporter thread's CPU clock
            thread_cpu0 = time.clock_gettime(clock)
        emit_times = []
        start = time.perf_counter()
        for n in range(1, args.steps + 1):
            event = Step(step=n, metrics={"step": n, **STEP_RECORD})
            t0 = time.perf_counter()
            bus.emit(event)
            emit_times.append(time.perf_counter() - t0)
            ahead = n * interval - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
        thread_cpu = time.clock_gettime(clock) - thread_cpu0 if reporter is not None else 0.0
        bus.close()
        emit_us = statistics.mean(emit_times) * 1e6
        thread_us = thread_cpu / args.steps * 1e6
        print(
            f"{name:15s} emit {emit_us:6.1f} us/step (p99 {sorted(emit_times)[int(0.99 * len(emit_times))] * 1e6:6.1f})"
            f"  reporter thread CPU {thread_us:6.1f} us/step  total {emit_us + thread_us:6.1f} us/step",
            flush=True,
        )
    hanging.stop()
    live.stop()
    print(f"load average {os.getloadavg()}")


def throughput(args: argparse.Namespace) -> None:
    from alpha.events import Step
    from alpha.remote.credentials import RemoteSettings
    from alpha.sinks.remote import RemoteReporter, ReporterOptions

    server = Server()
    record = {
        "loss": 4.2,
        "lr": 6e-4,
        "gradNorm": 0.9,
        "elapsed_ms": 30.0,
        "tokens_per_sec": 4000.0,
        "ms_per_iter": 30.0,
        "clip_coef": 1.0,
        "clip_pct": 0.0,
        "tokens": 0,
    }
    best = 0
    step = 0
    for rate in (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000):
        run_dir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
        reporter = RemoteReporter(
            RemoteSettings(server.url, "bench-secret"), run_dir, ReporterOptions(flush_seconds=0.5)
        )
        before = server.received()
        total = int(rate * args.seconds)
        start = time.perf_counter()
        for i in range(total):
            step += 1
            reporter.handle(Step(step=step, metrics={"step": step, **record}))
            if i % 100 == 99:  # pace the producer at `rate` events per second
                ahead = (i + 1) / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
        produced = time.perf_counter() - start
        deadline = time.perf_counter() + 1.0
        while (delivered := server.received() - before) < total and time.perf_counter() < deadline:
            time.sleep(0.01)
        cleared = delivered >= total
        reporter.close()
        ok = cleared and reporter.stats["spooled"] == 0 and produced < args.seconds * 1.1
        print(
            f"rate {rate:>7}/s: produced in {produced:.2f}s, delivered {delivered}/{total} "
            f"within 1s, spooled {reporter.stats['spooled']}, requests {reporter.stats['requests']} "
            f"-> {'sustained' if ok else 'NOT sustained'}",
            flush=True,
        )
        if not ok:
            break
        best = rate
    print(f"highest sustained rate: {best} metrics/s; load average {os.getloadavg()}")
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("throughput")
    p.add_argument("--seconds", type=float, default=4.0)
    p = sub.add_parser("cost")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--interval-ms", type=float, default=5.0)
    p = sub.add_parser("serve", help="(internal) the counting server")
    p.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    {"overhead": overhead, "cost": cost, "throughput": throughput}.get(
        args.what, lambda a: serve_forever(a.hang)
    )(args)


if __name__ == "__main__":
    main()
