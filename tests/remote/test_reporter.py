"""The remote reporter driven by real events on an EventBus, against a real server process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alpha.events import Alert, EventBus, RunEnd, RunStart, Samples, Step
from alpha.remote.credentials import RemoteSettings
from alpha.sinks.remote import RemoteReporter, ReporterOptions
from tests.remote.conftest import Dashboard, wait_for

FAST = {"flush_seconds": 0.1, "retry_base_seconds": 0.05, "retry_max_seconds": 0.2}


def reporter(dashboard: Dashboard, run_dir: Path, **options: Any) -> RemoteReporter:
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = RemoteSettings(dashboard.url, dashboard.secret)
    return RemoteReporter(settings, run_dir, ReporterOptions(**{**FAST, **options}))


def run_start(run_dir: Path) -> RunStart:
    return RunStart(
        step=0,
        run_id=run_dir.name,
        run_dir=str(run_dir),
        domain="chat",
        data_path="chat.txt",
        model_config={"nLayer": 2, "nEmbd": 32, "nHead": 2, "blockSize": 32, "vocabSize": 300},
        train_config={"batchSize": 4, "iters": 100, "lr": 1e-3},
        total_params=12345,
        infra={"hostname": "test-host"},
    )


def step(n: int) -> Step:
    return Step(
        step=n,
        metrics={
            "step": n,
            "loss": 5.0 - n * 1e-4,
            "lr": 1e-3,
            "gradNorm": float("nan") if n == 7 else 0.9,  # NaN travels as null
            "elapsed_ms": 10.0,
            "tokens_per_sec": 1000.0,
            "ms_per_iter": 10.0,
            "clip_coef": 1.0,
            "clip_pct": 0.0,
        },
    )


def end(n: int) -> RunEnd:
    return RunEnd(step=n, status="completed", iters=n, elapsed_s=1.0, tokens_per_sec=1000.0)


def test_server_answering_500_then_recovering_gets_everything(dashboard: Dashboard, tmp_path: Path) -> None:
    dashboard.control(mode="500")
    run_dir = tmp_path / "run500"
    rep = reporter(dashboard, run_dir)
    bus = EventBus([rep])
    bus.emit(run_start(run_dir))
    for n in range(1, 301):
        bus.emit(step(n))
    bus.emit(
        Alert(step=150, kind="spike_skip", text="grad norm spike, update skipped", data={"gradNorm": 9.0})
    )
    bus.emit(Samples(step=300, samples=[{"prompt": "Hi", "output": "Hi there"}], trend=None))
    bus.emit(end(300))
    wait_for(lambda: rep.stats["failures"] >= 3)
    dashboard.control(mode="ok")
    bus.close()
    state = dashboard.state()
    assert state["errors"] == []
    assert state["metrics"]["run500"] == list(range(1, 301))
    assert state["metric_records"]["run500"][6]["gradNorm"] is None
    kinds = {e["kind"] for e in state["events"]["run500"]}
    assert {"training_started", "spike_skip", "samples_generated", "training_complete"} <= kinds
    assert state["run_starts"][0]["infra"]["hostname"] == "test-host"
    assert state["completes"] == [{"runId": "run500", "finalStep": 300, "status": "completed", "reason": ""}]
    assert not (run_dir / "remote-spool.jsonl").exists()


def test_overflow_goes_to_the_spool_and_a_later_process_delivers_it(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    dashboard.control(mode="hang")
    run_dir = tmp_path / "overflow"
    rep = reporter(
        dashboard, run_dir, queue_size=100, max_buffered=200, drain_seconds=0.5, timeout_seconds=600
    )
    bus = EventBus([rep])
    bus.emit(run_start(run_dir))
    for n in range(1, 3001):
        bus.emit(step(n))
    bus.emit(end(3000))
    bus.close()  # the sender is stuck in a hanging request: close gives up after 0.5 s
    assert rep.stats["spooled"] > 0 and (run_dir / "remote-spool.jsonl").stat().st_size > 0
    dashboard.control(mode="ok")

    again = reporter(dashboard, run_dir)  # e.g. the resumed run: it re-sends the spool first
    again.handle(run_start(run_dir))
    again.close()
    state = dashboard.state()
    assert state["metrics"]["overflow"] == list(range(1, 3001))
    assert state["errors"] == []
    assert not (run_dir / "remote-spool.jsonl").exists()


def test_heartbeat_reports_the_highest_step_even_while_the_run_stalls(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    run_dir = tmp_path / "beat"
    rep = reporter(dashboard, run_dir, heartbeat_seconds=0.1)
    rep.handle(run_start(run_dir))
    for n in (1, 2, 5, 3):
        rep.handle(step(n))
    wait_for(lambda: [h for h in dashboard.state()["heartbeats"] if h.get("step") == 5][1:])
    rep.close()
    assert all(h["runId"] == "beat" for h in dashboard.state()["heartbeats"])


def test_a_message_the_server_rejects_is_kept_and_not_retried(dashboard: Dashboard, tmp_path: Path) -> None:
    run_dir = tmp_path / "reject"
    rep = reporter(dashboard, run_dir, batch_size=1)
    rep.handle(run_start(run_dir))
    rep.handle(Step(step=1, metrics={"step": 1, "loss": 1.0}))  # lacks the required fields
    rep.handle(step(2))
    rep.close()
    state = dashboard.state()
    assert state["metrics"]["reject"] == [2]
    rejected = [json.loads(line) for line in (run_dir / "remote-rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["body"]["metrics"][0]["step"] == 1
    assert "422" in rejected[0]["error"] and dashboard.secret not in rejected[0]["error"]
