"""The OpenAI-compatible HTTP API (FastAPI) over an :class:`LLMBackend`; mounted at ``/v1`` by :func:`attach`.

``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream`` as server-sent events in OpenAI's chunk format
ending with ``data: [DONE]``), ``GET /v1/models``. Every error is OpenAI's body
``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (malformed JSON, unknown role, empty
messages, ``n`` > 1, ``max_tokens`` beyond the context, a schema that is not JSON Schema), 401 for a missing or
wrong key (``X-API-Key`` or ``Authorization: Bearer``, the serve API key), 404 for an unknown model, 429 +
``Retry-After`` when the engine's queue is full, 503 while no generative model is served. A client that goes
away mid-stream closes the backend stream, which aborts the generation and frees its slot. The key check is
:func:`serving.security.key_problem`, the same one the classifier's app runs for every route (there, as ASGI
middleware in front of ``/v1`` too; here again per route, so the sub-application is never open on its own).

The backend is the :class:`~serving.llm.service.LLMService` itself (tests, one process) or, under Ray Serve, a
deployment handle (serving/app.py); both speak the service's plain-dict events. :func:`attach` also routes
``POST /feedback`` bodies whose ``request_id`` is a generative one (``chatcmpl-``/``cmpl-``) to the backend and
appends the LM replica's metrics to ``GET /metrics``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.middleware import Middleware

from serving.llm.openai_schemas import ChatCompletionRequest, CompletionRequest, openai_error
from serving.llm.service import new_request_id
from serving.schemas import readable_errors
from serving.security import API_KEY_HEADER, key_problem

__all__ = ["API_KEY_HEADER", "attach", "build_openai_app", "key_ok"]
GENERATIVE_PREFIXES = ("chatcmpl-", "cmpl-")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class LLMBackend(Protocol):
    def stream(self, call: dict) -> AsyncIterator[dict]: ...
    async def models(self) -> dict: ...
    async def feedback(self, body: dict) -> dict: ...
    async def metrics(self) -> bytes: ...
    async def health(self) -> str | None: ...


class LocalBackend:
    """The service in this process."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def stream(self, call: dict) -> AsyncIterator[dict]:
        return self.service.generate(call)

    async def models(self) -> dict:
        return self.service.models()

    async def feedback(self, body: dict) -> dict:
        return self.service.feedback(body)

    async def metrics(self) -> bytes:
        return self.service.metrics.render()

    async def health(self) -> str | None:
        """Why the generative side is degraded (:meth:`~serving.llm.service.LLMService.problem`), or None."""
        return self.service.problem()


