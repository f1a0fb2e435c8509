"""`create_app(settings)`: the FastAPI service around one `Memory`.

Domain errors become HTTP statuses in exactly one place (`_STATUS`), so routes
never raise HTTP errors themselves. Two small ASGI middlewares wrap every
request: one refuses bodies over the size limit (413) before they are read into
memory, the other times the request for `/metrics` and writes one structured
log line.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..chat import Chat
from ..errors import (
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    ProviderError,
    RetainError,
    StoreError,
)
from ..keys import Keys
from ..llm.base import LLM
from ..memory import Memory
from ..settings import Settings
from .metrics import MeteredLLM, Metrics
from .routes import router
from .security import Authenticator, Forbidden, RateLimited, Unauthorized

logger = logging.getLogger("retain.http")
STATIC = Path(__file__).parent / "static"

#: Domain error -> (HTTP status, error type). The first matching class wins, so subclasses come first.
_STATUS: list[tuple[type[Exception], int, str]] = [
    (ConflictError, 409, "conflict"),
    (InvalidInputError, 422, "invalid_input"),
    (NotFoundError, 404, "not_found"),
    (ProviderError, 502, "provider_error"),
    (ConfigError, 503, "not_configured"),
    (StoreError, 503, "store_unavailable"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (RateLimited, 429, "rate_limited"),
]


def create_app(
    settings: Settings | None = None,
    *,
    memory: Memory | None = None,
    chat_llm: LLM | None = None,
    auth: bool = True,
) -> FastAPI:
    """The service. Pass `memory` to serve an existing one (tests do); otherwise it is built from `settings`.

    Chat uses the memory's LLM unless `chat_llm` names another (say, a larger model for replies).
    """
    settings = settings or (memory.settings if memory is not None else Settings.from_env())
    owned = memory is None
    memory = memory or Memory.from_config(settings)
    metrics = Metrics(memory.store)
    if memory.llm is not None and not isinstance(memory.llm, MeteredLLM):
        memory.llm = MeteredLLM(memory.llm, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.chat.close()
        if owned:
            app.state.memory.close()

    app = FastAPI(
        title="Retain",
        version="0.1.0",
        summary="Long-term memory for LLM applications.",
        lifespan=lifespan,
        docs_url=None,  # served below from the swagger-ui-bundle-v2 package: /docs works offline, with no CDN
        redoc_url=None,
    )
    app.state.memory = memory
    app.state.chat = Chat(memory, MeteredLLM(chat_llm, metrics) if chat_llm is not None else None)
    app.state.metrics = metrics
    app.state.auth = Authenticator(Keys(memory.store), enabled=auth, rate_per_minute=settings.rate_limit_per_minute)
    app.include_router(router)
    _install_error_handlers(app)
    _install_service_routes(app, metrics)
    app.add_middleware(_Observe, metrics=metrics)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_request_bytes)
    return app


def _error(status: int, type_: str, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _install_error_handlers(app: FastAPI) -> None:
    async def domain_error(request: Request, exc: Exception) -> Response:
        for cls, status, type_ in _STATUS:
            if isinstance(exc, cls):
                headers: dict[str, str] = {}
                if isinstance(exc, RateLimited):
                    headers["Retry-After"] = str(max(1, round(exc.retry_after)))
                if isinstance(exc, Unauthorized):
                    headers["WWW-Authenticate"] = "Bearer"
                return _error(status, type_, str(exc), getattr(exc, "field", None), **headers)
        raise exc

    for cls, _, _ in _STATUS:
        app.add_exception_handler(cls, domain_error)
    app.add_exception_handler(RetainError, domain_error)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "malformed_body", "The request body is not valid JSON.")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5])
        return _error(422, "invalid_input", message, where)

    app.add_exception_handler(RequestValidationError, validation_error)


def _install_service_routes(app: FastAPI, metrics: Metrics) -> None:
    @app.get("/healthz", tags=["service"])
    def healthz() -> Response:
        """200 when the store answers; 503 otherwise."""
        try:
            app.state.memory.store.job_counts()
        except Exception as exc:  # any failure to reach the store means unhealthy
            return _error(503, "store_unavailable", f"The store is not answering: {exc}")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Retain API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


class _BodyLimit:
    """413 for a body over `max_bytes`, by its Content-Length or, when streamed, as soon as it grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(
            413, "too_large", f"The request body is over {self.max_bytes} bytes (RETAIN_MAX_REQUEST_BYTES)."
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        seen = 0
        exceeded = False

        async def counted_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                exceeded = True  # stop reading; whatever the app answers is replaced by the 413
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await too_large(scope, receive, send)


class _Observe:
    """Times each request into the latency histogram and logs it as one JSON line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched"
            )
            self.metrics.requests.labels(scope["method"], route, str(status)).observe(elapsed)
            logger.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                        "tenant": scope["state"].get("tenant_id"),
                    }
                )
            )
