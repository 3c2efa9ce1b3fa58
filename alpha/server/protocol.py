"""The ingest protocol: validate and normalize what training runs send to ``POST /api/ingest``.

Message shapes are the reference's (reference/ops.md §2): one endpoint discriminated by ``type``
(run_start, metrics, heartbeat, samples, event, events) plus ``POST /api/ingest/complete``. Unlike
the reference, a malformed message is rejected whole with a one-line reason (``ProtocolError``,
answered as HTTP 400) instead of being half-stored or silently dropped.

Step records keep every field the reference defines, under its snake_case column name, and keep
any field we do not know in an ``extra`` JSON object, so nothing a trainer sends is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from alpha.events import utc_now_iso

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
LEVELS = ("debug", "info", "warn", "error")
MAX_MESSAGE_CHARS = 4096
MAX_BATCH = 20_000
MAX_SAMPLE_CHARS = 65_536

# Run outcomes a trainer may report, and the run status each one leaves.
OUTCOME_STATUS = {"completed": "completed", "interrupted": "stale", "unhealthy": "failed", "failed": "failed"}
# Event kinds that by themselves say the run died.
FAILURE_KINDS = ("training_failed", "run_failed", "training_crashed")


class ProtocolError(ValueError):
    """A message that cannot be stored as sent; the text is the reason given to the client."""


# (wire name, column, type). Types: real, int, text, json (stored as JSON text).
# The wire names are those of reference/ops.md §2.4 and metrics.jsonl: three camelCase, the rest
# snake_case. ``val_loss``/``grad_norm`` are accepted as spellings of ``valLoss``/``gradNorm``.
METRIC_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("loss", "loss", "real"),
    ("valLoss", "val_loss", "real"),
    ("lr", "lr", "real"),
    ("gradNorm", "grad_norm", "real"),
    ("elapsed_ms", "elapsed_ms", "real"),
    ("tokens_per_sec", "tokens_per_sec", "real"),
    ("ms_per_iter", "ms_per_iter", "real"),
    ("gpu_util_pct", "gpu_util_pct", "real"),
    ("gpu_vram_used_mb", "gpu_vram_used_mb", "real"),
    ("gpu_vram_total_mb", "gpu_vram_total_mb", "real"),
    ("gpu_mem_pool_mb", "gpu_mem_pool_mb", "real"),
    ("timing_fwd_ms", "timing_fwd_ms", "real"),
    ("timing_bwd_ms", "timing_bwd_ms", "real"),
    ("timing_optim_ms", "timing_optim_ms", "real"),
    ("timing_data_ms", "timing_data_ms", "real"),
    ("timing_flush_ms", "timing_flush_ms", "real"),
    ("timing_grad_norm_ms", "timing_grad_norm_ms", "real"),
    ("timing_grad_clip_ms", "timing_grad_clip_ms", "real"),
    ("gpu_ops_count", "gpu_ops_count", "int"),
    ("clip_coef", "clip_coef", "real"),
    ("clip_pct", "clip_pct", "real"),
    ("cusum_grad", "cusum_grad", "real"),
    ("cusum_clip", "cusum_clip", "real"),
    ("cusum_tps", "cusum_tps", "real"),
    ("cusum_val", "cusum_val", "real"),
    ("cusum_alerts", "cusum_alerts", "int"),
    ("cusum_alert_reason", "cusum_alert_reason", "text"),
    ("weight_entropy", "weight_entropy", "real"),
    ("effective_rank", "effective_rank", "real"),
    ("free_energy", "free_energy", "real"),
    ("population_entropy", "population_entropy", "real"),
    ("activation_distribution", "activation_distribution", "json"),
    ("mi_input_repr", "mi_input_repr", "real"),
    ("mi_repr_output", "mi_repr_output", "real"),
    ("mi_compression", "mi_compression", "real"),
    ("fitness_score", "fitness_score", "real"),
    ("complexity_score", "complexity_score", "real"),
    ("adaptive_batch_size", "adaptive_batch_size", "int"),
    ("batch_change_reason", "batch_change_reason", "text"),
    ("symbio_candidate_id", "symbio_candidate_id", "text"),
    ("symbio_candidate_name", "symbio_candidate_name", "text"),
    ("symbio_candidate_activation", "symbio_candidate_activation", "text"),
    ("symbio_candidate_parent_id", "symbio_candidate_parent_id", "text"),
    ("symbio_candidate_parent_name", "symbio_candidate_parent_name", "text"),
    ("symbio_generation", "symbio_generation", "int"),
    ("architecture_diversity", "architecture_diversity", "real"),
    ("symbio_activation_graph", "symbio_activation_graph", "json"),
    ("symbio_mutation_applied", "symbio_mutation_applied", "text"),
    ("per_layer_grad_norms", "per_layer_grad_norms", "json"),
    # Ours (docs/ARCHITECTURE.md step record): cumulative tokens, and why an update was skipped.
    ("tokens", "tokens", "int"),
    ("skipped", "skipped", "text"),
)
METRIC_COLUMNS: tuple[str, ...] = ("step", *(column for _, column, _ in METRIC_FIELDS), "extra")
_FIELD_BY_WIRE = {wire: (column, kind) for wire, column, kind in METRIC_FIELDS}
_ALIASES = {"val_loss": "valLoss", "grad_norm": "gradNorm"}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _coerce(where: str, value: Any, kind: str) -> Any:
    """One metric value to its column type; None stays None; a wrong type is a ProtocolError."""
    if value is None:
        return None
    if kind == "real":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{where} must be a number or null, got {type(value).__name__}")
        return _finite(float(value))
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{where} must be an integer or null, got {type(value).__name__}")
        return value
    if kind == "text":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ProtocolError(f"{where} must be a string or null, got {type(value).__name__}")
        return str(value)
    # json: JSON text as sent, or an object/array that we encode
    if isinstance(value, str):
        return value
    return json.dumps(json_clean(value), separators=(",", ":"))


def json_clean(value: Any) -> Any:
    """NaN/Inf floats become None, recursively, so the value is strict JSON."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    return value


