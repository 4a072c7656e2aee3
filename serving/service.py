"""The serving core of one replica, without Ray or HTTP: model + hot swap, batching, prediction log, metrics.

:class:`ClassifierService` owns the model being served (a :class:`~serving.model_source.ModelHandle`),
a runner that batches texts (:mod:`serving.batching`), the buffered prediction log
(:mod:`serving.log_writer`) and the metrics. A watcher task re-resolves the registry
alias every ``watch_interval_s``; when it moves, the new version is loaded first and
then swapped in with one assignment; requests already submitted finish on the handle
they pinned, and each response names the version that answered. A version that cannot be loaded leaves the old
one serving, but :meth:`ClassifierService.readiness` then says ``degraded`` with the reason (``/readyz`` 503), as it
does when the batching loop has died or the prediction log cannot be written. Feedback is checked against the
classes of the version that answered its request, not the one serving now. Each answer says whether the model
abstains (its registered :class:`~pipelines.abstention.AbstentionRule`), with the label it would
have given; the prediction log records both.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from pipelines.abstention import NEVER
from pipelines.config import ServeConfig
from pipelines.data import pii
from pipelines.data.ingestion import scrub_pii
from serving.batching import ContinuousBatcher, DirectRunner, ItemResult
from serving.log_writer import LogWriter
from serving.model_source import ChampionSource, ModelHandle
from serving.prediction_log import FEEDBACK, PREDICTIONS, feedback_row, prediction_row
from serving.schemas import FeedbackRequest, FeedbackResponse, Health, Prediction, PredictResponse
from serving.security import redact
from serving.telemetry import ServiceMetrics

log = logging.getLogger(__name__)
RECENT_REQUESTS = 100_000


class NotReady(Exception):
    """No model is loaded yet (503)."""


class UnknownRequest(Exception):
    """Feedback for a request id this replica has not answered (404)."""


class BadFeedback(ValueError):
    """Feedback that cannot refer to the prediction it names (422)."""


class Runner(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def submit(self, texts: list[str], model: Any) -> list[ItemResult]: ...
    def depth(self) -> int: ...


def make_runner(cfg: ServeConfig, metrics: ServiceMetrics) -> Runner:
    """The runner named by ``serve.batching`` (``serve_batch`` lives in serving.app: it needs Ray)."""
    if cfg.batching == "continuous":
        return ContinuousBatcher(
            max_batch_size=cfg.max_batch_size,
            max_batch_tokens=cfg.max_batch_tokens,
            min_row_fill=cfg.min_row_fill,
            max_queue=cfg.max_queue,
            on_batch=metrics.observe_batch,
        )
    if cfg.batching == "none":
        return DirectRunner(max_queue=cfg.max_queue, on_batch=metrics.observe_batch)
    raise ValueError(f"serve.batching={cfg.batching!r} needs a runner from serving.app")


async def watch_champion(service: Any, loaded: Callable[[], bool], what: str) -> None:
    """Re-resolve ``service``'s alias every ``service.cfg.watch_interval_s`` seconds (``service.refresh()``); a failed
    load keeps the old model and is retried next tick (``service.last_error`` says why). With the interval 0 it
    only retries (every 5 s) until a model is ``loaded()``."""
    while True:
        try:
            await service.refresh()
            service.refresh_error = None
        except Exception as err:  # noqa: BLE001 - keep serving the old model; retry next tick
            uri = getattr(service.source, "uri", None)  # never in a message a client can see (credentials)
            service.last_error = service.refresh_error = redact(
                f"loading {service.source.describe()} failed: {type(err).__name__}: {err}", uri
            )
            log.exception("%s refresh failed", what)
        interval = service.cfg.watch_interval_s
        if interval <= 0 and loaded():
            return
        await asyncio.sleep(interval if interval > 0 else 5.0)


class ClassifierService:
    def __init__(
        self,
        cfg: ServeConfig,
        source: ChampionSource,
        runner: Runner | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.cfg, self.source = cfg, source
        self.metrics = metrics or ServiceMetrics()
        self.runner = runner or make_runner(cfg, self.metrics)
        self.metrics.watch_queue(self.runner.depth)
        self.log = LogWriter.from_config(cfg, self.metrics.registry)  # the builder's hash key: every replica agrees
        self.model: ModelHandle | None = None
        self.last_error: str | None = None
        self.refresh_error: str | None = None  # the last refresh failed (a model may still be serving)
        self._classes: dict[str, list[str]] = {}  # every version this replica has served -> its classes
        self._recent: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._watcher: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.log.start()
        if self.cfg.log_text:  # build the PII scrubber now, not inside the first request (it takes seconds)
            await asyncio.to_thread(pii.load)
        await self.runner.start()
        self._watcher = asyncio.create_task(self._watch(), name="champion-watcher")

    async def stop(self) -> None:
        """Finish queued texts, then write every logged row (graceful shutdown loses nothing)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        await self.runner.stop()
        await self.log.close()

    async def refresh(self) -> bool:
        """Re-resolve the alias; load and swap in a new version. True if the served model changed."""
        version = await asyncio.to_thread(self.source.resolve)
        if version is None:
            self.last_error = f"{self.source.describe()} does not exist yet"
            return False
        if self.model is not None and self.model.version == version:
            return False
        handle = await asyncio.to_thread(self.source.load, version)  # load first, switch after
        self._classes[str(handle.version)] = list(handle.classes)
        old, self.model = self.model, handle
        self.last_error = None
        self.metrics.set_model(handle.name, handle.version)
        if old is not None:
            self.metrics.swaps.inc()
        log.warning(
            "serving %s version %s%s", handle.name, handle.version, f" (was {old.version})" if old is not None else ""
        )
        return True

    async def _watch(self) -> None:
        await watch_champion(self, lambda: self.model is not None, "champion")

    # ------------------------------------------------------------------ health
    def fatal_problem(self) -> str | None:
        """What stops this replica from answering at all (the batching loop died), or None. Ray's health check
        restarts a replica with one."""
        problem = getattr(self.runner, "problem", None)
        return problem() if problem is not None else None

    def log_problem(self) -> str | None:
        """Why the prediction log cannot be written now (:meth:`~serving.log_writer.LogWriter.problem`), or None."""
        return self.log.problem()

    def readiness(self) -> tuple[int, Health]:
        """``/readyz``: 200 ``ready``; 503 ``loading`` (no model yet), ``failed`` (cannot answer) or ``degraded``
        (answers, but a newer champion failed to load, or the log cannot be written: the reasons in ``detail``)."""
        fatal = self.fatal_problem()
        if fatal:
            return 503, Health(status="failed", detail=fatal)
        m = self.model
        if m is None:
            return 503, Health(status="loading", detail=self.last_error)
        reasons = [r for r in (self.refresh_error, self.log_problem()) if r]
        if reasons:
            detail = "; ".join(reasons)
            if self.refresh_error:
                detail = f"still serving version {m.version}: {detail}"
            return 503, Health(status="degraded", model_name=m.name, model_version=m.version, detail=detail)
        return 200, Health(status="ready", model_name=m.name, model_version=m.version)

    # ------------------------------------------------------------------ requests
    async def predict(self, texts: list[str], top_k: int | None = None) -> PredictResponse:
        handle = self.model
        if handle is None:
            raise NotReady(self.last_error or "the model is still loading")
        start = time.perf_counter()
        results = await self.runner.submit(list(texts), handle)
        latency_ms = (time.perf_counter() - start) * 1000
        request_id = uuid.uuid4().hex
        classes = handle.classes
        rule = getattr(handle, "abstention", NEVER)  # a handle without a rule never abstains
        abstained = rule.abstained(np.vstack([r.proba for r in results]), classes)
        preds = [_prediction(classes, r.proba, top_k, bool(a)) for r, a in zip(results, abstained)]
        self._remember(request_id, len(texts), handle)
        self._log_predictions(request_id, handle, texts, results, abstained, latency_ms)
        self.metrics.texts.inc(len(texts))
        return PredictResponse(
            predictions=preds, model_name=handle.name, model_version=handle.version, request_id=request_id
        )

    def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        known = self._recent.get(req.request_id)
        if known is None and not self.cfg.feedback_accept_unknown:
            raise UnknownRequest(
                f"request_id {req.request_id} is not a recent prediction of this server "
                f"(it keeps the last {RECENT_REQUESTS} request ids)"
            )
        if known is not None:
            n_items, version = known
            if req.item >= n_items:
                raise BadFeedback(f"item {req.item} is out of range: request {req.request_id} had {n_items} text(s)")
            classes = self._classes.get(version, [])  # the version that answered, not the one serving now
            if req.label not in classes:
                raise BadFeedback(
                    f"label {req.label!r} is not one of the classes of model version {version}, which answered "
                    f"request {req.request_id}: {classes}"
                )
        else:  # another replica answered it: bounded by what any request can be, labels of a version seen here
            if req.item >= self.cfg.max_texts_per_request:
                raise BadFeedback(
                    f"item {req.item} is out of range: a request has at most {self.cfg.max_texts_per_request} texts"
                )
            known_labels = sorted({c for cs in self._classes.values() for c in cs})
            if not known_labels:
                raise NotReady(self.last_error or "no model loaded yet: labels cannot be checked")
            if req.label not in known_labels:
                raise BadFeedback(f"label {req.label!r} is not one of the model's classes {known_labels}")
        row = feedback_row(
            ts=datetime.now(timezone.utc), request_id=req.request_id, item=req.item, true_label=req.label
        )
        self.log.append(FEEDBACK, [row])
        self.metrics.log_rows.labels(kind=FEEDBACK).inc()
        return FeedbackResponse(status="recorded", matched=known is not None)

    def _remember(self, request_id: str, n_items: int, handle: ModelHandle) -> None:
        self._classes.setdefault(str(handle.version), list(handle.classes))
        self._recent[request_id] = (n_items, str(handle.version))
        while len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)

    def _log_predictions(
        self,
        request_id: str,
        handle: ModelHandle,
        texts: list[str],
        results: list[ItemResult],
        abstained: np.ndarray,
        latency_ms: float,
    ) -> None:
        now = datetime.now(timezone.utc)
        rows = [
            prediction_row(
                ts=now,
                request_id=request_id,
                item=i,
                model_name=handle.name,
                model_version=handle.version,
                text=text,
                stored_text=scrub_pii(text)[0] if self.cfg.log_text else None,
                classes=handle.classes,
                proba=r.proba,
                abstained=bool(a),
                latency_ms=latency_ms,
                batch_size=r.batch_size,
                hash_key=self.log.hash_key,
            )
            for i, (text, r, a) in enumerate(zip(texts, results, abstained))
        ]
        self.log.append(PREDICTIONS, rows)
        self.metrics.log_rows.labels(kind=PREDICTIONS).inc(len(rows))


def _prediction(classes: list[str], proba: np.ndarray, top_k: int | None, abstained: bool = False) -> Prediction:
    order = np.argsort(-np.asarray(proba), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    best = int(order[0])
    return Prediction(
        label=classes[best],
        confidence=float(proba[best]),
        abstained=abstained,
        probabilities={classes[int(j)]: round(float(proba[int(j)]), 6) for j in order},
    )
