"""The remote reporter: streams a run to the dashboard server's ingest API (reference ops.md §2).

``handle`` only puts the event on a bounded queue; a background thread turns events into ingest
messages and sends them, so a slow, failing, hanging or absent server never slows a training step.

What is sent: ``run_start`` (configs, parameter count, hardware), step records batched into
``metrics`` messages (flushed at ``batch_size`` buffered or every ``flush_seconds``), a
``heartbeat`` with the highest step every ``heartbeat_seconds``, ``samples`` with their step and
trend, every other event's record as ``event``/``events``, and at close ``POST
/api/ingest/complete`` with the final step and status.

Nothing is lost: a failed request is retried with exponential backoff (capped, with jitter); what
does not fit in memory meanwhile goes to the spool file in the run directory and is re-sent when
the server answers again. ``close`` waits at most ``drain_seconds`` for delivery, then leaves the
rest in the spool for ``alpha push``. A message the server rejects as malformed (4xx other than
auth/rate limits) is never retried; it is kept in ``remote-rejected.jsonl`` for inspection.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from alpha.config import TrainConfig
from alpha.errors import ConfigError
from alpha.events import Event, RunEnd, RunStart, Samples, Step
from alpha.remote import messages
from alpha.remote.client import RemoteError, ServerClient, default_timeout
from alpha.remote.credentials import RemoteSettings, describe, redact
from alpha.remote.messages import MAX_BATCH, Message
from alpha.remote.spool import SPOOL_NAME, Spool

REJECTED_NAME = "remote-rejected.jsonl"
SPOOL_READ_BATCH = 2000  # lines per read-back; coalesced into batches of MAX_BATCH


@dataclass(frozen=True)
class ReporterOptions:
    """Batching, retry and shutdown policy. Defaults are the reference's (batch 10, 30 s, 60 s)."""

    batch_size: int = 10
    flush_seconds: float = 30.0
    min_flush_seconds: float = 1.0  # a fast run sends one larger batch a second, not one per 10 steps
    heartbeat_seconds: float = 60.0
    queue_size: int = 10_000  # events between the trainer and the sender thread
    max_buffered: int = 5_000  # messages held in memory while the server is away; then spooled
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    drain_seconds: float = 15.0  # how long close() waits for delivery before spooling the rest
    timeout_seconds: float = 30.0  # per request (read/write); a hang costs the sender, not training

    @classmethod
    def from_env(cls) -> ReporterOptions:
        """Overrides from ``ALPHA_REMOTE_<FIELD>`` (e.g. ``ALPHA_REMOTE_FLUSH_SECONDS=5``)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"ALPHA_REMOTE_{f.name.upper()}"
            raw = os.environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            kind = int if f.type in ("int", int) else float
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"${name} must be a number (got {raw!r})") from None
            if value <= 0:
                raise ConfigError(f"${name} must be > 0 (got {raw!r})")
            values[f.name] = value
        return cls(**values)


def from_env(train: TrainConfig, run_dir: Path) -> RemoteReporter | None:
    """The reporter when ``--remote`` is on and both ALPHA_REMOTE_URL and ALPHA_REMOTE_SECRET are set."""
    if not train.remote:
        return None
    settings = RemoteSettings.from_env()
    if settings is None:
        return None
    return RemoteReporter(settings, run_dir, ReporterOptions.from_env())


class RemoteReporter:
    """A Sink that streams a run to the dashboard server from a background thread."""

    def __init__(
        self,
        settings: RemoteSettings,
        run_dir: Path,
        options: ReporterOptions | None = None,
        *,
        run_id: str | None = None,
    ) -> None:
        self.options = options or ReporterOptions()
        self.run_dir = Path(run_dir)
        self.run_id = run_id or self.run_dir.name
        self.spool = Spool(self.run_dir / SPOOL_NAME)
        self.stats = {"requests": 0, "failures": 0, "metrics_sent": 0, "spooled": 0, "rejected": 0}
        self._settings = settings
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=self.options.queue_size)
        # Buffers, shared between the sender thread and close(); guarded by _lock.
        self._lock = threading.Lock()
        self._start: Message | None = None
        self._events: deque[dict[str, Any]] = deque()
        self._samples: deque[Message] = deque()
        self._metrics: deque[dict[str, Any]] = deque()
        self._complete: Message | None = None
        self._max_step: int | None = None
        self._start_sent = False
        # Sender state (sender thread only).
        now = time.monotonic()
        self._last_flush = now
        self._next_heartbeat = now + self.options.heartbeat_seconds
        self._retry_at = 0.0
        self._failures_in_row = 0
        self._error_count = 0
        self._closing = threading.Event()
        self._wake = threading.Event()  # set by handle() when the sender has work to pick up
        self._abandoned = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="alpha-remote-reporter", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"RemoteReporter(run_id={self.run_id!r})"

    # ------------------------------------------------------------------ trainer side
    def handle(self, event: Event) -> None:
        """Hand the event to the sender thread; never blocks. A full queue spills to the spool."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
            # Steps do not wake the sender (it wakes on its own at least once a second): every
            # wake-up makes the training thread wait for the GIL. Other events are rare.
            if not isinstance(event, Step) or self._queue.qsize() >= self.options.queue_size // 4:
                self._wake.set()
        except queue.Full:
            # The sender is stuck (a hanging request). Rather than wait, move the oldest queued event
            # to the spool on disk; the newest (perhaps the RunEnd) still reaches the sender.
            with contextlib.suppress(queue.Empty):
                oldest = self._queue.get_nowait()
                self.stats["spooled"] += self.spool.append(self._event_messages(oldest))
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(event)
                return
            self.stats["spooled"] += self.spool.append(self._event_messages(event))

    def close(self) -> None:
        """Deliver what is pending within ``drain_seconds``, post ``complete``; spool the rest."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._wake.set()
        self._thread.join(self.options.drain_seconds)
        if self._thread.is_alive():
            self._abandon()
        self.spool.remove_if_empty()
        if self.spool.path.exists():
            self._say(
                f"the dashboard server did not take everything; undelivered messages are kept in "
                f"{self.spool.path} (replay with: alpha push {self.run_dir})"
            )

    # ------------------------------------------------------------------ event -> message
    def _event_messages(self, event: Event) -> list[Message]:
        """Stand-alone messages for one event (used when spilling straight to the spool)."""
        if isinstance(event, Step):
            return [messages.metrics(self.run_id, [event.to_record()])]
        out: list[Message] = []
        if isinstance(event, RunStart):
            out.append(messages.run_start(event))
        elif isinstance(event, Samples):
            out.append(messages.samples(self.run_id, event.step, event.samples, event.trend))
        out.append(messages.events(self.run_id, [event.to_record()]))
        if isinstance(event, RunEnd):
            out.append(messages.complete(self.run_id, event.step, event.status, event.reason))
        return out

    def _absorb(self, event: Event) -> None:
        """Add one event to the buffers (caller holds _lock)."""
        if isinstance(event, Step):
            record = event.to_record()
            self._metrics.append(record)
            step = messages.metric_step(record)
            if step is not None and (self._max_step is None or step > self._max_step):
                self._max_step = step
            return
        if isinstance(event, RunStart):
            self.run_id = event.run_id
            self._start = messages.run_start(event)
        elif isinstance(event, Samples):
            self._samples.append(messages.samples(self.run_id, event.step, event.samples, event.trend))
        elif isinstance(event, RunEnd):
            self._complete = messages.complete(self.run_id, event.step, event.status, event.reason)
            self._last_flush = float("-inf")  # the run is over: flush now
        self._events.append(event.to_record())

    def _spill_excess(self) -> None:
        """Move the oldest buffered metrics/events to the spool when memory holds too many."""
        cap = self.options.max_buffered
        spilled: list[Message] = []
        if len(self._metrics) > cap:
            n = len(self._metrics) - cap // 2
            old = [self._metrics.popleft() for _ in range(n)]
            spilled += [messages.metrics(self.run_id, b) for b in messages.batched(old)]
        if len(self._events) > cap:
            n = len(self._events) - cap // 2
            old = [self._events.popleft() for _ in range(n)]
            spilled += [messages.events(self.run_id, b) for b in messages.batched(old)]
        while len(self._samples) > cap:
            spilled.append(self._samples.popleft())
        if spilled:
            self.stats["spooled"] += self.spool.append(spilled)

    # ------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        client = ServerClient(self._settings, default_timeout(self.options.timeout_seconds))
        try:
            while True:
                self._wake.wait(self._wait_seconds())
                self._wake.clear()
                self._collect()
                if self._abandoned:
                    return
                if time.monotonic() >= self._retry_at:
                    self._send_due(client)
                if self._closing.is_set() and self._all_delivered():
                    return
        except Exception as exc:  # a bug here must not take the run down; the spool keeps the data
            self._say(f"sender stopped: {describe(exc)}")
        finally:
            client.close()

    def _collect(self) -> None:
        items: list[Event] = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        if not items:
            return
        with self._lock:
            if self._abandoned:
                return
            for event in items:
                self._absorb(event)
            self._spill_excess()

    def _wait_seconds(self) -> float:
        """Until the next thing falls due: a flush, a heartbeat, a retry; at most 1 s."""
        now = time.monotonic()
        if self._closing.is_set():
            return max(0.0, min(self._retry_at - now, 0.05))
        deadlines = [self._next_heartbeat]
        if self._metrics:
            deadlines.append(self._last_flush + self.options.flush_seconds)
        if len(self._metrics) >= MAX_BATCH:
            deadlines.append(self._retry_at)
        elif len(self._metrics) >= self.options.batch_size:
            deadlines.append(max(self._retry_at, self._last_flush + self.options.min_flush_seconds))
        if self._start or self._events or self._samples or self.spool.has_unsent():
            deadlines.append(self._retry_at)
        return min(max(0.0, min(deadlines) - now), 1.0)

    def _all_delivered(self) -> bool:
        return (
            self._queue.empty()
            and not (self._start or self._events or self._samples or self._metrics or self._complete)
            and not self.spool.has_unsent()
        )

    def _send_due(self, client: ServerClient) -> None:
        """Send what is due, oldest kind first; stop at the first retryable failure."""
        closing = self._closing.is_set()
        if self._start is not None:
            if not self._send(client, self._start):
                return
            self._start_sent = True
            self._pop(lambda: setattr(self, "_start", None))
        while self._events:
            batch = list(itertools.islice(self._events, MAX_BATCH))
            if not self._send(client, messages.events(self.run_id, batch)):
                return
            self._pop(lambda n=len(batch): [self._events.popleft() for _ in range(n)])
        while self._samples:
            if not self._send(client, self._samples[0]):
                return
            self._pop(self._samples.popleft)
        since = time.monotonic() - self._last_flush
        buffered = len(self._metrics)
        full = buffered >= MAX_BATCH or (
            buffered >= self.options.batch_size and since >= self.options.min_flush_seconds
        )
        if closing or full or since >= self.options.flush_seconds:
            self._last_flush = time.monotonic()
            while self._metrics:  # everything buffered, in batches of at most MAX_BATCH
                batch = list(itertools.islice(self._metrics, MAX_BATCH))
                if not self._send(client, messages.metrics(self.run_id, batch)):
                    return
                self._pop(lambda n=len(batch): [self._metrics.popleft() for _ in range(n)])
                self.stats["metrics_sent"] += len(batch)
        if self.spool.has_unsent():
            spooled, offset = self.spool.read(SPOOL_READ_BATCH)
            # A spooled ``complete`` belongs to an earlier process of this run: it is live again.
            for message in messages.coalesce(m for m in spooled if m[0] != messages.COMPLETE):
                if not self._send(client, message):
                    return
            self._pop(lambda: self.spool.commit(offset))
            return  # come back for more after collecting new events
        if self._start_sent and time.monotonic() >= self._next_heartbeat:
            # Sent even when the step has not moved (a long eval): the server judges staleness by it.
            self._next_heartbeat = time.monotonic() + self.options.heartbeat_seconds
            if not self._send(client, messages.heartbeat(self.run_id, self._max_step)):
                return
        done = closing and self._complete is not None and self._queue.empty()
        if done and self._send(client, self._complete):  # type: ignore[arg-type]
            self._pop(lambda: setattr(self, "_complete", None))

    def _pop(self, drop: Callable[[], object]) -> None:
        """Remove delivered messages from the buffers, unless close() has taken them over."""
        with self._lock:
            if not self._abandoned:
                drop()

    def _send(self, client: ServerClient, message: Message) -> bool:
        """POST one message. False (and a backoff) on a retryable failure or after close() gave up."""
        if self._abandoned:
            return False
        path, body = message
        self.stats["requests"] += 1
        try:
            client.post_json(path, body)
        except RemoteError as exc:
            if exc.retryable:
                self._on_failure(exc)
                return False
            halves = messages.split(message)
            if halves is None:
                self._reject(path, body, exc)
            else:  # one bad record must not cost its whole batch: bisect down to it
                return all(self._send(client, half) for half in halves)
        self._on_success()
        return not self._abandoned

    def _on_failure(self, exc: RemoteError) -> None:
        self.stats["failures"] += 1
        self._failures_in_row += 1
        self._error_count += 1
        cap = 1.0 if self._closing.is_set() else self.options.retry_max_seconds
        delay = min(cap, self.options.retry_base_seconds * 2 ** min(self._failures_in_row - 1, 20))
        self._retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
        if self._error_count <= 5 or self._error_count % 100 == 0:
            self._say(f"send failed ({self._error_count}x), retrying in {delay:.0f}s: {exc}")

    def _on_success(self) -> None:
        if self._failures_in_row:
            self._say(f"dashboard server reachable again after {self._failures_in_row} failed attempts")
        self._failures_in_row = 0
        self._retry_at = 0.0

    def _reject(self, path: str, body: dict[str, Any], exc: RemoteError) -> None:
        self.stats["rejected"] += 1
        self._say(f"server rejected a {body.get('type', 'complete')} message, kept in {REJECTED_NAME}: {exc}")
        line = json.dumps({"path": path, "body": body, "error": str(exc)}, allow_nan=False)
        with (self.run_dir / REJECTED_NAME).open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _abandon(self) -> None:
        """Called by close() when the sender is stuck: move everything pending to the spool.

        Messages stay in the buffers until delivered, so the buffers are the whole backlog; a
        request still in flight may arrive too, which the server's dedup makes harmless.
        """
        with self._lock:
            self._abandoned = True
            with contextlib.suppress(queue.Empty):
                while True:
                    self._absorb(self._queue.get_nowait())
            pending: list[Message] = [self._start] if self._start is not None else []
            events = list(self._events)
            pending += [messages.events(self.run_id, b) for b in messages.batched(events)]
            pending += list(self._samples)
            metrics = list(self._metrics)
            pending += [messages.metrics(self.run_id, b) for b in messages.batched(metrics)]
            if self._complete is not None:
                pending.append(self._complete)
            self._start, self._complete = None, None
            self._events.clear()
            self._samples.clear()
            self._metrics.clear()
            self.stats["spooled"] += self.spool.append(pending)

    def _say(self, text: str) -> None:
        sys.stderr.write(f"[remote] {redact(text)}\n")
        sys.stderr.flush()
