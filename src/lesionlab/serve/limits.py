"""Refuse an oversized request from its Content-Length header, before a byte of the body is read.

Bodies that lie about their length or stream without one are cut off while being read by FastAPI's own
`max_body_size` on the upload routes; this middleware only adds the early, cheap refusal with a JSON answer
(FastAPI's header check answers in plain text, which the web page and API clients cannot parse).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class ContentLengthLimitMiddleware:
    """Answer 413 with a JSON `detail` when a request declares a body larger than `max_body_bytes`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, limit_text: str) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limit_text = limit_text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                detail = f"the request is {int(declared) / 1e6:.1f} MB; {self.limit_text}"
                await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)
