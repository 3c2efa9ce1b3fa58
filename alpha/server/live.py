"""Server-Sent Events fan-out for the live page (``GET /api/training/live``).

Ingest handlers run on worker threads; they call ``publish``, which encodes the message once and
hands it to the event loop, which copies it into each viewer's bounded queue. A viewer that falls
too far behind is dropped (its browser reconnects and gets a fresh snapshot) rather than letting
memory grow or slowing ingest down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from alpha.server.protocol import json_clean


def sse_message(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(json_clean(data), separators=(',', ':'))}\n\n"


class Subscriber:
    def __init__(self, max_queue: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(max_queue)
        self.dropped = False


class LiveHub:
    """The set of connected viewers and the loop that serves them."""

    def __init__(self, max_queue: int = 2000) -> None:
        self.max_queue = max_queue
        self._subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def viewers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self.max_queue)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, name: str, data: Any) -> None:
        """Thread-safe; a no-op when nobody watches."""
        loop = self._loop
        if loop is None or not self._subscribers or loop.is_closed():
            return
        message = sse_message(name, data)
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._fan_out, message)

    def _fan_out(self, message: str) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(message)
            except asyncio.QueueFull:
                subscriber.dropped = True
                self._subscribers.discard(subscriber)

    def close_all(self) -> None:
        """Tell every viewer's stream to end (server shutdown)."""
        for subscriber in list(self._subscribers):
            subscriber.dropped = True
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
        self._subscribers.clear()
