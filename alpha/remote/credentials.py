"""Credentials of the remote outputs: where they are read from, and how they are kept out of text.

The dashboard server's base URL (``ALPHA_REMOTE_URL``), its bearer secret (``ALPHA_REMOTE_SECRET``)
and the Discord webhook (``DISCORD_WEBHOOK_URL``) are read from the environment only, never from
flags, so they never show up in process arguments, config.json, the run header or a printed
command. ``redact`` masks them in any text that may be shown or written (exception messages,
server answers); a webhook URL *is* its secret, so any webhook-shaped URL is masked too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from alpha.errors import ConfigError

URL_ENV = "ALPHA_REMOTE_URL"
SECRET_ENV = "ALPHA_REMOTE_SECRET"
WEBHOOK_ENV = "DISCORD_WEBHOOK_URL"
SENSITIVE_ENV = (SECRET_ENV, URL_ENV, WEBHOOK_ENV)

_WEBHOOK_RE = re.compile(r"https?://\S*/api/webhooks/\S+", re.IGNORECASE)
_BEARER_RE = re.compile(r"Bearer\s+\S+", re.IGNORECASE)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every known credential (env values, webhook URLs, bearer tokens) masked."""
    values = {os.environ.get(name, "") for name in SENSITIVE_ENV} | set(extra)
    variants = {v.rstrip("/") for v in values} | values
    for value in sorted((v for v in variants if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    text = _WEBHOOK_RE.sub("<webhook>", text)
    return _BEARER_RE.sub("Bearer <redacted>", text)


def describe(exc: BaseException, extra: Iterable[str] = ()) -> str:
    """One redacted line for an exception: its type and message."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return redact(text, extra)


@dataclass(frozen=True)
class RemoteSettings:
    """Where the dashboard server is and how to authenticate; ``repr`` shows neither."""

    url: str = field(repr=False)
    secret: str = field(repr=False)

    @classmethod
    def from_env(cls, url_env: str = URL_ENV, secret_env: str = SECRET_ENV) -> RemoteSettings | None:
        """Both variables set (non-empty) -> settings; neither -> None; a bad URL -> ConfigError."""
        url, secret = os.environ.get(url_env, "").strip(), os.environ.get(secret_env, "").strip()
        if not url or not secret:
            return None
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"${url_env} must be an http(s) base URL such as https://host")
        return cls(url=url.rstrip("/"), secret=secret)
