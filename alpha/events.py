"""Run events and the Sink protocol: the only way the trainer talks to the outside world.

Everything that happens in a run is an event; every output (log file, metrics.jsonl, remote
dashboard, Discord, watchdog) is a sink. The trainer emits events to an ``EventBus``, which fans
them out to its sinks. A sink that raises is reported on stderr and training goes on: no output
may stop a run.

Every event except ``Step`` also has a *record* form (``to_record()``): the reference's
``TrainingEvent`` shape ``{step, level, kind, message, payload, timestamp}``, which is what
``events.jsonl`` holds and what the ingest protocol's ``event``/``events`` messages carry.
``Step.to_record()`` is the metrics.jsonl line (reference field names, NaN/Inf as null).
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable


def utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``, as the reference writes timestamps."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def json_safe(value: Any) -> Any:
    """Replace NaN/Inf floats by None, recursively, so the result is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events. ``kind`` is the reference event kind; ``level`` debug|info|warn|error."""

    step: int
    kind: str = "generic"
    level: str = "info"
    timestamp: str = field(default_factory=utc_now_iso)

    def message(self) -> str:
        return self.kind

    def payload(self) -> dict[str, Any]:
        return {}

    def to_record(self) -> dict[str, Any]:
        return json_safe(
            {
                "step": self.step,
                "level": self.level,
                "kind": self.kind,
                "message": self.message(),
                "payload": self.payload(),
                "timestamp": self.timestamp,
            }
        )


@dataclass(frozen=True, kw_only=True)
class RunStart(Event):
    """A run (fresh or resumed) is about to take its first step. Configs use reference wire names."""

    kind: str = "training_started"
    run_id: str
    run_dir: str
    domain: str
    data_path: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    total_params: int
    infra: dict[str, Any]
    resumed_from: int | None = None

    def message(self) -> str:
        if self.resumed_from is not None:
            return f"resumed run {self.run_id} from step {self.resumed_from}"
        return f"started run {self.run_id} ({self.total_params:,} params)"

    def payload(self) -> dict[str, Any]:
        tc = self.train_config
        return {
            "runId": self.run_id,
            "domain": self.domain,
            "backend": tc.get("backend"),
            "tokenizer": tc.get("tokenizer"),
            "optimizer": "adamw",
            "totalIters": tc.get("iters"),
            "batchSize": tc.get("batchSize"),
            "gradAccumSteps": tc.get("gradAccumSteps"),
            "learningRate": tc.get("lr"),
            "warmupIters": tc.get("warmupIters"),
            "evalInterval": tc.get("evalInterval"),
            "sampleInterval": tc.get("sampleInterval"),
            "totalParams": self.total_params,
            "resumedFrom": self.resumed_from,
        }


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    """One optimizer step's metrics, keyed by the reference's metrics.jsonl field names."""

    kind: str = "step"
    metrics: dict[str, Any]

    def to_record(self) -> dict[str, Any]:
        return json_safe(self.metrics)


@dataclass(frozen=True, kw_only=True)
class Eval(Event):
    """Validation loss on the fixed val windows."""

    kind: str = "eval_summary"
    train_loss: float
    val_loss: float
    eval_windows: int

    def message(self) -> str:
        return f"eval step {self.step}: loss={self.train_loss:.4f} val_loss={self.val_loss:.4f}"

    def payload(self) -> dict[str, Any]:
        return {
            "trainLoss": self.train_loss,
            "valLoss": self.val_loss,
            "perplexity": math.exp(self.val_loss) if self.val_loss < 50 else None,
            "evalWindows": self.eval_windows,
        }


@dataclass(frozen=True, kw_only=True)
class Samples(Event):
    """Generated text for the domain prompts. ``samples`` is ``[{prompt, output}]``."""

    kind: str = "samples_generated"
    samples: list[dict[str, str]]
    trend: dict[str, Any] | None = None

    def message(self) -> str:
        return f"{len(self.samples)} samples at step {self.step}"

    def payload(self) -> dict[str, Any]:
        return {
            "sampleCount": len(self.samples),
            "samples": [{"prompt": s["prompt"], "outputPreview": s["output"][:160]} for s in self.samples],
            "trend": self.trend,
        }


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    """A checkpoint file was written atomically."""

    kind: str = "checkpoint_saved"
    path: str
    val_loss: float | None = None
    is_best: bool = False

    def message(self) -> str:
        return f"checkpoint saved: {self.path}"

    def payload(self) -> dict[str, Any]:
        return {"path": self.path, "valLoss": self.val_loss, "isBest": self.is_best}


@dataclass(frozen=True, kw_only=True)
class Alert(Event):
    """Something worth a human's attention: guard skips, watchdog findings, symbio alarms.

    ``kind`` is free (``spike_skip``, ``grad_norm_nan``, ``loss_nan``, ``health_overfitting``...);
    ``level`` is warn or error for real problems, info for notable but benign things.
    """

    level: str = "warn"
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        return self.text

    def payload(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass(frozen=True, kw_only=True)
class SymbioGeneration(Event):
    """A symbiogenesis generation finished: every candidate's result and the winner."""

    kind: str = "symbio_generation"
    generation: int
    candidates: list[dict[str, Any]]
    winner: dict[str, Any]
    best_val_loss: float

    def message(self) -> str:
        name = self.winner.get("name", "?")
        return f"generation {self.generation}: winner {name} val_loss={self.best_val_loss:.4f}"

    def payload(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "candidates": self.candidates,
            "winner": self.winner,
            "bestValLoss": self.best_val_loss,
        }


