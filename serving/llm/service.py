"""The generative serving core of one replica, without Ray or HTTP: champion, engine, hot swap, records, metrics.

:class:`LLMService` resolves the LM champion (:mod:`serving.llm.source`), loads base + adapter once and runs them
in the continuous-batching engine (iteration-level scheduling, :mod:`pipelines.llm.engine`): by default in a child
process of the replica (:class:`~pipelines.llm.engine_process.ProcessLLMEngine`, ``serve_llm.engine_process``),
else in a thread of this one (:class:`~pipelines.llm.engine.AsyncLLMEngine`). A watcher re-resolves the alias
every ``serve_llm.watch_interval_s``:

- same base, new adapter: new requests wait at a gate while the ones already admitted finish (on the version
  they started with), then the engine runs the adapter switch between two steps (``run_when_idle``): only the
  LoRA weights change, the base is never reloaded;
- another base: the new model and engine are loaded beside the old one first, then swapped the same way;
- the engine process died (killed, out of memory): its requests end with a 503, the classifier's ``/readyz``
  names it, and the next refresh loads the same version again.

Each request pins the version it was admitted under, so ``model`` in its answer (``<name>:<version>``) is the
version that produced every token. :meth:`generate` speaks plain dicts (``start`` / ``delta`` / ``error``
events) so the HTTP layer can live in another process (Ray handle) or in this one (tests).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.config import ServeConfig, ServeLlmConfig
from pipelines.data import pii
from pipelines.data.ingestion import scrub_pii
from serving.llm.metrics import LLMMetrics
from serving.llm.openai_schemas import ChatCompletionRequest, CompletionRequest, GenerativeFeedback
from serving.llm.records import (
    GENERATION_FEEDBACK,
    GENERATIONS,
    GenerationLogWriter,
    generation_feedback_row,
    generation_row,
)
from serving.llm.source import LMSource, LMVersion
from serving.schemas import readable_errors
from serving.security import redact
from serving.service import watch_champion

log = logging.getLogger(__name__)
RECENT_REQUESTS = 100_000
TRIAGE = "triage"
IN_ENGINE_PROCESS = "in the engine process"  # Served.weights when they live in the engine's child process


@dataclass
class Served:
    """The LM version being served: its engine, tokenizer, context size and (for swaps) its weights."""

    name: str
    version: str
    system_prompt: str
    tokenizer: Any
    engine: Any  # AsyncLLMEngine (or a fake with its interface)
    max_model_len: int
    weights: Any = None  # serving.llm.source.Weights, IN_ENGINE_PROCESS, or None (cannot swap adapters in place)
    base_path: str | None = None
    files: Path | None = None  # the version's downloaded files (removed when it is no longer served)

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.version}"


class ModelLoader:
    """Builds :class:`Served` from a fetched version (real weights + engine); tests replace it with fakes."""

    def __init__(self, cfg: ServeLlmConfig) -> None:
        self.cfg = cfg

    def load(self, v: LMVersion) -> Served:
        """``v``'s weights and engine: in a child process (``engine_process``; only the tokenizer is loaded here)
        or in this one."""
        from pipelines.llm.engine import AsyncLLMEngine
        from pipelines.llm.engine_process import ProcessLLMEngine
        from serving.llm.source import base_path, build_engine, engine_process_factory, load_tokenizer, load_weights

        if self.cfg.engine_process:
            engine = ProcessLLMEngine(functools.partial(engine_process_factory, v, self.cfg))
            engine.launch()  # blocking (this runs in a worker thread): the child loads the weights
            tokenizer, weights, path = load_tokenizer(v), IN_ENGINE_PROCESS, base_path(v)
        else:
            w = load_weights(v, self.cfg.precision)
            engine, tokenizer, weights, path = AsyncLLMEngine(build_engine(w, self.cfg)), w.tokenizer, w, w.base_path
        max_len = min(engine.max_model_len, engine.kv_cache_tokens)  # what the engine will admit
        return Served(v.name, v.version, v.system_prompt, tokenizer, engine, max_len, weights, path, v.local_dir)

    def adapter_switch(self, served: Served, v: LMVersion) -> Callable[[], None] | None:
        """The in-place switch to ``v``'s adapter, or None when ``v`` needs another base (a full load)."""
        from serving.llm.source import adapter_switch, base_path, switch_in_engine_process

        if served.weights is None or base_path(v) != served.base_path:
            return None
        if served.weights is IN_ENGINE_PROCESS:
            return functools.partial(switch_in_engine_process, v)
        return adapter_switch(served.weights, v)

    def set_threads(self) -> Callable[[], None]:
        """``torch_threads`` for the engine's thread (run there: OpenMP thread counts are per calling thread)."""
        from pipelines.llm.engine import set_torch_threads

        return functools.partial(set_torch_threads, self.cfg.torch_threads)