def step_of(where: str, value: Any, required: bool = True) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{where} must be a non-negative integer")
    return value


def run_id_of(body: dict[str, Any]) -> str:
    run_id = body.get("runId")
    if not isinstance(run_id, str) or not run_id:
        raise ProtocolError("runId is required (a non-empty string)")
    check_name(run_id, "runId")
    return run_id


def check_name(name: str, what: str) -> str:
    """Names that become URL segments or file names: [A-Za-z0-9._-]+, and not just dots."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or set(name) == {"."}:
        raise ProtocolError(f"{what} must match [A-Za-z0-9._-]{{1,200}} and not be only dots")
    return name


def normalize_metric(record: Any, where: str) -> dict[str, Any]:
    """A step record -> {column: value}, unknown fields under ``extra`` (JSON text or None)."""
    if not isinstance(record, dict):
        raise ProtocolError(f"{where} must be an object")
    row: dict[str, Any] = {column: None for column in METRIC_COLUMNS}
    row["step"] = step_of(f"{where}.step", record.get("step"))
    extra: dict[str, Any] = {}
    for key, value in record.items():
        if key == "step":
            continue
        wire = _ALIASES.get(key, key)
        if wire in _FIELD_BY_WIRE:
            if wire != key and wire in record:
                continue  # both spellings sent: the reference's one wins
            column, kind = _FIELD_BY_WIRE[wire]
            row[column] = _coerce(f"{where}.{key}", value, kind)
        else:
            extra[key] = value
    row["extra"] = json.dumps(json_clean(extra), separators=(",", ":")) if extra else None
    return row


def metric_to_wire(row: dict[str, Any]) -> dict[str, Any]:
    """A stored metrics row back to the record a trainer sent (reference names, extras merged)."""
    record: dict[str, Any] = {"step": row["step"]}
    for wire, column, kind in METRIC_FIELDS:
        value = row.get(column)
        if value is None:
            continue
        if kind == "json":
            with contextlib.suppress(TypeError, ValueError):
                value = json.loads(value)
        record[wire] = value
    if row.get("extra"):
        record.update(json.loads(row["extra"]))
    return record


@dataclass
class EventRow:
    step: int | None
    level: str
    kind: str
    message: str
    payload_json: str | None
    created_at: str
    client_id: str | None
    payload: dict[str, Any] | None = field(default=None, repr=False)


def _timestamp(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        # epoch milliseconds, as JavaScript's Date.now() gives
        moment = datetime.fromtimestamp(value / 1000, timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if isinstance(value, str) and value.strip():
        return value.strip()[:64]
    return None


def normalize_event(event: Any, where: str) -> EventRow:
    """The reference's event normalization (ops.md §2.4), plus an optional client id for dedup."""
    if not isinstance(event, dict):
        raise ProtocolError(f"{where} must be an object")
    level = event.get("level")
    level = level if level in LEVELS else "info"
    kind = event.get("kind")
    kind = kind.strip() if isinstance(kind, str) and kind.strip() else "generic"
    message = event.get("message")
    message = message.strip() if isinstance(message, str) else ""
    if not message:
        message = "(no message)"
    elif len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    payload = event.get("payload")
    payload_json: str | None = None
    if payload is not None:
        try:
            payload_json = json.dumps(json_clean(payload), separators=(",", ":"))
        except (TypeError, ValueError):
            payload_json = '{"error":"payload_not_serializable"}'
    client_id = event.get("id", event.get("eventId"))
    if client_id is not None:
        if isinstance(client_id, bool) or not isinstance(client_id, (str, int)) or str(client_id) == "":
            raise ProtocolError(f"{where}.id must be a non-empty string or an integer")
        client_id = str(client_id)[:200]
    elif isinstance(event.get("timestamp"), str):
        # No client id: an event the client stamped is identified by its content, so a retried
        # batch or a replayed run (`alpha push`) stores it once. Unstamped events are all kept.
        content = json.dumps([event.get("step"), kind, message, event["timestamp"], payload_json])
        client_id = "content:" + hashlib.blake2b(content.encode(), digest_size=12).hexdigest()
    return EventRow(
        step=step_of(f"{where}.step", event.get("step"), required=False),
        level=level,
        kind=kind,
        message=message,
        payload_json=payload_json,
        created_at=_timestamp(event.get("timestamp")) or utc_now_iso(),
        client_id=client_id,
        payload=payload if isinstance(payload, dict) else None,
    )


