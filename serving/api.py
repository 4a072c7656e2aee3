"""The HTTP API (FastAPI) over a :class:`~serving.service.ClassifierService`; Ray Serve mounts it as the ingress.

Errors a client sees are one readable line in ``detail``: 4xx for a bad request
(422 names each bad field, 401 a missing/wrong API key, 404 an unknown request id),
429 + ``Retry-After`` when the queue is full, 503 while no model is loaded.
"""

import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader

from serving.batching import QueueFull
from serving.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    Health,
    PredictResponse,
    predict_request_model,
    readable_errors,
)
from serving.service import BadFeedback, ClassifierService, NotReady, UnknownRequest

log = logging.getLogger(__name__)

API_KEY_ENV = "TICKETOPS_API_KEY"
API_KEY_HEADER = "X-API-Key"


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def build_app(service: ClassifierService, manage_lifecycle: bool = True) -> FastAPI:
    """The FastAPI app; with ``manage_lifecycle`` its lifespan starts and stops the service."""
    cfg, metrics = service.cfg, service.metrics
    api_key = os.environ.get(API_KEY_ENV) or cfg.api_key
    PredictRequest = predict_request_model(cfg.max_texts_per_request, cfg.max_text_chars)

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
        description="Serves the registry champion with continuous batching. Every prediction is logged.",
    )
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when an API key is set")

    async def check_key(key: str | None = Depends(key_header)) -> None:
        if api_key and not (key and hmac.compare_digest(key, api_key)):
            raise _AuthError("missing or wrong API key" if key else f"this server needs the {API_KEY_HEADER} header")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        endpoint = request.url.path
        metrics.requests.labels(endpoint=endpoint, code="422").inc()
        metrics.errors.labels(endpoint=endpoint, reason="invalid_request").inc()
        return _error(422, f"invalid request: {readable_errors(list(exc.errors()))}")

    @app.exception_handler(_AuthError)
    async def _unauthorised(request: Request, exc: _AuthError) -> JSONResponse:
        metrics.requests.labels(endpoint=request.url.path, code="401").inc()
        metrics.errors.labels(endpoint=request.url.path, reason="unauthorised").inc()
        return _error(401, str(exc))

    @app.post(
        "/predict",
        response_model=PredictResponse,
        dependencies=[Depends(check_key)],
        responses={
            422: {"description": "invalid request"},
            429: {"description": "queue full; retry"},
            503: {"description": "no model loaded yet"},
        },
    )
    async def predict(body: PredictRequest) -> PredictResponse | JSONResponse:  # type: ignore[valid-type]
        start = time.perf_counter()
        try:
            resp = await service.predict(body.texts, body.top_k)  # type: ignore[attr-defined]
            code = 200
        except QueueFull as err:
            code, resp = 429, _error(429, f"overloaded: {err}; retry later", {"Retry-After": str(cfg.retry_after_s)})
        except NotReady as err:
            code, resp = 503, _error(503, f"not ready: {err}", {"Retry-After": str(cfg.retry_after_s)})
        except Exception as err:  # noqa: BLE001 - a model failure is a 500 with a message, not a crash
            log.exception("prediction failed for %d text(s)", len(body.texts))  # type: ignore[attr-defined]
            code, resp = 500, _error(500, f"prediction failed: {type(err).__name__}: {err}")
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
        dependencies=[Depends(check_key)],
        responses={404: {"description": "unknown request id"}, 422: {"description": "invalid feedback"}},
    )
    async def feedback(body: FeedbackRequest) -> FeedbackResponse | JSONResponse:
        try:
            resp, code = service.feedback(body), 200
        except UnknownRequest as err:
            resp, code = _error(404, str(err)), 404
        except BadFeedback as err:
            resp, code = _error(422, str(err)), 422
        metrics.requests.labels(endpoint="/feedback", code=str(code)).inc()
        if code != 200:
            metrics.errors.labels(endpoint="/feedback", reason="unknown_request" if code == 404 else "invalid").inc()
        return resp

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", pid=os.getpid())

    @app.get("/readyz", response_model=Health, responses={503: {"description": "no model loaded yet"}})
    async def readyz() -> Health | JSONResponse:
        m = service.model
        if m is None:
            return JSONResponse(Health(status="loading", detail=service.last_error).model_dump(), status_code=503)
        return Health(status="ready", model_name=m.name, model_version=m.version)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


class _AuthError(Exception):
    pass
