"""`alpha train` end to end, as a subprocess: outputs, resume exactness, signals, sampling."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, read_jsonl, run_alpha, tiny_train_args

STEP_LINE = re.compile(
    r"^step (\d+)/(\d+) \| loss=\d+\.\d{4}( val_loss=\d+\.\d{4})? \| lr=\d\.\d\de[+-]\d+ \| "
    r"grad_norm=\d+\.\d{3}( clip=\d\.\d{4})? \| \d+ms/it \| \d+ tok/s$"
)
REQUIRED_FIELDS = {
    "step",
    "loss",
    "lr",
    "gradNorm",
    "elapsed_ms",
    "tokens_per_sec",
    "ms_per_iter",
    "clip_coef",
    "clip_pct",
}


# 24 steps: evals and samples at 12 and 24, checkpoints every 6 (two kept), a log line every 4
FINISHED_RUN_ARGS = ("--iters", "24", "--eval-interval", "12", "--sample-interval", "12",
                     "--checkpoint-interval", "6", "--keep-checkpoints", "2", "--log-every", "4",
                     "--lr", "3e-3", "--dropout", "0.1", "--sample-tokens", "12")  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(
    chat_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny_run"
    result = run_alpha(
        *tiny_train_args(chat_file, run_dir, *FINISHED_RUN_ARGS), env={"ALPHA_SAMPLER": "inline"}
    )
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_run_writes_log_metrics_events_samples_and_checkpoints(finished_run) -> None:
    run_dir, result = finished_run
    log = run_dir.parent / "train_tiny_run.log"
    lines = log.read_text().splitlines()
    assert lines[0] == "── alpha training ──" and "run_id: tiny_run" in lines
    steps = [line for line in lines if line.startswith("step ")]
    assert steps and all(STEP_LINE.match(s) for s in steps), steps
    assert [int(STEP_LINE.match(s).group(1)) for s in steps] == [1, 4, 8, 12, 16, 20, 24]
    assert "val_loss=" in steps[3] and "val_loss=" in steps[-1]
    assert "── training complete ──" in lines
    assert result.stdout.splitlines()[0] == "── alpha training ──"

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 25))
    assert all(m.keys() >= REQUIRED_FIELDS for m in metrics)
    assert [m["step"] for m in metrics if "valLoss" in m] == [12, 24]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 1.0

    events = read_jsonl(run_dir / "events.jsonl")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "training_started" and kinds[-1] == "training_complete"
    assert events[-1]["payload"]["status"] == "completed"
    assert kinds.count("eval_summary") == 2 and kinds.count("samples_generated") == 2
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert [s["step"] for s in samples] == [12, 24]
    assert samples[0]["samples"][0]["prompt"] == "<|user|> Hello, how are you? <|assistant|>"

    config = json.loads((run_dir / "config.json").read_text())
    assert config["runId"] == "tiny_run"
    assert config["modelConfig"]["nEmbd"] == 32 and config["trainConfig"]["iters"] == 24
    assert config["trainConfig"]["lrMin"] == pytest.approx(3e-4)  # lr given, no --lr-min: lr / 10
    # keep the newest 2 plus the best-val one (step 24 here: it is also the newest)
    kept = sorted(p.name for p in run_dir.glob("checkpoint-*.safetensors"))
    assert kept == ["checkpoint-18.safetensors", "checkpoint-24.safetensors"]
    assert not (run_dir / "train.pid").exists()


def test_resumed_run_reproduces_the_uninterrupted_losses(finished_run, tmp_path: Path) -> None:
    run_dir, _ = finished_run
    ckpt = run_dir / "checkpoint-18.safetensors"
    resumed_dir = tmp_path / "resumed"
    result = run_alpha("train", "--resume", str(ckpt), "--run-dir", str(resumed_dir))
    assert result.returncode == 0, result.stderr
    original = {m["step"]: m for m in read_jsonl(run_dir / "metrics.jsonl")}
    resumed = read_jsonl(resumed_dir / "metrics.jsonl")
    assert [m["step"] for m in resumed] == list(range(19, 25))
    for m in resumed:  # dropout is on: RNG state, data position and Adam moments must all be restored
        assert m["loss"] == pytest.approx(original[m["step"]]["loss"], abs=1e-6)
        assert m["gradNorm"] == pytest.approx(original[m["step"]]["gradNorm"], abs=1e-6)
    assert resumed[-1]["valLoss"] == pytest.approx(original[24]["valLoss"], abs=1e-6)
    events = read_jsonl(resumed_dir / "events.jsonl")
    assert events[0]["kind"] == "run_resumed" and events[0]["payload"]["resumedFrom"] == 18


def test_sample_command_generates_from_a_checkpoint(finished_run) -> None:
    run_dir, _ = finished_run
    result = run_alpha(
        "sample",
        "--checkpoint",
        str(run_dir),
        "--prompt",
        "What is 2 plus 2?",
        "--steps",
        "16",
        "--temp",
        "0",
    )
    assert result.returncode == 0, result.stderr
    assert "<|user|> What is 2 plus 2? <|assistant|>" in result.stdout
    assert "(step 24)" in result.stdout


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (a /proc scan, Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_the_sampler_process_gives_the_inline_samples_and_ends_with_the_run(
    finished_run, chat_file: Path, tmp_path: Path
) -> None:
    inline_dir, _ = finished_run
    run_dir = tmp_path / "process_run"
    marker = f"alpha-sampler-test-{os.getpid()}-{time.time_ns()}"  # inherited by every child of the run
    env = {"ALPHA_SAMPLER": "process", "ALPHA_SAMPLER_TEST_MARKER": marker}
    result = run_alpha(*tiny_train_args(chat_file, run_dir, *FINISHED_RUN_ARGS), env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[sampler_started] sampler process" in result.stdout
    # same seed, same weights: the child's samples are the inline ones, at the same steps
    assert read_jsonl(run_dir / "samples.jsonl") == read_jsonl(inline_dir / "samples.jsonl")
    events = read_jsonl(run_dir / "events.jsonl")
    started = [e for e in events if e["kind"] == "sampler_started"]
    assert len(started) == 1 and "sample_failed" not in {e["kind"] for e in events}
    deadline = time.time() + 10  # multiprocessing's resource tracker exits when it sees the run gone
    while processes_with(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []
    assert not Path(f"/proc/{started[0]['payload']['pid']}").exists()


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(chat_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "sig_run"
    args = tiny_train_args(
        chat_file,
        run_dir,
        "--iters",
        "100000",
        "--eval-interval",
        "100000",
        "--sample-interval",
        "0",
        "--log-every",
        "1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "alpha", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "── training interrupted ──" in out
    last_step = read_jsonl(metrics)[-1]["step"]
    assert (run_dir / f"checkpoint-{last_step}.safetensors").exists()
    end = read_jsonl(run_dir / "events.jsonl")[-1]
    assert end["kind"] == "training_complete" and end["payload"]["status"] == "interrupted"

    result = run_alpha(
        "train", "--resume", "latest", "--run-dir", str(run_dir), "--iters", str(last_step + 3)
    )
    assert result.returncode == 0, result.stderr
    steps = [m["step"] for m in read_jsonl(metrics)]
    assert steps[-3:] == [last_step + 1, last_step + 2, last_step + 3]


def test_spike_guard_skips_updates_and_records_them(chat_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "spiky"
    # a threshold below 1x the EMA rejects roughly every step whose norm is above its running mean
    result = run_alpha(
        *tiny_train_args(
            chat_file,
            run_dir,
            "--iters",
            "40",
            "--spike-threshold",
            "0.5",
            "--eval-interval",
            "40",
            "--sample-interval",
            "0",
        )
    )
    assert result.returncode == 0, result.stderr
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    skipped = [m["step"] for m in metrics if m.get("skipped") == "spike"]
    assert skipped and min(skipped) > 10  # the guard waits for 10 accepted steps
    events = [e for e in read_jsonl(run_dir / "events.jsonl") if e["kind"] == "spike_skip"]
    assert [e["step"] for e in events] == skipped[: len(events)]
    assert "[spike_skip]" in (tmp_path / "train_spiky.log").read_text()
