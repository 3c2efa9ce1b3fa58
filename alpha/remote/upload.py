"""Checkpoint upload to the dashboard server: optimizer stripped, gzipped, chunked, resumable.

Protocol (the dashboard server implements the other side):

1. ``POST /api/upload/chunk`` for each chunk of at most 1 MiB of the gzipped, optimizer-stripped
   checkpoint, with headers ``X-Upload-Id: <runId>_<step>_<epoch ms>``, ``X-Chunk-Index``,
   ``X-Total-Chunks`` and ``X-Chunk-Sha256`` (hex digest of that body).
2. ``GET /api/upload/status?uploadId=...`` -> ``{"uploadId", "received": [indices]}``: after a broken
   connection only the missing chunks are sent again. The upload id is kept in
   ``<checkpoint>.upload.json`` so re-running ``alpha upload`` resumes the same upload.
3. ``POST /api/upload/assemble`` with ``{uploadId, name, step, totalChunks, sha256, config, metrics,
   trainingData?}``; the server checks the sha256 of the whole payload and answers
   ``{"ok": true, "path", "bytes", "sha256"}``.

The gzip is deterministic (no timestamp), so a resumed upload re-creates byte-identical chunks;
the state file records the payload's sha256 and is ignored if the checkpoint changed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpha.errors import ConfigError
from alpha.events import Alert, EventBus, RunEnd
from alpha.remote import messages
from alpha.remote.client import RemoteError, ServerClient
from alpha.remote.credentials import RemoteSettings, describe
from alpha.train.checkpoint import strip_optimizer

CHUNK_BYTES = 1 << 20
TRAINING_DATA_BYTES = 50 * 1024
STATE_SUFFIX = ".upload.json"
CHUNK_ATTEMPTS = 4
ROUNDS = 3  # status -> send missing -> assemble, repeated when the server lost chunks


@dataclass
class Payload:
    """The gzipped inference-only checkpoint, ready to cut into chunks."""

    data: bytes
    sha256: str
    step: int
    run_id: str
    full_bytes: int
    inference_bytes: int


@dataclass
class UploadResult:
    upload_id: str
    server_path: str
    run_id: str
    step: int
    chunks: int
    chunks_sent: int
    gzip_bytes: int
    full_bytes: int
    inference_bytes: int
    sha256: str
    resumed: bool

    def event_payload(self) -> dict[str, Any]:
        return {
            "uploadId": self.upload_id,
            "path": self.server_path,
            "step": self.step,
            "fullBytes": self.full_bytes,
            "inferenceBytes": self.inference_bytes,
            "gzipBytes": self.gzip_bytes,
            "chunks": self.chunks,
            "sha256": self.sha256,
        }


def prepare(checkpoint: Path, run_id: str | None = None) -> Payload:
    """Strip the optimizer and trainer state, gzip deterministically, hash."""
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {checkpoint} does not exist")
    with tempfile.TemporaryDirectory(prefix="alpha-upload-") as tmp:
        stripped = Path(tmp) / "inference.safetensors"
        meta = strip_optimizer(checkpoint, stripped)
        raw = stripped.read_bytes()
    data = gzip.compress(raw, compresslevel=6, mtime=0)
    step = int(meta.get("step", 0))
    return Payload(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        step=step,
        run_id=run_id or str(meta.get("runId") or checkpoint.parent.name),
        full_bytes=checkpoint.stat().st_size,
        inference_bytes=len(raw),
    )


def _state_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + STATE_SUFFIX)


def _load_state(path: Path, payload: Payload, chunk_bytes: int) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = state.get("sha256") == payload.sha256 and state.get("chunkBytes") == chunk_bytes
    return state if same and isinstance(state.get("uploadId"), str) else None


def _run_files(run_dir: Path, meta_run_id: str) -> tuple[dict[str, Any], str, Path | None, bool]:
    """config.json (or a minimal one), metrics.jsonl text, the data file, and any earlier upload."""
    config: dict[str, Any] = {"runId": meta_run_id}
    try:
        value = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        if isinstance(value, dict):
            config = value
    except (OSError, ValueError):
        pass
    try:
        metrics = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    except OSError:
        metrics = ""
    data = config.get("dataPath") or (config.get("trainConfig") or {}).get("data")
    data_path = Path(data) if isinstance(data, str) and data and Path(data).is_file() else None
    uploaded_before = False
    try:
        with (run_dir / "events.jsonl").open(encoding="utf-8") as f:
            uploaded_before = any('"checkpoint_uploaded"' in line for line in f)
    except OSError:
        pass
    return config, metrics, data_path, uploaded_before


def upload_checkpoint(
    client: ServerClient,
    checkpoint: Path,
    *,
    run_id: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    log: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> UploadResult:
    """Upload (or resume uploading) one checkpoint; raises RemoteError when the server fails."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ConfigError(f"chunk size must be between 1 byte and {CHUNK_BYTES} bytes")
    payload = prepare(checkpoint, run_id)
    total = max(1, -(-len(payload.data) // chunk_bytes))
    state_path = _state_path(checkpoint)
    state = _load_state(state_path, payload, chunk_bytes)
    resumed = state is not None
    if state is None:
        state = {
            "uploadId": f"{payload.run_id}_{payload.step}_{int(time.time() * 1000)}",
            "sha256": payload.sha256,
            "chunkBytes": chunk_bytes,
            "totalChunks": total,
        }
        state_path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    upload_id = state["uploadId"]
    config, metrics, data_path, uploaded_before = _run_files(checkpoint.parent, payload.run_id)
    sent = 0
    for _ in range(ROUNDS):
        missing = sorted(set(range(total)) - _received(client, upload_id))
        if resumed and sent == 0:
            log(f"resuming upload {upload_id}: {total - len(missing)}/{total} chunks already on the server")
        for index in missing:
            chunk = payload.data[index * chunk_bytes : (index + 1) * chunk_bytes]
            _send_chunk(client, upload_id, index, total, chunk, sleep)
            sent += 1
            log(f"chunk {index + 1}/{total} sent")
        body: dict[str, Any] = {
            "uploadId": upload_id,
            "name": payload.run_id,
            "step": payload.step,
            "totalChunks": total,
            "sha256": payload.sha256,
            "config": config,
            "metrics": metrics,
        }
        if not uploaded_before and data_path is not None:
            with data_path.open("rb") as f:
                body["trainingData"] = f.read(TRAINING_DATA_BYTES).decode("utf-8", errors="ignore")
        try:
            answer = client.post_json("/api/upload/assemble", body)
        except RemoteError as exc:
            if exc.status == 409:  # the server lost chunks (restarted): send what is missing again
                continue
            raise
        if answer.get("sha256") not in (None, payload.sha256):
            raise RemoteError("the server assembled a different payload (sha256 mismatch)", retryable=False)
        state_path.unlink(missing_ok=True)
        return UploadResult(
            upload_id=upload_id,
            server_path=str(answer.get("path", "")),
            run_id=payload.run_id,
            step=payload.step,
            chunks=total,
            chunks_sent=sent,
            gzip_bytes=len(payload.data),
            full_bytes=payload.full_bytes,
            inference_bytes=payload.inference_bytes,
            sha256=payload.sha256,
            resumed=resumed,
        )
    raise RemoteError(f"the server still lacks chunks after {ROUNDS} rounds")


def _received(client: ServerClient, upload_id: str) -> set[int]:
    try:
        answer = client.get_json("/api/upload/status", {"uploadId": upload_id})
    except RemoteError as exc:
        if exc.status == 404:  # an upload the server has never seen
            return set()
        raise
    return {i for i in answer.get("received", []) if isinstance(i, int)}


def _send_chunk(
    client: ServerClient, upload_id: str, index: int, total: int, chunk: bytes, sleep: Callable[[float], None]
) -> None:
    headers = {
        "X-Upload-Id": upload_id,
        "X-Chunk-Index": str(index),
        "X-Total-Chunks": str(total),
        "X-Chunk-Sha256": hashlib.sha256(chunk).hexdigest(),
    }
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            client.post_bytes("/api/upload/chunk", chunk, headers)
            return
        except RemoteError as exc:
            if not exc.retryable or attempt == CHUNK_ATTEMPTS:
                raise
            sleep(2.0 ** (attempt - 1))


def upload_event(step: int, result: UploadResult | None, error: str | None = None) -> Alert:
    """The ``checkpoint_uploaded`` / ``checkpoint_upload_failed`` event for an upload."""
    if result is not None:
        mb = result.gzip_bytes / 1e6
        text = f"checkpoint step {result.step} uploaded ({mb:.1f} MB gzip, {result.chunks} chunks)"
        return Alert(
            step=step, kind="checkpoint_uploaded", level="info", text=text, data=result.event_payload()
        )
    return Alert(
        step=step,
        kind="checkpoint_upload_failed",
        level="warn",
        text=f"checkpoint upload failed: {error}",
        data={"error": error},
    )


def record_upload(client: ServerClient, checkpoint: Path, event: Alert, run_id: str | None) -> None:
    """``alpha upload`` outside training: append the event to the run's events.jsonl, tell the server."""
    run_dir = checkpoint.parent
    if (run_dir / "config.json").is_file():
        with (run_dir / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_record()) + "\n")
    with contextlib.suppress(RemoteError):  # the upload itself is what mattered
        client.post_json(*messages.events(run_id or run_dir.name, [event.to_record()]))


def check_upload_final(upload_final: bool, remote: bool) -> None:
    """Fail before training (exit 2) when ``--upload-final`` cannot work."""
    if not upload_final:
        return
    if not remote:
        raise ConfigError("--upload-final needs the dashboard server; it cannot be combined with --no-remote")
    if RemoteSettings.from_env() is None:
        raise ConfigError("--upload-final needs ALPHA_REMOTE_URL and ALPHA_REMOTE_SECRET in the environment")


def upload_final_checkpoint(
    end: RunEnd, bus: EventBus, log: Callable[[str], None] = print
) -> UploadResult | None:
    """``--upload-final``: upload the run's last checkpoint after training; never raises.

    Emits ``checkpoint_uploaded`` or ``checkpoint_upload_failed`` on the bus. A failed upload keeps
    its state file, so ``alpha upload <checkpoint>`` resumes it later.
    """
    if end.status != "completed" or not end.last_checkpoint:
        return None
    checkpoint = Path(end.last_checkpoint)
    try:
        settings = RemoteSettings.from_env()
        if settings is None:
            raise ConfigError("ALPHA_REMOTE_URL and ALPHA_REMOTE_SECRET are not set")
        with ServerClient(settings) as client:
            result = upload_checkpoint(client, checkpoint, run_id=None)
    except (RemoteError, ConfigError, OSError, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            error = "interrupted"
        else:
            error = str(exc) if isinstance(exc, (RemoteError, ConfigError)) else describe(exc)
        log(f"  [upload] failed: {error} (resume with: alpha upload {checkpoint})")
        bus.emit(upload_event(end.step, None, error))
        return None
    log(f"  [upload] {checkpoint.name} -> {result.server_path} ({result.gzip_bytes / 1e6:.1f} MB gzip)")
    bus.emit(upload_event(end.step, result))
    return result
