"""HTTP basics every service shares: the app factory, problem details, health, readiness, metrics.

Errors are RFC 9457 problem details (``application/problem+json``) with a stable ``type``;
nothing internal (stack traces, class or collection names) leaves the process. Every request
gets a correlation id (``X-Correlation-ID`` in, and back out), which the logs and the Kafka
headers carry on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import bind_correlation_id, get_logger

log = get_logger(__name__)

PROBLEM_BASE = "https://fleetdesk.dev/problems/"
PROBLEM_JSON = "application/problem+json"
CORRELATION_HEADER = "X-Correlation-ID"

REQUESTS = Counter(
    "fleetdesk_http_requests_total", "HTTP requests by route and status.", ["route", "status"]
)
LATENCY = Histogram("fleetdesk_http_request_seconds", "HTTP request latency by route.", ["route"])

_TITLES = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    422: "validation-error",
    429: "too-many-requests",
}


class Problem(Exception):
    """Raise to answer with problem details: ``slug`` becomes the stable ``type``."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(
            exc.status,
            exc.slug,
            exc.title,
            exc.detail,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = _TITLES.get(exc.status_code, "http-error")
        title = "The request body is too large" if exc.status_code == 413 else None
        return problem_response(
            exc.status_code,
            slug,
            title or slug.replace("-", " ").capitalize(),
            str(exc.detail) if exc.detail else None,
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                "reason": e["msg"],
            }
            for e in exc.errors()
        ]
        return problem_response(
            422,
            "validation-error",
            "The request is not valid",
            "; ".join(f"{e['field']}: {e['reason']}" for e in errors),
            instance=request.url.path,
            errors=errors,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", path=request.url.path, error=repr(exc))
        return problem_response(
            500, "internal-error", "Something went wrong on our side", instance=request.url.path
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"at most {limit} bytes are accepted")


class BodyLimit:
    """Refuse request bodies larger than ``max_bytes`` by the bytes actually received.

    ``Content-Length`` alone is not enough: a chunked request has none. The body is counted as
    it is read; the read that goes over the limit raises :class:`BodyTooLarge`, which the
    problem handlers answer with 413 (and which is answered here if nothing else did).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "payload-too-large",
            "The request body is too large",
            f"at most {self.max_bytes} bytes are accepted",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)


ReadinessCheck = Callable[[], Awaitable[bool]]


def create_app(
    *,
    service: str,
    prefix: str,
    routers: Sequence[APIRouter],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    max_body_bytes: int = 64 * 1024,
) -> FastAPI:
    """A FastAPI app with the shared middleware and operational endpoints; docs under ``prefix``.

    Routers carry their full paths (each under the service's prefix).

    The lifespan must put a mapping of readiness checks at ``app.state.readiness``.
    """
    app = FastAPI(
        title=f"Fleetdesk {service}",
        lifespan=lifespan,
        docs_url=f"{prefix}/docs",
        openapi_url=f"{prefix}/openapi.json",
        redoc_url=None,
    )
    _install_problem_handlers(app)
    # Added first, so it runs inside the correlation middleware (whose headers a 413 gets).
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.middleware("http")
    async def correlation_and_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        cid = bind_correlation_id(request.headers.get(CORRELATION_HEADER))
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        LATENCY.labels(path).observe(time.perf_counter() - started)
        REQUESTS.labels(path, str(response.status_code)).inc()
        response.headers[CORRELATION_HEADER] = cid
        return response

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/ready", tags=["operations"])
    async def ready(request: Request) -> Response:
        checks: dict[str, ReadinessCheck] = getattr(request.app.state, "readiness", {})
        results = {name: await check() for name, check in checks.items()}
        ok = bool(results) and all(results.values())
        body = {"status": "ready" if ok else "not-ready", "checks": results}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app
