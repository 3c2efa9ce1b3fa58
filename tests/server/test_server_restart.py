"""Restarting the server (cleanly or by SIGKILL) between writes loses nothing it acknowledged."""

from __future__ import annotations

import gzip
import hashlib
import signal

from tests.server.conftest import ServerProcess


def metric(step: int) -> dict:
    return {
        "step": step,
        "loss": 6.0 - step / 100,
        "lr": 1e-3,
        "gradNorm": 1.0,
        "elapsed_ms": 5.0,
        "tokens_per_sec": 1000.0,
        "ms_per_iter": 5.0,
        **({"valLoss": 6.5 - step / 100} if step % 10 == 0 else {}),
    }


def ingest(http, body: dict) -> int:
    return http.post("/api/ingest", json=body).status_code


def metrics(run_id: str, steps: range) -> dict:
    return {"type": "metrics", "runId": run_id, "metrics": [metric(s) for s in steps]}


def saved_event(run_id: str) -> dict:
    """The same client id each time: the server stores it once."""
    return {
        "type": "event",
        "runId": run_id,
        "event": {"id": "ev-1", "step": 30, "kind": "checkpoint_saved", "message": "saved"},
    }


def test_nothing_is_lost_across_restarts(tmp_path) -> None:
    server = ServerProcess(tmp_path).start()
    run_id = "chat_20260101000000_rst1"
    try:
        with server.client() as http:
            assert (
                ingest(
                    http,
                    {
                        "type": "run_start",
                        "runId": run_id,
                        "domain": "chat",
                        "modelConfig": {"nLayer": 2},
                        "trainConfig": {"iters": 90},
                        "totalParams": 1000,
                    },
                )
                == 200
            )
            assert ingest(http, metrics(run_id, range(1, 31))) == 200
            assert (
                ingest(
                    http,
                    {
                        "type": "samples",
                        "runId": run_id,
                        "step": 30,
                        "samples": [{"prompt": "a", "output": "b"}],
                    },
                )
                == 200
            )
            assert ingest(http, saved_event(run_id)) == 200
            payload = gzip.compress(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x00" * 64)
            assert (
                http.post(
                    "/api/upload/chunk",
                    content=payload,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "X-Upload-Id": f"{run_id}_30_1",
                        "X-Chunk-Index": "0",
                        "X-Total-Chunks": "2",
                        "X-Chunk-Sha256": hashlib.sha256(payload).hexdigest(),
                    },
                ).status_code
                == 200
            )
        server.stop(signal.SIGTERM)

        server.start()  # clean restart, same database and data dir
        with server.client() as http:
            assert http.get("/api/upload/status", params={"uploadId": f"{run_id}_30_1"}).json()[
                "received"
            ] == [0]
            assert (
                ingest(
                    http,
                    {
                        "type": "run_start",
                        "runId": run_id,
                        "domain": "chat",
                        "trainConfig": {"iters": 90},
                    },
                )
                == 200
            )  # resume
            assert ingest(http, metrics(run_id, range(31, 61))) == 200
            assert ingest(http, saved_event(run_id)) == 200
        server.stop(signal.SIGKILL)  # no chance to flush anything after answering

        server.start()
        with server.client() as http:
            assert ingest(http, metrics(run_id, range(61, 91))) == 200
            assert (
                http.post("/api/ingest/complete", json={"runId": run_id, "finalStep": 90}).status_code == 200
            )
        server.stop(signal.SIGKILL)

        server.start()
        with server.client() as http:
            steps = [r["step"] for r in http.get(f"/api/runs/{run_id}/metrics").json()]
            assert steps == list(range(1, 91))
            run = http.get(f"/api/runs/{run_id}").json()
            assert (run["status"], run["latest_step"], run["total_params"]) == ("completed", 90, 1000)
            assert run["best_val_loss"] == 6.5 - 90 / 100
            assert [b["step"] for b in http.get(f"/api/runs/{run_id}/samples").json()] == [30]
            assert len(http.get(f"/api/runs/{run_id}/events").json()) == 1
    finally:
        server.stop()
