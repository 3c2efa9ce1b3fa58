"""Tokenizers: byte-level BPE (trained with the ``tokenizers`` library) and a character tokenizer.

Both serialise to one JSON string, which is saved in every run directory and every checkpoint,
so sampling never needs the original data. The chat markers ``<|user|>``, ``<|assistant|>`` and
``<|end_of_text|>`` are reserved, atomic tokens in both kinds. Trained tokenizers are cached by
(data content hash, settings) so a corpus is only learned once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from alpha.config import CHAT_MARKERS, END_OF_TEXT
from alpha.errors import ConfigError

# Enough text for stable BPE statistics; more costs time without changing the merges much.
BPE_TRAIN_BYTES = 200 * 1024 * 1024


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_json(self) -> str: ...


class BpeTokenizer:
    """Byte-level BPE: every byte is representable, so no character is ever dropped."""

    kind = "bpe"

    def __init__(self, inner: object) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        assert isinstance(inner, HFTokenizer)
        self._tok = inner
        eot = inner.token_to_id(END_OF_TEXT)
        if eot is None:
            raise ConfigError("tokenizer has no <|end_of_text|> token")
        self._eot = eot

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(CHAT_MARKERS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def eot_id(self) -> int:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps({"alpha": "bpe", "tokenizer": json.loads(self._tok.to_str())})


class CharTokenizer:
    """One token per character, plus the reserved chat markers as single tokens."""

    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        self.specials = list(CHAT_MARKERS)
        self.chars = [c for c in chars if c not in self.specials]
        self.itos = self.specials + self.chars
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def train(cls, texts: Iterator[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            for marker in CHAT_MARKERS:
                text = text.replace(marker, "")
            seen.update(text)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def eot_id(self) -> int:
        return self.stoi[END_OF_TEXT]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(text):
            if text[i] == "<":
                marker = next((m for m in self.specials if text.startswith(m, i)), None)
                if marker is not None:
                    ids.append(self.stoi[marker])
                    i += len(marker)
                    continue
            idx = self.stoi.get(text[i])
            if idx is not None:  # characters never seen in training have no id
                ids.append(idx)
            i += 1
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids if 0 <= i < len(self.itos))

    def to_json(self) -> str:
        return json.dumps({"alpha": "char", "chars": self.chars})


def load_tokenizer(text: str) -> BpeTokenizer | CharTokenizer:
    """Rebuild a tokenizer from its ``to_json()`` string."""
    try:
        data = json.loads(text)
        kind = data["alpha"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError("not an alpha tokenizer (bad JSON)") from None
    if kind == "char":
        return CharTokenizer(list(data["chars"]))
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BpeTokenizer(HFTokenizer.from_str(json.dumps(data["tokenizer"])))
    raise ConfigError(f"unknown tokenizer kind {kind!r}")


def cache_dir() -> Path:
    """Where trained tokenizers and token caches live (``ALPHA_CACHE_DIR`` overrides)."""
    root = os.environ.get("ALPHA_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alpha"


def file_digest(path: Path) -> str:
    """Content hash of a file (blake2b, streamed), cached on disk by (path, size, mtime)."""
    stat = path.stat()
    index_path = cache_dir() / "digests.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError):
        index = {}
    if key in index:
        return index[key]
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    index[key] = digest
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, index_path)
    return digest


def tokenizer_digest(tokenizer: BpeTokenizer | CharTokenizer) -> str:
    return hashlib.blake2b(tokenizer.to_json().encode(), digest_size=16).hexdigest()


def build_or_load_tokenizer(
    kind: str, vocab_size: int, data_digest: str, training_texts: Iterator[str]
) -> BpeTokenizer | CharTokenizer:
    """Train a tokenizer on ``training_texts`` once per (data digest, kind, vocab size)."""
    settings = f"{kind}-{vocab_size}" if kind == "bpe" else kind
    path = cache_dir() / "tokenizers" / f"{data_digest}-{settings}.json"
    if path.exists():
        return load_tokenizer(path.read_text())
    if kind == "bpe":
        tokenizer: BpeTokenizer | CharTokenizer = BpeTokenizer.train(training_texts, vocab_size)
    else:
        tokenizer = CharTokenizer.train(training_texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(tokenizer.to_json())
    os.replace(tmp, path)
    return tokenizer
