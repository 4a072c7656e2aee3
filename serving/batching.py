"""Continuous batching for a text classifier: pure asyncio, no Ray (testable on its own).

Requests put their texts into one pending list; a single loop runs the model back to
back. Each step starts from the oldest waiting text (so nothing starves) and adds the
waiting texts closest to it in length, while the batch fits ``max_batch_size`` and a
padded-token budget (``len(batch) x longest text``, the cost a transformer pays),
and while every row stays at least ``min_row_fill`` real tokens (a text far shorter
than the batch's longest waits for a step of its own length instead of padding a
long row; with a long-tailed length mix this is most of the padding). Texts that
arrive while a step computes join the next step: there is no waiting window.
The model call runs in a one-thread executor, so the event loop keeps
accepting requests; when a step ends, the next one starts before the finished
step's answers are delivered, so the model does not sit idle while they are sent.
Every text is pinned to the model it was submitted with, so a hot swap never mixes
versions inside one request.

The model's own token counts (``token_lengths``, a tokenizer) are taken in the model thread too, right before
a step is selected, never on the event loop (a long text must not stall every other request) and never beside
the model call (a fast tokenizer is not safe to use from two threads at once). A model call that fails is
retried on halves of its batch (:func:`predict_isolated`), so one text the model cannot take fails only the
request that sent it. If the loop itself ever dies, every waiting request fails at once with the reason, and
:meth:`ContinuousBatcher.problem` says so (``/readyz`` answers 503, Ray's health check restarts the replica).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The bounded queue cannot take the texts of this request (answer 429 / retry later)."""


class Model(Protocol):
    """What the batcher needs; a model may also offer ``token_lengths(texts) -> list[int] | None``
    (its own token counts, used for the budget instead of ``cost``)."""

    classes: list[str]

    def predict_proba(self, texts: list[str]) -> np.ndarray: ...


def approx_tokens(text: str) -> int:
    """Cheap token estimate (WordPiece/BPE average about 4 characters per token, plus [CLS]/[SEP])."""
    return len(text) // 4 + 2


@dataclass(frozen=True)
class ItemResult:
    """One text's answer: its probability row, the model that computed it and the size of that batch."""

    proba: np.ndarray
    model: Any
    batch_size: int


def predict_isolated(model: Model, texts: list[str]) -> list[np.ndarray | Exception]:
    """``model.predict_proba(texts)`` as one row per text; when the call fails, the batch is split in halves and
    retried, so only the text(s) the model cannot take get their exception (``log2(n)`` extra calls per bad text).
    Runs in the model thread."""
    try:
        proba = np.asarray(model.predict_proba(list(texts)))
        if proba.ndim != 2 or proba.shape[0] != len(texts):
            raise RuntimeError(f"model returned {proba.shape[0] if proba.ndim else 0} rows for {len(texts)} texts")
        return list(proba)
    except Exception as err:  # noqa: BLE001 - isolate the failing text(s)
        if len(texts) == 1:
            return [err]
        mid = len(texts) // 2
        return predict_isolated(model, texts[:mid]) + predict_isolated(model, texts[mid:])


def measure_tokens(model: Any, texts: list[str], cost: Callable[[str], int]) -> list[int]:
    """Token counts for the budget: the model's own (``token_lengths``), else ``cost``. Runs in the model thread."""
    measure = getattr(model, "token_lengths", None)
    lengths = None
    if measure is not None:
        try:
            lengths = measure(list(texts))
        except Exception:  # noqa: BLE001 - the estimate will do; the model call reports a text it cannot take
            log.exception("token_lengths failed for %d text(s); using the character estimate", len(texts))
    return list(lengths) if lengths else [cost(t) for t in texts]


@dataclass(eq=False)
class _Item:
    text: str
    tokens: int | None  # None: not measured yet (the model's tokenizer runs in the model thread)
    model: Any
    seq: int
    future: asyncio.Future = field(repr=False)