class UnavailableBackend:
    """No generative model in this application (``llm.enabled`` or ``serve_llm.enabled`` is false)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _event(self) -> dict:
        return {"type": "error", "status": 503, "message": self.reason, "err_type": "service_unavailable",
                "param": None, "code": "llm_disabled", "retry_after": None}  # fmt: skip

    async def stream(self, call: dict) -> AsyncIterator[dict]:
        yield self._event()

    async def models(self) -> dict:
        return self._event()

    async def feedback(self, body: dict) -> dict:
        return self._event()

    async def metrics(self) -> bytes:
        return b""

    async def health(self) -> str | None:
        return None  # not served on purpose: nothing is degraded


def error_response(ev: dict) -> JSONResponse:
    """A backend ``error`` event as an HTTP response (status, OpenAI body, Retry-After)."""
    status = int(ev.get("status", 500))
    headers = {"Retry-After": str(ev["retry_after"])} if ev.get("retry_after") else None
    type_ = ev.get("err_type") or ERROR_TYPES.get(status, "server_error")
    return JSONResponse(
        openai_error(ev.get("message", "error"), type_, ev.get("param"), ev.get("code")), status, headers=headers
    )


class _AuthError(Exception):
    pass


def key_ok(api_key: str | None, headers: Any) -> str | None:
    """None when the request may pass, else why not (:func:`serving.security.key_problem`, the one check)."""
    return key_problem(api_key, headers)


def build_openai_app(backend: LLMBackend, api_key: str | None = None, http_metrics: Any = None) -> FastAPI:
    """The ``/v1`` sub-application. ``http_metrics``: a :class:`~serving.telemetry.ServiceMetrics` to count
    requests and errors in (the ingress's own registry)."""
    app = FastAPI(title="ticketops generative model (OpenAI-compatible)", version="1")

    def count(endpoint: str, code: int, reason: str | None = None) -> None:
        if http_metrics is not None:
            http_metrics.requests.labels(endpoint=endpoint, code=str(code)).inc()
            if code >= 400:
                http_metrics.errors.labels(endpoint=endpoint, reason=reason or str(code)).inc()

    def fail(request: Request, status: int, message: str, param: str | None = None, code: str | None = None):
        count(f"/v1{request.url.path}", status, code or ERROR_TYPES.get(status))
        return JSONResponse(openai_error(message, ERROR_TYPES.get(status, "server_error"), param, code), status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"] if first.get("type") != "json_invalid" else []
        return fail(request, 400, f"invalid request: {readable_errors(errors)}", ".".join(loc) or None)

    @app.exception_handler(_AuthError)
    async def _unauthorised(request: Request, exc: _AuthError) -> JSONResponse:
        return fail(request, 401, str(exc), code="invalid_api_key")

    def check_key(request: Request) -> None:
        why = key_ok(api_key, request.headers)
        if why:
            raise _AuthError(why)

    async def run(endpoint: str, body: Any, request: Request) -> Response:
        check_key(request)
        path = f"/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}"
        call = {"endpoint": endpoint, "request_id": new_request_id(endpoint), "body": body.model_dump(by_alias=True)}
        created = int(time.time())
        events = backend.stream(call)
        try:
            first = await anext(events)
        except Exception as err:  # noqa: BLE001 - the backend is unreachable: 503, the server keeps serving
            await events.aclose()
            count(path, 503, "backend")
            return error_response({"status": 503, "message": f"the generative model is unavailable: {err}"})
        if first.get("type") == "error":
            await events.aclose()
            count(path, int(first["status"]), first.get("code"))
            return error_response(first)
        count(path, 200)
        fmt = _Formatter(endpoint, first, created)
        if body.stream:
            return StreamingResponse(
                _sse(fmt, events, body.include_usage, body.continuous_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            texts, last = [], None
            async for ev in events:
                if ev.get("type") == "error":
                    return error_response(ev)
                texts.append(ev["text"])
                last = ev
        finally:
            await events.aclose()
        return JSONResponse(fmt.whole("".join(texts), last))

    @app.post("/chat/completions", responses={400: {}, 401: {}, 404: {}, 429: {}, 503: {}})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await run("chat", body, request)

    @app.post("/completions", responses={400: {}, 401: {}, 404: {}, 429: {}, 503: {}})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await run("completion", body, request)

    @app.get("/models")
    async def models(request: Request) -> Response:
        check_key(request)
        try:
            out = await backend.models()
        except Exception as err:  # noqa: BLE001
            out = {"type": "error", "status": 503, "message": f"the generative model is unavailable: {err}"}
        if out.get("type") == "error":
            count("/v1/models", int(out["status"]), out.get("code"))
            return error_response(out)
        count("/v1/models", 200)
        return JSONResponse(out)

    return app


class _Formatter:
    """OpenAI bodies for one request: the whole answer, or its stream chunks."""

    def __init__(self, endpoint: str, start: dict, created: int) -> None:
        self.chat = endpoint == "chat"
        self.id, self.model, self.created = start["id"], start["model"], created
        self.prompt_tokens = start.get("prompt_tokens", 0)

    def usage(self, ev: dict | None) -> dict:
        p = (ev or {}).get("prompt_tokens", self.prompt_tokens)
        c = (ev or {}).get("completion_tokens", 0)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None}

    def whole(self, text: str, last: dict | None) -> dict:
        finish = (last or {}).get("finish_reason") or "stop"
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": None}  # fmt: skip
            return {**self._head("chat.completion"), "choices": [choice], "usage": self.usage(last)}
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice], "usage": self.usage(last)}

    def chunk(self, text: str | None, finish: str | None, role: bool = False, usage: dict | None = None) -> dict:
        """One stream chunk; ``usage`` (stream_options.continuous_usage_stats): the counts so far."""
        extra = {} if usage is None else {"usage": usage}
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {**self._head("chat.completion.chunk"), "choices": [choice], **extra}
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice], **extra}

    def usage_chunk(self, last: dict | None) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": self.usage(last)}


