"""Work that must not stall the training loop: writing checkpoint files.

A single worker thread runs submitted jobs in order (serialising a checkpoint, fsync, rename,
retention); their results are delivered on the trainer's main thread at the next log boundary
(``poll``) or at the end of the run (``drain``), so events are still emitted from one thread and
in order. A job that raises is re-raised on the main thread when it is delivered, never lost.

While a job runs, the interpreter's GIL switch interval drops from 5 ms to 0.2 ms: the training
loop needs the GIL briefly several times per step and must not wait 5 ms each time behind the
job's Python parts.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JOB_SWITCH_INTERVAL_S = 0.0002


@dataclass
class Done:
    on_done: Callable[[Any], None]
    result: Any = None
    error: BaseException | None = None


class BackgroundWorker:
    def __init__(self, name: str = "alpha-background") -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Callable[[Any], None]] | None] = queue.Queue()
        self._done: queue.Queue[Done] = queue.Queue()
        self._pending = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        """Run ``job`` on the worker; ``on_done(result)`` runs later on the polling thread."""
        self._pending += 1
        self._jobs.put((job, on_done))

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def poll(self) -> None:
        """Deliver the results of finished jobs (on the calling thread)."""
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return
            self._deliver(done)

    def drain(self) -> None:
        """Wait for every submitted job and deliver its result."""
        while self._pending:
            self._deliver(self._done.get())

    def _deliver(self, done: Done) -> None:
        self._pending -= 1
        if done.error is not None:
            raise done.error
        done.on_done(done.result)

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, on_done = item
            interval = sys.getswitchinterval()
            sys.setswitchinterval(JOB_SWITCH_INTERVAL_S)
            try:
                self._done.put(Done(on_done, result=job()))
            except BaseException as exc:  # handed to the main thread, which decides
                self._done.put(Done(on_done, error=exc))
            finally:
                sys.setswitchinterval(interval)

    def close(self) -> None:
        """Stop the thread and wait for it: a thread still alive at interpreter exit can abort it."""
        self._jobs.put(None)
        self._thread.join()