@dataclass
class SampleBatch:
    step: int | None
    samples: list[tuple[str, str]]
    trend_json: str | None


def normalize_samples(body: dict[str, Any]) -> SampleBatch:
    samples = body.get("samples")
    if not isinstance(samples, list):
        raise ProtocolError("samples must be an array of {prompt, output}")
    pairs = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise ProtocolError(f"samples[{i}] must be an object")
        prompt, output = sample.get("prompt"), sample.get("output")
        if not isinstance(prompt, str) or not isinstance(output, str):
            raise ProtocolError(f"samples[{i}] needs string prompt and output")
        pairs.append((prompt[:MAX_SAMPLE_CHARS], output[:MAX_SAMPLE_CHARS]))
    trend = body.get("trend")
    return SampleBatch(
        step=step_of("step", body.get("step"), required=False),
        samples=pairs,
        trend_json=json.dumps(json_clean(trend)) if trend is not None else None,
    )


def outcome_of(value: Any, where: str = "status") -> str:
    """A reported run outcome; missing means completed."""
    if value is None:
        return "completed"
    if value not in OUTCOME_STATUS:
        raise ProtocolError(f"{where} must be one of {', '.join(OUTCOME_STATUS)}")
    return value


def batch_of(body: dict[str, Any], key: str) -> list[Any]:
    items = body.get(key)
    if not isinstance(items, list):
        raise ProtocolError(f"{key} must be an array")
    if len(items) > MAX_BATCH:
        raise ProtocolError(f"{key} holds {len(items)} items; at most {MAX_BATCH} per message")
    return items
