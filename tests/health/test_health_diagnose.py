"""``alpha diagnose`` on synthetic runs: each failure mode fires its check and nothing else; healthy
runs (noisy, with occasional spikes; or with a val loss that wiggles without a trend) fire nothing;
bad input is one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alpha.cli import main
from tests.health import health_streams as hs


def diagnose(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, dict]:
    rc = main(["diagnose", str(path), "--json", *flags])
    doc = json.loads(capsys.readouterr().out)
    doc["by_check"] = {f["check"]: f for f in doc["findings"]}
    return rc, doc


def fired(doc: dict) -> set[str]:
    return {f["check"] for f in doc["findings"] if f["status"] == "fired"}


@pytest.mark.parametrize(
    ("name", "stream", "expected"),
    [
        ("healthy noisy run with spikes", hs.healthy(), set()),
        ("overfitting", hs.overfitting(), {"overfitting"}),
        ("overfit, then val levelled off above its best", hs.overfit_then_level(), {"overfitting"}),
        ("plateau", hs.plateau(), {"plateau"}),
        ("recent instability", hs.instability_recent(), {"instability"}),
        ("early instability", hs.instability_early(), {"instability"}),
        ("symbio stagnation", hs.symbio(), {"symbio_stagnation"}),
        ("symbio alarms but a candidate improves", hs.symbio(improving=True), set()),
        ("symbio without alarms", hs.symbio(alarms=False), set()),
    ],
)
def test_exactly_the_right_findings_fire(capsys, tmp_path, name, stream, expected):
    rc, doc = diagnose(capsys, stream.write(tmp_path / "run"))
    assert fired(doc) == expected, name
    assert rc == (1 if expected else 0)
    assert doc["healthy"] is (not expected)
    # a completed run with events never guesses about crashing
    assert doc["by_check"]["crash"]["status"] == "ok"


@pytest.mark.parametrize("phase", [i * math.pi / 6 for i in range(12)])
def test_val_loss_that_wiggles_without_a_trend_is_not_overfitting(capsys, tmp_path, phase):
    # Several of these windows end higher than they start (a two-point test would fire); the
    # regression slope's t-statistic stays far from the threshold.
    rc, doc = diagnose(capsys, hs.wiggling_val(phase).write(tmp_path / "run"))
    overfit = doc["by_check"]["overfitting"]
    assert overfit["status"] == "ok", overfit["summary"]
    assert rc == 0


def test_overfitting_evidence_states_window_slopes_and_gap(capsys, tmp_path):
    _, doc = diagnose(capsys, hs.overfitting().write(tmp_path / "run"))
    ev = doc["by_check"]["overfitting"]["evidence"]
    assert ev["window"] == [3750, 5000] and ev["evals"] == 6
    assert ev["val_slope"] > 0 > ev["train_slope"]
    assert ev["gap_end"] > ev["gap_start"] + 0.1


def test_overfitting_after_the_fact_is_measured_from_the_best_val_loss(capsys, tmp_path):
    _, doc = diagnose(capsys, hs.overfit_then_level().write(tmp_path / "run"))
    finding = doc["by_check"]["overfitting"]
    assert finding["evidence"]["best_val_step"] == 1500
    assert finding["evidence"]["window"] == [1750, 6000]
    assert "since its best" in finding["summary"]


def test_instability_reports_whole_run_and_recent_window_separately(capsys, tmp_path):
    _, doc = diagnose(capsys, hs.instability_recent().write(tmp_path / "run"))
    ev = doc["by_check"]["instability"]["evidence"]
    assert ev["bad_pct"] == 20.0 and ev["window_bad_pct"] == 40.0  # fires on the window alone
    assert ev["window"] == [501, 1000]
    assert ev["kinds"] == {"spike": 100, "nonfinite": 100}
    _, doc = diagnose(capsys, hs.instability_early().write(tmp_path / "early"))
    ev = doc["by_check"]["instability"]["evidence"]
    assert ev["bad_pct"] == 30.0 and ev["window_bad_pct"] == 0.0  # fires on the whole run alone


def test_threshold_flags_change_the_verdict(capsys, tmp_path):
    run = hs.instability_recent().write(tmp_path / "run")
    rc, doc = diagnose(capsys, run, "--instability-pct", "45")
    assert rc == 0 and "instability" not in fired(doc)
    plateau = hs.plateau().write(tmp_path / "plateau")
    rc, doc = diagnose(capsys, plateau, "--plateau-steps", "6000")
    assert rc == 0 and doc["by_check"]["plateau"]["status"] == "not_enough_data"
    rc, doc = diagnose(capsys, run, "--window", "100")
    assert doc["by_check"]["instability"]["evidence"]["window"] == [901, 1000]


def test_short_run_says_not_enough_data_instead_of_guessing(capsys, tmp_path):
    stream = hs.build(30, hs.decaying, lambda s: 3.0 + s / 100, eval_every=10)
    rc, doc = diagnose(capsys, stream.write(tmp_path / "run"))
    status = {c: f["status"] for c, f in doc["by_check"].items()}
    assert status == {
        "crash": "ok",
        "instability": "not_enough_data",
        "overfitting": "not_enough_data",
        "plateau": "not_enough_data",
        "symbio_stagnation": "ok",
    }
    assert rc == 0


def test_symbio_with_too_few_generations_is_not_enough_data(capsys, tmp_path):
    stream = hs.symbio(steps=600)  # 3 generations: none left to compare the recent 3 against
    _, doc = diagnose(capsys, stream.write(tmp_path / "run"))
    finding = doc["by_check"]["symbio_stagnation"]
    assert finding["status"] == "not_enough_data" and "generations" in finding["summary"]


def test_run_without_end_event_and_dead_pid_is_a_crash(capsys, tmp_path):
    stream = hs.healthy(steps=1500)
    stream.completed = False
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rc, doc = diagnose(capsys, stream.write(tmp_path / "run", pid=dead.pid))
    assert fired(doc) == {"crash"} and rc == 1
    assert "without a training_complete event" in doc["by_check"]["crash"]["summary"]
    # the same records while train.pid names a live process: still running, not a crash
    rc, doc = diagnose(capsys, stream.write(tmp_path / "live", pid=os.getpid()))
    assert doc["by_check"]["crash"]["status"] == "ok"
    assert "still running" in doc["by_check"]["crash"]["summary"]
    # ... unless that live process began after the trainer wrote train.pid: the pid was reused
    rc, doc = diagnose(
        capsys, stream.write(tmp_path / "reused", pid=os.getpid(), started="2000-01-01T00:00:00.000Z")
    )
    assert fired(doc) == {"crash"}
    assert f"dead pid {os.getpid()}" in doc["by_check"]["crash"]["summary"]


def test_resumed_run_replaces_the_lost_tail(capsys, tmp_path):
    # steps 1-1000 bad-free, a crash, a resume from step 800 that re-logs 801-1200: the re-logged
    # steps replace the old ones instead of counting twice
    stream = hs.healthy(steps=1200)
    records = stream.records[:1000] + stream.records[800:]
    stream.records = records
    _, doc = diagnose(capsys, stream.write(tmp_path / "run"))
    assert doc["firstStep"] == 1 and doc["lastStep"] == 1200
    assert doc["by_check"]["instability"]["evidence"]["steps"] == 1200


# ---- train logs --------------------------------------------------------------------------------

LOG_HEAD = """── alpha training ──
run_id: historic_chat_v2_20260304155701_mwtr
iters: 50000 | lr: 0.00005

