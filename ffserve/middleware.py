"""One ASGI middleware for what every route shares: API keys (``Authorization: Bearer`` or Anthropic's
``x-api-key``), the body size limit, access logs."""

from __future__ import annotations

import hmac
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ffserve.encoding import dumps
from ffserve.errors import BodyTooLarge, error_body

access_log = logging.getLogger("ffserve.access")
OPEN_PATHS = ("/health/", "/v2/health/")


async def _reject(
    scope: Scope, send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]
) -> None:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    body = dumps(error_body(str(scope.get("path", "")), status, message, kind))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, *, api_keys: list[str], max_body: int, log: bool) -> None:
        self.app, self.keys, self.max_body, self.log = app, [k.encode() for k in api_keys], max_body, log

    def _authorized(self, scope: Scope) -> bool:
        if not self.keys or str(scope.get("path", "")).startswith(OPEN_PATHS):
            return True
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":  # Anthropic's clients send the key as x-api-key
            token = headers.get(b"x-api-key", b"")
        return bool(token.strip()) and any(hmac.compare_digest(token.strip(), k) for k in self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [0]

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if not self._authorized(scope):
                status[0] = 401
                await _reject(
                    scope,
                    send,
                    401,
                    "a valid API key is required (Authorization: Bearer <key>, or x-api-key: <key>)",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                status[0] = 413
                await _reject(scope, send, 413, f"request body is larger than {self.max_body} bytes", [])
                return
            seen = [0]

            async def receive_limited() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > self.max_body:
                        raise BodyTooLarge(f"request body is larger than {self.max_body} bytes")
                return message

            await self.app(scope, receive_limited, send_logged)
        finally:
            if self.log:
                client = scope.get("client") or ("-", 0)
                access_log.info(
                    '%s "%s %s" %s %.1fms',
                    client[0],
                    scope.get("method"),
                    scope.get("path"),
                    status[0] or "-",
                    (time.perf_counter() - t0) * 1000,
                )
