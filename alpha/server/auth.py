"""Bearer-secret checks for writes (ingest, uploads) and, optionally, reads (pages, read APIs).

Secrets are compared in constant time. Writes need the write secret when one is configured (the
server refuses to listen beyond loopback without one). Reads need the read secret when one is
configured, sent as a bearer header or as the ``alpha_read`` cookie that ``/login`` sets, so a
browser can use the pages; the write secret is accepted for reads too.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

READ_COOKIE = "alpha_read"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def secret_matches(given: str | None, secret: str) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8"))


def may_write(request: Request, write_secret: str | None) -> bool:
    if write_secret is None:
        return True
    return secret_matches(bearer_token(request), write_secret)


def grants_read(given: str | None, read_secret: str | None, write_secret: str | None) -> bool:
    """Whether ``given`` may read: anything when no read secret is set, else either secret."""
    if read_secret is None:
        return True
    return secret_matches(given, read_secret) or bool(write_secret and secret_matches(given, write_secret))


def may_read(request: Request, read_secret: str | None, write_secret: str | None) -> bool:
    return any(
        grants_read(given, read_secret, write_secret)
        for given in (bearer_token(request), request.cookies.get(READ_COOKIE))
    )
