"""Replay a run directory to the dashboard server (``alpha push``).

A run that trained without a server, or whose server went away, is sent afterwards from its files:
``config.json`` (``run_start``), ``metrics.jsonl`` (``metrics`` in batches), ``samples.jsonl``
(``samples``), ``events.jsonl`` (``events``), then whatever the reporter left in its spool, and
finally ``complete`` with the run's status. A run without a ``training_complete`` event whose
process is gone crashed: it is completed as ``failed``. Every message is idempotent on the server
(metrics dedup on run id + step, events on their kind, step and timestamp), so pushing twice, or
pushing a run that was partly streamed, stores each record once.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpha.errors import ConfigError
from alpha.remote import messages
from alpha.remote.client import RemoteError, ServerClient
from alpha.remote.messages import Message
from alpha.remote.spool import SPOOL_NAME, read_spool

ATTEMPTS = 5


@dataclass
class ReplaySummary:
    run_id: str
    counts: dict[str, int] = field(default_factory=dict)
    skipped_lines: int = 0
    status: str = ""
    final_step: int = 0


def read_jsonl(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each line's object, or None for a line that is not one (a crash can tear the last line)."""
    if not path.is_file():
        return
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                yield None
                continue
            yield value if isinstance(value, dict) else None


def _still_running(run_dir: Path) -> int | None:
    """The pid in train.pid when that process is alive on this host."""
    try:
        info = json.loads((run_dir / "train.pid").read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), info.get("host")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host not in (None, socket.gethostname()):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _event_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return record.get("kind"), record.get("step"), record.get("timestamp")


@dataclass
class Seen:
    """What the run's files already sent, so that the spool adds only what they lack."""

    metric_steps: set[int]
    event_keys: set[tuple[Any, ...]]
    sample_steps: set[int]

    def novel(self, message: Message) -> Message | None:
        path, body = message
        kind = body.get("type")
        run_id = str(body.get("runId"))
        if path == messages.COMPLETE or kind in ("run_start", "heartbeat"):
            return None  # the replay sends its own
        if kind == "metrics":
            fresh = [r for r in body.get("metrics", []) if r.get("step") not in self.metric_steps]
            self.metric_steps |= {r.get("step") for r in fresh}
            return messages.metrics(run_id, fresh) if fresh else None
        if kind in ("event", "events"):
            fresh = [e for e in messages.event_records(body) if _event_key(e) not in self.event_keys]
            self.event_keys |= {_event_key(e) for e in fresh}
            return messages.events(run_id, fresh) if fresh else None
        if kind == "samples":
            if body.get("step") in self.sample_steps:
                return None
            self.sample_steps.add(body.get("step"))
        return message


def plan(run_dir: Path) -> tuple[ReplaySummary, list[Message]]:
    """Every message a replay of ``run_dir`` sends, in order (reads files only)."""
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}/config.json is unreadable: {exc}") from None
    pid = _still_running(run_dir)
    if pid is not None:
        raise ConfigError(f"run {run_dir.name} is still training (pid {pid}); push it after it ends")
    run_id = str(config.get("runId") or run_dir.name)
    summary = ReplaySummary(run_id)
    events = [e for e in read_jsonl(run_dir / "events.jsonl") if e is not None]
    starts = [e for e in events if e.get("kind") in ("training_started", "run_resumed")]
    total_params = next((e["payload"].get("totalParams") for e in reversed(starts) if e.get("payload")), None)
    start_body: dict[str, Any] = {
        "type": "run_start",
        "runId": run_id,
        "domain": config.get("domain") or "unknown",
        "modelConfig": config.get("modelConfig") or {},
        "trainConfig": config.get("trainConfig") or {},
    }
    if isinstance(total_params, int):
        start_body["totalParams"] = total_params
    out: list[Message] = [(messages.INGEST, start_body)]

    records, max_step = [], 0
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        step = messages.metric_step(record) if record else None
        if record is None or step is None:
            summary.skipped_lines += 1
            continue
        records.append(record)
        max_step = max(max_step, step)
    out += [messages.metrics(run_id, batch) for batch in messages.batched(records)]
    sample_steps = set()
    for item in read_jsonl(run_dir / "samples.jsonl"):
        if item and isinstance(item.get("samples"), list) and item["samples"]:
            step = int(item.get("step") or 0)
            sample_steps.add(step)
            out.append(messages.samples(run_id, step, item["samples"], item.get("trend")))
    out += [messages.events(run_id, batch) for batch in messages.batched(events)]
    seen = Seen({r["step"] for r in records}, {_event_key(e) for e in events}, sample_steps)
    out += messages.coalesce(m for m in map(seen.novel, read_spool(run_dir / SPOOL_NAME)) if m is not None)

    ends = [e for e in events if e.get("kind") == "training_complete"]
    if ends and ends[-1].get("payload"):
        payload = ends[-1]["payload"]
        summary.status = str(payload.get("status") or "completed")
        summary.final_step = int(payload.get("finalStep") or ends[-1].get("step") or max_step)
        reason = str(payload.get("reason") or "")
    else:
        summary.status, summary.final_step = "failed", max_step
        reason = "the training process ended without a training_complete event (crashed or killed)"
    out.append(messages.complete(run_id, summary.final_step, summary.status, reason))
    return summary, out


def replay(
    run_dir: Path,
    client: ServerClient,
    *,
    attempts: int = ATTEMPTS,
    log: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Send the whole run; raises RemoteError when the server keeps failing or rejects a message."""
    summary, plan_messages = plan(run_dir)
    for path, body in plan_messages:
        _send(client, path, body, attempts, sleep)
        kind = body.get("type", "complete")
        count = len(body.get("metrics") or body.get("events") or [None])
        summary.counts[kind] = summary.counts.get(kind, 0) + count
    spool = run_dir / SPOOL_NAME
    if spool.exists():
        spool.unlink()  # everything in it has now been delivered
        log(f"delivered and removed {spool}")
    return summary


def _send(
    client: ServerClient, path: str, body: dict[str, Any], attempts: int, sleep: Callable[[float], None]
) -> None:
    for attempt in range(1, attempts + 1):
        try:
            client.post_json(path, body)
            return
        except RemoteError as exc:
            if not exc.retryable or attempt == attempts:
                raise
            sleep(min(30.0, 2.0 ** (attempt - 1)))
