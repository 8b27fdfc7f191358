"""Pure ASGI middleware: request ids, JSON access logs and HTTP metrics, and request body limits.

Written as plain ASGI (not ``BaseHTTPMiddleware``) so streamed request and response bodies pass
through untouched and unbuffered.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import REQUEST_ID_HEADER, PayloadTooLargeProblem, problem_response
from api.ids import new_request_id
from api.metrics import HttpMetrics

_REQUEST_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REQUEST_ID_KEY: Final = REQUEST_ID_HEADER.lower().encode("latin-1")  # ASGI header names are lower-case
access_logger = logging.getLogger("api.access")

# Fields of a LogRecord that are not "extra" data.
_RECORD_FIELDS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, any ``extra`` fields, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Send the root logger to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _incoming_request_id(scope: Scope) -> str | None:
    """The client's ``X-Request-Id`` when it is a sane token, else None (one pass over raw headers)."""
    for name, value in scope["headers"]:
        if name == _REQUEST_ID_KEY:
            text = value.decode("latin-1")
            return text if _REQUEST_ID_RE.match(text) else None
    return None


def _route_template(scope: Scope) -> str:
    """``/v1/datasets/{dataset_id}`` rather than the concrete path (bounded label values)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Give every request an id (``X-Request-Id``, echoed on the response), log it and count it."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(elapsed)
            if access_logger.isEnabledFor(logging.INFO):  # spare building the record when it is off
                self._log(scope, state, request_id, route, status, elapsed)

    @staticmethod
    def _log(
        scope: Scope, state: dict[str, Any], request_id: str, route: str, status: int, elapsed: float
    ) -> None:
        access_logger.info(
            "%s %s %s",
            scope["method"],
            scope["path"],
            status,
            extra={
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "tenant_id": state.get("tenant_id"),
                "client": (scope.get("client") or ("", 0))[0],
            },
        )


class BodyLimitMiddleware:
    """Refuse request bodies over a limit with a 413 problem, declared (Content-Length) or streamed.

    ``limits`` maps ``(method, path)`` to a larger limit (uploads); everything else gets ``default``.
    A streamed body that crosses the limit makes ``receive`` raise ``PayloadTooLargeProblem`` inside
    the route, where the app's problem handler renders it.
    """

    def __init__(
        self, app: ASGIApp, default: int, limits: Mapping[tuple[str, str], int] | None = None
    ) -> None:
        self.app = app
        self.default = default
        self.limits = dict(limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count the streamed one."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get((scope["method"], scope["path"].rstrip("/") or "/"), self.default)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = problem_response(
                Request(scope),
                status=413,
                code="payload_too_large",
                detail=f"the request body is over the limit of {limit} bytes",
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeProblem(
                        f"the request body is over the limit of {limit} bytes", code="payload_too_large"
                    )
            return message

        await self.app(scope, counting_receive, send)