"""


def _reference_log(steps: int, spike_every: int) -> str:
    lines = [LOG_HEAD]
    for s in range(1, steps + 1):
        if s % spike_every == 0:
            lines.append(
                f"  [spike] grad_norm=41.3 > 10 — skipping step {s} ({s // spike_every} total skips) "
                "| lr_scale 1->0.5 | batch_hash=0x1a2b3c4d tok_range=3:3999\n"
            )
        if s % 25 == 0 or s == 1:
            lines.append(
                f"step {s}/50000 | loss={5 - s / 1000:.4f} | lr=5.00e-5 | grad_norm=0.846 | "
                "2146ms/it | 4772 tok/s | 1442 gpu_ops\n"
            )
    return "".join(lines)


def test_reference_log_with_spike_notices(capsys, tmp_path):
    log = tmp_path / "train_x.log"
    log.write_text(_reference_log(1000, spike_every=3))  # 33% of steps skipped
    rc, doc = diagnose(capsys, log)
    assert rc == 1 and fired(doc) == {"instability"}
    ev = doc["by_check"]["instability"]["evidence"]
    assert ev["steps"] == 1000 and ev["bad_steps"] == 333
    assert doc["totalIters"] == 50000
    # no end line, no traceback and no train.pid: cannot tell a live run from a killed one
    assert doc["by_check"]["crash"]["status"] == "not_enough_data"

    log.write_text(_reference_log(1000, spike_every=10))
    rc, doc = diagnose(capsys, log)
    assert rc == 0 and doc["by_check"]["instability"]["evidence"]["bad_pct"] == 10.0


def test_traceback_followed_by_more_steps_was_survived(capsys, tmp_path):
    log = tmp_path / "train_x.log"
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: sample failed\n'
    log.write_text(
        _reference_log(200, spike_every=1000) + tb + _reference_log(400, spike_every=1000)[len(LOG_HEAD) :]
    )
    rc, doc = diagnose(capsys, log)
    assert doc["by_check"]["crash"]["status"] == "not_enough_data"  # no end line, but no death either


def test_log_with_traceback_is_a_crash_and_shows_its_last_lines(capsys, tmp_path):
    log = tmp_path / "train_x.log"
    log.write_text(
        _reference_log(200, spike_every=1000)
        + "Traceback (most recent call last):\n"
        + "".join(f'  File "trainer.py", line {i}, in step\n    frame_{i}()\n' for i in range(10))
        + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    rc = main(["diagnose", str(log)])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.splitlines()[0] == "UNHEALTHY: crash"
    assert "the run died with an exception: torch.OutOfMemoryError: CUDA out of memory" in out
    assert "  | torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" in out
    assert "frame_9()" in out and "frame_0()" not in out  # the last lines, not the whole thing
    assert "advice:" in out and "--resume latest" in out


# ---- input errors and output shape ------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file or directory"),
        (lambda p: p, "not a run directory"),
        (lambda p: _write(p / "metrics.jsonl", "not json\n{oops\n"), "no step records"),
        (lambda p: _write(p / "notes.txt", "hello\nworld\n"), "not a training log"),
    ],
)
def test_unusable_input_is_one_line_and_exit_2(tmp_path, make, message):
    path = make(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "alpha", "diagnose", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_human_report_puts_the_verdict_first_then_evidence_then_advice(capsys, tmp_path):
    rc = main(["diagnose", str(hs.overfitting().write(tmp_path / "run"))])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert lines[0] == "UNHEALTHY: overfitting"
    body = "\n".join(lines)
    assert body.index("overfitting: FIRED") < body.index("evidence:") < body.index("advice:")
    assert "steps 3750-5000" in body
    assert any(line.startswith("crash:") and " ok " in line for line in lines)


def test_fifty_thousand_steps_with_symbio_fields_are_read_whole(capsys, tmp_path):
    stream = hs.symbio(steps=50_000)
    run = stream.write(tmp_path / "run")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 50_000
    rc, doc = diagnose(capsys, run)
    assert doc["lastStep"] == 50_000
    assert doc["by_check"]["symbio_stagnation"]["evidence"]["alarm_pct"] == 100.0
    assert rc == 1


# ---- our own log shape, written by the real log sink -------------------------------------------


def _write_log_with_sink(stream: hs.Stream, path: Path, log_every: int) -> None:
    """Replay a stream through the trainer's LogFileSink, as `alpha train` would write the log:
    CUSUM alerts precede their step (the search's step hook emits them), skipped steps always get
    a step line, other steps one per ``log_every``."""
    from alpha.config import ModelConfig, TrainConfig
    from alpha.events import Alert, RunStart, Step
    from alpha.sinks.logfile import LogFileSink

    sink = LogFileSink(path)
    iters = stream.records[-1]["step"]
    sink.handle(
        RunStart(
            step=0, run_id="x", run_dir="runs/x", domain="chat", data_path="chat.txt",
            model_config=ModelConfig(vocab_size=96).to_wire(),
            train_config=TrainConfig(iters=iters, log_every=log_every).to_wire(),
            total_params=1000, infra={},
        )
    )  # fmt: skip
    for event in hs.as_events(stream)[:-1]:  # no RunEnd: the run is still going
        if isinstance(event, Step) and event.metrics.get("cusum_alert_reason"):
            text = "CUSUM alert: " + event.metrics["cusum_alert_reason"]
            sink.handle(Alert(step=event.step, kind="symbio_cusum_alert", text=text))
        sink.handle(event)
    sink.close()


@pytest.mark.parametrize(
    ("stream", "check"),
    [(hs.instability_recent(), "instability"), (hs.symbio(), "symbio_stagnation"), (hs.healthy(), None)],
)
def test_logs_written_by_our_log_sink(capsys, tmp_path, stream, check):
    log = tmp_path / "train_x.log"
    _write_log_with_sink(stream, log, log_every=50)
    rc, doc = diagnose(capsys, log)
    assert fired(doc) == ({check} if check else set())
    assert doc["lastStep"] == stream.records[-1]["step"]
    truth = {c: f for c, f in diagnose(capsys, stream.write(tmp_path / "run"))[1]["by_check"].items()}
    if check == "instability":  # every skipped step has its own line: the log loses nothing
        assert doc["by_check"][check]["evidence"]["bad_steps"] == truth[check]["evidence"]["bad_steps"] == 200
    if check == "symbio_stagnation":  # alarms counted from notices, generations from their lines
        assert doc["by_check"][check]["evidence"]["alarm_pct"] == 100.0
        assert doc["by_check"][check]["evidence"]["generations"] == 15


def test_failure_recorded_by_the_trainer_shows_the_traceback(capsys, tmp_path):
    """The trainer's failure path (an ``exception`` alert, then RunEnd ``failed``) written by the
    real sinks: the report shows the exception, from events.jsonl and from the log alike."""
    import traceback

    from alpha.events import Alert, RunEnd
    from alpha.sinks.jsonl import EventsSink, MetricsSink
    from alpha.sinks.logfile import LogFileSink

    def step_that_fails() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    try:
        step_that_fails()
    except RuntimeError as exc:
        text = "".join(traceback.format_exception(exc)).rstrip()
    run = tmp_path / "runs" / "failed"
    run.mkdir(parents=True)
    sinks = [LogFileSink(tmp_path / "runs" / "train_failed.log"), MetricsSink(run), EventsSink(run)]
    events = hs.as_events(hs.healthy(steps=300))[:-1]
    events += [
        Alert(step=300, kind="exception", level="error", text=text),
        RunEnd(step=300, status="failed", reason="RuntimeError: CUDA error", iters=1000, elapsed_s=1.0,
               tokens_per_sec=1.0),
    ]  # fmt: skip
    for event in events:
        for sink in sinks:
            sink.handle(event)
    for sink in sinks:
        sink.close()

    alone = tmp_path / "train_copied.log"  # a log without its run directory: read as a log
    alone.write_text((tmp_path / "runs" / "train_failed.log").read_text())
    for path in (run, tmp_path / "runs" / "train_failed.log", alone):
        rc = main(["diagnose", str(path)])
        out = capsys.readouterr().out
        assert rc == 1 and out.startswith("UNHEALTHY: crash")
        assert "the run died with an exception: RuntimeError: CUDA error: an illegal memory access" in out
        assert "  | RuntimeError: CUDA error: an illegal memory access was encountered" in out
        assert "step_that_fails" in out


def test_evals_only_in_events_still_count(capsys, tmp_path):
    stream = hs.overfitting()
    for record in stream.records:  # as if the step records lacked valLoss: events alone carry evals
        record.pop("valLoss", None)
    rc, doc = diagnose(capsys, stream.write(tmp_path / "run"))
    assert fired(doc) == {"overfitting"}
    assert doc["by_check"]["overfitting"]["evidence"]["window"] == [3750, 5000]


@pytest.mark.parametrize(("flag", "value"), [("--window", "0"), ("--instability-window", "-3")])
def test_a_non_positive_window_names_its_flag(tmp_path, flag, value):
    run = hs.healthy().write(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "alpha", "diagnose", str(run), flag, value], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"alpha diagnose: error: {flag} must be > 0, got {value}"
