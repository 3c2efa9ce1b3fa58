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


def build_trainer(tmp: Path, iters: int):  # noqa: ANN201 (returns a Trainer)
    """A real Trainer (tiny config, synthetic chat data) with the file sinks a run always has."""
    import torch

    from alpha.cli import build_parser
    from alpha.config import domain_for
    from alpha.data.synth import synth_chat
    from alpha.events import EventBus
    from alpha.model.gpt import GPT
    from alpha.sinks.jsonl import EventsSink, MetricsSink
    from alpha.train import launch
    from alpha.train.trainer import RunContext, Trainer

    data = tmp / "chat.txt"
    data.write_text("\n".join(synth_chat(1500, seed=7)) + "\n")
    run_dir = tmp / "bench_run"
    argv = [
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
        "--run-dir",
        str(run_dir),
        "--backend",
        "cpu",
    ]
    plan = launch.plan_from_args(build_parser().parse_args(argv))
    tokenizer = launch.prepare_tokenizer(plan)
    tokens = launch.prepare_data(plan, tokenizer, show_progress=False)
    plan.model_cfg.vocab_size = tokenizer.vocab_size
    run_dir.mkdir(parents=True)
    bus = EventBus([MetricsSink(run_dir), EventsSink(run_dir)])
    ctx = RunContext(plan.run_id, run_dir, torch.device("cpu"), None)
    return Trainer(GPT(plan.model_cfg), plan.train_cfg, tokenizer, tokens, bus, ctx, domain_for("chat"))


def overhead(args: argparse.Namespace) -> None:
    """Interleaved A/B inside one process, so a busy machine slows every condition alike."""
    import torch

    from alpha.remote.credentials import RemoteSettings
    from alpha.sinks.remote import RemoteReporter, ReporterOptions

    # One intra-op thread: a dim-32 model gains nothing from more, and on a shared machine OpenMP
    # threads spinning against other processes make step times swing by 10-100x.
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    trainer = build_trainer(tmp, iters=10**9)
    base_sinks = list(trainer.bus.sinks)
    hanging, live = Server(hang=True), Server()
    urls = {
        "dead server": f"http://127.0.0.1:{dead_port()}",
        "hanging server": hanging.url,
        "live server": live.url,
    }
    reporters = {
        name: RemoteReporter(
            RemoteSettings(url, "bench-secret"),
            tmp / name.replace(" ", "_"),
            ReporterOptions(drain_seconds=1.0),
        )
        for name, url in urls.items()
    }
    conditions = ["no reporter", *reporters]
    trainer.train_steps(args.block, periodic=False)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in conditions}
    for r in range(args.rounds):
        order = conditions[r % len(conditions) :] + conditions[: r % len(conditions)]
        for name in order:
            trainer.bus.sinks = base_sinks + ([reporters[name]] if name in reporters else [])
            t0 = time.perf_counter()
            trainer.train_steps(args.block, periodic=False)
            times[name].append((time.perf_counter() - t0) / args.block * 1000)
    trainer.bus.sinks = base_sinks
    for reporter in reporters.values():
        reporter.close()
    base = times["no reporter"]
    for name in conditions:
        ratios = [t / b for t, b in zip(times[name], base, strict=True)]
        print(
            f"{name:15s} median step {statistics.median(times[name]):7.3f} ms   "
            f"median ratio to no reporter {statistics.median(ratios):.3f}   "
            f"(rounds {args.rounds} x {args.block} steps)"
        )
    hanging.stop()
    live.stop()
    print(f"load average {os.getloadavg()}")


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
            for n in range(200):  # warm-up: the HTTP client's start and the first (failed) attempts
                bus.emit(Step(step=-n, metrics={"step": n + 1, **STEP_RECORD}))
            time.sleep(1.5)
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
        p50 = statistics.median(emit_times) * 1e6
        p99 = sorted(emit_times)[int(0.99 * len(emit_times))] * 1e6
        print(
            f"{name:15s} emit mean {emit_us:5.1f} us/step (median {p50:4.1f}, p99 {p99:6.1f})"
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
            reporter.handle(Step(step=step, metrics={"step": step, **STEP_RECORD}))
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
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--block", type=int, default=25, help="steps per measured block")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
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
