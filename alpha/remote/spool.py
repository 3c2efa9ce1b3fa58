"""The spool: undelivered ingest messages, kept in the run directory so nothing is lost.

One JSON object per line, ``{"path": ..., "body": ...}``. The reporter appends what it cannot hold
in memory (the server is down or hanging) and what is still undelivered when the run ends; it reads
the spool back and re-sends it once the server answers again, and truncates the file when every
line has been delivered. ``alpha push`` replays a spool left by a run that ended while the server
was away. Every message is idempotent on the server (metrics dedup on run id + step), so a line
sent twice (a crash between sending and truncating) does no harm.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from alpha.remote.messages import Message

SPOOL_NAME = "remote-spool.jsonl"


def read_spool(path: Path) -> Iterator[Message]:
    """Every complete, parseable message in a spool file (a torn last line is skipped)."""
    if not path.is_file():
        return
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            message = _parse(line)
            if message is not None:
                yield message


def _parse(line: str) -> Message | None:
    try:
        item = json.loads(line)
    except ValueError:
        return None
    if isinstance(item, dict) and isinstance(item.get("path"), str) and isinstance(item.get("body"), dict):
        return item["path"], item["body"]
    return None


class Spool:
    """Append from any thread; read back and commit from the reporter's worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._offset = 0  # bytes already handed to the sender
        self._size = path.stat().st_size if path.is_file() else 0  # tracked, so checks need no syscall

    def append(self, messages: Iterable[Message]) -> int:
        lines = [
            json.dumps({"path": p, "body": b}, separators=(",", ":"), allow_nan=False) + "\n"
            for p, b in messages
        ]
        if not lines:
            return 0
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            data = "".join(lines)
            self._file.write(data)
            self._file.flush()
            self._size += len(data.encode("utf-8"))
        return len(lines)

    def has_unsent(self) -> bool:
        with self._lock:
            return self._size > self._offset

    def read(self, max_messages: int) -> tuple[list[Message], int]:
        """Up to ``max_messages`` unsent messages and the offset to ``commit`` once they are sent."""
        with self._lock:
            if self._size <= self._offset:
                return [], self._offset
            out: list[Message] = []
            with self.path.open("rb") as f:
                f.seek(self._offset)
                offset = self._offset
                while len(out) < max_messages:
                    line = f.readline()
                    if not line or not line.endswith(b"\n"):
                        break  # EOF, or a line still being written
                    offset += len(line)
                    message = _parse(line.decode("utf-8", errors="replace"))
                    if message is not None:
                        out.append(message)
            return out, offset

    def commit(self, offset: int) -> None:
        """Mark everything before ``offset`` delivered; empty the file once all of it is."""
        with self._lock:
            self._offset = max(self._offset, offset)
            if self._offset >= self._size:
                if self._file is not None:
                    self._file.truncate(0)  # append mode: later writes land at the new end
                elif self.path.exists():
                    self.path.write_bytes(b"")
                self._offset = self._size = 0

    def remove_if_empty(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self.path.is_file() and self.path.stat().st_size == 0:
                self.path.unlink()
