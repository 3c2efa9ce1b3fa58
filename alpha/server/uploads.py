"""Chunked, resumable checkpoint uploads, kept on disk under the data directory.

A client sends the gzipped, optimizer-stripped checkpoint in chunks of at most 1 MiB, each with
its sha256, asks which chunks arrived (to resume after a broken connection), then asks the server
to assemble them. Assembly checks that every chunk is there and that the whole payload matches
its sha256, gunzips it with a size limit (no zip bombs), checks it is a safetensors file, and
writes ``runs/<name>/checkpoint-<step>.safetensors`` atomically, with config.json and
metrics.jsonl beside it.

Every name that becomes a path is checked against ``[A-Za-z0-9._-]+`` and the resolved path must
stay inside the data directory, so no request can read or write outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpha.server.protocol import ProtocolError, check_name

MIB = 1024 * 1024
CHUNK_FILE = re.compile(r"^(\d+)\.chunk$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class UploadError(Exception):
    """A refused upload request; ``status`` is the HTTP status, the text the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class UploadLimits:
    max_chunk_bytes: int = MIB
    max_chunks: int = 4096  # 4 GiB of gzip
    max_decompressed_bytes: int = 16 * 1024 * MIB
    max_side_file_bytes: int = 256 * MIB  # metrics.jsonl, config.json, training-data.txt
    stale_upload_s: float = 24 * 3600


@dataclass
class Assembled:
    run_id: str
    step: int
    filename: str
    relative_path: str
    size: int
    sha256: str  # of the stored .safetensors file
    upload_sha256: str  # of the gzipped payload, as the client computed it


def _safe(name: Any, what: str) -> str:
    try:
        return check_name(name, what)
    except ProtocolError as exc:
        raise UploadError(400, str(exc)) from None


