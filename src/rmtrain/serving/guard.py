"""The server's front door (ASGI middleware), before any endpoint code runs.

- The bearer token is checked from the headers, before a byte of the body is read: a client
  without it is answered 401 at once and holds nothing (every path but `/health`, which stays
  answerable, and `/openapi.json` included).
- The body must arrive within `body_timeout_s` (408 otherwise: a client that sends headers and
  part of a body cannot hold a slot) and within `max_bytes` (413).
- One client address has at most `max_per_client` requests in flight (429 beyond): one
  client cannot take every slot.
- Every POST body is read as JSON, whatever content type a client declares.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

OPEN_PATHS = ("/health",)


class RequestGuard:
    def __init__(
        self,
        app: Any,
        max_bytes: int,
        api_key: str | None = None,
        body_timeout_s: float = 10.0,
        max_per_client: int = 256,
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.api_key, self.body_timeout_s = api_key, body_timeout_s
        self.max_per_client = max_per_client
        self.in_flight: dict[str, int] = {}

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        if not self.api_key:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.encode(), self.api_key.encode()
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        if self.in_flight.get(client, 0) >= self.max_per_client:
            return await send_json(send, 429, "too many requests in flight from this address")
        self.in_flight[client] = self.in_flight.get(client, 0) + 1
        try:
            return await self._guarded(scope, receive, send)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if not self._authorised(headers):
            return await send_json(
                send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")]
            )
        if scope.get("method") == "POST":  # every body is JSON, whatever a client declares
            kept = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await send_json(send, 413, f"body larger than {self.max_bytes} bytes")
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            return await send_json(send, 408, f"body not received within {self.body_timeout_s}s")
        if body is None:  # the client went away
            return None
        if len(body) > self.max_bytes:
            return await send_json(send, 413, f"body larger than {self.max_bytes} bytes")
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _read_body(self, receive: Any) -> bytes | None:
        """The body in chunks joined once (linear in its size, not quadratic)."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                break
        return b"".join(chunks)


async def send_json(
    send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),  # a refused client keeps no connection open
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