def _data(obj: Any) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _sse(
    fmt: _Formatter, events: AsyncIterator[dict], include_usage: bool, continuous_usage: bool = False
) -> AsyncIterator[bytes]:
    """The stream: a role chunk (chat), a chunk per delta, the finish chunk, usage if asked, ``[DONE]``; with
    ``continuous_usage`` every delta chunk carries the usage so far. A delta holds the tokens the engine produced
    since the last one the server sent (one, unless the server fell behind). A client that disconnects cancels
    this generator; ``finally`` closes the backend stream (abort)."""
    last = None
    try:
        if fmt.chat:
            yield _data(fmt.chunk(None, None, role=True))
        async for ev in events:
            if ev.get("type") == "error":  # after the first token: end the stream cleanly with the error
                yield _data(openai_error(ev.get("message", "error"), ev.get("err_type") or "server_error"))
                break
            last = ev
            if ev["text"] or ev["finish_reason"]:
                yield _data(
                    fmt.chunk(ev["text"], ev["finish_reason"], usage=fmt.usage(ev) if continuous_usage else None)
                )
        if include_usage:
            yield _data(fmt.usage_chunk(last))
    except Exception as err:  # noqa: BLE001 - the backend failed mid-stream: end the stream cleanly, say why
        yield _data(openai_error(f"the generation failed: {type(err).__name__}: {err}", "server_error"))
    finally:
        await events.aclose()
    yield _data("[DONE]")


class GenerativeFeedback:
    """ASGI middleware: ``POST /feedback`` with a generative request id goes to the LM backend; every other request
    (the classifier's feedback included) passes through untouched (its body replayed)."""

    def __init__(self, app: Any, backend_of: Callable[[], LLMBackend], api_key: str | None) -> None:
        self.app, self.backend_of, self.api_key = app, backend_of, api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != "/feedback" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and str(data.get("request_id", "")).startswith(GENERATIVE_PREFIXES):
            response = await self._generative(scope, data)
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _generative(self, scope: dict, data: dict) -> JSONResponse:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        why = key_ok(self.api_key, headers)
        if why:
            return JSONResponse({"detail": why}, 401)
        try:
            out = await self.backend_of().feedback(data)
        except Exception as err:  # noqa: BLE001
            return JSONResponse({"detail": f"the generative model is unavailable: {err}"}, 503)
        if out.get("type") == "error":
            return JSONResponse({"detail": out["message"]}, int(out["status"]))
        return JSONResponse(out)


def attach(
    app: FastAPI,
    backend: LLMBackend,
    api_key: str | None = None,
    http_metrics: Any = None,
    own_metrics: Callable[[], bytes] | None = None,
) -> FastAPI:
    """Mount ``/v1`` on ``app`` (the classifier's), route generative ``/feedback``, append the LM's metrics to
    ``GET /metrics`` (``own_metrics``: the app's own exposition) and add the backend's health to the app's
    ``/readyz`` (``app.state.readiness_checks``, which :func:`serving.api.build_app` reads)."""
    app.mount("/v1", build_openai_app(backend, api_key, http_metrics))
    checks = getattr(app.state, "readiness_checks", None)
    if isinstance(checks, list):
        checks.append(backend.health)
    # innermost: behind the app's own host, key, body-size and rate checks (serving.api), never in front of them
    app.user_middleware.append(Middleware(GenerativeFeedback, backend_of=lambda: backend, api_key=api_key))
    if own_metrics is not None:

        async def metrics() -> Response:
            try:
                extra = await backend.metrics()
            except Exception:  # noqa: BLE001 - the classifier's metrics still answer
                extra = b""
            return Response(own_metrics() + extra, media_type="text/plain; version=0.0.4; charset=utf-8")

        app.add_api_route("/metrics", metrics, methods=["GET"], response_class=Response, include_in_schema=False)
        app.router.routes.insert(0, app.router.routes.pop())  # before the classifier's own /metrics
    return app
