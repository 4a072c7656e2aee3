"""Who may call the HTTP API and how much: the API key, trusted hosts, the body cap, the feedback rate limit.

One key check (:func:`key_problem`) serves every route of the application: the classifier's, ``/metrics``,
``/readyz``, ``/docs``, ``/openapi.json``, the OpenAI-compatible ``/v1`` and ``/feedback``; only
``serve.open_paths`` (``/healthz`` by default) answer without it. The key comes in ``X-API-Key`` or
``Authorization: Bearer``; it is compared as UTF-8 bytes in constant time, so any header (a non-ASCII one too) is
a 401, never a 500.

The key is resolved once, by the application builder (:func:`resolve_api_key`: ``TICKETOPS_API_KEY``, else the file
``serve.api_key_file``, else ``serve.api_key``) and handed to every replica in its deployment config: a replica never
reads the environment, so ``serve deploy`` (where the replica's environment is the cluster's, not the shell's) serves
the same key as ``make serve``. :func:`check_bind` refuses a non-loopback bind address without a key. The key of
the prediction log's text hashes is resolved the same way (:func:`resolve_hash_key`), so every replica, the
classifier's and the generative model's, hashes a text to the same value.

The middlewares are plain ASGI (no body parsing): :class:`BodyLimit` answers 413 on a ``Content-Length`` over
``serve.max_body_bytes`` before anything reads the body, and stops a body without one (chunked) as soon as the bytes
received pass the cap; :class:`ApiKeyGuard` answers 401 before any route runs.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException

API_KEY_ENV = "TICKETOPS_API_KEY"
API_KEY_HEADER = "X-API-Key"
OPENAI_PREFIX = "/v1"


# --------------------------------------------------------------------------- the key
def resolve_api_key(api_key: str | None, api_key_file: str | None, environ: Any, project_dir: Path) -> str | None:
    """The serving key: ``environ[TICKETOPS_API_KEY]``, else the first line of ``api_key_file`` (relative to
    ``project_dir``), else ``api_key``; None when none is set. A named file that cannot be read is an error."""
    key = (environ.get(API_KEY_ENV) or "").strip()
    if key:
        return key
    if api_key_file:
        return _secret_file("serve.api_key_file", api_key_file, project_dir)
    return api_key or None


def resolve_hash_key(
    hash_key: str | None, hash_key_file: str | None, env: str, environ: Any, project_dir: Path
) -> str | None:
    """The key of the prediction log's text hashes (HMAC-SHA256), resolved like :func:`resolve_api_key`:
    ``environ[env]`` (``serve.hash_key_env``), else the first line of ``hash_key_file`` (relative to
    ``project_dir``), else ``hash_key``; None when none is set. A named file that cannot be read, or a key shorter
    than :data:`serving.prediction_log.MIN_HASH_KEY_CHARS`, is a :class:`~pipelines.errors.ConfigError`."""
    from pipelines.errors import ConfigError
    from serving.prediction_log import MIN_HASH_KEY_CHARS

    key, where = (environ.get(env) or "").strip(), f"the environment variable {env} (serve.hash_key_env)"
    if not key and hash_key_file:
        key, where = _secret_file("serve.hash_key_file", hash_key_file, project_dir), "serve.hash_key_file"
    if not key and hash_key:
        key, where = hash_key.strip(), "serve.hash_key"
    if not key:
        return None
    if len(key) < MIN_HASH_KEY_CHARS:
        raise ConfigError(f"{where}: the hash key has {len(key)} characters; give at least {MIN_HASH_KEY_CHARS}")
    return key


def _secret_file(field: str, name: str, project_dir: Path) -> str:
    """The first line of the file ``name`` (relative to ``project_dir``); a ConfigError naming ``field`` when it
    cannot be read or is empty."""
    from pipelines.errors import ConfigError

    path = Path(name)
    path = path if path.is_absolute() else project_dir / path
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{field}: cannot read {path}: {type(err).__name__}") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"{field}: {path} is empty")
    return lines[0].strip()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """A :class:`~pipelines.errors.ConfigError` when ``host`` is not loopback and there is no key."""
    from pipelines.errors import ConfigError

    if not api_key and not is_loopback(host):
        raise ConfigError(
            f"serve.host is {host!r}, which is not a loopback address, and no API key is set: anyone who can reach "
            f"it could call every route. Set {API_KEY_ENV}, serve.api_key_file or serve.api_key, or bind 127.0.0.1"
        )


def presented_key(headers: Any) -> str | None:
    """The key a request carries: ``X-API-Key``, else ``Authorization: Bearer <key>`` (None: neither)."""
    given = headers.get(API_KEY_HEADER.lower()) or headers.get(API_KEY_HEADER)
    if not given:
        auth = headers.get("authorization") or ""
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    return given or None


def _raw(header: str) -> bytes:
    """A header's bytes as sent (ASGI servers decode headers as latin-1); a str that is not latin-1: UTF-8."""
    try:
        return header.encode("latin-1")
    except UnicodeEncodeError:
        return header.encode("utf-8", "surrogateescape")


