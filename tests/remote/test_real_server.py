"""The reporter, `alpha push` and `alpha upload` against the project's own dashboard (`alpha serve`)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from alpha.events import Alert, EventBus, Samples
from alpha.remote.credentials import RemoteSettings
from alpha.sinks.remote import RemoteReporter, ReporterOptions
from tests.conftest import run_alpha
from tests.remote.test_reporter import end, run_start, step
from tests.remote.test_upload import run_dir  # noqa: F401 (fixture)
from tests.server.conftest import SECRET, ServerProcess


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    proc = ServerProcess(tmp_path_factory.mktemp("alpha-serve")).start()
    yield proc
    proc.stop()


def test_a_streamed_run_lands_in_the_real_dashboard(dashboard_server: ServerProcess, tmp_path: Path) -> None:
    run = tmp_path / "real_run"
    run.mkdir()
    settings = RemoteSettings(dashboard_server.url, SECRET)
    reporter = RemoteReporter(settings, run, ReporterOptions(flush_seconds=0.1, min_flush_seconds=0.1))
    bus = EventBus([reporter])
    bus.emit(run_start(run))
    for n in range(1, 121):
        bus.emit(step(n))
    bus.emit(Alert(step=60, kind="spike_skip", text="skipped", data={"gradNorm": 9.0}))
    bus.emit(Samples(step=120, samples=[{"prompt": "Hi", "output": "Hi there"}], trend=None))
    bus.emit(end(120))
    bus.close()
    assert reporter.stats["failures"] == 0 and reporter.stats["rejected"] == 0
    with dashboard_server.client() as http:
        info = http.get("/api/runs/real_run").json()
        metrics = http.get("/api/runs/real_run/metrics").json()
        events = http.get("/api/runs/real_run/events").json()
        samples = http.get("/api/runs/real_run/samples").json()
    assert info["latest_step"] == 120 and info["status"] == "completed"
    rows = metrics if isinstance(metrics, list) else metrics.get("metrics", metrics.get("rows"))
    assert [r["step"] for r in rows] == list(range(1, 121))
    listed = events if isinstance(events, list) else events.get("events")
    assert {"training_started", "spike_skip", "samples_generated", "training_complete"} <= {
        e["kind"] for e in listed
    }
    assert json.dumps(samples).count("Hi there") >= 1


def test_push_and_upload_to_the_real_dashboard(dashboard_server: ServerProcess, run_dir: Path) -> None:  # noqa: F811
    env = {"ALPHA_REMOTE_URL": dashboard_server.url, "ALPHA_REMOTE_SECRET": SECRET}
    pushed = run_alpha("push", str(run_dir), env=env)
    assert pushed.returncode == 0, pushed.stderr
    uploaded = run_alpha("upload", str(run_dir), "--chunk-kib", "128", env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    with dashboard_server.client() as http:
        metrics = http.get("/api/runs/upload_run/metrics").json()
        checkpoints = http.get("/api/runs/upload_run/checkpoints").json()
        stored = http.get(f"/api/runs/upload_run/download/{checkpoints[0]['filename']}")
    rows = metrics if isinstance(metrics, list) else metrics.get("metrics", metrics.get("rows"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [c["step"] for c in checkpoints] == [500]
    assert (
        stored.status_code == 200
        and b"optim." not in stored.content[:4096]
        and b"model.w0" in stored.content[:4096]
    )
    with pytest.raises(httpx.HTTPStatusError):  # and the secret really is checked
        httpx.post(
            dashboard_server.url + "/api/ingest",
            json={"type": "heartbeat", "runId": "x"},
            headers={"Authorization": "Bearer wrong"},
        ).raise_for_status()
