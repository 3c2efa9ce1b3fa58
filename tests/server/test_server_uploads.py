"""Chunked checkpoint uploads and downloads, including traversal and wrong-secret attempts."""

from __future__ import annotations

import gzip
import hashlib
import json
import os

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.server.conftest import ServerProcess

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    proc = ServerProcess(tmp_path_factory.mktemp("uploads"), "--max-checkpoint-mb", "8").start()
    yield proc
    proc.stop()


def checkpoint_bytes(seed: int = 0, n: int = 300_000) -> bytes:
    rng = np.random.default_rng(seed)
    return save({"model.wte.weight": rng.standard_normal(n).astype(np.float32)}, metadata={"alpha": "{}"})


def send_chunk(
    http: httpx.Client, upload_id: str, index: int, total: int, body: bytes, sha: str | None = None
) -> httpx.Response:
    return http.post(
        "/api/upload/chunk",
        content=body,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Upload-Id": upload_id,
            "X-Chunk-Index": str(index),
            "X-Total-Chunks": str(total),
            "X-Chunk-Sha256": sha or hashlib.sha256(body).hexdigest(),
        },
    )


def split(payload: bytes, size: int) -> list[bytes]:
    return [payload[i : i + size] for i in range(0, len(payload), size)]


def assemble(
    http: httpx.Client, upload_id: str, name: str, step: int, total: int, sha: str, **extra
) -> httpx.Response:
    body = {
        "uploadId": upload_id,
        "name": name,
        "step": step,
        "totalChunks": total,
        "sha256": sha,
        "config": {
            "runId": name,
            "domain": "chat",
            "modelConfig": {"nLayer": 2},
            "trainConfig": {"iters": 60},
        },
        "metrics": '{"step": 1, "loss": 5.0}\n',
        **extra,
    }
    return http.post("/api/upload/assemble", json=body)


def test_upload_resume_assemble_list_download(server: ServerProcess) -> None:
    raw = checkpoint_bytes()
    payload = gzip.compress(raw)
    chunks = split(payload, 256 * 1024)
    assert len(chunks) >= 4
    upload_id, name, step = "chat_run1_60_1767225600000", "chat_run1", 60
    with server.client() as http:
        # a broken connection: only some chunks arrived
        for i in (0, 2):
            assert send_chunk(http, upload_id, i, len(chunks), chunks[i]).status_code == 200
        status = http.get("/api/upload/status", params={"uploadId": upload_id}).json()
        assert status == {"uploadId": upload_id, "received": [0, 2]}
        early = assemble(http, upload_id, name, step, len(chunks), hashlib.sha256(payload).hexdigest())
        assert early.status_code == 409 and "missing chunks" in early.json()["error"]
        # the client resumes by sending only what is missing; a re-send is harmless
        missing = [i for i in range(len(chunks)) if i not in status["received"]]
        for i in [*missing, 2]:
            response = send_chunk(http, upload_id, i, len(chunks), chunks[i])
            assert response.status_code == 200, response.text
        assert response.json()["received"] == len(chunks)

        done = assemble(
            http,
            upload_id,
            name,
            step,
            len(chunks),
            hashlib.sha256(payload).hexdigest(),
            trainingData="hello",
        )
        assert done.status_code == 200, done.text
        result = done.json()
        assert result["ok"] is True
        assert result["path"] == f"runs/{name}/checkpoint-{step}.safetensors"
        assert result["bytes"] == len(raw) and result["sha256"] == hashlib.sha256(payload).hexdigest()

        run_dir = server.data_dir / "runs" / name
        assert (run_dir / f"checkpoint-{step}.safetensors").read_bytes() == raw
        assert json.loads((run_dir / "config.json").read_text())["domain"] == "chat"
        assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 5.0}\n'
        assert not (server.data_dir / "uploads" / upload_id).exists()

        listed = http.get(f"/api/runs/{name}/checkpoints").json()
        assert [(c["step"], c["filename"], c["bytes"]) for c in listed] == [
            (step, f"checkpoint-{step}.safetensors", len(raw))
        ]
        assert listed[0]["sha256"] == hashlib.sha256(raw).hexdigest()
        download = http.get(f"/api/runs/{name}/download/checkpoint-{step}.safetensors")
        assert download.status_code == 200 and download.content == raw
        assert http.get(f"/api/runs/{name}").json()["checkpoint_count"] == 1


