"""The baseline Ray Serve deployments of ``benchmarks/generation.py``: ``generate()`` behind ``@serve.batch``.

One class serves both baselines, over HTTP with the OpenAI chat-completions body and stream format (so the
benchmark's client is the same for every mode): with ``max_batch_size=1`` it is mode (a), one request at a time
with ``model.generate()`` on the unpadded prompt; with ``max_batch_size=N`` and a wait it is mode (b), static
batching: ``@serve.batch`` collects up to N requests, one left-padded ``generate()`` runs them with
``max_new_tokens`` = the largest ``max_tokens`` of the batch and greedy decoding, and every row streams its tokens
as they come (a :class:`~transformers.generation.streamers.BaseStreamer` per batch). A row stops streaming at its
own ``max_tokens`` or end of turn (the stopping criterion marks it done, so ``generate()`` ends as soon as every
row is done), and a client that disconnects marks its row done too. The model runs in one thread of its own (its
torch threads set there), one batch at a time; the event loop only streams.

Only ``benchmarks/generation.py`` uses it. Importable in Ray's workers because the benchmark puts the project
directory on their ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ray import serve


@dataclass(eq=False)
class _Row:
    prompt_ids: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    tokens: int = 0


def _data(obj: Any) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


@serve.deployment(name="generate", health_check_period_s=10, graceful_shutdown_timeout_s=5)
class GenerateDeployment:
    def __init__(self, base_path: str, precision: str, threads: int, max_batch_size: int, wait_s: float) -> None:
        from pipelines.llm.engine import stop_token_ids
        from pipelines.llm.generation import load_generator

        gen = load_generator(base_path, precision=precision)
        self.model, self.tok = gen.model, gen.tokenizer
        self.eos = sorted(stop_token_ids(self.model, self.tok))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")  # the model's one thread
        self.pool.submit(self._threads, threads).result()
        self.batches = 0
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(wait_s)

    @staticmethod
    def _threads(n: int) -> None:
        import torch

        torch.set_num_threads(n)  # OpenMP thread counts are per calling thread

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        if request.method == "GET":
            return JSONResponse({"ready": True, "batches": self.batches})
        body = await request.json()
        text = self.tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        row = _Row(ids, int(body["max_tokens"]), asyncio.get_running_loop(), asyncio.Queue())
        task = asyncio.ensure_future(self._batched(row))
        return StreamingResponse(self._stream(row, task), media_type="text/event-stream")

    async def _stream(self, row: _Row, task: asyncio.Future) -> Any:
        head = {"id": f"chatcmpl-{id(row):x}", "object": "chat.completion.chunk", "created": int(time.time())}
        finish = None
        try:
            yield _data({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            while finish is None:
                text, finish = await row.events.get()
                if text or finish:
                    delta = {"content": text} if text else {}
                    yield _data({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            usage = {"prompt_tokens": len(row.prompt_ids), "completion_tokens": row.tokens}
            yield _data({**head, "choices": [], "usage": {**usage, "total_tokens": sum(usage.values())}})
            yield _data("[DONE]")
        finally:
            row.cancelled.set()  # a client that went away frees its row at the next step
            if finish is None:
                task.cancel()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _batched(self, rows: list[_Row]) -> list[None]:
        live = [r for r in rows if not r.cancelled.is_set()]
        if live:
            self.batches += 1
            await asyncio.get_running_loop().run_in_executor(self.pool, self._generate, live)
        return [None] * len(rows)

    def _generate(self, rows: list[_Row]) -> None:
        """One left-padded greedy ``generate()`` over ``rows`` (no padding for one row), streaming every row."""
        import torch
        from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from pipelines.llm.engine import _TextStream

        eos, tok = set(self.eos), self.tok
        streams = [_TextStream(tok, ()) for _ in rows]

        def emit(r: _Row, text: str, finish: str | None) -> None:
            r.loop.call_soon_threadsafe(r.events.put_nowait, (text, finish))

        class Rows(BaseStreamer):
            first = True

            def put(self, value: torch.Tensor) -> None:
                if self.first:  # generate() hands the prompt over first
                    self.first = False
                    return
                for r, s, t in zip(rows, streams, value.view(-1).tolist()):
                    if r.done:
                        continue
                    r.tokens += 1
                    s.add(t)
                    finish = "stop" if t in eos else ("length" if r.tokens >= r.max_tokens else None)
                    if finish is None and r.cancelled.is_set():
                        finish = "abort"
                    r.done = finish is not None
                    emit(r, s.delta(final=r.done), finish)

            def end(self) -> None:
                for r, s in zip(rows, streams):
                    if not r.done:
                        r.done = True
                        emit(r, s.delta(final=True), "length")

        class Done(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                return torch.tensor([r.done or r.cancelled.is_set() for r in rows], device=input_ids.device)

        width = max(len(r.prompt_ids) for r in rows)
        pad = tok.pad_token_id
        x = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        with torch.inference_mode():
            self.model.generate(
                x,
                attention_mask=mask,
                max_new_tokens=max(r.max_tokens for r in rows),
                do_sample=False,
                eos_token_id=self.eos,
                pad_token_id=pad,
                streamer=Rows(),
                stopping_criteria=StoppingCriteriaList([Done()]),
            )
