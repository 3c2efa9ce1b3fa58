"""The ingest protocol (reference/ops.md §2) over real HTTP against a running ``alpha serve``."""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
import time
import uuid

import httpx
import pytest

from tests.server.conftest import SECRET

# A step record with every field reference/ops.md §2.4 defines, under its reference name.
FULL_RECORD = {
    "step": 1,
    "loss": 5.25,
    "lr": 3e-4,
    "gradNorm": 0.846,
    "elapsed_ms": 46.0,
    "tokens_per_sec": 220513.0,
    "ms_per_iter": 46.0,
    "valLoss": 5.5,
    "gpu_util_pct": 97.0,
    "gpu_vram_used_mb": 30123.0,
    "gpu_vram_total_mb": 81920.0,
    "gpu_mem_pool_mb": 2048.0,
    "timing_fwd_ms": 12.5,
    "timing_bwd_ms": 25.0,
    "timing_optim_ms": 4.0,
    "timing_data_ms": 0.5,
    "timing_flush_ms": 1.5,
    "timing_grad_norm_ms": 0.7,
    "timing_grad_clip_ms": 0.2,
    "gpu_ops_count": 812,
    "clip_coef": 0.8,
    "clip_pct": 12.5,
    "cusum_grad": 1.5,
    "cusum_clip": 0.25,
    "cusum_tps": 0.5,
    "cusum_val": 2.0,
    "cusum_alerts": 1,
    "cusum_alert_reason": "grad drift",
    "weight_entropy": 7.5,
    "effective_rank": 31.0,
    "free_energy": -2.5,
    "population_entropy": 1.25,
    "activation_distribution": '{"gelu":0.5,"silu":0.5}',
    "mi_input_repr": 0.3,
    "mi_repr_output": 0.2,
    "mi_compression": 0.1,
    "fitness_score": 0.9,
    "complexity_score": 3.0,
    "adaptive_batch_size": 64,
    "batch_change_reason": "plateau",
    "symbio_candidate_id": "c7",
    "symbio_candidate_name": "gen1_silu_7",
    "symbio_candidate_activation": "silu",
    "symbio_candidate_parent_id": "c2",
    "symbio_candidate_parent_name": "gen0_gelu_2",
    "symbio_generation": 1,
    "architecture_diversity": 0.75,
    "symbio_activation_graph": '{"type":"basis","op":"silu"}',
    "symbio_mutation_applied": "swap",
    "per_layer_grad_norms": '{"embed":0.1,"0":0.2,"1":0.3,"head":0.4}',
}
RUN_START = {
    "type": "run_start",
    "domain": "chat",
    "modelConfig": {
        "vocabSize": 4000,
        "blockSize": 256,
        "nLayer": 6,
        "nEmbd": 256,
        "nHead": 8,
        "dropout": 0.1,
        "ffnActivation": "gelu",
    },
    "trainConfig": {
        "iters": 1000,
        "batchSize": 16,
        "lr": 5e-5,
        "seed": 42,
        "backend": "cuda",
        "tokenizer": "bpe",
        "optimizer": "adamw",
    },
    "totalParams": 6_123_456,
    "infra": {
        "gpuName": "NVIDIA A100",
        "gpuVendor": "nvidia",
        "gpuVramMb": 81920,
        "hostname": "alpha-train",
        "cpuCount": 12,
        "ramTotalMb": 87000,
        "osPlatform": "linux",
    },
}


def new_run() -> str:
    return f"chat_20260101000000_{uuid.uuid4().hex[:6]}"


def ingest(http: httpx.Client, body: dict, expect: int = 200) -> dict:
    response = http.post("/api/ingest", json=body)
    assert response.status_code == expect, response.text
    return response.json()


