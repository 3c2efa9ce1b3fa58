"""Ingest payloads (reference ops.md §2): plain functions from plain data to the wire shapes.

All messages go to ``POST /api/ingest`` and are told apart by ``type``, except the end of a run,
which goes to ``POST /api/ingest/complete``. A message travels as ``(path, body)`` so the spool
and ``alpha push`` can replay it without knowing its kind.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
from collections.abc import Iterable
from typing import Any

from alpha.events import RunStart, json_safe

INGEST = "/api/ingest"
COMPLETE = "/api/ingest/complete"
MAX_BATCH = 500  # the reference server inserts in chunks of 500; larger bodies buy nothing

Message = tuple[str, dict[str, Any]]

INFRA_KEYS = ("gpuName", "gpuVendor", "gpuVramMb", "hostname", "cpuCount", "ramTotalMb", "osPlatform")


def local_infra() -> dict[str, Any]:
    """This host's hardware in the reference ``infra`` shape; GPU fields only if CUDA is in use."""
    ram_mb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    infra: dict[str, Any] = {
        "gpuName": None,
        "gpuVendor": None,
        "gpuVramMb": None,
        "hostname": socket.gethostname(),
        "cpuCount": os.cpu_count(),
        "ramTotalMb": ram_mb,
        "osPlatform": sys.platform,
    }
    torch = sys.modules.get("torch")  # never import torch (or start CUDA) just to describe the host
    if torch is not None and torch.cuda.is_initialized():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        infra["gpuName"] = props.name
        infra["gpuVendor"] = "amd" if getattr(torch.version, "hip", None) else "nvidia"
        infra["gpuVramMb"] = props.total_memory // (1024 * 1024)
    return infra


def complete_infra(given: dict[str, Any] | None) -> dict[str, Any]:
    """The seven infra keys: what the trainer reported, the rest probed locally."""
    given = given or {}
    probed = local_infra()
    infra = {key: given.get(key, probed[key]) for key in INFRA_KEYS}
    if infra["osPlatform"] is None:
        infra["osPlatform"] = platform.system().lower()
    return infra


def run_start(event: RunStart) -> Message:
    return INGEST, json_safe(
        {
            "type": "run_start",
            "runId": event.run_id,
            "domain": event.domain,
            "modelConfig": event.model_config,
            "trainConfig": event.train_config,
            "totalParams": event.total_params,
            "infra": complete_infra(event.infra),
        }
    )


def metrics(run_id: str, records: list[dict[str, Any]]) -> Message:
    return INGEST, {"type": "metrics", "runId": run_id, "metrics": records}


def heartbeat(run_id: str, step: int | None) -> Message:
    body: dict[str, Any] = {"type": "heartbeat", "runId": run_id}
    if step is not None:
        body["step"] = step
    return INGEST, body


def samples(run_id: str, step: int, items: list[dict[str, str]], trend: dict[str, Any] | None) -> Message:
    body = {
        "type": "samples",
        "runId": run_id,
        "samples": [{"prompt": s["prompt"], "output": s["output"]} for s in items],
        "step": step,
        "trend": trend,
    }
    return INGEST, json_safe(body)


def events(run_id: str, records: list[dict[str, Any]]) -> Message:
    """One record -> an ``event`` message; several -> one ``events`` message."""
    if len(records) == 1:
        return INGEST, {"type": "event", "runId": run_id, "event": records[0]}
    return INGEST, {"type": "events", "runId": run_id, "events": records}


def complete(run_id: str, final_step: int, status: str, reason: str) -> Message:
    return COMPLETE, {"runId": run_id, "finalStep": final_step, "status": status, "reason": reason}


def metric_step(record: dict[str, Any]) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) else None


def coalesce(items: Iterable[Message]) -> list[Message]:
    """Merge runs of adjacent ``metrics`` (or ``event``/``events``) messages of one run into batches."""
    out: list[Message] = []
    for path, body in items:
        kind = body.get("type")
        if out and kind in ("metrics", "event", "events"):
            last_path, last = out[-1]
            same_run = last.get("runId") == body.get("runId")
            if kind == "metrics" and last.get("type") == "metrics" and same_run:
                if len(last["metrics"]) + len(body["metrics"]) <= MAX_BATCH:
                    out[-1] = (last_path, {**last, "metrics": last["metrics"] + body["metrics"]})
                    continue
            elif kind != "metrics" and last.get("type") in ("event", "events") and same_run:
                merged = event_records(last) + event_records(body)
                if len(merged) <= MAX_BATCH:
                    out[-1] = events(body["runId"], merged)
                    continue
        out.append((path, body))
    return out


def event_records(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The event records an ``event`` or ``events`` message carries."""
    return [body["event"]] if body.get("type") == "event" else list(body.get("events", []))


def split(message: Message) -> tuple[Message, Message] | None:
    """A ``metrics``/``events`` message of several records cut in two halves; None otherwise."""
    _, body = message
    key = {"metrics": "metrics", "events": "events"}.get(body.get("type", ""))
    if key is None or len(body[key]) < 2:
        return None
    records, run_id = body[key], body["runId"]
    half = len(records) // 2
    build = metrics if key == "metrics" else events
    return build(run_id, records[:half]), build(run_id, records[half:])


def batched(records: list[Any], size: int = MAX_BATCH) -> list[list[Any]]:
    return [records[i : i + size] for i in range(0, len(records), size)]
