"""ASGI layers in front of the routes: API key, request body limit, per-route request counting.

Plain ASGI (not BaseHTTPMiddleware) so that streaming responses and client-disconnect messages pass
through untouched.
"""
from __future__ import annotations

import hmac
import json
from typing import Optional

from hybrid_k2.serve.errors import error_body_for
from hybrid_k2.serve.metrics import Metrics

OPEN_PATHS = frozenset({"/", "/health"})  # the web page asks for the key itself


async def _send_error(scope, send, status: int, message: str, *, code: Optional[str] = None) -> None:
    body = json.dumps(error_body_for(scope["path"], status, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> Optional[bytes]:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


class ApiKeyGate:
    """With an API key set, every route but /health and the web page needs the key (else 401), as
    `Authorization: Bearer KEY` (OpenAI clients) or `x-api-key: KEY` (Anthropic clients)."""

    def __init__(self, app, api_key: Optional[str]):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        auth = _header(scope, b"authorization") or b""
        x_key = _header(scope, b"x-api-key")
        scheme, _, token = auth.partition(b" ")
        ok = (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)) or \
            (x_key is not None and hmac.compare_digest(x_key.strip(), self.key))
        if not ok:
            what = "missing API key" if not auth and x_key is None else "invalid API key"
            return await _send_error(scope, send, 401, f"{what}: send the header 'Authorization: Bearer <key>' "
                                     "or 'x-api-key: <key>'", code="invalid_api_key")
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, whether Content-Length says so or not.

    The body is read here (bounded) and replayed to the app; after it, `receive` passes through, so
    the app still sees `http.disconnect` when the client goes away mid-stream."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = f"request body is larger than the server's limit of {self.max_bytes} bytes"
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_error(scope, send, 413, too_big, code="request_too_large")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_error(scope, send, 413, too_big, code="request_too_large")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class CountRequests:
    """Counts responses by route and status for /metrics (unknown paths are counted as 'other')."""

    def __init__(self, app, metrics: Metrics, routes: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = {"code": 500}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.count_request(route, status["code"])
