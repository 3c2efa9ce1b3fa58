"""Machine-readable run records: ``metrics.jsonl`` (one line per step), ``events.jsonl`` (every
other event as a reference TrainingEvent record) and ``samples.jsonl`` (every sample batch).

Files are opened in append mode, so a resumed run continues them. NaN and Inf become null.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TextIO

from alpha.events import Event, Samples, Step, json_safe


class MetricsSink:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._file: TextIO = self.path.open("a", encoding="utf-8")
        self._last_flush = time.monotonic()

    def handle(self, event: Event) -> None:
        if isinstance(event, Step):
            self._file.write(json.dumps(event.to_record(), allow_nan=False) + "\n")
            if time.monotonic() - self._last_flush < 1.0:
                return
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self._file.close()


class EventsSink:
    def __init__(self, run_dir: Path) -> None:
        self._events: TextIO = (run_dir / "events.jsonl").open("a", encoding="utf-8")
        self._samples: TextIO = (run_dir / "samples.jsonl").open("a", encoding="utf-8")

    def handle(self, event: Event) -> None:
        if isinstance(event, Step):
            return
        self._events.write(json.dumps(event.to_record(), allow_nan=False) + "\n")
        self._events.flush()
        if isinstance(event, Samples):
            record = json_safe({"step": event.step, "samples": event.samples, "trend": event.trend})
            self._samples.write(json.dumps(record, allow_nan=False) + "\n")
            self._samples.flush()

    def close(self) -> None:
        self._events.close()
        self._samples.close()
