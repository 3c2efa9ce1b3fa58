"""Read a run into a ``RunHistory``: a run directory, a metrics.jsonl file, or a ``train_*.log``.

A run directory gives the most: metrics.jsonl (every step), events.jsonl (evals, generations and
the ``training_complete`` event), train.pid (is the process still alive?) and the human log beside
it (``runs/train_<run_id>.log``: tracebacks). A train log alone gives the step lines, the guard
notices (``[spike] ... skipping step N``, ``[warn] grad_norm=NaN at step N ...``), CUSUM alert
notices, the end line and any traceback. Unusable input raises ``ConfigError`` (one line, exit 2).

Reading is one pass per file with no per-line work beyond ``json.loads`` or a prefix test and one
regex, so 50,000 metric lines take well under a second.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from alpha.errors import ConfigError
from alpha.health.history import TRACEBACK_TAIL, RunHistory

STEP_LINE = re.compile(
    r"^step (\d+)(?:/(\d+))? \| loss=(\S+)(?: val_loss=(\S+))?(?: \| lr=\S+)?(?: \| grad_norm=(\S+))?"
    r"(?: clip=\S+)?(?: skipped=(\w+))?"
)
STEP_IN_NOTICE = re.compile(r"\bstep (\d+)")
GENERATION_NOTICE = re.compile(r"^\[symbio\] generation (\d+): winner .* val_loss=(\S+)$")
END_LINE = re.compile(r"^──+ training (\w+)")
EXIT_LINE = re.compile(r"\b(?:exit(?:ed)?(?: with)?(?: code| status)?)[ :=]+(-?\d+)\b", re.IGNORECASE)
FATAL_LINES = ("Killed", "Segmentation fault", "Aborted")


@dataclass
class Source:
    """What was read, for the report header."""

    path: str
    kind: str  # run_dir | metrics | log
    files: list[str] = field(default_factory=list)
    bad_lines: int = 0


def load_run(path: str, smooth_width: int = 250) -> tuple[RunHistory, Source]:
    """Read PATH (run directory, metrics.jsonl or train log) into a history."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no such file or directory: {path}")
    history = RunHistory(smooth_width=smooth_width)
    if p.is_dir():
        source = _load_run_dir(p, history)
    elif p.suffix == ".jsonl":
        source = Source(path, "metrics", [str(p)])
        source.bad_lines = read_metrics(p, history)
        if history.records == 0:
            raise ConfigError(f"no step records in {path} (expected metrics.jsonl lines with 'step')")
    elif p.name.startswith("train_") and _is_run_dir(run_dir := p.with_name(p.stem[len("train_") :])):
        source = _load_run_dir(run_dir, history)  # the log's run directory says more than the log
    else:
        source = Source(path, "log", [str(p)])
        if not read_log(p, history, steps=True):
            raise ConfigError(f"not a training log (no step lines, end line or traceback): {path}")
    return history, source


def _is_run_dir(p: Path) -> bool:
    return (p / "metrics.jsonl").is_file() or (p / "events.jsonl").is_file()


def _load_run_dir(p: Path, history: RunHistory) -> Source:
    metrics, events = p / "metrics.jsonl", p / "events.jsonl"
    if not _is_run_dir(p):
        raise ConfigError(f"not a run directory (no metrics.jsonl or events.jsonl): {p}")
    source = Source(str(p), "run_dir")
    run_id = p.name
    config = p / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
            run_id = data.get("runId") or run_id
            iters = (data.get("trainConfig") or {}).get("iters")
            if isinstance(iters, int):
                history.total_iters = iters
        except (json.JSONDecodeError, OSError, AttributeError):
            pass  # config.json is not needed for diagnosis
    if metrics.is_file():
        source.files.append(str(metrics))
        source.bad_lines += read_metrics(metrics, history)
    if events.is_file():
        source.files.append(str(events))
        source.bad_lines += read_events(events, history)
        history.ending.observable = True
    log = p.parent / f"train_{run_id}.log"
    if log.is_file():
        source.files.append(str(log))
        # metrics.jsonl has the steps and events.jsonl the end; the log adds what only it can
        # hold: a traceback or exit line printed after the last run header (stderr redirected)
        read_log(log, history, steps=not metrics.is_file(), ending=not events.is_file())
    pid_file = p / "train.pid"
    if pid_file.is_file():
        source.files.append(str(pid_file))
        read_pid(pid_file, history)
    return source


def _fold_jsonl(path: Path, fold: Callable[[dict[str, Any]], None]) -> int:
    """Fold each JSON object line; return the number of unreadable lines (a truncated last line...)."""
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                fold(obj)
            else:
                bad += 1
    return bad


def read_metrics(path: Path, history: RunHistory) -> int:
    """Fold metrics.jsonl into the history; return the number of unreadable lines."""
    return _fold_jsonl(path, history.add_step)


def read_events(path: Path, history: RunHistory) -> int:
    return _fold_jsonl(path, history.add_event)