def _engine_problem(served: Served) -> str | None:
    """Why ``served``'s engine cannot serve (its process died), or None (an in-process engine: never)."""
    problem = getattr(served.engine, "problem", None)
    return problem() if problem is not None else None


class LLMError(Exception):
    """A request the service refuses: HTTP status + OpenAI error fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.retry_after: int | None = None

    def event(self) -> dict:
        return {
            "type": "error",
            "status": self.status,
            "message": self.message,
            "err_type": self.type,
            "param": self.param,
            "code": self.code,
            "retry_after": self.retry_after,
        }


def categories_from_prompt(template: str, prompt: str) -> list[str] | None:
    """The label set filled into ``template``'s ``{categories}`` (``a, b, c``) in ``prompt``, or None."""
    if "{categories}" not in template:
        return None
    head, _, tail = template.partition("{categories}")
    m = re.fullmatch(re.escape(head) + r"(?P<c>.+?)" + re.escape(tail), prompt, flags=re.S)
    return [c.strip() for c in m.group("c").split(",") if c.strip()] if m else None


def check_json_schema(schema: dict) -> None:
    """A :class:`LLMError` 400 when ``schema`` is not a valid JSON Schema (its own metaschema)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise LLMError(
            400, f"response_format.json_schema.schema is not a valid JSON Schema: {err.message}",
            param="response_format", code="invalid_json_schema",
        ) from None  # fmt: skip


class LLMService:
    def __init__(
        self,
        cfg: ServeLlmConfig,
        serve_cfg: ServeConfig,
        source: LMSource,
        *,
        system_template: str = "",
        loader: ModelLoader | None = None,
        metrics: LLMMetrics | None = None,
    ) -> None:
        self.cfg, self.serve_cfg, self.source = cfg, serve_cfg, source
        self.system_template = system_template
        self.loader = loader or ModelLoader(cfg)
        self.metrics = metrics or LLMMetrics()
        self.metrics.watch_engine(lambda: self.served.engine.stats() if self.served is not None else None)
        self.log = GenerationLogWriter.from_config(serve_cfg, self.metrics.registry)  # as the classifier's
        self.served: Served | None = None
        self.last_error: str | None = None
        self.refresh_error: str | None = None  # the last refresh failed (set by watch_champion)
        self._categories: dict[str, list[str] | None] = {}  # every version served here -> its label set
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._watcher: asyncio.Task | None = None
        self._gate = asyncio.Event()
        self._gate.set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.log.start()
        if self.cfg.log_text:  # build the PII scrubber now, before any model import or request (it takes seconds)
            await asyncio.to_thread(pii.load)
        self._watcher = asyncio.create_task(self._watch(), name="lm-champion-watcher")

    async def stop(self) -> None:
        """Stop watching, let admitted requests finish, stop the engine, write every logged row."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=30)
        except asyncio.TimeoutError:
            log.warning("stopping with %d generation(s) still running", self._inflight)
        if self.served is not None:
            await self.served.engine.stop()
            if self.served.files is not None:
                shutil.rmtree(self.served.files, ignore_errors=True)
        await self.log.close()

    async def _watch(self) -> None:
        await watch_champion(self, lambda: self.served is not None, "LM champion")

    async def refresh(self) -> bool:
        """Re-resolve the alias; switch to a new version (adapter in place, or a full load). True if it changed."""
        version = await asyncio.to_thread(self.source.resolve)
        if version is None:
            what = redact(self.source.describe(), getattr(self.source, "uri", None))  # no tracking URI in answers
            self.last_error = f"no generative champion: {what} does not exist yet"
            return False
        old = self.served
        if old is not None and old.version == version and _engine_problem(old) is None:
            return False
        v = await asyncio.to_thread(self.source.fetch, version)
        switch = self.loader.adapter_switch(old, v) if old is not None else None
        if old is not None and switch is not None:
            async with self._drained():
                await old.engine.run_when_idle(switch)
                self.served = Served(
                    v.name, v.version, v.system_prompt, old.tokenizer, old.engine, old.max_model_len,
                    old.weights, old.base_path, v.local_dir,
                )  # fmt: skip
            kind = "adapter"
        else:
            new = await asyncio.to_thread(self.loader.load, v)
            await new.engine.start()
            await new.engine.run_when_idle(self.loader.set_threads())
            async with self._drained():
                self.served = new
            if old is not None:
                await old.engine.stop()
            kind = "full"
        if old is not None and old.files is not None:
            shutil.rmtree(old.files, ignore_errors=True)
        self.last_error = None
        self._categories[str(v.version)] = categories_from_prompt(self.system_template, v.system_prompt)
        self.metrics.set_model(v.name, v.version)
        if old is not None:
            self.metrics.swaps.labels(kind=kind).inc()
        log.warning("serving LM %s:%s%s", v.name, v.version, f" (was {old.version}, {kind} swap)" if old else "")
        return True

    class _Drain:
        def __init__(self, svc: LLMService) -> None:
            self.svc = svc

        async def __aenter__(self) -> None:
            self.svc._gate.clear()  # new requests wait here...
            await self.svc._idle.wait()  # ...until the admitted ones are done

        async def __aexit__(self, *exc: object) -> None:
            self.svc._gate.set()

    def _drained(self) -> LLMService._Drain:
        return LLMService._Drain(self)

    # ------------------------------------------------------------------ requests
    def models(self) -> dict:
        s = self.served
        if s is None:
            return LLMError(503, self._not_ready(), "service_unavailable", code="model_not_loaded").event()
        return {
            "object": "list",
            "data": [{"id": s.name, "object": "model", "created": 0, "owned_by": "ticketops", "version": s.version}],
        }

    def problem(self) -> str | None:
        """Why the generative side is degraded (the classifier's ``/readyz`` reports it), or None: its newest
        champion failed to load (the version before it, if any, still answers), or its log cannot be written. No
        champion registered yet is not a problem (``/v1`` answers 503 and the classifier serves)."""
        reasons = []
        lost = _engine_problem(self.served) if self.served is not None else None
        if lost:
            reasons.append(f"generative model: {lost}; the next refresh reloads it")
        if self.refresh_error:  # redacted by watch_champion (no tracking URI)
            still = f"; still serving version {self.served.version}" if self.served is not None else ""
            reasons.append(f"generative model: {self.refresh_error}{still}")
        log_problem = self.log.problem()
        if log_problem:
            reasons.append(log_problem)
        return redact("; ".join(reasons), getattr(self.source, "uri", None)) if reasons else None

    def _not_ready(self) -> str:
        return f"the generative model is not loaded: {self.last_error or 'still loading'}"

    async def generate(self, call: dict) -> AsyncIterator[dict]:
        """Events of one request: ``error`` (then nothing), or ``start`` then ``delta``... (the last one has a
        ``finish_reason``). Closing the iterator early aborts the generation and frees its slot."""
        await self._gate.wait()
        if self._stopping:
            yield LLMError(503, "the server is shutting down", "service_unavailable", code="shutting_down").event()
            return
        self._inflight += 1
        self._idle.clear()
        inner = self._generate(call)
        try:
            async for event in inner:
                yield event
        finally:
            await inner.aclose()  # an abandoned stream closes the engine request now, not at garbage collection
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _generate(self, call: dict) -> AsyncIterator[dict]:
        t0 = time.perf_counter()
        served = self.served
        try:
            if served is None:
                err = LLMError(503, self._not_ready(), "service_unavailable", code="model_not_loaded")
                err.retry_after = self.cfg.retry_after_s
                raise err
            req, prompt_ids, params, record = self._prepare(call, served)
            agen = served.engine.generate(call["request_id"], prompt_ids, params)
            first = await self._first(agen)
        except LLMError as err:
            yield err.event()
            return
        except Exception as err:  # noqa: BLE001 - e.g. a chat template that refuses the messages' order
            log.exception("request %s could not be prepared", call.get("request_id"))
            bad_input = isinstance(err, (ValueError, TypeError)) or type(err).__name__ == "TemplateError"
            status, kind = (400, "invalid_request_error") if bad_input else (500, "server_error")
            yield LLMError(status, f"invalid request: {type(err).__name__}: {err}", kind).event()
            return
        prompt_tokens = len(prompt_ids)
        texts: list[str] = []
        ttft: float | None = None
        finish, completion = "abort", 0
        event = first
        try:
            yield {"type": "start", "id": call["request_id"], "model": served.model_id, "prompt_tokens": prompt_tokens}
            while event is not None:
                if event.token_ids:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    self.metrics.observe_tokens(len(event.token_ids))
                texts.append(event.text)
                completion = event.completion_tokens
                prompt_tokens = event.prompt_tokens or prompt_tokens
                if event.finished:
                    finish = event.finish_reason or "stop"
                yield {
                    "type": "delta",
                    "text": event.text,
                    "finish_reason": finish if event.finished else None,
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                }
                if event.finished:
                    break
                event = await anext(agen, None)
        except Exception as err:  # noqa: BLE001 - the stream ends with an error event, the server keeps going
            log.exception("generation %s failed", call["request_id"])
            yield LLMError(500, f"generation failed: {type(err).__name__}: {err}", "server_error").event()
        finally:
            await agen.aclose()  # aborts the request in the engine if it has not finished
            total = time.perf_counter() - t0
            self.metrics.observe_finished(finish, ttft, total, completion, prompt_tokens)
            self._record(served, call, record, "".join(texts), prompt_tokens, completion, ttft, total, finish)

    async def _first(self, agen: AsyncIterator) -> Any:
        from pipelines.llm.engine import EngineError, QueueFull, RequestTooLong

        try:
            return await anext(agen)
        except EngineError as err:  # the engine process died: a replacement loads at the next refresh
            e = LLMError(503, f"the generative model is unavailable: {err}", "service_unavailable", code="engine_lost")
            e.retry_after = self.cfg.retry_after_s
            raise e from None
        except QueueFull as err:
            e = LLMError(429, f"overloaded: {err}; retry later", "rate_limit_error", code="queue_full")
            e.retry_after = max(1, round(getattr(err, "retry_after_s", None) or self.cfg.retry_after_s))
            raise e from None
        except RequestTooLong as err:
            raise LLMError(400, str(err), param="max_tokens", code="context_length_exceeded") from None
        except ValueError as err:
            raise LLMError(400, f"invalid request: {err}", param="response_format") from None
        except StopAsyncIteration:
            raise LLMError(500, "the engine ended the request without an answer", "server_error") from None

    def _prepare(self, call: dict, served: Served) -> tuple[Any, list[int], Any, dict]:
        from pipelines.llm.engine import SamplingParams

        chat = call["endpoint"] == "chat"
        try:
            req = (ChatCompletionRequest if chat else CompletionRequest).model_validate(call["body"])
            stops = req.stops()
        except (ValidationError, ValueError) as err:
            msg = readable_errors(err) if isinstance(err, ValidationError) else str(err)
            raise LLMError(400, f"invalid request: {msg}") from None
        if req.model not in (served.name, served.model_id):
            raise LLMError(
                404, f"the model {req.model!r} does not exist: this server serves {served.name!r} "
                f"(version {served.version}; GET /v1/models)", param="model", code="model_not_found",
            )  # fmt: skip
        if len(stops) > self.cfg.max_stop_sequences:
            raise LLMError(400, f"at most {self.cfg.max_stop_sequences} stop sequences", param="stop")
        tok = served.tokenizer
        if chat:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
            ]
            prompt = json.dumps(messages, ensure_ascii=False)
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            prompt, messages = req.text(), None
            prompt_ids = tok(prompt)["input_ids"]
        if len(prompt) > self.cfg.max_prompt_chars:
            raise LLMError(
                400, f"the prompt has {len(prompt)} characters; this server takes at most {self.cfg.max_prompt_chars}",
                param="messages" if chat else "prompt", code="prompt_too_long",
            )  # fmt: skip
        room = served.max_model_len - len(prompt_ids)
        if room < 1:
            raise LLMError(
                400, f"the prompt is {len(prompt_ids)} tokens; the model's context is {served.max_model_len}",
                param="messages" if chat else "prompt", code="context_length_exceeded",
            )  # fmt: skip
        max_tokens = req.max_tokens if req.max_tokens is not None else min(self.cfg.default_max_tokens, room)
        if max_tokens > room:
            raise LLMError(
                400, f"max_tokens {max_tokens} + the prompt's {len(prompt_ids)} tokens exceed the model's context of "
                f"{served.max_model_len} tokens: ask for at most {room}", param="max_tokens",
                code="context_length_exceeded",
            )  # fmt: skip
        fmt, schema = self._schema(req, served)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=tuple(stops),
            seed=req.seed,
            json_schema=schema,
        )
        record = {"prompt": prompt, "format": fmt, "max_tokens": max_tokens, "temperature": req.temperature}
        return req, prompt_ids, params, record

    def _schema(self, req: Any, served: Served) -> tuple[str, dict | None]:
        rf = req.response_format
        if rf is None:
            if self.cfg.default_response_format == TRIAGE:
                return "json_schema", self._triage_schema(served)
            return "text", None
        if rf.type == "text":
            return "text", None
        if rf.type == "json_object":
            return "json_object", {"type": "object"}
        js = rf.json_schema
        if js.schema_ is None:
            if js.name == TRIAGE:
                return "json_schema", self._triage_schema(served)
            raise LLMError(
                400, "response_format.json_schema needs a schema (or name 'triage')", param="response_format"
            )
        check_json_schema(js.schema_)
        return "json_schema", js.schema_

    def _triage_schema(self, served: Served) -> dict:
        from pipelines.llm.structured import triage_schema

        categories = categories_from_prompt(self.system_template, served.system_prompt)
        if not categories:
            raise LLMError(
                400, "the served model's categories are unknown (its system prompt does not follow llm.system_prompt): "
                "send response_format json_schema with a schema", param="response_format",
            )  # fmt: skip
        return triage_schema(categories)

    def _record(self, served, call, record, output, prompt_tokens, completion, ttft, total, finish) -> None:  # noqa: ANN001
        keep = self.cfg.log_text
        self._categories.setdefault(
            str(served.version), categories_from_prompt(self.system_template, served.system_prompt)
        )
        self._recent[call["request_id"]] = str(served.version)
        while len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)
        prompt = record["prompt"]
        row = generation_row(
            ts=datetime.now(timezone.utc),
            request_id=call["request_id"],
            endpoint=call["endpoint"],
            model_name=served.name,
            model_version=served.version,
            prompt=prompt,
            stored_prompt=scrub_pii(prompt)[0] if keep else None,
            output=output,
            stored_output=scrub_pii(output)[0] if keep else None,
            response_format=record["format"],
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            ttft_ms=None if ttft is None else ttft * 1000,
            latency_ms=total * 1000,
            finish_reason=finish,
            max_tokens=record["max_tokens"],
            temperature=record["temperature"],
            hash_key=self.log.hash_key,
        )
        try:
            self.log.append(GENERATIONS, [row])
            self.metrics.log_rows.labels(kind=GENERATIONS).inc()
        except Exception:  # noqa: BLE001 - a log failure must not fail the answer already sent
            log.exception("could not log generation %s", call["request_id"])

    def feedback(self, body: dict) -> dict:
        """Corrected triage fields for a generative request id: ``{"status", "matched"}`` or an ``error`` event."""
        try:
            fb = GenerativeFeedback.model_validate(body)
        except ValidationError as err:
            return LLMError(422, f"invalid feedback: {readable_errors(err)}").event()
        matched = fb.request_id in self._recent
        if not matched and not self.serve_cfg.feedback_accept_unknown:
            return LLMError(
                404, f"request_id {fb.request_id} is not a recent generation of this server "
                f"(it keeps the last {RECENT_REQUESTS})", code="unknown_request",
            ).event()  # fmt: skip
        if matched:  # the version that answered, not the one serving now
            version = self._recent[fb.request_id]
            categories = self._categories.get(version)
            which = f"version {version}'s, which answered {fb.request_id}"
        else:  # another replica answered: any version seen here
            seen = [c for cs in self._categories.values() if cs for c in cs]
            categories, which = (sorted(set(seen)) or None), "model's"
        if fb.category is not None and categories and fb.category not in categories:
            return LLMError(422, f"category {fb.category!r} is not one of the {which} {categories}").event()
        row = generation_feedback_row(
            ts=datetime.now(timezone.utc), request_id=fb.request_id, fields=fb.fields(), matched=matched
        )
        self.log.append(GENERATION_FEEDBACK, [row])
        self.metrics.log_rows.labels(kind=GENERATION_FEEDBACK).inc()
        return {"status": "recorded", "matched": matched}


def new_request_id(endpoint: str) -> str:
    return f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
