"""The human log: ``runs/train_<run_id>.log`` and the console, in the reference's line shapes.

The file always gets plain lines. The console gets the same lines; on an interactive terminal a
rich progress bar (step, loss, tok/s) sits below them, and is absent in pipes, CI and logs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from alpha.events import Event, RunEnd, RunStart, Step
from alpha.progress import interactive
from alpha.sinks.format import LineFormatter


class LogFileSink:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._format = LineFormatter()
        self._last_flush = time.monotonic()

    def handle(self, event: Event) -> None:
        lines = self._format.lines(event)
        if lines:
            self._file.write("\n".join(lines) + "\n")
        if not isinstance(event, Step) or time.monotonic() - self._last_flush > 1.0:
            self._file.flush()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        self._file.close()


class ConsoleSink:
    def __init__(self, stream: TextIO | None = None, progress: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self._format = LineFormatter()
        self._progress = None
        self._task = None
        self._want_progress = interactive() if progress is None else progress

    def handle(self, event: Event) -> None:
        for line in self._format.lines(event):
            self._print(line)
        if isinstance(event, RunStart) and self._want_progress:
            self._start_progress(int(event.train_config["iters"]), event.resumed_from or 0)
        elif isinstance(event, Step) and self._progress is not None:
            m = event.metrics
            self._progress.update(
                self._task,
                completed=m["step"],
                info=f"loss={m['loss']:.4f} {m['tokens_per_sec']:.0f} tok/s" if m["loss"] is not None else "",
            )
        elif isinstance(event, RunEnd):
            self._stop_progress()

    def _print(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _start_progress(self, total: int, completed: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=completed, info="")

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self._stop_progress()