def test_checksums_sizes_and_bad_payloads_are_refused(server: ServerProcess) -> None:
    payload = gzip.compress(checkpoint_bytes(1, 1000))
    with server.client() as http:
        bad_sha = send_chunk(http, "u_sha_1", 0, 1, payload, sha="0" * 64)
        assert bad_sha.status_code == 400 and "sha256 mismatch" in bad_sha.json()["error"]
        assert http.get("/api/upload/status", params={"uploadId": "u_sha_1"}).json()["received"] == []

        assert send_chunk(http, "u_big_1", 0, 2, b"x" * (MIB + 1)).status_code == 413
        assert send_chunk(http, "u_many_1", 0, 10**6, b"x").status_code == 413
        assert send_chunk(http, "u_idx_1", 5, 2, b"x").status_code == 400
        plain = http.post(
            "/api/upload/chunk",
            content=b"x",
            headers={
                "Content-Type": "application/json",
                "X-Upload-Id": "u",
                "X-Chunk-Index": "0",
                "X-Total-Chunks": "1",
                "X-Chunk-Sha256": hashlib.sha256(b"x").hexdigest(),
            },
        )
        assert plain.status_code == 415

        assert send_chunk(http, "u_whole_1", 0, 1, payload).status_code == 200
        wrong_whole = assemble(http, "u_whole_1", "run_whole", 5, 1, "a" * 64)
        assert wrong_whole.status_code == 400 and "sha256 mismatch" in wrong_whole.json()["error"]
        assert not (server.data_dir / "runs" / "run_whole" / "checkpoint-5.safetensors").exists()

        junk = gzip.compress(b"definitely not a safetensors file" * 10)
        assert send_chunk(http, "u_junk_1", 0, 1, junk).status_code == 200
        response = assemble(http, "u_junk_1", "run_junk", 5, 1, hashlib.sha256(junk).hexdigest())
        assert response.status_code == 400 and "safetensors" in response.json()["error"]

        not_gzip = b"\x00" * 100
        assert send_chunk(http, "u_gz_1", 0, 1, not_gzip).status_code == 200
        response = assemble(http, "u_gz_1", "run_gz", 5, 1, hashlib.sha256(not_gzip).hexdigest())
        assert response.status_code == 400 and "gzip" in response.json()["error"]


def test_decompression_bomb_is_stopped(server: ServerProcess) -> None:
    bomb = gzip.compress(b"\x00" * (64 * MIB), compresslevel=9)  # the server allows 8 MiB
    assert len(bomb) < MIB
    with server.client() as http:
        assert send_chunk(http, "u_bomb_1", 0, 1, bomb).status_code == 200
        response = assemble(http, "u_bomb_1", "run_bomb", 1, 1, hashlib.sha256(bomb).hexdigest())
        assert response.status_code == 413
    leftovers = list((server.data_dir / "runs" / "run_bomb").iterdir())
    assert not [p for p in leftovers if p.stat().st_size > 8 * MIB]
    assert not any(p.name.startswith("checkpoint-") for p in leftovers)


def test_traversal_attempts_are_refused(server: ServerProcess) -> None:
    outside = server.root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (server.data_dir / "runs" / "victim").mkdir(parents=True, exist_ok=True)
    payload = gzip.compress(checkpoint_bytes(2, 1000))
    sha = hashlib.sha256(payload).hexdigest()
    with server.client() as http:
        for upload_id in ("../../outside/x", "..", "a/b", "a\\b", "%2e%2e", ""):
            assert send_chunk(http, upload_id, 0, 1, payload).status_code == 400, upload_id
            assert http.get("/api/upload/status", params={"uploadId": upload_id}).status_code == 400
        assert send_chunk(http, "u_ok_1", 0, 1, payload).status_code == 200
        for name in ("../outside", "..", ".", "../../etc", "a/../../b", "runs/../../x", "x\x00y"):
            response = assemble(http, "u_ok_1", name, 1, 1, sha)
            assert response.status_code == 400, (name, response.text)
        for upload_id in ("../uploads/u_ok_1", "./u_ok_1"):
            assert assemble(http, upload_id, "fine", 1, 1, sha).status_code == 400
        for path in (
            "/api/runs/..%2F..%2Foutside/download/secret.txt",
            "/api/runs/victim/download/..%2F..%2F..%2Foutside%2Fsecret.txt",
            "/api/runs/victim/download/..",
            "/api/runs/../download/alpha.db",
            "/api/runs/victim/download/%2e%2e%2falpha.db",
        ):
            response = http.get(path)
            assert response.status_code in (400, 404), path
            assert b"secret" not in response.content and b"SQLite" not in response.content
    written = [p for p in server.root.rglob("*") if p.is_file() and p.parent == outside]
    assert written == [outside / "secret.txt"]
    assert not (server.root / "fine").exists() and not (server.data_dir / "etc").exists()
    assert all(name.startswith("u_") for name in os.listdir(server.data_dir / "uploads"))


def test_uploads_need_the_secret(server: ServerProcess) -> None:
    payload = gzip.compress(checkpoint_bytes(3, 100))
    with server.client("wrong-secret") as http:
        assert send_chunk(http, "u_auth_1", 0, 1, payload).status_code == 401
        assert http.get("/api/upload/status", params={"uploadId": "u_auth_1"}).status_code == 401
        assert assemble(http, "u_auth_1", "r", 1, 1, hashlib.sha256(payload).hexdigest()).status_code == 401
    assert not (server.data_dir / "uploads" / "u_auth_1").exists()