def run_row(http: httpx.Client, run_id: str) -> dict:
    response = http.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_reference_payloads_are_stored_field_for_field(http: httpx.Client) -> None:
    run_id = new_run()
    ingest(http, {**RUN_START, "runId": run_id})
    second = {**FULL_RECORD, "step": 2, "loss": 5.0, "valLoss": None, "brand_new_field": {"x": [1, 2]}}
    assert ingest(http, {"type": "metrics", "runId": run_id, "metrics": [FULL_RECORD, second]})["stored"] == 2

    records = http.get(f"/api/runs/{run_id}/metrics").json()
    assert len(records) == 2
    first = records[0]
    for key, value in FULL_RECORD.items():
        if isinstance(value, str) and value.startswith("{"):
            assert first[key] == json.loads(value), key  # JSON-text fields come back as JSON
        else:
            assert first[key] == pytest.approx(value), key
    assert records[1]["brand_new_field"] == {"x": [1, 2]}  # unknown fields are kept
    assert "valLoss" not in records[1]

    run = run_row(http, run_id)
    assert run["domain"] == "chat" and run["status"] == "active"
    assert run["total_params"] == 6_123_456 and run["total_iters"] == 1000
    assert run["infra"]["gpuName"] == "NVIDIA A100"
    assert run["model_config"]["nLayer"] == 6
    assert (run["latest_step"], run["last_loss"], run["best_val_loss"]) == (2, 5.0, 5.5)


def test_val_loss_spellings_progress_and_resume(http: httpx.Client) -> None:
    run_id = new_run()
    ingest(http, {**RUN_START, "runId": run_id})
    ingest(
        http,
        {
            "type": "metrics",
            "runId": run_id,
            "metrics": [
                {
                    "step": 10,
                    "loss": 4.0,
                    "lr": 1e-3,
                    "gradNorm": 1.0,
                    "elapsed_ms": 5,
                    "tokens_per_sec": 100,
                    "ms_per_iter": 5,
                    "val_loss": 4.2,
                },
            ],
        },
    )
    assert run_row(http, run_id)["best_val_loss"] == pytest.approx(4.2)
    ingest(
        http,
        {
            "type": "metrics",
            "runId": run_id,
            "metrics": [
                {
                    "step": 20,
                    "loss": 3.5,
                    "lr": 1e-3,
                    "gradNorm": 1.0,
                    "elapsed_ms": 5,
                    "tokens_per_sec": 100,
                    "ms_per_iter": 5,
                    "valLoss": 4.6,
                },
            ],
        },
    )
    run = run_row(http, run_id)
    assert run["best_val_loss"] == pytest.approx(4.2)  # MIN, not last
    assert run["latest_step"] == 20
    # a late heartbeat / event with a smaller step never moves progress back
    ingest(http, {"type": "heartbeat", "runId": run_id, "step": 5})
    ingest(http, {"type": "event", "runId": run_id, "event": {"step": 3, "kind": "x", "message": "late"}})
    assert run_row(http, run_id)["latest_step"] == 20
    # a resume re-sends run_start: progress and best val loss survive
    ingest(http, {**RUN_START, "runId": run_id, "trainConfig": {**RUN_START["trainConfig"], "iters": 2000}})
    run = run_row(http, run_id)
    assert (run["latest_step"], run["best_val_loss"], run["total_iters"]) == (20, pytest.approx(4.2), 2000)
    assert http.get(f"/api/runs/{run_id}/metrics").json()[0]["valLoss"] == pytest.approx(4.2)


def test_metrics_are_idempotent_per_step(http: httpx.Client) -> None:
    run_id = new_run()
    batch = [
        {
            "step": s,
            "loss": 6.0 - s / 10,
            "lr": 1e-3,
            "gradNorm": 1.0,
            "elapsed_ms": 5,
            "tokens_per_sec": 100,
            "ms_per_iter": 5,
        }
        for s in range(1, 51)
    ]
    for _ in range(3):
        ingest(http, {"type": "metrics", "runId": run_id, "metrics": batch})
    ingest(http, {"type": "metrics", "runId": run_id, "metrics": batch[10:30]})
    records = http.get(f"/api/runs/{run_id}/metrics").json()
    assert [r["step"] for r in records] == list(range(1, 51))
    assert run_row(http, run_id)["metric_count"] == 50
    # a re-sent step after a rollback replaces the old values
    ingest(http, {"type": "metrics", "runId": run_id, "metrics": [{**batch[4], "loss": 1.25}]})
    assert (
        http.get(f"/api/runs/{run_id}/metrics", params={"after_step": 4, "limit": 1}).json()[0]["loss"]
        == 1.25
    )


