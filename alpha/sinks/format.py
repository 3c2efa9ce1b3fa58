"""Human-readable lines for run events: the run header, the reference step line, notices.

Shared by the log-file sink and the console sink so both say exactly the same thing. Numbers follow
the reference's formatting (``lr=5.00e-5``: exponent without zero padding).
"""

from __future__ import annotations

import math
from typing import Any

from alpha.events import Alert, CheckpointSaved, Event, RunEnd, RunStart, Samples, Step, SymbioGeneration

END_TITLES = {
    "completed": "── training complete ──",
    "interrupted": "── training interrupted ──",
    "unhealthy": "── training stopped: unhealthy ──",
    "failed": "── training failed ──",
}


def js_exponential(value: float, digits: int = 2) -> str:
    """JavaScript's ``toExponential(2)``: ``5.00e-5``, ``1.50e+0``."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"


def js_number(value: Any) -> str:
    """JavaScript's number-to-string for the header (``0.00005``, ``50000``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        exp = int(exponent)
        if -7 < exp < 21:
            return f"{value:.{max(0, -exp + len(mantissa.replace('.', '').lstrip('-')) - 1)}f}"
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return js_number(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def header_lines(event: RunStart) -> list[str]:
    m, t = event.model_config, event.train_config
    batch = f"{t['batchSize'] * t['gradAccumSteps']}"
    if t["gradAccumSteps"] > 1:
        batch += f" ({t['batchSize']}×{t['gradAccumSteps']})"
    infra = event.infra
    device = infra.get("device", t.get("backend"))
    if infra.get("gpuName"):
        device += f" ({infra['gpuName']})"
    lines = [
        "── alpha training ──",
        f"run_id: {event.run_id}",
        f"config_hash: {infra.get('configHash', '')}",
        f"params: {event.total_params:,} ({event.total_params * 4 / 2**20:.1f} MB)",
        f"backend: {device} | tokenizer: {t['tokenizer']} ({m['vocabSize']}) | optimizer: adamw",
        f"seed: {t['seed']} | block_size: {m['blockSize']} | batch: {batch}",
        f"iters: {t['iters']} | lr: {js_number(t['lr'])}",
    ]
    if event.resumed_from is not None:
        lines.append(f"resumed from step {event.resumed_from}")
    lines.append(f"data: {event.data_path} | domain: {event.domain}")
    lines.append("model: " + " ".join(f"{k}={_fmt(v)}" for k, v in m.items() if v is not None))
    lines.append(
        "train: " + " ".join(f"{k}={_fmt(v)}" for k, v in t.items() if v is not None and k != "symbioConfig")
    )
    facts = {k: v for k, v in infra.items() if k not in ("configHash", "gpuName")}
    lines.append("run: " + " ".join(f"{k}={_fmt(v)}" for k, v in facts.items()))
    lines.append(f"run_dir: {event.run_dir}")
    lines.append("")
    return lines


def step_line(m: dict[str, Any], iters: int) -> str:
    loss = m["loss"]
    parts = [f"step {m['step']}/{iters}", f"loss={loss:.4f}" if loss is not None else "loss=NaN"]
    if m.get("valLoss") is not None:
        parts[-1] += f" val_loss={m['valLoss']:.4f}"
    gn = m.get("gradNorm")
    grad = f"grad_norm={gn:.3f}" if gn is not None else "grad_norm=NaN"
    if m.get("clip_coef", 1.0) < 1.0:
        grad += f" clip={m['clip_coef']:.4f}"
    if m.get("skipped"):
        grad += f" skipped={m['skipped']}"
    return " | ".join(
        [
            parts[0],
            parts[1],
            f"lr={js_exponential(m['lr'])}",
            grad,
            f"{m['ms_per_iter']:.0f}ms/it",
            f"{m['tokens_per_sec']:.0f} tok/s",
        ]
    )


class LineFormatter:
    """Turns events into lines; knows the run's log cadence from its RunStart."""

    def __init__(self) -> None:
        self.iters = 0
        self.log_every = 1

    def lines(self, event: Event) -> list[str]:
        if isinstance(event, RunStart):
            self.iters = int(event.train_config["iters"])
            self.log_every = int(event.train_config.get("logEvery") or 1)
            return header_lines(event)
        if isinstance(event, Step):
            m = event.metrics
            s = m["step"]
            if s == 1 or s == self.iters or s % self.log_every == 0 or "valLoss" in m or m.get("skipped"):
                return [step_line(m, self.iters)]
            return []
        if isinstance(event, Samples):
            return [f'  sample: "{s["prompt"]}" → {_one_line(s["output"])}' for s in event.samples]
        if isinstance(event, CheckpointSaved):
            best = " (best val)" if event.is_best else ""
            return [f"  checkpoint saved: {event.path}{best}"]
        if isinstance(event, SymbioGeneration):
            return [f"  [symbio] {event.message()}"]
        if isinstance(event, Alert):
            text = event.message()
            if "\n" in text:
                return [f"  [{event.kind}]"] + ["    " + line for line in text.rstrip().splitlines()]
            return [f"  [{event.kind}] {text}"]
        if isinstance(event, RunEnd):
            return end_lines(event)
        return []


def end_lines(event: RunEnd) -> list[str]:
    lines = ["", END_TITLES.get(event.status, f"── training {event.status} ──")]
    if event.reason:
        lines.append(f"reason: {event.reason}")
    lines.append(
        f"total time: {event.elapsed_s:.1f}s | {event.tokens_per_sec:.0f} tok/s in training steps, "
        f"{event.loop_tokens_per_sec:.0f} tok/s over the whole loop after warm-up "
        "(eval, samples, checkpoints included)"
    )
    final = []
    if event.final_loss is not None:
        final.append(f"loss={event.final_loss:.4f}")
    if event.final_val_loss is not None:
        final.append(f"val_loss={event.final_val_loss:.4f}")
    if event.best_val_loss is not None:
        final.append(f"best_val_loss={event.best_val_loss:.4f}")
    if final:
        lines.append(f"final step {event.step}/{event.iters}: " + " ".join(final))
    if event.symbio_winner:
        lines.append(f"symbio winner: {event.symbio_winner}")
    if event.log_path:
        lines.append(f"log: {event.log_path}")
    if event.run_dir:
        lines.append(f"metrics: {event.run_dir}/metrics.jsonl (events.jsonl, samples.jsonl beside it)")
    if event.last_checkpoint:
        lines.append(f"checkpoint: {event.last_checkpoint}")
    if event.best_checkpoint and event.best_checkpoint != event.last_checkpoint:
        lines.append(f"best checkpoint: {event.best_checkpoint}")
    return lines


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")