def select_batch(
    pending: Sequence[_Item], max_batch_size: int, max_batch_tokens: int, min_row_fill: float = 0.0
) -> list[_Item]:
    """The oldest item plus the same-model items nearest to it in length, within size and padded-token budget,
    and (``min_row_fill``) only while the batch's shortest text fills that share of the longest."""
    anchor = min(pending, key=lambda it: it.seq)
    same = [it for it in pending if it.model is anchor.model and it is not anchor]
    same.sort(key=lambda it: (abs(it.tokens - anchor.tokens), it.seq))
    batch, longest, shortest = [anchor], anchor.tokens, anchor.tokens
    for it in same:
        if len(batch) >= max_batch_size:
            break
        new_longest = max(longest, it.tokens)
        if new_longest * (len(batch) + 1) > max_batch_tokens:
            continue  # a shorter one further down may still fit
        if min(shortest, it.tokens) < min_row_fill * new_longest:
            continue
        shortest = min(shortest, it.tokens)
        batch.append(it)
        longest = new_longest
    return batch


class ContinuousBatcher:
    """Queue + one model loop. ``await submit(texts, model)`` returns one :class:`ItemResult` per text."""

    def __init__(
        self,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 4096,
        max_queue: int = 512,
        min_row_fill: float = 0.5,
        cost: Callable[[str], int] = approx_tokens,
        on_batch: Callable[[int, float, int, int], None] | None = None,
    ) -> None:
        """``on_batch(texts, seconds, tokens, padded_tokens)`` after every step (metrics)."""
        self.max_batch_size, self.max_batch_tokens, self.max_queue = max_batch_size, max_batch_tokens, max_queue
        self.cost, self.on_batch, self.min_row_fill = cost, on_batch, min_row_fill
        self._pending: list[_Item] = []
        self._seq = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    def depth(self) -> int:
        """Texts waiting (not yet in a running step)."""
        return len(self._pending)

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._wakeup = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
            self._task = asyncio.create_task(self._loop(), name="continuous-batcher")

    async def stop(self) -> None:
        """Finish every text already queued, then stop the loop."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()  # type: ignore[union-attr]
        try:
            await self._task
        except Exception:  # noqa: BLE001 - a loop that died has already failed its requests and logged why
            pass
        self._task = None
        self._executor.shutdown(wait=True)  # type: ignore[union-attr]

    async def submit(self, texts: list[str], model: Model) -> list[ItemResult]:
        if self._task is None or self._closing:
            raise RuntimeError("batcher is not running")
        if len(self._pending) + len(texts) > self.max_queue:
            raise QueueFull(f"queue full ({len(self._pending)} texts waiting, limit {self.max_queue})")
        if self._task.done():
            raise RuntimeError(self.problem() or "the batching loop has stopped")
        loop = asyncio.get_running_loop()
        # the model's own tokens are counted in the model thread (_measure); the character estimate is cheap
        own = getattr(model, "token_lengths", None) is not None
        lengths = [None] * len(texts) if own else [self.cost(t) for t in texts]
        items = [_Item(t, n, model, next(self._seq), loop.create_future()) for t, n in zip(texts, lengths)]
        self._pending.extend(items)
        self._wakeup.set()  # type: ignore[union-attr]
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        except asyncio.CancelledError:
            for it in items:
                it.future.cancel()  # the loop skips cancelled items
            raise

    def problem(self) -> str | None:
        """Why this batcher cannot serve (its loop died), or None."""
        task = self._task
        if task is None or not task.done() or self._closing:
            return None
        err = None if task.cancelled() else task.exception()
        return f"the batching loop died: {type(err).__name__}: {err}" if err else "the batching loop has stopped"

    async def _loop(self) -> None:
        running: _Step | None = None
        done: _Step | None = None
        try:
            while True:
                if running is None:
                    self._drop_cancelled()
                    if not self._pending:
                        if self._closing:
                            return
                        self._wakeup.clear()  # type: ignore[union-attr]
                        await self._wakeup.wait()  # type: ignore[union-attr]
                        continue
                    await self._settle()
                    running = await self._dispatch()
                    if running is None:
                        continue
                done = running
                await asyncio.wait([done.future])
                # start the next step before answering this one: the model computes while the event loop
                # builds and sends the answers (the model never waits for the HTTP side)
                self._drop_cancelled()
                running = await self._dispatch() if self._pending else None
                self._deliver(done)
        except BaseException as err:
            # nothing may wait forever on a dead loop: fail what is queued and what was computing
            if isinstance(err, Exception):
                log.exception("the batching loop died")
            failure = RuntimeError(f"the batching loop died: {type(err).__name__}: {err}")
            waiting = list(self._pending)
            for step in (running, done):
                waiting += step.batch if step is not None else []
            self._pending = []
            for it in waiting:
                if not it.future.done():
                    it.future.set_exception(failure)
            raise

    def _drop_cancelled(self) -> None:
        self._pending = [it for it in self._pending if not it.future.done()]

    async def _settle(self, rounds: int = 3) -> None:
        """Let requests that already reached this process join the step (no timer: stops when nothing new arrives)."""
        for _ in range(rounds):
            n = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == n:
                return

    async def _measure(self) -> None:
        """Count the tokens of the texts not measured yet, in the model thread (idle here: no step is running)."""
        todo = [it for it in self._pending if it.tokens is None and not it.future.done()]
        loop = asyncio.get_running_loop()
        for model in {id(it.model): it.model for it in todo}.values():
            mine = [it for it in todo if it.model is model]
            lengths = await loop.run_in_executor(
                self._executor, measure_tokens, model, [it.text for it in mine], self.cost
            )
            for it, n in zip(mine, lengths):
                it.tokens = int(n)

    async def _dispatch(self) -> _Step | None:
        """Take the next batch off the queue and start the model on it (in the model thread); None if none is ready."""
        self._drop_cancelled()
        await self._measure()
        self._drop_cancelled()
        ready = [it for it in self._pending if it.tokens is not None]  # texts that arrived meanwhile: next time
        if not ready:
            return None
        batch = select_batch(ready, self.max_batch_size, self.max_batch_tokens, self.min_row_fill)
        taken = set(map(id, batch))
        self._pending = [it for it in self._pending if id(it) not in taken]
        model = batch[0].model
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, predict_isolated, model, [it.text for it in batch]
        )
        return _Step(batch, future, time.perf_counter())

    def _deliver(self, step: _Step) -> None:
        elapsed = time.perf_counter() - step.started
        batch = step.batch
        if self.on_batch is not None:
            lengths = [it.tokens or 0 for it in batch]
            self.on_batch(len(batch), elapsed, sum(lengths), len(batch) * max(lengths))
        try:
            rows = step.future.result()
        except Exception as err:  # noqa: BLE001 - the executor itself failed: this step's requests fail
            rows = [err] * len(batch)
        for it, row in zip(batch, rows):
            if it.future.done():
                continue
            if isinstance(row, BaseException):
                it.future.set_exception(row)
            else:
                it.future.set_result(ItemResult(row, batch[0].model, len(batch)))


@dataclass
class _Step:
    batch: list[_Item]
    future: asyncio.Future
    started: float


class DirectRunner:
    """No batching: each request's texts go to the model as they are (one model call at a time, in a thread)."""

    def __init__(self, *, max_queue: int = 512, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.max_queue, self.on_batch = max_queue, on_batch
        self._waiting = 0
        self._lock: asyncio.Lock | None = None
        self._executor: ThreadPoolExecutor | None = None

    def depth(self) -> int:
        return self._waiting

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def stop(self) -> None:
        if self._executor is not None:
            async with self._lock:  # type: ignore[union-attr]
                self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str], model: Model) -> list[ItemResult]:
        if self._waiting + len(texts) > self.max_queue:
            raise QueueFull(f"queue full ({self._waiting} texts waiting, limit {self.max_queue})")
        self._waiting += len(texts)
        try:
            async with self._lock:  # type: ignore[union-attr]
                start = time.perf_counter()
                rows = await asyncio.get_running_loop().run_in_executor(
                    self._executor, predict_isolated, model, list(texts)
                )
        finally:
            self._waiting -= len(texts)
        if self.on_batch is not None:
            self.on_batch(len(texts), time.perf_counter() - start)
        failed = next((r for r in rows if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        return [ItemResult(row, model, len(texts)) for row in rows]  # type: ignore[arg-type]
