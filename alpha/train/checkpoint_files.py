"""Where checkpoints live in a run directory: ``checkpoint-<step>.safetensors``.

Only names and paths, no torch: commands that validate their arguments before importing the heavy
parts (``alpha upload``) find checkpoints with these too.
"""

from __future__ import annotations

import re
from pathlib import Path

from alpha.errors import ConfigError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.safetensors$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``run_dir``, oldest first."""
    found = []
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def find_checkpoint(path: Path, flag: str) -> Path:
    """A checkpoint file, or a run directory meaning its latest checkpoint.

    Anything else is a ConfigError that names ``flag`` (the option or argument the path came from).
    """
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ConfigError(f"{flag} {path}: no checkpoint-<step>.safetensors in that directory")
        return found
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no checkpoint there, the path does not exist")
    return path