def inside(root: Path, *parts: str) -> Path:
    """``root/parts`` resolved, or UploadError(400) if it would land outside ``root``."""
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise UploadError(400, "path escapes the data directory")
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_safetensors(path: Path) -> None:
    """The file starts with a u64 header length and a JSON object header, as safetensors does."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UploadError(400, "assembled file is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len == 0 or header_len > min(size - 8, 100 * MIB):
            raise UploadError(400, "assembled file is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise UploadError(400, "assembled file is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise UploadError(400, "assembled file is not a safetensors file (header is not an object)")


class Uploads:
    """Chunk storage (``<data-dir>/uploads/<uploadId>/``) and assembly into ``<data-dir>/runs/``."""

    def __init__(self, data_dir: str | Path, limits: UploadLimits | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.limits = limits or UploadLimits()
        self.uploads_dir = self.data_dir / "uploads"
        self.runs_dir = self.data_dir / "runs"
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)

    def purge_stale(self) -> int:
        """Remove uploads untouched for ``stale_upload_s`` (abandoned by their client)."""
        cutoff = time.time() - self.limits.stale_upload_s
        removed = 0
        for entry in self.uploads_dir.iterdir():
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def _upload_dir(self, upload_id: Any) -> Path:
        return inside(self.uploads_dir, _safe(upload_id, "X-Upload-Id / uploadId"))

    def check_chunk_headers(
        self, upload_id: Any, index: Any, total: Any, sha256: Any
    ) -> tuple[str, int, int, str]:
        upload_id = _safe(upload_id, "X-Upload-Id")
        try:
            index, total = int(index), int(total)
        except (TypeError, ValueError):
            raise UploadError(400, "X-Chunk-Index and X-Total-Chunks must be integers") from None
        if not 1 <= total <= self.limits.max_chunks:
            raise UploadError(
                413 if total > self.limits.max_chunks else 400,
                f"X-Total-Chunks must be in [1, {self.limits.max_chunks}]",
            )
        if not 0 <= index < total:
            raise UploadError(400, f"X-Chunk-Index must be in [0, {total - 1}]")
        sha256 = (sha256 or "").strip().lower()
        if not SHA256_HEX.match(sha256):
            raise UploadError(400, "X-Chunk-Sha256 must be the hex sha256 of the chunk body")
        return upload_id, index, total, sha256

    def save_chunk(self, upload_id: str, index: int, total: int, sha256: str, body: bytes) -> list[int]:
        """Store one verified chunk (a re-send replaces it: idempotent). Returns the indices held."""
        if len(body) > self.limits.max_chunk_bytes:
            raise UploadError(413, f"chunk is larger than {self.limits.max_chunk_bytes} bytes")
        if hashlib.sha256(body).hexdigest() != sha256:
            raise UploadError(400, f"chunk {index} sha256 mismatch: body does not match X-Chunk-Sha256")
        directory = self._upload_dir(upload_id)
        directory.mkdir(exist_ok=True)
        meta_path = directory / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("totalChunks") != total:
                raise UploadError(
                    409, f"X-Total-Chunks {total} differs from {meta.get('totalChunks')} for this upload"
                )
        else:
            _atomic_write(meta_path, json.dumps({"totalChunks": total, "created": time.time()}).encode())
        _atomic_write(directory / f"{index}.chunk", body)
        os.utime(directory)
        return self.received(upload_id)

    def received(self, upload_id: Any) -> list[int]:
        directory = self._upload_dir(upload_id)
        if not directory.is_dir():
            return []
        indices = (CHUNK_FILE.match(p.name) for p in directory.iterdir())
        return sorted(int(m.group(1)) for m in indices if m)

    def assemble(self, body: Any) -> Assembled:
        """Verify and unpack an upload; see the module docstring."""
        if not isinstance(body, dict):
            raise UploadError(400, "body must be a JSON object")
        upload_id = _safe(body.get("uploadId"), "uploadId")
        name = _safe(body.get("name"), "name")
        step, total = body.get("step"), body.get("totalChunks")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UploadError(400, "step must be a non-negative integer")
        if isinstance(total, bool) or not isinstance(total, int) or not 1 <= total <= self.limits.max_chunks:
            raise UploadError(400, f"totalChunks must be an integer in [1, {self.limits.max_chunks}]")
        expected_sha = body.get("sha256")
        if not isinstance(expected_sha, str) or not SHA256_HEX.match(expected_sha.lower()):
            raise UploadError(400, "sha256 must be the hex sha256 of the whole gzipped payload")
        expected_sha = expected_sha.lower()
        config, metrics, training_data = body.get("config"), body.get("metrics"), body.get("trainingData")
        if config is not None and not isinstance(config, dict):
            raise UploadError(400, "config must be a JSON object")
        if metrics is not None and not isinstance(metrics, (str, list)):
            raise UploadError(400, "metrics must be the metrics.jsonl text or an array of records")
        if training_data is not None and not isinstance(training_data, str):
            raise UploadError(400, "trainingData must be a string")

        directory = self._upload_dir(upload_id)
        held = set(self.received(upload_id))
        if not held:
            raise UploadError(400, f"no chunks received for upload {upload_id}")
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("totalChunks") != total:
            raise UploadError(
                400, f"totalChunks {total} differs from the {meta.get('totalChunks')} chunks announced"
            )
        missing = [i for i in range(total) if i not in held]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            # 409: the client resends what the status endpoint says is missing, then assembles again
            raise UploadError(409, f"missing chunks ({len(missing)} of {total}): {shown}")

        run_dir = inside(self.runs_dir, name)
        run_dir.mkdir(parents=True, exist_ok=True)
        filename = f"checkpoint-{step}.safetensors"
        final = inside(run_dir, filename)
        fd, tmp_name = tempfile.mkstemp(dir=run_dir, prefix=f".{filename}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                payload_sha, file_sha, size = self._unpack(directory, total, out)
                out.flush()
                os.fsync(out.fileno())
            if payload_sha != expected_sha:
                raise UploadError(400, f"sha256 mismatch: payload is {payload_sha}, expected {expected_sha}")
            check_safetensors(tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._write_side_files(run_dir, config, metrics, training_data)
        shutil.rmtree(directory, ignore_errors=True)
        return Assembled(
            run_id=name,
            step=step,
            filename=filename,
            relative_path=final.relative_to(self.data_dir).as_posix(),
            size=size,
            sha256=file_sha,
            upload_sha256=payload_sha,
        )

    def _unpack(self, directory: Path, total: int, out: Any) -> tuple[str, str, int]:
        """Concatenate the chunks, hash them, and gunzip into ``out`` within the size limit."""
        payload_sha, file_sha = hashlib.sha256(), hashlib.sha256()
        limit = self.limits.max_decompressed_bytes
        size = 0
        inflater = zlib.decompressobj(wbits=31)  # gzip

        def emit(piece: bytes) -> None:
            nonlocal size
            size += len(piece)
            if size > limit:
                raise UploadError(413, f"checkpoint decompresses to more than {limit} bytes")
            file_sha.update(piece)
            out.write(piece)

        for index in range(total):
            data = (directory / f"{index}.chunk").read_bytes()
            payload_sha.update(data)
            while data:
                if inflater.eof:  # another gzip member follows
                    inflater = zlib.decompressobj(wbits=31)
                try:
                    emit(inflater.decompress(data, MIB))  # bounded output per call
                except zlib.error as exc:
                    raise UploadError(400, f"payload is not valid gzip: {exc}") from None
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        emit(inflater.flush())
        if size == 0 or not inflater.eof:
            raise UploadError(400, "payload is not valid gzip: truncated stream")
        return payload_sha.hexdigest(), file_sha.hexdigest(), size

    def _write_side_files(self, run_dir: Path, config: Any, metrics: Any, training_data: Any) -> None:
        cap = self.limits.max_side_file_bytes
        if config is not None:
            _atomic_write(run_dir / "config.json", json.dumps(config, indent=2).encode()[:cap])
        if metrics is not None:
            if isinstance(metrics, list):
                metrics = "".join(json.dumps(record) + "\n" for record in metrics)
            _atomic_write(run_dir / "metrics.jsonl", metrics.encode()[:cap])
        if training_data is not None:
            _atomic_write(run_dir / "training-data.txt", training_data.encode()[:cap])

    def run_file(self, run_id: Any, filename: Any) -> Path:
        """The path of a file in a run directory, for download; UploadError if unsafe or absent."""
        path = inside(self.runs_dir, _safe(run_id, "run id"), _safe(filename, "filename"))
        if not path.is_file():
            raise UploadError(404, "no such file")
        return path
