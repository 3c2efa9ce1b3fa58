"""`alpha train` streaming to a real dashboard server process: every message, outages, secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, read_jsonl, run_alpha, tiny_train_args
from tests.remote.conftest import Dashboard, assert_no_credentials, wait_for

INFRA_KEYS = {"gpuName", "gpuVendor", "gpuVramMb", "hostname", "cpuCount", "ramTotalMb", "osPlatform"}


@pytest.fixture(scope="module")
def streamed(chat_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One run streamed to the server, with Discord rate-limited once and --upload-final."""
    server = Dashboard(tmp_path_factory.mktemp("dashboard")).start()
    server.control(discord_429=1, retry_after=0.6)
    run_dir = tmp_path_factory.mktemp("runs") / "streamed_run"
    args = tiny_train_args(
        chat_file,
        run_dir,
        "--iters",
        "20",
        "--eval-interval",
        "10",
        "--eval-iters",
        "2",
        "--sample-interval",
        "10",
        "--sample-tokens",
        "12",
        "--log-every",
        "5",
        "--upload-final",
    )
    result = run_alpha(*args, env=server.env(ALPHA_REMOTE_HEARTBEAT_SECONDS="0.3"))
    assert result.returncode == 0, result.stderr
    state = server.state()
    yield server, run_dir, result, state
    server.kill()


