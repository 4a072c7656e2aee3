"""The HTTP API (FastAPI) over a :class:`~serving.service.ClassifierService`; Ray Serve mounts it as the ingress.

Errors a client sees are one readable line in ``detail``: 4xx for a bad request
(422 names each bad field, 401 a missing/wrong API key, 404 an unknown request id, 413 a body over
``serve.max_body_bytes``, 400 a Host header not in ``serve.allowed_hosts``), 429 + ``Retry-After`` when the queue
is full or a caller sends feedback faster than ``serve.feedback_rate_per_minute``, 503 while no model is loaded.

Every route but ``serve.open_paths`` (``/healthz``) needs the API key when one is set (:mod:`serving.security`):
``/predict``, ``/feedback``, ``/readyz``, ``/metrics``, ``/docs``, ``/openapi.json`` and ``/v1``. The checks run as
ASGI middleware before any route, in this order: trusted host, API key, body cap, feedback rate limit.
"""

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.middleware.trustedhost import TrustedHostMiddleware

from serving.batching import QueueFull
from serving.log_writer import LogUnavailable
from serving.schemas import (
    FeedbackResponse,
    Health,
    PredictResponse,
    feedback_request_model,
    predict_request_model,
    readable_errors,
)
from serving.security import API_KEY_ENV, API_KEY_HEADER, ApiKeyGuard, BodyLimit, RateLimiter, redact, send_json
from serving.service import BadFeedback, ClassifierService, NotReady, UnknownRequest

__all__ = ["API_KEY_ENV", "API_KEY_HEADER", "build_app"]

