"""Discord notifications through a webhook: run start, samples, watchdog alerts and the end.

Enabled by ``DISCORD_WEBHOOK_URL`` (and not ``--no-remote``). Embeds follow the reference
(trainer.md §7.4: titles, colours, "Prompt i" fields) and add what a reader of the channel wants:
data and hardware at start, watchdog alerts, and at the end the losses, time, throughput, best
checkpoint and symbio winner. Every embed is cut to Discord's limits before it is sent.

Posting happens on a background thread with a bounded queue: a slow or broken webhook never blocks
training. It keeps a minimum spacing between posts and honours ``429`` (``retry_after`` in the
body, or the ``Retry-After`` header) and an exhausted rate-limit bucket. A webhook that answers
401/403/404 is gone: notifications stop for the run with one warning. The webhook URL is a
credential and never appears in any message this module writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from alpha.config import TrainConfig
from alpha.errors import ConfigError
from alpha.events import Alert, Event, RunEnd, RunStart, Samples
from alpha.remote.credentials import WEBHOOK_ENV, describe, redact

GREEN, ORANGE, BLUE, AMBER, RED, GREY = 0x00C853, 0xFF9800, 0x2196F3, 0xFFC107, 0xF44336, 0x9E9E9E

# Discord's embed limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits)
TITLE_MAX, DESCRIPTION_MAX, FIELDS_MAX, FIELD_NAME_MAX, FIELD_VALUE_MAX = 256, 4096, 25, 256, 1024
FOOTER_MAX, EMBED_TOTAL_MAX = 2048, 6000
SAMPLE_OUTPUT_CHARS = 300  # per prompt, as the reference
PROMPT_CHARS = 100  # in a field name, so that many prompts still fit the 6000-character total
EMPTY = "\u200b"  # Discord rejects empty field names and values


# ---------------------------------------------------------------------- embeds (pure)
def truncate(text: str, limit: int) -> str:
    text = text if text else EMPTY
    return text if len(text) <= limit else text[: limit - 3] + "..."


def code_block(text: str, limit: int) -> str:
    """``text`` in a code block of at most ``limit`` characters; backtick fences inside are broken."""
    body = text.replace("```", "`\u200b``") or " "
    room = limit - len("```\n\n```")
    if len(body) > room:
        body = body[: room - 3] + "..."
    return f"```\n{body}\n```"


def fit_embed(embed: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``embed`` within every Discord limit, shortening the longest field values last."""
    out = dict(embed)
    if "title" in out:
        out["title"] = truncate(out["title"], TITLE_MAX)
    if "description" in out:
        out["description"] = truncate(out["description"], DESCRIPTION_MAX)
    if "footer" in out:
        out["footer"] = {"text": truncate(out["footer"].get("text", ""), FOOTER_MAX)}
    fields = [
        {
            **f,
            "name": truncate(str(f["name"]), FIELD_NAME_MAX),
            "value": _fit_value(str(f["value"]), FIELD_VALUE_MAX),
        }
        for f in out.get("fields", [])[:FIELDS_MAX]
    ]
    out["fields"] = fields
    while embed_size(out) > EMBED_TOTAL_MAX:
        longest = max(fields, key=lambda f: len(f["value"]), default=None)
        if longest is None or len(longest["value"]) <= 40:
            out["description"] = truncate(
                out.get("description", ""), max(40, len(out.get("description", "")) // 2)
            )
            if embed_size(out) > EMBED_TOTAL_MAX and fields:
                fields.pop()
            continue
        longest["value"] = _fit_value(longest["value"], len(longest["value"]) * 2 // 3)
    return out


def _fit_value(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value or EMPTY
    if value.startswith("```\n") and value.endswith("\n```"):
        return code_block(value[4:-4], limit)
    return truncate(value, limit)


def embed_size(embed: dict[str, Any]) -> int:
    """Characters that count toward Discord's 6000 total: title, description, fields, footer."""
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += len(embed.get("footer", {}).get("text", ""))
    return size + sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))


def format_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n > 1e6 else f"{n / 1e3:.0f}K"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _field(name: str, value: Any, inline: bool = True) -> dict[str, Any]:
    return {"name": name, "value": str(value), "inline": inline}


def start_embed(event: RunStart) -> dict[str, Any]:
    mc, tc, infra = event.model_config, event.train_config, event.infra or {}
    if infra.get("gpuName"):
        vram = f", {infra['gpuVramMb'] / 1024:.0f} GB" if infra.get("gpuVramMb") else ""
        hardware = f"{infra['gpuName']} ({infra.get('gpuVendor') or 'gpu'}{vram})"
    else:
        hardware = f"CPU ({infra.get('cpuCount') or os.cpu_count()} cores)"
    if tc.get("gpus", 1) and tc.get("gpus", 1) > 1:
        hardware += f" ×{tc['gpus']}"
    title = (
        "🚀 Training Started"
        if event.resumed_from is None
        else f"🔁 Training Resumed (from step {event.resumed_from})"
    )
    data = Path(event.data_path).name if event.data_path else "?"
    batch = tc.get("batchSize")
    if (tc.get("gradAccumSteps") or 1) > 1:
        batch = f"{batch}×{tc['gradAccumSteps']}"
    return fit_embed(
        {
            "title": title,
            "color": GREEN,
            "fields": [
                _field("Run ID", f"`{event.run_id}`"),
                _field("Domain", event.domain or "unknown"),
                _field("Params", format_params(event.total_params)),
                _field(
                    "Model",
                    f"{mc.get('nEmbd')}d {mc.get('nHead')}h {mc.get('nLayer')}L · block {mc.get('blockSize')}"
                    f" · vocab {mc.get('vocabSize')} · {mc.get('ffnActivation')}",
                ),
                _field("Training", f"batch={batch} lr={tc.get('lr')} iters={tc.get('iters')}"),
                _field("Data", f"`{data}`"),
                _field("Backend", tc.get("backend") or "auto"),
                _field("Hardware", hardware),
            ]
            + ([_field("Symbio", "activation search on")] if tc.get("symbio") else []),
            "timestamp": event.timestamp,
        }
    )


def samples_embed(event: Samples, run_id: str) -> dict[str, Any]:
    trend = event.trend or {}
    room = FIELDS_MAX - (1 if trend.get("summary") else 0)
    fields = []
    for i, sample in enumerate(event.samples[:room], start=1):
        output = sample.get("output", "")
        shown = output[:SAMPLE_OUTPUT_CHARS] + ("..." if len(output) > SAMPLE_OUTPUT_CHARS else "")
        prompt = truncate(sample.get("prompt", ""), PROMPT_CHARS)
        fields.append(_field(f'Prompt {i}: "{prompt}"', code_block(shown, FIELD_VALUE_MAX), False))
    if trend.get("summary"):
        window = f"window {trend.get('windowStartStep')}->{trend.get('windowEndStep')}"
        fields.append(_field("Training Status", f"{trend['summary']}\n{window}", False))
    return fit_embed(
        {
            "title": f"📝 Inference Samples (Step {event.step})",
            "color": ORANGE,
            "description": f"Run `{run_id}`",
            "fields": fields,
            "timestamp": event.timestamp,
        }
    )


def alert_embed(event: Alert, run_id: str) -> dict[str, Any]:
    error = event.level == "error"
    check = event.kind.removeprefix("health_").replace("_", " ")
    fields = [_field("Run ID", f"`{run_id}`"), _field("Step", event.step), _field("Check", event.kind)]
    for key, value in list(event.payload().items())[:10]:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        fields.append(_field(key, text))
    return fit_embed(
        {
            "title": f"{'🛑' if error else '⚠️'} Training Alert: {check}",
            "color": RED if error else AMBER,
            "description": event.message(),
            "fields": fields,
            "timestamp": event.timestamp,
        }
    )


END_TITLES = {
    "completed": ("✅ Training Complete", BLUE),
    "interrupted": ("⏹️ Training Interrupted", GREY),
    "unhealthy": ("🛑 Training Stopped: Unhealthy", RED),
    "failed": ("❌ Training Failed", RED),
}


def end_embed(event: RunEnd, run_id: str, domain: str | None) -> dict[str, Any]:
    title, color = END_TITLES.get(event.status, (f"Training {event.status}", GREY))
    val = _loss(event.final_val_loss)
    if event.best_val_loss is not None and event.best_val_loss != event.final_val_loss:
        val += f" (best {_loss(event.best_val_loss)})"
    fields = [
        _field("Run ID", f"`{run_id}`"),
        _field("Final Step", f"{event.step}/{event.iters}"),
        _field("Domain", domain or "unknown"),
        _field("Train Loss", _loss(event.final_loss)),
        _field("Val Loss", val),
        _field("Time", format_duration(event.elapsed_s)),
        _field("Tokens/s", f"{event.tokens_per_sec:,.0f}"),
    ]
    if event.best_checkpoint:
        fields.append(_field("Best Checkpoint", f"`{Path(event.best_checkpoint).name}`"))
    if event.symbio_winner:
        fields.append(_field("Symbio Winner", f"`{event.symbio_winner}`"))
    if event.skipped_steps:
        fields.append(_field("Skipped Steps", event.skipped_steps))
    embed: dict[str, Any] = {"title": title, "color": color, "fields": fields, "timestamp": event.timestamp}
    if event.reason:
        embed["description"] = redact(event.reason)
    return fit_embed(embed)


def is_watchdog_alert(event: Event) -> bool:
    return isinstance(event, Alert) and event.kind.startswith("health_") and event.level in ("warn", "error")


# ---------------------------------------------------------------------- the sink
def from_env(train: TrainConfig, run_dir: Path | None = None) -> DiscordNotifier | None:
    """The notifier when DISCORD_WEBHOOK_URL is set and ``--remote`` is on; None otherwise."""
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if not train.remote or not url:
        return None
    if not url.startswith(("https://", "http://")):
        sys.stderr.write(f"[discord] ${WEBHOOK_ENV} is not an http(s) URL; Discord notifications are off\n")
        return None
    raw = os.environ.get("ALPHA_DISCORD_MIN_INTERVAL_SECONDS", "") or "2.0"
    try:
        spacing = float(raw)
    except ValueError:
        raise ConfigError(
            f"$ALPHA_DISCORD_MIN_INTERVAL_SECONDS must be a number of seconds (got {raw!r})"
        ) from None
    return DiscordNotifier(url, min_interval=spacing)


class DiscordNotifier:
    """A Sink posting embeds to a Discord webhook from a background thread."""

    def __init__(
        self,
        webhook_url: str,
        *,
        min_interval: float = 2.0,
        timeout: float = 5.0,
        max_queue: int = 50,
        max_attempts: int = 5,
        drain_seconds: float = 15.0,
    ) -> None:
        self._url = webhook_url
        self.min_interval = min_interval
        self.max_attempts = max_attempts
        self.drain_seconds = drain_seconds
        self.stats = {"sent": 0, "dropped": 0, "rate_limited": 0, "failed": 0}
        self._timeout = timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._run_id = "?"
        self._domain: str | None = None
        self._disabled = False
        self._closed = False
        self._last_post = float("-inf")
        self._not_before = 0.0  # set by 429s and exhausted rate-limit buckets
        self._warnings = 0
        self._thread = threading.Thread(target=self._run, name="alpha-discord", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return "DiscordNotifier(<webhook redacted>)"

    def handle(self, event: Event) -> None:
        if self._disabled or self._closed:
            return
        if isinstance(event, RunStart):
            self._run_id, self._domain = event.run_id, event.domain
            self._enqueue(start_embed(event))
        elif isinstance(event, Samples):
            self._enqueue(samples_embed(event, self._run_id))
        elif is_watchdog_alert(event):
            self._enqueue(alert_embed(event, self._run_id))  # type: ignore[arg-type]
        elif isinstance(event, RunEnd):
            self._enqueue(end_embed(event, self._run_id, self._domain))

    def close(self) -> None:
        """Give queued notifications (the end of the run) ``drain_seconds`` to go out."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(self.drain_seconds)
        left = self._queue.qsize()
        if self._thread.is_alive() and left:
            self._warn(f"{left} notification(s) not sent before exit")

    def _enqueue(self, embed: dict[str, Any]) -> None:
        payload = {"embeds": [embed]}
        while True:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                try:  # drop the oldest: a fresh status matters more than a stale one
                    self._queue.get_nowait()
                    self.stats["dropped"] += 1
                except queue.Empty:
                    pass

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:
            while True:
                payload = self._queue.get()
                if payload is None:
                    return
                if not self._disabled:
                    self._deliver(client, payload)

    def _deliver(self, client: httpx.Client, payload: dict[str, Any]) -> None:
        for attempt in range(1, self.max_attempts + 1):
            wait = max(self._last_post + self.min_interval, self._not_before) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_post = time.monotonic()
            try:
                response = client.post(self._url, json=payload)
            except httpx.InvalidURL:
                self._disable("the webhook URL is invalid")
                return
            except httpx.HTTPError as exc:
                self.stats["failed"] += 1
                self._warn(f"post failed (attempt {attempt}): {describe(exc, [self._url])}")
                self._not_before = time.monotonic() + min(30.0, 2.0**attempt)
                continue
            status = response.status_code
            if status == 429:
                self.stats["rate_limited"] += 1
                self._not_before = time.monotonic() + retry_after_seconds(response)
                continue
            if status in (401, 403, 404):
                self._disable(f"the webhook answered {status} (deleted or wrong URL)")
                return
            if status >= 500:
                self.stats["failed"] += 1
                self._not_before = time.monotonic() + min(30.0, 2.0**attempt)
                continue
            if status >= 400:
                self.stats["failed"] += 1
                self._warn(f"Discord refused a message: HTTP {status} {response.text[:200]}")
                return
            self.stats["sent"] += 1
            if response.headers.get("X-RateLimit-Remaining") == "0":  # bucket empty: wait for its reset
                reset = _float(response.headers.get("X-RateLimit-Reset-After"))
                self._not_before = time.monotonic() + reset
            return
        self._warn(f"gave up on a notification after {self.max_attempts} attempts")

    def _disable(self, why: str) -> None:
        self._disabled = True
        self._warn(f"{why}; Discord notifications are off for this run")

    def _warn(self, text: str) -> None:
        self._warnings += 1
        if self._warnings <= 5 or self._warnings % 100 == 0:
            sys.stderr.write(f"[discord] {redact(text, [self._url])}\n")
            sys.stderr.flush()


def _float(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0


def retry_after_seconds(response: httpx.Response) -> float:
    """How long a 429 asks us to wait: body ``retry_after`` (seconds), else ``Retry-After``."""
    seconds = 0.0
    try:
        body = response.json()
        if isinstance(body, dict):
            seconds = _float(str(body.get("retry_after", "")))
    except ValueError:
        pass
    if seconds <= 0:
        seconds = _float(response.headers.get("Retry-After")) or 1.0
    return min(seconds, 600.0)
