"""Synthetic run records for the health tests: one healthy shape and one per failure mode.

Each builder returns a ``Stream`` (metrics.jsonl records and events.jsonl records, in the field
names the trainer writes) that can be written as a run directory or replayed as events.
Everything is seeded, so a stream is the same on every run.
"""

from __future__ import annotations

import json
import math
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stream:
    records: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = True

    def write(self, run_dir: Path, pid: int | None = None, started: str | None = None) -> Path:
        """Write metrics.jsonl, events.jsonl (and train.pid) as the trainer's sinks would."""
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "metrics.jsonl", "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        with open(run_dir / "events.jsonl", "w") as f:
            for e in self.all_events():
                f.write(json.dumps(e) + "\n")
        if pid is not None:
            info = {"pid": pid, "host": socket.gethostname(), "started": started}
            (run_dir / "train.pid").write_text(json.dumps(info))
        return run_dir

    def all_events(self) -> list[dict[str, Any]]:
        last = self.records[-1]["step"] if self.records else 0
        start = event(0, "training_started", {"totalIters": last})
        end = [event(last, "training_complete", {"status": "completed"})] if self.completed else []
        return [start, *sorted(self.events, key=lambda e: e["step"]), *end]


def event(step: int, kind: str, payload: dict[str, Any], level: str = "info") -> dict[str, Any]:
    return {
        "step": step,
        "level": level,
        "kind": kind,
        "message": kind,
        "payload": payload,
        "timestamp": "2026-01-01T00:00:00.000Z",
    }


def step_record(step: int, loss: float | None, grad: float | None = 0.8, **extra: Any) -> dict[str, Any]:
    record = {
        "step": step,
        "loss": loss,
        "lr": 6e-4,
        "gradNorm": grad,
        "elapsed_ms": 40.0,
        "tokens_per_sec": 102400.0,
        "ms_per_iter": 40.0,
        "clip_coef": 1.0,
        "clip_pct": 0.0,
        "tokens": step * 4096,
    }
    record.update(extra)
    return record


def decaying(step: int, start: float = 4.0, floor: float = 2.0, scale: float = 1500.0) -> float:
    return floor + (start - floor) * math.exp(-step / scale)


def build(
    steps: int,
    train: Any,
    val: Any = None,
    eval_every: int = 250,
    noise: float = 0.08,
    val_noise: float = 0.01,
    bad: Any = None,
    extra: Any = None,
    seed: int = 0,
) -> Stream:
    """A stream from curves: ``train(step)``, ``val(step)``, ``bad(step, rng)`` -> skip kind or None."""
    rng = random.Random(seed)
    stream = Stream()
    for s in range(1, steps + 1):
        loss = train(s) + rng.gauss(0, noise)
        grad = abs(rng.gauss(0.8, 0.2))
        fields: dict[str, Any] = extra(s) if extra else {}
        kind = bad(s, rng) if bad else None
        if kind == "spike":
            grad, loss = 40.0 + rng.random() * 10, loss + 0.5
            fields["skipped"] = "spike"
        elif kind == "nonfinite":
            grad = None
            fields["skipped"] = "nonfinite"
        elif kind == "nan_grad":  # a non-finite norm recorded without a skip field
            grad = None
        if val is not None and s % eval_every == 0:
            v = val(s) + rng.gauss(0, val_noise)
            fields["valLoss"] = v
            stream.events.append(event(s, "eval_summary", {"trainLoss": loss, "valLoss": v}))
        stream.records.append(step_record(s, loss, grad, **fields))
    return stream


# ---- the shapes -------------------------------------------------------------------------------


def healthy(steps: int = 6000, seed: int = 0) -> Stream:
    """Noisy, improving, with occasional spike skips and the odd NaN grad norm (3% in all)."""

    def bad(s: int, rng: random.Random) -> str | None:
        r = rng.random()
        return "spike" if r < 0.02 else "nonfinite" if r < 0.03 else None

    return build(
        steps, decaying, lambda s: decaying(s) + 0.08, noise=0.12, val_noise=0.015, bad=bad, seed=seed
    )


def wiggling_val(phase: float, steps: int = 5000, seed: int = 0) -> Stream:
    """Train loss improving slowly; val loss wiggling around a flat level, without a trend."""
    return build(
        steps,
        lambda s: decaying(s, scale=4000),
        lambda s: 2.9 + 0.05 * math.sin(s / 250 * 1.3 + phase),
        val_noise=0.015,
        seed=seed,
    )


def overfitting(steps: int = 5000, seed: int = 0) -> Stream:
    """Train loss keeps dropping; val loss bottoms out at step 2500 and then climbs."""

    def val(s: int) -> float:
        return decaying(min(s, 2500)) + 0.05 + 0.00012 * max(0, s - 2500)

    return build(steps, decaying, val, seed=seed)


