"""HTTP client for the dashboard server, and the rule that credentials never leave memory.

The server's base URL (``ALPHA_REMOTE_URL``), its bearer secret (``ALPHA_REMOTE_SECRET``) and the
Discord webhook (``DISCORD_WEBHOOK_URL``) are read from the environment only, never from flags, so
they never show up in process arguments, config.json or the run header. Every error that leaves
this module is a ``RemoteError`` whose text went through ``redact``: httpx puts request URLs in its
exception messages, and a webhook URL *is* its secret.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from alpha.errors import ConfigError

URL_ENV = "ALPHA_REMOTE_URL"
SECRET_ENV = "ALPHA_REMOTE_SECRET"
WEBHOOK_ENV = "DISCORD_WEBHOOK_URL"
SENSITIVE_ENV = (SECRET_ENV, URL_ENV, WEBHOOK_ENV)

_WEBHOOK_RE = re.compile(r"https?://\S*/api/webhooks/\S+", re.IGNORECASE)
_BEARER_RE = re.compile(r"Bearer\s+\S+", re.IGNORECASE)

# httpx logs every request URL at INFO; an application that turns on INFO logging must not leak it.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


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


class RemoteError(Exception):
    """A request failed. ``retryable``: worth sending again later (network, 5xx, 408, 429, 401)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


RETRYABLE_STATUS = {401, 403, 408, 425, 429}  # auth may be fixed server-side while we retry


def default_timeout(read_seconds: float = 30.0) -> httpx.Timeout:
    return httpx.Timeout(connect=5.0, read=read_seconds, write=read_seconds, pool=5.0)


class ServerClient:
    """JSON and byte requests to the dashboard server with ``Authorization: Bearer <secret>``."""

    def __init__(self, settings: RemoteSettings, timeout: httpx.Timeout | None = None) -> None:
        self._settings = settings
        self._http = httpx.Client(
            base_url=settings.url,
            headers={"Authorization": f"Bearer {settings.secret}"},
            timeout=timeout or default_timeout(),
            follow_redirects=False,  # a redirect would resend the bearer secret somewhere else
        )

    def __repr__(self) -> str:
        return "ServerClient(<redacted>)"

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            data = json.dumps(body, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise RemoteError(f"payload is not valid JSON ({describe(exc)})", retryable=False) from None
        return self._request(
            "POST", path, content=data.encode("utf-8"), headers={"Content-Type": "application/json"}
        )

    def post_bytes(self, path: str, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        return self._request(
            "POST", path, content=data, headers={"Content-Type": "application/octet-stream", **headers}
        )

    def get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        return self._request("GET", path, params=params)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        secrets = (self._settings.url, self._settings.secret)
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"{method} {path}: {describe(exc, secrets)}") from None
        if response.status_code >= 300:
            status = response.status_code
            detail = redact(response.text[:200].strip(), secrets).replace("\n", " ")
            retryable = status >= 500 or status in RETRYABLE_STATUS
            raise RemoteError(
                f"{method} {path}: HTTP {status} {detail}".rstrip(), status=status, retryable=retryable
            )
        try:
            value = response.json()
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {"value": value}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
