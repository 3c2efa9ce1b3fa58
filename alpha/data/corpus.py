"""Reading a corpus: chat conversations or prose documents, streamed, validated, split.

Files are read line by line, never whole, so a 1 GB corpus costs no more memory than a small one.
A *document* is the unit of the train/val split: one conversation per line for ``chat``; for
``text``, a paragraph (lines up to a blank line), cut at 4 KB. A document goes to validation when
the hash of its content falls in the lowest ``val_fraction`` of the hash range, so the split is
deterministic, independent of file order and seed, and identical documents never straddle it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alpha.config import END_OF_TEXT
from alpha.errors import ConfigError

VAL_FRACTION = 0.1
TEXT_DOC_MAX_CHARS = 4096
_TURN_MARKER = re.compile(r"<\|(user|assistant)\|>")


@dataclass
class CorpusStats:
    """What reading found: counted, so nothing is dropped silently."""

    documents: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)
    bytes_read: int = 0

    def note_malformed(self, line_no: int) -> None:
        self.malformed += 1
        if len(self.malformed_lines) < 5:
            self.malformed_lines.append(line_no)


def check_data_file(path: str, what: str = "data file") -> Path:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {path} does not exist")
    if not p.is_file():
        raise ConfigError(f"{what} {path} is not a file")
    if p.stat().st_size == 0:
        raise ConfigError(f"{what} {path} is empty")
    return p


def _decoded_lines(path: Path, stats: CorpusStats) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            stats.bytes_read += len(raw)
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{path} is not UTF-8 text (line {line_no})") from None


def is_valid_conversation(line: str) -> bool:
    """``<|user|> … <|assistant|> … [<|user|> … <|assistant|> …] <|end_of_text|>``."""
    if not line.startswith("<|user|>") or not line.endswith(END_OF_TEXT):
        return False
    body = line[: -len(END_OF_TEXT)]
    if END_OF_TEXT in body:
        return False
    parts = _TURN_MARKER.split(body)
    # split gives ["", "user", text, "assistant", text, ...]
    roles = parts[1::2]
    texts = parts[2::2]
    if not roles or len(roles) % 2 or roles[-1] != "assistant":
        return False
    if any(role != ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(roles)):
        return False
    return all(t.strip() for t in texts)


def iter_chat_documents(path: Path, stats: CorpusStats) -> Iterator[str]:
    for line_no, line in _decoded_lines(path, stats):
        line = line.strip()
        if not line:
            continue
        if is_valid_conversation(line):
            stats.documents += 1
            yield line
        else:
            stats.note_malformed(line_no)


def iter_text_documents(path: Path, stats: CorpusStats) -> Iterator[str]:
    parts: list[str] = []
    size = 0
    for _, line in _decoded_lines(path, stats):
        if not line.strip():
            if parts:
                parts.append(line)
                stats.documents += 1
                yield "".join(parts)
                parts, size = [], 0
            continue
        parts.append(line)
        size += len(line)
        if size >= TEXT_DOC_MAX_CHARS or line.rstrip().endswith(END_OF_TEXT):
            stats.documents += 1
            yield "".join(parts)
            parts, size = [], 0
    if parts:
        stats.documents += 1
        yield "".join(parts)


def iter_documents(path: Path, domain: str, stats: CorpusStats) -> Iterator[str]:
    if domain == "chat":
        return iter_chat_documents(path, stats)
    return iter_text_documents(path, stats)


def is_validation(document: str, val_fraction: float = VAL_FRACTION) -> bool:
    return zlib.crc32(document.encode("utf-8")) < val_fraction * 2**32


def malformed_report(path: str, stats: CorpusStats) -> str:
    lines = ", ".join(str(n) for n in stats.malformed_lines)
    more = ", ..." if stats.malformed > len(stats.malformed_lines) else ""
    return (
        f"{path}: skipped {stats.malformed} malformed conversation line(s) (lines {lines}{more}); "
        "expected '<|user|> ... <|assistant|> ... <|end_of_text|>' with alternating turns"
    )