def overfit_then_level(steps: int = 6000, seed: int = 0) -> Stream:
    """Val loss bottoms out at step 1500, climbs until 3500, then stays up (a finished run whose
    recent evals are flat): train loss keeps dropping throughout."""

    def val(s: int) -> float:
        return decaying(min(s, 1500)) + 0.05 + 0.0002 * min(2000, max(0, s - 1500))

    return build(steps, decaying, val, seed=seed)


def plateau(steps: int = 6000, seed: int = 0) -> Stream:
    """Loss falls until step 2500, then stays flat (noisy) with val flat too."""

    def train(s: int) -> float:
        return 3.0 + 2.0 * max(0.0, (2500 - s) / 2500)

    return build(
        steps, train, lambda s: train(s) + 0.1, eval_every=500, noise=0.1, val_noise=0.005, seed=seed
    )


def instability_recent(steps: int = 1000, seed: int = 0) -> Stream:
    """Healthy until step 600, then half the steps skipped: 20% overall, 40% in the last 500."""

    def bad(s: int, rng: random.Random) -> str | None:
        if s <= 600 or s % 2:
            return None
        return "nonfinite" if s % 4 == 0 else "spike"

    return build(steps, decaying, bad=bad, seed=seed)


def instability_early(steps: int = 2000, seed: int = 0) -> Stream:
    """60% of the first 1000 steps skipped, none after: 30% overall, 0% recently."""

    def bad(s: int, rng: random.Random) -> str | None:
        return "nan_grad" if s <= 1000 and s % 5 < 3 else None

    return build(steps, decaying, bad=bad, seed=seed)


def symbio(steps: int = 3000, improving: bool = False, alarms: bool = True, seed: int = 0) -> Stream:
    """A symbio run: CUSUM throughput alarms on every step after the baseline; generations of 8
    candidates every 200 steps whose best val loss stops improving after generation 4 (unless
    ``improving``)."""

    def extra(s: int) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "cusum_grad": 0.0,
            "cusum_clip": 0.0,
            "cusum_tps": 0.0,
            "cusum_val": 0.0,
            "cusum_alerts": 0,
            "symbio_generation": s // 200,
        }
        if alarms and s > 10:
            fields.update(cusum_tps=25000.0 + s, cusum_alerts=0x04 | (0x01 if s % 7 == 0 else 0))
            reasons = ["grad_norm regime shift"] if s % 7 == 0 else []
            fields["cusum_alert_reason"] = "; ".join(reasons + ["throughput collapse"])
        return fields

    stream = build(steps, decaying, lambda s: decaying(s) + 0.05, eval_every=500, extra=extra, seed=seed)
    rng = random.Random(seed + 1)
    best = math.inf
    for g in range(steps // 200):
        # generations 0-4 improve (best <= 2.78); later ones stay above 2.80, unless `improving`
        floor, spread = (3.0 - 0.08 * g, 0.1) if g <= 4 else (2.80, 0.3)
        if improving and g == steps // 200 - 1:
            floor = 2.5
        cands = [
            {"id": f"g{g}c{i}", "name": f"cand-{g}-{i}", "valLoss": floor + rng.random() * spread}
            for i in range(8)
        ]
        winner = min(cands, key=lambda c: c["valLoss"])
        best = min(best, winner["valLoss"])
        stream.events.append(
            event(
                (g + 1) * 200,
                "symbio_generation",
                {"generation": g, "candidates": cands, "winner": winner, "bestValLoss": best},
            )
        )
    return stream


def as_events(stream: Stream) -> list[Any]:
    """The stream as the trainer emits it: each step's Step event, then that step's other events."""
    from alpha.events import Eval, RunEnd, Step, SymbioGeneration

    by_step: dict[int, list[dict[str, Any]]] = {}
    for e in stream.events:
        by_step.setdefault(e["step"], []).append(e)
    out: list[Any] = []
    for record in stream.records:
        s = record["step"]
        out.append(Step(step=s, metrics=dict(record)))
        for e in by_step.get(s, []):
            p = e["payload"]
            if e["kind"] == "eval_summary":
                out.append(Eval(step=s, train_loss=p["trainLoss"], val_loss=p["valLoss"], eval_windows=4))
            elif e["kind"] == "symbio_generation":
                out.append(
                    SymbioGeneration(
                        step=s,
                        generation=p["generation"],
                        candidates=p["candidates"],
                        winner=p["winner"],
                        best_val_loss=p["bestValLoss"],
                    )
                )
    last = stream.records[-1]["step"]
    out.append(RunEnd(step=last, status="completed", iters=last, elapsed_s=1.0, tokens_per_sec=1.0))
    return out