@dataclass(frozen=True, kw_only=True)
class RunEnd(Event):
    """The run stopped. ``status``: completed | interrupted | unhealthy | failed."""

    kind: str = "training_complete"
    status: str
    reason: str = ""
    iters: int
    elapsed_s: float
    tokens_per_sec: float
    loop_tokens_per_sec: float = 0.0
    final_loss: float | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    skipped_steps: int = 0
    clipped_steps: int = 0
    symbio_winner: str | None = None
    run_dir: str = ""
    log_path: str = ""

    def message(self) -> str:
        text = f"training {self.status} at step {self.step}/{self.iters}"
        return f"{text}: {self.reason}" if self.reason else text

    def payload(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "totalIters": self.iters,
            "finalStep": self.step,
            "durationMs": round(self.elapsed_s * 1000),
            "tokensPerSec": self.tokens_per_sec,
            "loopTokensPerSec": self.loop_tokens_per_sec,
            "finalLoss": self.final_loss,
            "finalValLoss": self.final_val_loss,
            "bestValLoss": self.best_val_loss,
            "bestCheckpoint": self.best_checkpoint,
            "lastCheckpoint": self.last_checkpoint,
            "spikeSkips": self.skipped_steps,
            "clippedSteps": self.clipped_steps,
            "symbioWinner": self.symbio_winner,
        }


@runtime_checkable
class Sink(Protocol):
    """Receives every event of a run. ``handle`` must be cheap: slow work goes to a thread."""

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


@dataclass
class StopRequest:
    """A sink (the watchdog) asks the trainer to save a checkpoint and stop."""

    reason: str
    exit_code: int


class EventBus:
    """Fans events out to sinks; isolates the trainer from sink failures."""

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])
        self.stop_request: StopRequest | None = None
        self._failures: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception as exc:  # a broken output never stops training
                self._report_failure(sink, exc)

    def request_stop(self, reason: str, exit_code: int) -> None:
        with self._lock:
            if self.stop_request is None:
                self.stop_request = StopRequest(reason, exit_code)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                self._report_failure(sink, exc)

    def _report_failure(self, sink: Sink, exc: Exception) -> None:
        count = self._failures.get(id(sink), 0) + 1
        self._failures[id(sink)] = count
        if count <= 3 or count % 100 == 0:
            name = type(sink).__name__
            sys.stderr.write(f"[warn] output {name} failed ({count}x): {type(exc).__name__}: {exc}\n")


class RecordingBus(EventBus):
    """Keeps events in ``events`` instead of emitting them (to be replayed later, e.g. gathered
    from every process); stop requests still go to the bus it stands in for."""

    def __init__(self, outer: EventBus) -> None:
        self.outer = outer
        super().__init__()
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def request_stop(self, reason: str, exit_code: int) -> None:
        self.outer.request_stop(reason, exit_code)

    @property  # type: ignore[override]
    def stop_request(self) -> StopRequest | None:
        return self.outer.stop_request

    @stop_request.setter
    def stop_request(self, value: StopRequest | None) -> None:
        if value is not None:  # EventBus.__init__ sets None: the outer bus keeps its own
            self.outer.request_stop(value.reason, value.exit_code)
