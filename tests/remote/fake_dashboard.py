"""A recording stand-in for the dashboard server and a Discord webhook, for the tests.

A real HTTP server on 127.0.0.1 (stdlib, so it starts in milliseconds) that speaks the ingest
protocol of reference ops.md §2 and the chunked upload protocol, checks every message against the
reference shapes, and records what it accepted in a JSONL log so that its state survives being
killed and restarted. ``POST /_control`` switches it to answering 500, hanging, or exiting after a
number of upload chunks; ``/webhooks/...`` is a Discord webhook that answers 429 on request.

Run: ``UPLOAD_SECRET=... python fake_dashboard.py --port P --dir D`` (prints ``READY <port>``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import hmac
import json
import os
import re
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

INFRA_KEYS = {"gpuName", "gpuVendor", "gpuVramMb", "hostname", "cpuCount", "ramTotalMb", "osPlatform"}
STEP_REQUIRED = ("step", "loss", "lr", "gradNorm", "elapsed_ms", "tokens_per_sec", "ms_per_iter")
LEVELS = {"debug", "info", "warn", "error"}
STATUSES = {"completed", "interrupted", "unhealthy", "failed"}
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9._-]+_\d+_\d{13}$")
TREND_KEYS = {
    "summary",
    "plateauLikely",
    "overfittingLikely",
    "windowStartStep",
    "windowEndStep",
    "trainLossDelta",
    "valLossDelta",
    "gapDelta",
}
MAX_CHUNK = 1 << 20


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_event(e: Any, where: str) -> list[str]:
    if not isinstance(e, dict):
        return [f"{where}: not an object"]
    errs = []
    if set(e) != {"step", "level", "kind", "message", "payload", "timestamp"}:
        errs.append(f"{where}: keys {sorted(e)}")
    if not (e.get("step") is None or isinstance(e.get("step"), int)):
        errs.append(f"{where}: step")
    if e.get("level") not in LEVELS:
        errs.append(f"{where}: level {e.get('level')!r}")
    if not isinstance(e.get("kind"), str) or not e.get("kind"):
        errs.append(f"{where}: kind")
    if not isinstance(e.get("message"), str):
        errs.append(f"{where}: message")
    if not (e.get("payload") is None or isinstance(e.get("payload"), dict)):
        errs.append(f"{where}: payload")
    if not (isinstance(e.get("timestamp"), str) and ISO_RE.match(e["timestamp"])):
        errs.append(f"{where}: timestamp {e.get('timestamp')!r}")
    return errs


def check_ingest(body: Any) -> list[str]:
    """Every way ``body`` departs from the reference ingest shapes (empty: valid)."""
    if not isinstance(body, dict):
        return ["body is not an object"]
    kind = body.get("type")
    errs: list[str] = []
    if not isinstance(body.get("runId"), str) or not body.get("runId"):
        errs.append("runId")
    allowed = {"type", "runId"}
    if kind == "run_start":
        allowed |= {"domain", "modelConfig", "trainConfig", "totalParams", "infra"}
        if not isinstance(body.get("modelConfig"), dict) or "nLayer" not in body["modelConfig"]:
            errs.append("modelConfig")
        if not isinstance(body.get("trainConfig"), dict) or "batchSize" not in body["trainConfig"]:
            errs.append("trainConfig")
        if "totalParams" in body and (not isinstance(body["totalParams"], int) or body["totalParams"] <= 0):
            errs.append("totalParams")
        if "infra" in body and (not isinstance(body["infra"], dict) or set(body["infra"]) != INFRA_KEYS):
            errs.append(f"infra keys {sorted(body.get('infra') or {})}")
        if not isinstance(body.get("domain"), str):
            errs.append("domain")
    elif kind == "metrics":
        allowed |= {"metrics"}
        records = body.get("metrics")
        if not isinstance(records, list) or not records:
            errs.append("metrics: empty or not a list")
        for i, r in enumerate(records or []):
            missing = [k for k in STEP_REQUIRED if k not in r]
            if missing:
                errs.append(f"metrics[{i}] missing {missing}")
            if not isinstance(r.get("step"), int) or r["step"] < 1:
                errs.append(f"metrics[{i}].step")
            for k in ("lr", "elapsed_ms", "tokens_per_sec", "ms_per_iter"):
                if k in r and not _num(r[k]):
                    errs.append(f"metrics[{i}].{k}")
            for k in ("loss", "gradNorm"):
                if k in r and not (r[k] is None or _num(r[k])):
                    errs.append(f"metrics[{i}].{k}")
    elif kind == "heartbeat":
        allowed |= {"step"}
        if "step" in body and not isinstance(body["step"], int):
            errs.append("heartbeat step")
    elif kind == "samples":
        allowed |= {"samples", "step", "trend"}
        samples = body.get("samples")
        if not isinstance(samples, list) or not samples:
            errs.append("samples")
        for s in samples or []:
            if not (
                isinstance(s, dict)
                and set(s) == {"prompt", "output"}
                and all(isinstance(v, str) for v in s.values())
            ):
                errs.append(f"sample {s!r}")
        if not isinstance(body.get("step"), int):
            errs.append("samples step")
        trend = body.get("trend")
        if not (trend is None or (isinstance(trend, dict) and set(trend) == TREND_KEYS)):
            errs.append(f"trend {trend!r}")
    elif kind == "event":
        allowed |= {"event"}
        errs += check_event(body.get("event"), "event")
    elif kind == "events":
        allowed |= {"events"}
        if not isinstance(body.get("events"), list) or not body["events"]:
            errs.append("events")
        for i, e in enumerate(body.get("events") or []):
            errs += check_event(e, f"events[{i}]")
    else:
        return [f"unknown type {kind!r}"]
    extra = set(body) - allowed
    if extra:
        errs.append(f"unexpected keys {sorted(extra)}")
    return errs


def check_complete(body: Any) -> list[str]:
    if not isinstance(body, dict) or set(body) != {"runId", "finalStep", "status", "reason"}:
        return [f"complete keys {sorted(body) if isinstance(body, dict) else body!r}"]
    errs = []
    if not isinstance(body["finalStep"], int):
        errs.append("finalStep")
    if body["status"] not in STATUSES:
        errs.append("status")
    if not isinstance(body["reason"], str):
        errs.append("reason")
    return errs


def check_embed(payload: Any) -> list[str]:
    """Discord's documented limits for a webhook message with embeds."""
    if not isinstance(payload, dict) or not isinstance(payload.get("embeds"), list) or not payload["embeds"]:
        return ["no embeds"]
    errs = []
    for e in payload["embeds"]:
        total = (
            len(e.get("title", "")) + len(e.get("description", "")) + len(e.get("footer", {}).get("text", ""))
        )
        if len(e.get("title", "")) > 256 or len(e.get("description", "")) > 4096:
            errs.append("title/description too long")
        fields = e.get("fields", [])
        if len(fields) > 25:
            errs.append("too many fields")
        for f in fields:
            if not f.get("name") or not f.get("value"):
                errs.append("empty field")
            if len(f["name"]) > 256 or len(f["value"]) > 1024:
                errs.append(f"field too long: {f['name'][:30]}")
            total += len(f["name"]) + len(f["value"])
        if total > 6000:
            errs.append(f"embed total {total} > 6000")
        if not isinstance(e.get("color"), int):
            errs.append("color")
    return errs


