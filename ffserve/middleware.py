"""One ASGI middleware for what every route shares: API keys (``Authorization: Bearer`` or Anthropic's
``x-api-key``), the body size limit, access logs, the responses-by-status metric and the request's trace
span (:mod:`ffruntime.tracing`; none when off)."""

from __future__ import annotations

import hmac
import logging
import time

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ffruntime import tracing
from ffserve.encoding import dumps
from ffserve.errors import BodyTooLarge, error_body

access_log = logging.getLogger("ffserve.access")
OPEN_PATHS = ("/health/", "/v2/health/")
UPLOAD_PATHS = ("/api/blobs/",)  # bodies that are model files: bounded by max_upload, not max_body


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


def key_accepted(keys: list[bytes], authorization: bytes) -> bool:
    """Whether an ``Authorization`` value (HTTP header, gRPC metadata) is ``Bearer <one of keys>``;
    with no keys configured every request is."""
    if not keys:
        return True
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return any(hmac.compare_digest(token.strip(), k) for k in keys)


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: list[str],
        max_body: int,
        log: bool,
        responses: Counter,
        max_upload: int | None = None,
    ) -> None:
        self.app, self.keys, self.max_body, self.log = app, [k.encode() for k in api_keys], max_body, log
        self.max_upload = max_body if max_upload is None else max_upload
        self.responses = responses  # ff:http_responses, by status code
        self._by_code: dict[int, Counter] = {}

    def _authorized(self, scope: Scope) -> bool:
        if not self.keys or str(scope.get("path", "")).startswith(OPEN_PATHS):
            return True
        headers = dict(scope.get("headers") or [])
        if key_accepted(self.keys, headers.get(b"authorization", b"")):
            return True
        return key_accepted(self.keys, b"Bearer " + headers.get(b"x-api-key", b""))  # Anthropic's clients

    def _count(self, status: int) -> None:
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self.responses.labels(str(status))
        child.inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not tracing.enabled():
            await self._guarded(scope, receive, send)
            return
        route = str(scope.get("path", ""))
        with tracing.span(f"{scope.get('method')} {route}", route=route) as span:
            status = await self._guarded(scope, receive, send)
            span.set_attribute("http.response.status_code", status)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> int:
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
                return 401
            limit = self.max_upload if str(scope.get("path", "")).startswith(UPLOAD_PATHS) else self.max_body
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                status[0] = 413
                await _reject(scope, send, 413, f"request body is larger than {limit} bytes", [])
                return 413
            seen = [0]

            async def receive_limited() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        raise BodyTooLarge(f"request body is larger than {limit} bytes")
                return message

            await self.app(scope, receive_limited, send_logged)
        except Exception:
            status[0] = status[0] or 500  # Starlette's outermost middleware answers it with a 500
            raise
        finally:
            if status[0]:
                self._count(status[0])
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
        return status[0]