def key_problem(api_key: str | None, headers: Any) -> str | None:
    """None when the request may pass (no key configured, or the right one given), else why not. The one check
    of every route; compares UTF-8 bytes in constant time (any header string, ASCII or not, is comparable)."""
    if not api_key:
        return None
    given = presented_key(headers)
    if given is None:
        return f"this server needs an API key ({API_KEY_HEADER} header or Authorization: Bearer)"
    if hmac.compare_digest(_raw(given), api_key.encode("utf-8")):
        return None
    return "missing or wrong API key"


# --------------------------------------------------------------------------- secrets in messages
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,30}://)[^/@\s]{1,512}@")


def redact(text: str, *uris: str | None) -> str:
    """``text`` without the given URIs (the tracking URI: it may carry credentials, and names internal hosts or
    paths), nor their location part alone (``/path/mlflow.db`` of ``sqlite:////path/mlflow.db``), nor any
    ``user:password@`` of a URL."""
    for uri in uris:
        if uri:
            text = text.replace(uri, "<tracking URI>")
            location = uri.split("://", 1)[1] if "://" in uri else ""
            for part in (location, location[1:] if location.startswith("/") else ""):  # sqlite:///<path>
                if len(part) > 3:
                    text = text.replace(part, "<tracking URI>")
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


# --------------------------------------------------------------------------- ASGI helpers
def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def send_json(send: Callable, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


def error_body(path: str, status: int, message: str, code: str | None = None) -> dict:
    """``{"detail": ...}``, or OpenAI's error object under ``/v1``."""
    if path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/"):
        kind = {401: "authentication_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(status)
        return {"error": {"message": message, "type": kind or "invalid_request_error", "param": None, "code": code}}
    return {"detail": message}


class ApiKeyGuard:
    """401 for every HTTP request without the key, except ``open_paths``. ``on_reject(path)`` counts them."""

    def __init__(
        self,
        app: Any,
        api_key: str | None,
        open_paths: Iterable[str] = ("/healthz",),
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.app, self.api_key, self.open_paths, self.on_reject = app, api_key, frozenset(open_paths), on_reject

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or not self.api_key or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        why = key_problem(self.api_key, _headers(scope))
        if why is None:
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject(scope["path"])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = error_body(scope["path"], 401, why, "invalid_api_key")
        await send_json(send, 401, body, {"WWW-Authenticate": "Bearer"})


class BodyTooLarge(HTTPException):
    """The request body passed ``serve.max_body_bytes`` while it was being read (413)."""


class BodyLimit:
    """413 for a body over ``max_bytes``: by ``Content-Length`` before it is read, else by the bytes received."""

    def __init__(self, app: Any, max_bytes: int, on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    def _message(self) -> str:
        return f"request body too large: this server takes at most {self.max_bytes} bytes"

    async def _refuse(self, scope: dict, send: Callable, count: bool = True) -> None:
        if count and self.on_reject is not None:
            self.on_reject(scope["path"])
        await send_json(send, 413, error_body(scope["path"], 413, self._message(), "body_too_large"))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _headers(scope).get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await send_json(send, 400, error_body(scope["path"], 400, "invalid Content-Length header"))
                return
            if int(length) > self.max_bytes:
                await self._refuse(scope, send)
                return
        received, started = 0, False

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if self.on_reject is not None:  # counted here: the app may answer the 413 itself
                        self.on_reject(scope["path"])
                    raise BodyTooLarge(413, self._message())
            return message

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watch)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, send, count=False)


# --------------------------------------------------------------------------- rate limit
class RateLimiter:
    """A token bucket per caller: ``per_minute`` requests a minute, bursts of ``burst``; 0 turns it off.

    Callers are told apart by a hash of their API key (the client address when no key is configured); at most
    ``max_callers`` buckets are kept (the least recently seen are forgotten)."""

    def __init__(
        self, per_minute: int, burst: int, max_callers: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.max_callers, self.clock = per_minute / 60.0, max(burst, 1), max_callers, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @staticmethod
    def caller(headers: Any, client: Any) -> str:
        key = presented_key(headers)
        if key:
            return "key:" + hashlib.sha256(_raw(key)).hexdigest()
        host = client[0] if client else "unknown"
        return f"addr:{host}"

    def acquire(self, caller: str) -> float:
        """0 when the request may go, else the seconds until it may retry."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self._buckets.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[caller] = (tokens, now)
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