def test_samples_keep_every_batch(http: httpx.Client) -> None:
    run_id = new_run()
    trend = {
        "summary": "improving",
        "plateauLikely": False,
        "overfittingLikely": False,
        "windowStartStep": 100,
        "windowEndStep": 200,
        "trainLossDelta": -0.2,
        "valLossDelta": -0.1,
        "gapDelta": 0.01,
    }
    for step in (100, 200):
        body = {
            "type": "samples",
            "runId": run_id,
            "step": step,
            "trend": trend,
            "samples": [{"prompt": f"p{i}", "output": f"out {step} {i}"} for i in range(3)],
        }
        assert ingest(http, body)["step"] == step
    ingest(
        http,
        {
            "type": "samples",
            "runId": run_id,
            "step": 200,
            "samples": [{"prompt": "p0", "output": "out 200 0"}],
        },
    )  # a re-send changes nothing
    batches = http.get(f"/api/runs/{run_id}/samples").json()
    assert [b["step"] for b in batches] == [200, 100]
    assert [s["output"] for s in batches[1]["samples"]] == ["out 100 0", "out 100 1", "out 100 2"]
    assert batches[0]["trend"]["summary"] == "improving"
    assert len(batches[0]["samples"]) == 3


def test_events_normalized_and_deduplicated_by_client_id(http: httpx.Client) -> None:
    run_id = new_run()
    events = [
        {
            "id": "e1",
            "step": 5,
            "level": "warn",
            "kind": "spike_skip",
            "message": "  skipped  ",
            "payload": {"gradNorm": 12.0},
            "timestamp": "2026-01-01T00:00:00.000Z",
        },
        {"id": "e2", "step": 6, "level": "loud", "kind": "  ", "message": ""},
        {"step": 7, "kind": "eval_summary", "message": "x" * 5000},
    ]
    out = ingest(http, {"type": "events", "runId": run_id, "events": events})
    assert (out["stored"], out["duplicates"]) == (3, 0)
    out = ingest(http, {"type": "events", "runId": run_id, "events": events[:2]})
    assert (out["stored"], out["duplicates"]) == (0, 2)
    ingest(
        http, {"type": "event", "runId": run_id, "event": {"eventId": "e1", "kind": "dup", "message": "m"}}
    )
    stored = http.get(f"/api/runs/{run_id}/events").json()
    assert len(stored) == 3
    first, second, third = stored
    assert (first["level"], first["kind"], first["message"]) == ("warn", "spike_skip", "skipped")
    assert first["payload"] == {"gradNorm": 12.0} and first["created_at"] == "2026-01-01T00:00:00.000Z"
    assert (second["level"], second["kind"], second["message"]) == ("info", "generic", "(no message)")
    assert len(third["message"]) == 4096 and third["message"].endswith("...")
    assert run_row(http, run_id)["latest_step"] == 7


