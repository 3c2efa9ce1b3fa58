"""HTTP client for the dashboard server: Bearer auth, timeouts, errors that carry no credentials.

Every error that leaves this module is a ``RemoteError`` whose text went through ``redact``:
httpx puts request URLs in its exception messages. Redirects are not followed, since following
one would resend the bearer secret to another address.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from alpha.remote.credentials import RemoteSettings, describe, redact

# httpx logs every request URL at INFO; an application that turns on INFO logging must not leak it.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


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
            follow_redirects=False,
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
