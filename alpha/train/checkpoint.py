"""Checkpoints: one safetensors file holding weights, optimizer state and trainer state.

Tensors are ``model.<param>``, ``optim.<param>.<state>`` and ``trainer.<name>`` (guard counters,
RNG states); the metadata key ``alpha`` holds a JSON object with the step, configs, tokenizer and
the JSON-able trainer state. Files are written to a temporary name, fsynced and renamed, so a
crash mid-write never leaves a truncated checkpoint under the real name. The trainer takes host
copies at the step (alpha.train.host_buffers) and writes them on a worker thread (alpha.train.background).
A retention policy keeps the newest N plus the one with the best validation loss.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from alpha.errors import ConfigError
from alpha.train.checkpoint_files import (  # noqa: F401  re-exported: the checkpoint API in one place
    CHECKPOINT_RE,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
)

FORMAT = "alpha-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors grouped by prefix, plus its metadata."""

    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    trainer: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def write_atomic(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(cpu, str(tmp), metadata={"alpha": json.dumps(meta)})
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[f"optim.{name}.{key}"] = value
    return out


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer,
    named_params: dict[str, torch.nn.Parameter],
    tensors: dict[str, torch.Tensor],
) -> None:
    for key, value in tensors.items():
        name, state_key = key.rsplit(".", 1)
        param = named_params.get(name)
        if param is None:
            raise ConfigError(f"checkpoint optimizer state names unknown parameter {name}")
        optimizer.state[param][state_key] = value.to(param.device)


def read_meta(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        meta = json.loads(metadata["alpha"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable alpha checkpoint ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} has unknown checkpoint format {meta.get('format')!r}")
    return meta


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} is corrupt ({type(exc).__name__}: {exc})") from None
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "trainer": {}}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix in groups:
            groups[prefix][rest] = value
    return Checkpoint(meta=meta, **groups)


def strip_optimizer(src: Path, dst: Path) -> dict[str, Any]:
    """Write an inference-only copy: weights, configs and tokenizer; no optimizer or trainer state."""
    ckpt = load_checkpoint(src)
    meta = {k: v for k, v in ckpt.meta.items() if k != "trainer"}
    meta["inferenceOnly"] = True
    write_atomic({f"model.{k}": v for k, v in ckpt.model.items()}, meta, dst)
    return meta


class Retention:
    """Keeps the newest ``keep`` checkpoints plus the best-val one; deletes the rest."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.keep = keep
        self.entries: dict[Path, float | None] = {}
        for _, path in list_checkpoints(run_dir):
            try:
                self.entries[path] = read_meta(path).get("valLoss")
            except ConfigError:
                continue

    @property
    def best(self) -> Path | None:
        scored = [(v, p) for p, v in self.entries.items() if v is not None and math.isfinite(v)]
        return min(scored)[1] if scored else None

    def add(self, path: Path, val_loss: float | None) -> list[Path]:
        self.entries[path] = val_loss
        ordered = sorted(self.entries, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))  # type: ignore[union-attr]
        protected = set(ordered[-self.keep :]) | ({self.best} if self.best else set())
        removed = []
        for p in ordered:
            if p not in protected:
                p.unlink(missing_ok=True)
                del self.entries[p]
                removed.append(p)
        return removed