def test_a_resent_stamped_event_without_id_is_stored_once(http: httpx.Client) -> None:
    run_id = new_run()
    event = {
        "step": 3,
        "level": "info",
        "kind": "checkpoint_saved",
        "message": "checkpoint saved: a",
        "payload": {"path": "a"},
        "timestamp": "2026-01-02T00:00:00.000Z",
    }
    later = {**event, "timestamp": "2026-01-02T00:00:01.000Z"}  # same content, another moment
    assert ingest(http, {"type": "event", "runId": run_id, "event": event})["stored"] == 1
    out = ingest(http, {"type": "events", "runId": run_id, "events": [event, later]})
    assert (out["stored"], out["duplicates"]) == (1, 1)
    assert len(http.get(f"/api/runs/{run_id}/events").json()) == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"type": "metrics", "metrics": []}, "runId"),
        ({"type": "nope", "runId": "r"}, "Unknown ingest type"),
        ({"runId": "r"}, "type"),
        ({"type": "metrics", "runId": "r", "metrics": {"step": 1}}, "metrics must be an array"),
        ({"type": "metrics", "runId": "r", "metrics": [{"loss": 1.0}]}, "metrics[0].step"),
        (
            {"type": "metrics", "runId": "r", "metrics": [{"step": 1}, {"step": 2, "loss": "low"}]},
            "metrics[1].loss",
        ),
        ({"type": "samples", "runId": "r", "samples": [{"prompt": "p"}]}, "samples[0]"),
        ({"type": "event", "runId": "r", "event": "boom"}, "event must be an object"),
        ({"type": "heartbeat", "runId": "../etc"}, "runId must match"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(http: httpx.Client, body: dict, reason: str) -> None:
    run_id = body.get("runId")
    response = http.post("/api/ingest", json=body)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    if run_id == "r":
        assert http.get("/api/runs/r").status_code == 404  # nothing was stored


def test_not_json_wrong_type_too_large_and_gzip(http: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    assert http.post("/api/ingest", content=b"{not json", headers=headers).status_code == 400
    assert http.post("/api/ingest", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
    huge = b'{"type":"heartbeat","runId":"r","pad":"' + b"x" * (33 * 1024 * 1024) + b'"}'
    assert http.post("/api/ingest", content=huge, headers=headers).status_code == 413
    run_id = new_run()
    body = gzip.compress(json.dumps({"type": "heartbeat", "runId": run_id, "step": 9}).encode())
    response = http.post("/api/ingest", content=body, headers={**headers, "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert run_row(http, run_id)["latest_step"] == 9


def test_wrong_or_missing_secret_is_refused(server, http: httpx.Client) -> None:
    run_id = new_run()
    body = {"type": "heartbeat", "runId": run_id, "step": 1}
    for secret in ("wrong", SECRET[:-1], SECRET + "x", None):
        with server.client(secret) as client:
            assert client.post("/api/ingest", json=body).status_code == 401
            assert (
                client.post("/api/ingest/complete", json={"runId": run_id, "finalStep": 1}).status_code == 401
            )
    assert http.get(f"/api/runs/{run_id}").status_code == 404


def test_run_status_completed_failed_stale(http: httpx.Client) -> None:
    done, failed, unhealthy, interrupted, idle = (new_run() for _ in range(5))
    for run_id in (done, failed, unhealthy, interrupted, idle):
        ingest(http, {**RUN_START, "runId": run_id})
    assert (
        http.post("/api/ingest/complete", json={"runId": done, "finalStep": 1000}).json()["status"]
        == "completed"
    )
    response = http.post(
        "/api/ingest/complete",
        json={"runId": failed, "finalStep": 7, "status": "failed", "reason": "CUDA error"},
    )
    assert response.json()["status"] == "failed"
    ingest(
        http,
        {
            "type": "event",
            "runId": unhealthy,
            "event": {
                "step": 50,
                "level": "error",
                "kind": "training_complete",
                "message": "stopped",
                "payload": {"status": "unhealthy", "reason": "loss diverged", "finalStep": 50},
            },
        },
    )
    ingest(
        http,
        {
            "type": "event",
            "runId": interrupted,
            "event": {
                "step": 9,
                "kind": "training_complete",
                "payload": {"status": "interrupted", "finalStep": 9},
            },
        },
    )
    bad = http.post("/api/ingest/complete", json={"runId": done, "finalStep": 1, "status": "exploded"})
    assert bad.status_code == 400

    assert run_row(http, done)["status"] == "completed" and run_row(http, done)["latest_step"] == 1000
    assert (run_row(http, failed)["status"], run_row(http, failed)["status_reason"]) == (
        "failed",
        "CUDA error",
    )
    assert (run_row(http, unhealthy)["status"], run_row(http, unhealthy)["outcome"]) == (
        "failed",
        "unhealthy",
    )
    assert run_row(http, interrupted)["status"] == "stale"
    assert run_row(http, idle)["status"] == "active"
    time.sleep(2.3)  # the module's server marks runs stale after 2 s without ingest
    assert run_row(http, idle)["status"] == "stale"
    assert idle in [r["id"] for r in http.get("/api/runs", params={"status": "stale"}).json()]
    ingest(http, {"type": "heartbeat", "runId": idle, "step": 3})
    assert run_row(http, idle)["status"] == "active"
    assert run_row(http, done)["status"] == "completed"  # finished runs do not go stale


def test_storage_failure_answers_503_and_nothing_claims_success(server, http: httpx.Client) -> None:
    run_id = new_run()
    locker = sqlite3.connect(server.data_dir / "alpha.db", isolation_level=None, timeout=10)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        response = http.post("/api/ingest", json={"type": "heartbeat", "runId": run_id, "step": 1})
        assert response.status_code == 503
        assert "storage failure" in response.json()["error"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert http.get(f"/api/runs/{run_id}").status_code == 404
    ingest(http, {"type": "heartbeat", "runId": run_id, "step": 1})  # the client's retry succeeds
    assert run_row(http, run_id)["latest_step"] == 1


def test_live_stream_sends_snapshot_then_ingest(server, http: httpx.Client) -> None:
    run_id = new_run()
    ingest(http, {**RUN_START, "runId": run_id})
    seen: list[tuple[str, dict]] = []
    ready = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("GET", server.url + "/api/training/live") as stream,
        ):
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    seen.append((name, json.loads(line[6:])))
                    if name == "snapshot":
                        ready.set()
                    if name == "metrics":
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    ingest(http, {"type": "metrics", "runId": run_id, "metrics": [{**FULL_RECORD, "step": 3}]})
    thread.join(10)
    assert not thread.is_alive()
    snapshot = seen[0][1]
    assert run_id in [run["id"] for run in snapshot]
    name, data = seen[-1]
    assert name == "metrics" and data["runId"] == run_id and data["metrics"][0]["step"] == 3
    assert data["metrics"][0]["gradNorm"] == pytest.approx(0.846)


def test_long_runs_are_downsampled_keeping_spikes_evals_and_the_newest_steps(http: httpx.Client) -> None:
    run_id = new_run()
    records = []
    for s in range(1, 6001):
        loss = 9.0 if s == 1234 else 5.0 - s / 10_000
        record = {
            "step": s,
            "loss": loss,
            "lr": 1e-3,
            "gradNorm": 1.0,
            "elapsed_ms": 5,
            "tokens_per_sec": 100,
        }
        if s % 500 == 0:
            record["valLoss"] = 4.0
        records.append(record)
    for i in range(0, len(records), 2000):
        ingest(http, {"type": "metrics", "runId": run_id, "metrics": records[i : i + 2000]})
    series = http.get(f"/api/runs/{run_id}/metrics", params={"max_points": 500}).json()
    steps = [r["step"] for r in series["rows"]]
    assert series["total"] == 6000 and series["downsampled"] is True
    assert len(steps) <= 600 and steps == sorted(set(steps))
    assert steps[-100:] == list(range(5901, 6001))  # the newest steps at full resolution
    assert 1234 in steps  # the loss spike survives
    assert {s for s in range(500, 6001, 500)} <= set(steps)  # every eval point
    assert (
        http.get(f"/api/runs/{run_id}/metrics", params={"max_points": 10_000}).json()["downsampled"] is False
    )