class State:
    """What the server has accepted, rebuilt from the log on start (so it survives restarts)."""

    def __init__(self, directory: Path, secret: str) -> None:
        self.dir = directory
        self.secret = secret
        self.lock = threading.Lock()
        self.mode = "ok"
        self.die_after_chunks: int | None = None
        self.discord_429 = 0
        self.retry_after = 0.5
        self.chunks_this_life = 0
        self.log_path = directory / "log.jsonl"
        self.forbidden = [v for v in (secret, os.environ.get("WEBHOOK_URL_UNDER_TEST", "")) if v]
        self.clear()
        if self.log_path.exists():
            for line in self.log_path.read_text().splitlines():
                if line.strip():
                    self.apply(json.loads(line))
        self.log = self.log_path.open("a")

    def clear(self) -> None:
        self.metrics: dict[str, dict[int, dict]] = {}
        self.duplicates = 0
        self.events: dict[str, dict[tuple, dict]] = {}
        self.samples: dict[str, dict[int, dict]] = {}
        self.run_starts: list[dict] = []
        self.heartbeats: list[dict] = []
        self.completes: list[dict] = []
        self.errors: list[dict] = []
        self.requests: list[dict] = []
        self.chunks: list[dict] = []
        self.assembled: list[dict] = []
        self.discord: list[dict] = []

    def record(self, entry: dict) -> None:
        entry["t"] = time.time()
        self.log.write(json.dumps(entry) + "\n")
        self.log.flush()
        self.apply(entry)

    def apply(self, entry: dict) -> None:
        kind = entry["kind"]
        self.requests.append({"kind": kind, "t": entry["t"], "type": (entry.get("body") or {}).get("type")})
        if kind == "error":
            self.errors.append(entry)
        elif kind == "ingest":
            b = entry["body"]
            run = b["runId"]
            if b["type"] == "run_start":
                self.run_starts.append(b)
            elif b["type"] == "metrics":
                store = self.metrics.setdefault(run, {})
                for r in b["metrics"]:
                    if r["step"] in store:
                        self.duplicates += 1
                    else:
                        store[r["step"]] = r
            elif b["type"] == "heartbeat":
                self.heartbeats.append(b)
            elif b["type"] == "samples":
                self.samples.setdefault(run, {})[b["step"]] = b
            else:
                for e in [b["event"]] if b["type"] == "event" else b["events"]:
                    key = (e["kind"], e["step"], e["timestamp"], e["message"])
                    self.events.setdefault(run, {})[key] = e
        elif kind == "complete":
            self.completes.append(entry["body"])
        elif kind == "chunk":
            self.chunks.append(entry)
        elif kind == "assembled":
            self.assembled.append(entry)
        elif kind == "discord":
            self.discord.append(entry)

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "metrics": {run: sorted(steps) for run, steps in self.metrics.items()},
            "metric_records": {run: [steps[s] for s in sorted(steps)] for run, steps in self.metrics.items()},
            "duplicates": self.duplicates,
            "events": {run: list(evs.values()) for run, evs in self.events.items()},
            "samples": {run: [v for _, v in sorted(s.items())] for run, s in self.samples.items()},
            "run_starts": self.run_starts,
            "heartbeats": self.heartbeats,
            "completes": self.completes,
            "errors": self.errors,
            "requests": self.requests,
            "chunks": self.chunks,
            "assembled": self.assembled,
            "discord": self.discord,
        }


