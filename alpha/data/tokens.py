"""Token cache and batches.

A corpus is tokenized once into two flat token files (train.bin, val.bin: uint16 when the vocab
fits, else uint32) under the cache directory, keyed by the data files' content hashes, the
tokenizer's own hash and the domain, and written atomically (build in a temp dir, rename).
Training reads them through ``np.memmap``, so a 1 GB corpus never becomes a Python list.

A batch is addressed by a key (normally ``(step, micro_step)``): its random windows come from a
generator seeded by ``(seed, stream, *key)``. Batches are therefore reproducible without saved
generator state (resume is exact), can be prepared ahead of time, and two consumers that use the
same key (symbio candidates) see identical data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alpha.data.corpus import (
    CorpusStats,
    check_data_file,
    is_validation,
    iter_documents,
    malformed_report,
)
from alpha.data.tokenizer import BpeTokenizer, CharTokenizer, cache_dir, file_digest, tokenizer_digest
from alpha.errors import ConfigError
from alpha.progress import ByteProgress

CACHE_FORMAT = "tokens-v1"
ENCODE_BATCH_DOCS = 2048


@dataclass
class TokenData:
    train: np.ndarray
    val: np.ndarray
    meta: dict

    @property
    def warnings(self) -> list[str]:
        return list(self.meta.get("warnings", []))


def training_texts(data_path: str, domain: str, has_val_file: bool, max_bytes: int) -> Iterator[str]:
    """Documents of the training side only (the tokenizer never sees validation text)."""
    stats = CorpusStats()
    seen = 0
    for doc in iter_documents(Path(data_path), domain, stats):
        if not has_val_file and is_validation(doc):
            continue
        yield doc
        seen += len(doc)
        if seen >= max_bytes:
            return
    if stats.documents == 0:
        raise ConfigError(_no_documents(data_path, domain, stats))


def _no_documents(path: str, domain: str, stats: CorpusStats) -> str:
    if domain == "chat":
        return f"no valid conversation in {path} ({stats.malformed} malformed line(s))"
    return f"no text in {path}"


def _token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size < 2**16 else np.uint32


def prepare_tokens(
    data_path: str,
    val_path: str | None,
    domain: str,
    tokenizer: BpeTokenizer | CharTokenizer,
    show_progress: bool = True,
) -> TokenData:
    """Load the token cache for this (data, tokenizer, domain), building it on first use."""
    data = check_data_file(data_path)
    val = check_data_file(val_path, "val data file") if val_path else None
    key_src = "|".join(
        [
            CACHE_FORMAT,
            file_digest(data),
            file_digest(val) if val else "-",
            tokenizer_digest(tokenizer),
            domain,
        ]
    )
    key = hashlib.blake2b(key_src.encode(), digest_size=16).hexdigest()
    target = cache_dir() / "tokens" / key
    if not (target / "meta.json").exists():
        _build_cache(target, data, val, domain, tokenizer, show_progress)
    meta = json.loads((target / "meta.json").read_text())
    if not meta["train_tokens"]:
        raise ConfigError(
            f"the training split of {data_path} is empty: all {meta['val_documents']} document(s) went to "
            "validation (are they identical?); add more varied data or pass --val-data"
        )
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(target / "train.bin", dtype=dtype, mode="r")
    valt = np.memmap(target / "val.bin", dtype=dtype, mode="r") if meta["val_tokens"] else np.zeros(0, dtype)
    return TokenData(train=train, val=valt, meta=meta)


def _build_cache(
    target: Path,
    data: Path,
    val: Path | None,
    domain: str,
    tokenizer: BpeTokenizer | CharTokenizer,
    show_progress: bool,
) -> None:
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = _token_dtype(tokenizer.vocab_size)
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    warnings: list[str] = []
    sources = [(data, None if val is None else "train")] + ([(val, "val")] if val else [])
    total_bytes = sum(p.stat().st_size for p, _ in sources)
    with (
        (tmp / "train.bin").open("wb") as train_out,
        (tmp / "val.bin").open("wb") as val_out,
        ByteProgress(total_bytes, "tokenizing", enabled=show_progress) as progress,
    ):
        outs = {"train": train_out, "val": val_out}
        done_bytes = 0
        for path, fixed_side in sources:
            stats = CorpusStats()
            pending: dict[str, list[str]] = {"train": [], "val": []}

            def flush(side: str, pending: dict[str, list[str]] = pending) -> None:
                if not pending[side]:
                    return
                ids = tokenizer.encode_batch(pending[side])
                flat = np.fromiter((t for seq in ids for t in seq), dtype=dtype)
                flat.tofile(outs[side])
                counts[side] += len(flat)
                docs[side] += len(pending[side])
                pending[side].clear()

            for doc in iter_documents(path, domain, stats):
                side = fixed_side or ("val" if is_validation(doc) else "train")
                pending[side].append(doc)
                if len(pending[side]) >= ENCODE_BATCH_DOCS:
                    flush(side)
                    progress.update(done_bytes + stats.bytes_read)
            flush("train")
            flush("val")
            done_bytes += stats.bytes_read
            progress.update(done_bytes)
            if stats.documents == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ConfigError(_no_documents(str(path), domain, stats))
            if stats.malformed:
                warnings.append(malformed_report(str(path), stats))
    meta = {
        "format": CACHE_FORMAT,
        "dtype": np.dtype(dtype).name,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "train_documents": docs["train"],
        "val_documents": docs["val"],
        "split": "file" if val else "document-hash",
        "warnings": warnings,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, target)
    except OSError:  # another process built the same cache first
        shutil.rmtree(tmp, ignore_errors=True)


class BatchSource:
    """Random windows of ``block + 1`` tokens from a token array, addressed by a key."""

    def __init__(
        self, tokens: np.ndarray, block: int, batch: int, seed: int, stream: int, name: str = "training split"
    ) -> None:
        if len(tokens) < block + 2:
            raise ConfigError(
                f"--block {block} is larger than the {name} ({len(tokens)} tokens); "
                "use a smaller --block or more data"
            )
        self.tokens = tokens
        self.block = block
        self.batch_size = batch
        self.seed = seed
        self.stream = stream
        self._offsets = np.arange(block + 1)

    def windows(self, key: tuple[int, ...]) -> np.ndarray:
        """(batch, block + 1) int64 token windows; inputs are [:, :-1], targets [:, 1:]."""
        rng = np.random.default_rng([self.seed, self.stream, *key])
        starts = rng.integers(0, len(self.tokens) - self.block - 1, size=self.batch_size, endpoint=True)
        return self.tokens[starts[:, None] + self._offsets].astype(np.int64)

    def batch(self, key: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        windows = torch.from_numpy(self.windows(key))
        return windows[:, :-1], windows[:, 1:]