log = logging.getLogger(__name__)
ROUTES = ("/predict", "/feedback", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def endpoint_label(path: str) -> str:
    """A bounded metrics label for a path (unknown paths share one, so a scanner cannot blow up the registry)."""
    if path in ROUTES:
        return path
    return "/v1" if path == "/v1" or path.startswith("/v1/") else "other"


class FeedbackRateLimit:
    """ASGI: ``POST /feedback`` (classifier and generative) through :class:`~serving.security.RateLimiter`."""

    def __init__(self, app, limiter: RateLimiter, on_reject=None) -> None:  # noqa: ANN001
        self.app, self.limiter, self.on_reject = app, limiter, on_reject

    async def __call__(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http" and scope["path"] == "/feedback" and scope["method"] == "POST":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            wait = self.limiter.acquire(RateLimiter.caller(headers, scope.get("client")))
            if wait > 0:
                if self.on_reject is not None:
                    self.on_reject(scope["path"])
                retry = RateLimiter.retry_after(wait)
                detail = f"too much feedback from this caller; retry in {retry} s"
                await send_json(send, 429, {"detail": detail}, {"Retry-After": retry})
                return
        await self.app(scope, receive, send)


def build_app(service: ClassifierService, manage_lifecycle: bool = True) -> FastAPI:
    """The FastAPI app; with ``manage_lifecycle`` its lifespan starts and stops the service.

    The API key is ``service.cfg.api_key`` as the app builder resolved it (:func:`serving.app.build_settings`);
    this function never reads the environment, so every replica serves the key its deployment was given."""
    cfg, metrics = service.cfg, service.metrics
    api_key = cfg.api_key or None
    PredictRequest = predict_request_model(cfg.max_texts_per_request, cfg.max_text_chars)
    FeedbackRequest = feedback_request_model(cfg.max_texts_per_request)  # item < max_texts_per_request: 422 here

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await service.stop()

    app = FastAPI(
        title="ticketops classifier",
        version="1",
        lifespan=lifespan,
        description="Serves the registry champion with continuous batching. Every prediction is logged. "
        f"Every route but {', '.join(cfg.open_paths)} needs the API key when the server has one "
        f"({API_KEY_HEADER} header or Authorization: Bearer).",
    )
    # documents the header in /docs; the check itself is ApiKeyGuard, for every route at once
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when an API key is set")

    def rejected(code: int, reason: str):  # noqa: ANN202
        def count(path: str) -> None:
            metrics.requests.labels(endpoint=endpoint_label(path), code=str(code)).inc()
            metrics.errors.labels(endpoint=endpoint_label(path), reason=reason).inc()

        return count

    # add_middleware puts each one outside the ones before it: the request meets them bottom-up
    limiter = RateLimiter(cfg.feedback_rate_per_minute, cfg.feedback_burst)
    app.add_middleware(FeedbackRateLimit, limiter=limiter, on_reject=rejected(429, "rate_limited"))
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes, on_reject=rejected(413, "body_too_large"))
    app.add_middleware(ApiKeyGuard, api_key=api_key, open_paths=cfg.open_paths, on_reject=rejected(401, "unauthorised"))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(cfg.allowed_hosts))
    app.state.api_key_guarded = True  # serving.llm.openai_api.attach: the key is checked here already
    # async () -> problem | None, each a part of /readyz beside the classifier's (attach adds the LM's)
    app.state.readiness_checks = []

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        endpoint = endpoint_label(request.url.path)
        metrics.requests.labels(endpoint=endpoint, code="422").inc()
        metrics.errors.labels(endpoint=endpoint, reason="invalid_request").inc()
        return _error(422, f"invalid request: {readable_errors(list(exc.errors()))}")

    def secret_free(text: str) -> str:
        return redact(text, getattr(service.source, "uri", None))

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={
            401: {"description": "missing or wrong API key"},
            413: {"description": "request body too large"},
            422: {"description": "invalid request"},
            429: {"description": "queue full; retry"},
            503: {"description": "no model loaded yet, or the prediction log cannot be written"},
        },
    )
    async def predict(body: PredictRequest, _key: str | None = Security(key_header)) -> PredictResponse | JSONResponse:  # type: ignore[valid-type]
        start = time.perf_counter()
        retry = {"Retry-After": str(cfg.retry_after_s)}
        try:
            resp = await service.predict(body.texts, body.top_k)  # type: ignore[attr-defined]
            code = 200
        except QueueFull as err:
            code, resp = 429, _error(429, f"overloaded: {err}; retry later", retry)
        except NotReady as err:
            code, resp = 503, _error(503, f"not ready: {secret_free(str(err))}", retry)
        except LogUnavailable as err:
            code, resp = 503, _error(503, f"not recorded: {secret_free(str(err))}", retry)
        except Exception as err:  # noqa: BLE001 - a model failure is a 500 with a message, not a crash
            log.exception("prediction failed for %d text(s)", len(body.texts))  # type: ignore[attr-defined]
            code, resp = 500, _error(500, f"prediction failed: {type(err).__name__}: {secret_free(str(err))}")
        metrics.requests.labels(endpoint="/predict", code=str(code)).inc()
        if code != 200:
            metrics.errors.labels(
                endpoint="/predict", reason={429: "overloaded", 503: "not_ready"}.get(code, "model")
            ).inc()
        metrics.latency.labels(endpoint="/predict").observe(time.perf_counter() - start)
        return resp

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses={
            401: {"description": "missing or wrong API key"},
            404: {"description": "unknown request id"},
            422: {"description": "invalid feedback"},
            429: {"description": "too much feedback from this caller"},
            503: {"description": "no model loaded yet, or the prediction log cannot be written"},
        },
    )
    async def feedback(
        body: FeedbackRequest,  # type: ignore[valid-type]
        _key: str | None = Security(key_header),
    ) -> FeedbackResponse | JSONResponse:
        reason = None
        try:
            resp, code = service.feedback(body), 200
        except UnknownRequest as err:
            resp, code, reason = _error(404, str(err)), 404, "unknown_request"
        except BadFeedback as err:
            resp, code, reason = _error(422, str(err)), 422, "invalid"
        except (NotReady, LogUnavailable) as err:
            detail = secret_free(str(err))
            resp, code, reason = _error(503, detail, {"Retry-After": str(cfg.retry_after_s)}), 503, "not_ready"
        metrics.requests.labels(endpoint="/feedback", code=str(code)).inc()
        if reason:
            metrics.errors.labels(endpoint="/feedback", reason=reason).inc()
        return resp

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", pid=os.getpid())

    @app.get(
        "/readyz",
        response_model=Health,
        responses={
            503: {
                "description": "loading, failed, or degraded (a failed swap or an unwritable log, the classifier's "
                "or the generative model's): detail"
            }
        },
    )
    async def readyz(_key: str | None = Security(key_header)) -> Health | JSONResponse:
        code, health = service.readiness()
        others = []
        for check in app.state.readiness_checks:  # the generative model's log and champion (serving.llm)
            try:
                others.append(await check())
            except Exception as err:  # noqa: BLE001 - a check that breaks is a reason, never a 500
                others.append(f"a readiness check failed: {type(err).__name__}: {err}")
        others = [o for o in others if o]
        if others:
            health.detail = "; ".join([health.detail, *others] if health.detail else others)
            if code == 200:
                code, health.status = 503, "degraded"
        health.detail = secret_free(health.detail) if health.detail else health.detail
        return health if code == 200 else JSONResponse(health.model_dump(), status_code=code)

    @app.get("/metrics", response_class=Response)
    async def prometheus(_key: str | None = Security(key_header)) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