def read_pid(path: Path, history: RunHistory) -> None:
    """train.pid exists while the trainer runs: is its process alive, here or elsewhere?"""
    try:
        data = json.loads(path.read_text())
        pid, host = int(data["pid"]), str(data.get("host") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return
    end = history.ending
    end.pid, end.host = pid, host
    if host and host != socket.gethostname():
        end.process = "elsewhere"
    else:
        end.process = "running" if process_alive(pid, _epoch(data.get("started"))) else "dead"


def process_alive(pid: int, started: float | None = None) -> bool:
    """True when ``pid`` is a live (not zombie) process on this host that began no later than
    ``started`` (epoch seconds): a process that began afterwards reuses the pid of a dead one."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # killed, not yet reaped by its parent
            return False
        if started is not None:
            stat = Path("/proc/stat").read_text().splitlines()
            boot = next(float(line.split()[1]) for line in stat if line.startswith("btime"))
            began = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
            return began <= started + 1.0
    except (OSError, IndexError, ValueError, StopIteration):
        pass  # no /proc (macOS): trust kill(pid, 0)
    return True


def _epoch(iso: object) -> float | None:
    """Epoch seconds of train.pid's ISO ``started`` (``2026-03-04T15:57:01.123Z``), if readable."""
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def read_log(path: Path, history: RunHistory, steps: bool = True, ending: bool = True) -> bool:
    """Fold a train log. With ``steps``, step lines and notices feed the history; with
    ``ending``, its end lines (``── training complete ──``...) say how the run ended.

    Returns whether the file looked like a training log at all.
    """
    end = history.ending
    recognised = False
    traceback: list[str] = []
    block = ""  # "raw": a Python traceback; "indented": the trainer's "  [exception]" notice
    alarm_step = 0  # CUSUM notices carry no step: count them after the last step line
    log_step = traceback_step = 0  # a traceback followed by more steps was survived, not fatal
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if block == "raw":
                traceback.append(line)
                if line and not line[0].isspace():
                    block = ""  # the exception line ends a raw traceback
                continue
            if block == "indented":
                if line.startswith("    "):
                    traceback.append(line[4:])
                    continue
                block = ""
            if line.startswith("Traceback (most recent call last)"):
                block, traceback, recognised = "raw", [line], True
                traceback_step = log_step
            elif line.startswith("step "):
                m = STEP_LINE.match(line)
                if m:
                    recognised = True
                    log_step = int(m.group(1))
                    if steps:
                        _fold_step_line(m, history)
                        alarm_step = history.last_step or 0
            elif line.startswith("  [exception]"):
                block, traceback, recognised = "indented", [], True
                traceback_step = log_step
            elif line.startswith("  ["):
                if steps:
                    alarm_step = _fold_notice(line, history, alarm_step)
            elif line.startswith("reason: ") and ending and end.status is not None:
                end.reason = line[len("reason: ") :]
            elif line.startswith("──"):
                m = END_LINE.match(line)
                if m and ending:
                    word = m.group(1)
                    end.status = {"complete": "completed", "stopped": "unhealthy"}.get(word, word)
                    end.end_step = history.last_step
                    recognised = True
                elif "alpha training" in line:  # a run (or a resumed run) starts in this log
                    end.exit_code, traceback, log_step = None, [], 0
                    if ending:
                        end.status, end.reason = None, ""
                    recognised = True
            elif line.startswith(FATAL_LINES):
                end.exit_code, end.exit_line = (-9 if line.startswith("Killed") else -1), line
            elif "exit" in line.lower() and not line.startswith(" "):
                m = EXIT_LINE.search(line)
                if m:
                    end.exit_code, end.exit_line = int(m.group(1)), line
    if traceback and log_step <= traceback_step:
        end.traceback = traceback[-TRACEBACK_TAIL:]
    if end.status is not None:
        end.observable = True  # (a log without an end line may belong to a run still going)
    return recognised


def _number(text: str | None) -> float | None:
    if text is None or text == "n/a":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _fold_step_line(m: re.Match[str], history: RunHistory) -> None:
    step, iters, loss, val, grad, skipped = m.groups()
    record: dict[str, object] = {"step": int(step), "loss": _number(loss)}
    if val is not None:
        record["valLoss"] = _number(val)
    if grad is not None and grad != "n/a":
        record["gradNorm"] = _number(grad)
    if skipped:
        record["skipped"] = skipped
    if iters:
        history.total_iters = int(iters)
    history.add_step(record)


def _fold_notice(line: str, history: RunHistory, alarm_step: int) -> int:
    """Guard notices mark their step as skipped; CUSUM alert notices count as alarmed steps."""
    body = line.strip()
    if body.startswith("[") and "skipping" in body:
        # reference: "[spike] ... skipping step N", "[warn] grad_norm=NaN at step N — skipping ...";
        # ours: "[spike_skip] ...: skipping step N", "[loss_nan] loss=nan at step N: skipping ..."
        m = STEP_IN_NOTICE.search(body)
        if m:
            kind = "spike" if body.startswith("[spike") else "nonfinite"
            history.mark_bad(int(m.group(1)), kind)
    elif body.startswith("[symbio") and "CUSUM alert" in body:
        history.symbio = True
        if "throughput collapse" in body:
            alarm_step += 1
            if not history.alarm_steps or alarm_step > history.alarm_steps[-1]:
                history.alarm_steps.append(alarm_step)
    elif body.startswith("[symbio] generation "):
        m = GENERATION_NOTICE.match(body)
        if m:  # the winner is the generation's best candidate
            val = _number(m.group(2))
            payload = {"generation": int(m.group(1)), "candidates": [{"valLoss": val}]}
            history.add_generation(history.last_step or 0, payload)
    return alarm_step