class Handler(BaseHTTPRequestHandler):
    state: State
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _authorized(self) -> bool:
        expected = f"Bearer {self.state.secret}".encode()
        return hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected)

    def _misbehave(self) -> bool:
        """Apply the current failure mode to an API request; True when already answered."""
        mode = self.state.mode
        if mode == "500":
            self._reply(500, {"error": "induced failure"})
            return True
        if mode == "hang":
            while self.state.mode == "hang":
                time.sleep(0.05)
            self.close_connection = True
            return True
        return False

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/_state":
            with self.state.lock:
                return self._reply(200, self.state.summary())
        if url.path == "/api/upload/status":
            if not self._authorized():
                return self._reply(401, {"error": "Unauthorized"})
            upload_id = parse_qs(url.query).get("uploadId", [""])[0]
            folder = self.state.dir / "uploads" / upload_id
            if not UPLOAD_ID_RE.match(upload_id) or not folder.is_dir():
                return self._reply(404, {"error": "unknown upload"})
            received = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
            return self._reply(200, {"uploadId": upload_id, "received": received})
        self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        raw = self._body()
        st = self.state
        if url.path == "/_control":
            cmd = json.loads(raw)
            with st.lock:
                st.mode = cmd.get("mode", st.mode)
                st.die_after_chunks = cmd.get("die_after_chunks", st.die_after_chunks)
                st.discord_429 = cmd.get("discord_429", st.discord_429)
                st.retry_after = cmd.get("retry_after", st.retry_after)
            return self._reply(200, {"ok": True})
        if url.path.startswith("/webhooks/"):
            return self._discord(raw)
        if not url.path.startswith("/api/"):
            return self._reply(404, {"error": "not found"})
        if self._misbehave():
            return None
        if not self._authorized():
            return self._reply(401, {"error": "Unauthorized"})
        text = raw.decode("utf-8", errors="replace")
        leaked = [v for v in st.forbidden if v in text]
        if url.path == "/api/upload/chunk":
            return self._chunk(raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if url.path == "/api/ingest":
            errs = check_ingest(body) + (["a secret is in the payload"] if leaked else [])
            with st.lock:
                if errs:
                    st.record({"kind": "error", "path": url.path, "errors": errs, "body": body})
                    return self._reply(400 if errs[0].startswith("unknown type") else 422, {"error": errs})
                st.record({"kind": "ingest", "body": body})
            return self._reply(200, {"ok": True})
        if url.path == "/api/ingest/complete":
            errs = check_complete(body) + (["a secret is in the payload"] if leaked else [])
            with st.lock:
                if errs:
                    st.record({"kind": "error", "path": url.path, "errors": errs, "body": body})
                    return self._reply(422, {"error": errs})
                st.record({"kind": "complete", "body": body})
            return self._reply(200, {"ok": True})
        if url.path == "/api/upload/assemble":
            return self._assemble(body)
        self._reply(404, {"error": "not found"})

    def _chunk(self, raw: bytes) -> None:
        st, h = self.state, self.headers
        upload_id = h.get("X-Upload-Id", "")
        errs = []
        if h.get("Content-Type") != "application/octet-stream":
            errs.append("content type")
        if not UPLOAD_ID_RE.match(upload_id):
            errs.append(f"upload id {upload_id!r}")
        try:
            index, total = int(h.get("X-Chunk-Index", "")), int(h.get("X-Total-Chunks", ""))
        except ValueError:
            index, total = -1, -1
            errs.append("index/total")
        if not 0 <= index < total:
            errs.append("index range")
        if len(raw) > MAX_CHUNK or not raw:
            errs.append(f"chunk size {len(raw)}")
        if h.get("X-Chunk-Sha256") != hashlib.sha256(raw).hexdigest():
            errs.append("chunk sha256")
        with st.lock:
            if errs:
                st.record({"kind": "error", "path": "/api/upload/chunk", "errors": errs})
                return self._reply(422, {"error": errs})
            st.chunks_this_life += 1
            if st.die_after_chunks is not None and st.chunks_this_life > st.die_after_chunks:
                os._exit(3)  # the connection breaks mid-upload
            folder = st.dir / "uploads" / upload_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(index)).write_bytes(raw)
            st.record({"kind": "chunk", "uploadId": upload_id, "index": index, "total": total})
        self._reply(200, {"ok": True, "received": index})

    def _assemble(self, body: Any) -> None:
        st = self.state
        errs = []
        keys = {"uploadId", "name", "step", "totalChunks", "sha256", "config", "metrics"}
        if not isinstance(body, dict) or not keys <= set(body) or set(body) - keys - {"trainingData"}:
            return self._reply(422, {"error": f"keys {sorted(body) if isinstance(body, dict) else body}"})
        folder = st.dir / "uploads" / str(body["uploadId"])
        n = body["totalChunks"]
        parts = [folder / str(i) for i in range(n)] if isinstance(n, int) else []
        if not parts or not all(p.is_file() for p in parts):
            return self._reply(409, {"error": "missing chunks"})
        payload = b"".join(p.read_bytes() for p in parts)
        digest = hashlib.sha256(payload).hexdigest()
        if digest != body["sha256"]:
            errs.append("sha256 mismatch")
        if not isinstance(body["config"], dict) or not isinstance(body["metrics"], str):
            errs.append("config/metrics types")
        try:
            data = gzip.decompress(payload)
            (header_len,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8 : 8 + header_len])
            if any(k.startswith(("optim.", "trainer.")) for k in header):
                errs.append("optimizer state was not stripped")
        except (OSError, ValueError, struct.error) as exc:
            errs.append(f"payload is not a gzipped safetensors file: {exc}")
            data = b""
        if errs:
            with st.lock:
                st.record({"kind": "error", "path": "/api/upload/assemble", "errors": errs})
            return self._reply(422, {"error": errs})
        out = st.dir / "outputs" / body["name"] / f"checkpoint-{body['step']}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        with st.lock:
            st.record(
                {
                    "kind": "assembled",
                    "uploadId": body["uploadId"],
                    "name": body["name"],
                    "step": body["step"],
                    "bytes": len(data),
                    "hasTrainingData": "trainingData" in body,
                    "metricsLines": len(body["metrics"].splitlines()),
                    "config": body["config"],
                }
            )
        self._reply(
            200, {"ok": True, "path": str(out.relative_to(st.dir)), "bytes": len(data), "sha256": digest}
        )

    def _discord(self, raw: bytes) -> None:
        st = self.state
        with st.lock:
            if st.discord_429 > 0:
                st.discord_429 -= 1
                st.record({"kind": "discord", "status": 429})
                return self._reply(
                    429,
                    {
                        "message": "You are being rate limited.",
                        "retry_after": st.retry_after,
                        "global": False,
                    },
                )
            payload = json.loads(raw)
            errs = check_embed(payload)
            st.record({"kind": "discord", "status": 400 if errs else 204, "payload": payload, "errors": errs})
        if errs:
            return self._reply(400, {"errors": errs})
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    Handler.state = State(directory, os.environ["UPLOAD_SECRET"])
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
