"""``alpha serve`` flags: loopback by default, refusals as one line + exit 2, read secret."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx

from tests.server.conftest import REPO, SECRET, ServerProcess, free_port


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "UPLOAD_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "alpha", "serve", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=REPO,
        timeout=60,
    )


def test_refuses_public_address_without_secret(tmp_path) -> None:
    result = serve("--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "refusing to listen on 0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_and_bad_flags_are_one_line(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = serve("--port", str(busy.getsockname()[1]), "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "cannot listen" in result.stderr and result.stderr.count("\n") == 1
    result = serve("--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    result = serve("--read-secret-env", "NOT_SET_ANYWHERE_XYZ", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "NOT_SET_ANYWHERE_XYZ" in result.stderr


def test_read_secret_protects_pages_and_read_apis(tmp_path) -> None:
    server = ServerProcess(
        tmp_path, "--read-secret-env", "ALPHA_READ_SECRET", env={"ALPHA_READ_SECRET": "reader-pass"}
    ).start()
    try:
        assert "reader-pass" not in " ".join(server.proc.args) and SECRET not in " ".join(server.proc.args)
        with server.client() as writer:
            assert (
                writer.post("/api/ingest", json={"type": "heartbeat", "runId": "r1", "step": 1}).status_code
                == 200
            )
        with httpx.Client(base_url=server.url, timeout=10) as anon:
            for path in ("/api/runs", "/api/runs/r1", "/api/runs/r1/metrics", "/api/training/live"):
                assert anon.get(path).status_code == 401, path
            page = anon.get("/runs")
            assert page.status_code == 401 and "Read secret required" in page.text
            assert anon.get("/runs", headers={"Authorization": "Bearer nope"}).status_code == 401
            assert anon.post("/login", data={"token": "nope", "next": "/runs"}).status_code == 401
            login = anon.post(
                "/login", data={"token": "reader-pass", "next": "/runs/r1"}, follow_redirects=False
            )
            assert login.status_code == 303 and login.headers["location"] == "/runs/r1"
            assert anon.get("/runs").status_code == 200  # the cookie now opens pages
            assert anon.get("/api/runs").json()[0]["id"] == "r1"
        with httpx.Client(base_url=server.url, timeout=10) as reader:
            response = reader.get("/api/runs/r1", headers={"Authorization": "Bearer reader-pass"})
            assert response.status_code == 200
            # the read secret does not authorize writes
            write = reader.post(
                "/api/ingest",
                json={"type": "heartbeat", "runId": "r1"},
                headers={"Authorization": "Bearer reader-pass"},
            )
            assert write.status_code == 401
    finally:
        server.stop()
    assert "reader-pass" not in server.output() and SECRET not in server.output()