def test_every_ingest_message_validates_and_nothing_is_missing(streamed: Any) -> None:
    server, run_dir, _, state = streamed
    assert state["errors"] == []  # the server checked every message against the reference shapes
    assert state["metrics"]["streamed_run"] == list(range(1, 21))
    assert state["duplicates"] == 0
    local = read_jsonl(run_dir / "metrics.jsonl")
    assert state["metric_records"]["streamed_run"] == local  # the same records as metrics.jsonl

    (start,) = state["run_starts"]
    assert start["runId"] == "streamed_run" and start["domain"] == "chat"
    assert set(start["infra"]) == INFRA_KEYS and start["infra"]["cpuCount"] == os.cpu_count()
    assert start["modelConfig"]["nEmbd"] == 32 and start["trainConfig"]["iters"] == 20
    assert start["totalParams"] > 0

    kinds = [e["kind"] for e in state["events"]["streamed_run"]]
    local_kinds = [e["kind"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert sorted(kinds) == sorted(local_kinds)  # every non-step event, once
    for kind in (
        "training_started",
        "eval_summary",
        "samples_generated",
        "checkpoint_saved",
        "training_complete",
        "checkpoint_uploaded",
    ):
        assert kind in kinds, kind

    samples = state["samples"]["streamed_run"]
    assert [s["step"] for s in samples] == [10, 20]
    assert samples[1]["trend"]["windowEndStep"] == 20 and len(samples[1]["samples"]) == 3
    assert state["heartbeats"] and state["heartbeats"][-1]["step"] <= 20
    assert state["completes"] == [
        {"runId": "streamed_run", "finalStep": 20, "status": "completed", "reason": ""}
    ]
    # complete is the last ingest call, after the upload's event
    ingest = [r for r in state["requests"] if r["kind"] in ("ingest", "complete")]
    assert ingest[-1]["kind"] == "complete"
    assert not (run_dir / "remote-spool.jsonl").exists()


def test_upload_final_sends_the_stripped_checkpoint(streamed: Any) -> None:
    server, run_dir, result, state = streamed
    (assembled,) = state["assembled"]  # the server verified sha256 and that optim.* is gone
    assert assembled["name"] == "streamed_run" and assembled["step"] == 20
    assert assembled["hasTrainingData"] and assembled["metricsLines"] == 20
    assert assembled["config"]["runId"] == "streamed_run"
    uploaded = [e for e in read_jsonl(run_dir / "events.jsonl") if e["kind"] == "checkpoint_uploaded"]
    assert uploaded and uploaded[0]["payload"]["inferenceBytes"] < uploaded[0]["payload"]["fullBytes"]
    assert (
        server.dir / "outputs" / "streamed_run" / "checkpoint-20.safetensors"
    ).stat().st_size == assembled["bytes"]
    assert not list(run_dir.glob("*.upload.json"))


def test_discord_gets_embeds_and_429_retry_after_is_honoured(streamed: Any) -> None:
    _, run_dir, _, state = streamed
    posts = state["discord"]
    assert posts[0]["status"] == 429
    assert posts[1]["t"] - posts[0]["t"] >= 0.6  # retry_after was 0.6 s
    delivered = [p for p in posts if p["status"] == 204]
    assert all(not p["errors"] for p in posts if "errors" in p)  # within Discord's limits
    titles = [p["payload"]["embeds"][0]["title"] for p in delivered]
    assert titles == [
        "🚀 Training Started",
        "📝 Inference Samples (Step 10)",
        "📝 Inference Samples (Step 20)",
        "✅ Training Complete",
    ]
    start, sample, _, end = (p["payload"]["embeds"][0] for p in delivered)
    assert start["color"] == 0x00C853 and end["color"] == 0x2196F3
    fields = {f["name"]: f["value"] for f in start["fields"]}
    assert (
        fields["Model"].startswith("32d 2h 2L")
        and fields["Data"] == "`chat.txt`"
        and "CPU" in fields["Hardware"]
    )
    assert sample["fields"][0]["name"].startswith('Prompt 1: "') and sample["fields"][0]["value"].startswith(
        "```"
    )
    end_fields = {f["name"]: f["value"] for f in end["fields"]}
    (run_end,) = [e for e in read_jsonl(run_dir / "events.jsonl") if e["kind"] == "training_complete"]
    best = Path(run_end["payload"]["bestCheckpoint"]).name
    assert end_fields["Final Step"] == "20/20" and end_fields["Best Checkpoint"] == f"`{best}`"
    for name in ("Train Loss", "Val Loss", "Time", "Tokens/s"):
        assert end_fields[name] not in ("", "n/a"), name


def test_credentials_never_reach_files_output_or_arguments(streamed: Any) -> None:
    server, run_dir, result, _ = streamed
    log = run_dir.parent / "train_streamed_run.log"
    assert log.is_file()
    n = assert_no_credentials([run_dir, log], server.credentials)
    assert n >= 8  # config.json, metrics/events/samples.jsonl, tokenizer, checkpoints, log...
    for text in (result.stdout, result.stderr):
        assert not any(value in text for value in server.credentials)


def test_server_dying_mid_run_and_coming_back_loses_no_metric(
    chat_file: Path, dashboard: Dashboard, tmp_path: Path
) -> None:
    run_dir = tmp_path / "runs" / "outage_run"
    iters = 160
    args = tiny_train_args(
        chat_file,
        run_dir,
        "--iters",
        str(iters),
        "--eval-iters",
        "2",
        "--eval-interval",
        "80",
        "--sample-interval",
        "0",
        "--log-every",
        "1",
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # a batch every 0.1 s, so the outage is met by a send while the run is still going
        **dashboard.env(ALPHA_REMOTE_DRAIN_SECONDS="30", ALPHA_REMOTE_MIN_FLUSH_SECONDS="0.1"),
    }
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err_out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alpha", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_out,
            text=True,
        )
        try:
            wait_for(lambda: dashboard.state()["metrics"].get("outage_run"), timeout=120)
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
            assert not any(value in cmdline for value in dashboard.credentials)  # nothing secret in argv
            dashboard.kill()
            at_kill = len((run_dir / "metrics.jsonl").read_text().splitlines())
            # the run goes on while the server is away, and a send fails ...
            wait_for(lambda: "send failed" in err_file.read_text(), timeout=60)
            dashboard.start()  # ... then the server comes back on the same port, with its stored state
            proc.wait(timeout=120)
        finally:
            proc.kill()
    err = err_file.read_text()
    assert proc.returncode == 0, err
    assert at_kill < iters  # it really went away mid-run
    state = dashboard.state()
    assert state["metrics"]["outage_run"] == list(range(1, iters + 1))
    assert state["errors"] == []
    assert state["completes"][-1]["finalStep"] == iters
    assert "send failed" in err and "reachable again" in err
    assert not (run_dir / "remote-spool.jsonl").exists()
    assert not any(value in err for value in dashboard.credentials)


def test_hanging_server_never_blocks_training_then_push_replays_idempotently(
    chat_file: Path, dashboard: Dashboard, tmp_path: Path
) -> None:
    dashboard.control(mode="hang")
    run_dir = tmp_path / "runs" / "hang_run"
    env = dashboard.env(ALPHA_REMOTE_TIMEOUT_SECONDS="600", ALPHA_REMOTE_DRAIN_SECONDS="1")
    args = tiny_train_args(
        chat_file,
        run_dir,
        "--iters",
        "20",
        "--eval-iters",
        "2",
        "--eval-interval",
        "10",
        "--sample-interval",
        "10",
        "--sample-tokens",
        "8",
    )
    t0 = time.monotonic()
    result = run_alpha(*args, env=env, timeout=300)
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    # Every request hangs for up to 600 s; a reporter on the training thread could not have finished.
    assert elapsed < 300
    assert dashboard.state()["metrics"] == {}
    spool = run_dir / "remote-spool.jsonl"
    assert spool.is_file() and "alpha push" in result.stderr

    dashboard.control(mode="ok")
    wait_for(lambda: dashboard.state()["mode"] == "ok")
    pushed = run_alpha("push", str(run_dir), env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert "20 metrics" in pushed.stdout and "status completed at step 20" in pushed.stdout
    state = dashboard.state()
    assert state["metrics"]["hang_run"] == list(range(1, 21)) and state["errors"] == []
    assert [s["step"] for s in state["samples"]["hang_run"]] == [10, 20]
    assert state["completes"][-1] == {
        "runId": "hang_run",
        "finalStep": 20,
        "status": "completed",
        "reason": "",
    }
    assert not spool.exists()
    events_before = len(state["events"]["hang_run"])

    again = run_alpha("push", str(run_dir), env=env)  # idempotent: nothing new is stored
    assert again.returncode == 0, again.stderr
    state = dashboard.state()
    assert (
        state["metrics"]["hang_run"] == list(range(1, 21))
        and len(state["events"]["hang_run"]) == events_before
    )
    assert_no_credentials([run_dir], dashboard.credentials)
    for text in (result.stdout, result.stderr, pushed.stdout, pushed.stderr):
        assert not any(value in text for value in dashboard.credentials)

    # The same run, as if it had crashed: no training_complete, and train.pid names a dead process.
    events = [
        line
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if "training_complete" not in line
    ]
    (run_dir / "events.jsonl").write_text("\n".join(events) + "\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / "train.pid").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    crashed = run_alpha("push", str(run_dir), env=env)
    assert crashed.returncode == 0, crashed.stderr
    last = dashboard.state()["completes"][-1]
    assert last["status"] == "failed" and last["finalStep"] == 20 and "training_complete" in last["reason"]

    (run_dir / "train.pid").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    live = run_alpha("push", str(run_dir), env=env)  # a live run is the reporter's job, not push's
    assert live.returncode == 2 and "still training" in live.stderr and "Traceback" not in live.stderr
