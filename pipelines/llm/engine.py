"""The generation engine: iteration-level continuous batching over a Hugging Face causal LM's KV cache.

Why our own: on this 2-core CPU transformers' paged continuous batching (``generate_batch``) delivers fewer
tokens/s than a plain padded ``generate()`` batch (docs: LIBRARIES.md), while a padded batch wastes most of its
work on rows that already finished. This scheduler keeps the padded batch's fast dense kernels and drops the
waste: every :meth:`LLMEngine.step` decodes one token for every running sequence, a finished or aborted
sequence leaves the batch at once, and waiting ones join at the next step.

How (CPU-friendly, no custom kernels):

- **One batched** ``DynamicCache``: row ``i`` holds running sequence ``i``; rows are right-aligned (left
  padding), with an explicit ``attention_mask`` (padding columns are masked to exactly zero weight) and
  per-row ``position_ids`` (each sequence keeps the positions it would have alone).
- **Prefill** of a newly admitted sequence runs alone, unpadded (the same computation as ``generate()``
  on that prompt); its cache is then left-padded and concatenated to the batch. Admission per step is bounded
  by ``max_prefill_tokens`` (the first waiting sequence is always admitted, so a long prompt cannot starve).
  With ``overlap_prefill`` (default) and a core the engine's torch threads leave free, the prefills admitted
  while sequences are running are computed in a second thread (one torch thread) while the decode steps go
  on, and join the batch at the first step boundary after they finish, so the running sequences never wait
  for them (admitted sequences in prefill count against ``max_num_seqs`` and the KV budget); otherwise they
  run before the decode step, which then stalls for at most about ``max_prefill_tokens`` prompt tokens.
- **Prefix caching** (``prefix_cache_tokens`` > 0): the keys and values of recent prompts are kept (oldest
  dropped first, within that many tokens); a new prompt takes those of the longest prefix it shares with one
  (at least ``min_prefix_tokens``: a system prompt, few-shot examples) and prefills only the rest. On a CPU a
  prompt token costs about what a decoded one does, and the triage prompts share 121 of their ~185 tokens.
  Cleared whenever the weights may change (an idle function: the adapter swap).
- **Removal**: rows of finished sequences are dropped with ``index_select`` and leading all-padding columns
  are trimmed, so the cache never grows past the longest running sequence.
- **Admission control**: at most ``max_num_seqs`` running; each admitted sequence *reserves*
  ``prompt + max_tokens`` tokens of the ``kv_cache_tokens`` budget (it can never outgrow that), so memory is
  bounded: the padded tensor holds at most ``max_num_seqs`` rows of at most ``max_model_len`` columns.
  More than ``max_waiting`` queued requests → :class:`QueueFull` with a ``retry_after_s`` estimate.
- **Sampling** per row: greedy (``temperature == 0``), or temperature + top-p with a per-request
  ``torch.Generator`` (same seed → same output); stop strings, EOS and the chat template's end-of-turn
  token end a sequence; ``json_schema`` constrains decoding (:mod:`pipelines.llm.structured`).

:class:`LLMEngine` is synchronous and single-threaded; :class:`AsyncLLMEngine` runs its step loop in a thread
of its own so an asyncio server keeps streaming while the model computes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # the text is cut before the first stop string; finish_reason "stop"
    seed: int | None = None  # per-request torch.Generator for sampling
    json_schema: dict | None = None  # constrained decoding; {"type": "object"} for response_format json_object
    stop_after_json: bool = False  # unconstrained, but finish ("stop") once the text holds a complete JSON object

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")


@dataclass
class TokenEvent:
    request_id: str
    token_ids: list[int]  # tokens added in this step
    text: str  # the text delta (stop strings and special tokens never emitted)
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int


class QueueFull(Exception):
    """The waiting queue is full; try again after ``retry_after_s`` seconds (HTTP 429 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple:  # pickled across the engine process's pipe with both arguments
        return type(self), (self.args[0], self.retry_after_s)


class RequestTooLong(ValueError):
    """prompt tokens + max_tokens exceed the model's context (``max_model_len``) or the KV budget (HTTP 400)."""


class EngineError(RuntimeError):
    """The model failed during a step; every request in flight was ended with it."""


class _TextStream:
    """Incremental detokenisation with stop strings: text deltas that never contain (part of) a stop string.

    Decodes a small window of tokens (from the last clean boundary) per token, so multi-byte characters
    split over tokens come out whole. The last ``len(longest stop) - 1`` characters are held back until
    the sequence ends, so a stop string arriving over several steps is never partly emitted.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tok, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.text, self.sent = "", 0
        self.hold = max((len(s) for s in stop), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> bool:
        """Append a token; True when a stop string appeared (the text is cut before it)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def delta(self, final: bool) -> str:
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent : end], end
        return out


@dataclass(eq=False)
class _Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stream: _TextStream
    generator: torch.Generator | None
    matcher: object | None  # pipelines.llm.structured.JsonMatcher
    output_ids: list[int] = field(default_factory=list)
    reserved: int = 0

    @property
    def next_position(self) -> int:  # the position of the last sampled token, fed at the next decode
        return len(self.prompt_ids) + len(self.output_ids) - 1


def stop_token_ids(model, tokenizer) -> set[int]:
    """EOS ids of the generation config and tokenizer, plus the chat template's end-of-turn tokens."""
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        ids.update([value] if isinstance(value, int) else (value or []))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return ids


def _holds_json(text: str) -> bool:
    """The text holds a complete JSON object (the grader's own parser: a stop never cuts an object short)."""
    from pipelines.llm.chat_data import first_json_object

    return text.rstrip().endswith("}") and first_json_object(text) is not None


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - (dim % t.dim())) + [missing, 0]
    return F.pad(t, pad)


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from a row of float logits with temperature and nucleus (top-p) sampling."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p  # the smallest prefix reaching top_p
        sorted_probs = sorted_probs * keep
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


class LLMEngine:
    """The synchronous scheduler (see the module docstring); every method is called from one thread."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_num_seqs: int = 16,
        max_prefill_tokens: int = 1024,
        max_waiting: int = 64,
        max_model_len: int | None = None,
        kv_cache_tokens: int | None = None,
        eos_token_ids: set[int] | None = None,
        prefix_cache_tokens: int = 0,
        min_prefix_tokens: int = 16,
        overlap_prefill: bool = True,
    ) -> None:
        from transformers import DynamicCache

        config = model.config.get_text_config(decoder=True)
        if getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", False):
            raise NotImplementedError("LLMEngine supports full-attention models only (no sliding-window layers)")
        if min(max_num_seqs, max_prefill_tokens, max_waiting) < 1:  # every request waits at least until a step
            raise ValueError("max_num_seqs, max_prefill_tokens and max_waiting must be >= 1")
        context = getattr(config, "max_position_embeddings", None)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.vocab_size = int(config.vocab_size)
        self.max_num_seqs, self.max_prefill_tokens, self.max_waiting = max_num_seqs, max_prefill_tokens, max_waiting
        self.max_model_len = min(x for x in (max_model_len, context) if x) if (max_model_len or context) else 2048
        self.kv_cache_tokens = kv_cache_tokens or max_num_seqs * self.max_model_len
        self.eos_token_ids = frozenset(eos_token_ids if eos_token_ids is not None else stop_token_ids(model, tokenizer))
        self._new_cache = lambda: DynamicCache(config=model.config)
        self._structured = None  # StructuredDecoder, built at the first json_schema request
        self.waiting: deque[_Sequence] = deque()
        self.running: list[_Sequence] = []
        self._cache = None  # DynamicCache, one row per running sequence (right-aligned)
        self._mask: torch.Tensor | None = None  # [rows, columns] 1 = a real token
        self._live: dict[str, _Sequence] = {}
        self._aborts: set[str] = set()
        self._idle_fns: deque[tuple[Callable[[], object], Future]] = deque()
        self._reserved = 0
        # prefix caching: the prompt KV of recent prefills (most recent last), reused for a later prompt's prefix
        self.prefix_cache_tokens, self.min_prefix_tokens = max(0, prefix_cache_tokens), max(1, min_prefix_tokens)
        self._prefixes: deque[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = deque()
        self.counters = {
            "steps": 0, "prompt_tokens": 0, "prefix_cached_tokens": 0, "generated_tokens": 0, "finished": 0,
            "aborted": 0,
        }  # fmt: skip
        self._step_s = 0.0  # moving average of a step's seconds (for retry_after)
        self.overlap_prefill = overlap_prefill
        self._cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._prefiller = None  # ThreadPoolExecutor(1): the prefills that overlap decode steps
        self._prefilling: deque[tuple[list[_Sequence], Future]] = deque()  # submitted there, oldest first

    def close(self) -> None:
        """Stop the prefill thread (if one was started); the engine must not step afterwards."""
        if self._prefiller is not None:
            self._prefiller.shutdown(wait=True)
            self._prefiller = None

    # ------------------------------------------------------------------ requests
    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a request. :class:`RequestTooLong`, :class:`QueueFull`, :class:`ValueError` (bad input or schema)."""
        if request_id in self._live:
            raise ValueError(f"request id {request_id!r} is already in flight")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if any(not 0 <= t < self.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        need = len(prompt_ids) + params.max_tokens
        limit = min(self.max_model_len, self.kv_cache_tokens)
        if need > limit:
            raise RequestTooLong(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = {need} tokens exceeds "
                f"the model's context of {limit} tokens"
            )
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"{len(self.waiting)} requests are waiting (the limit)", self.retry_after_s())
        matcher = self._structured_decoder().compile(params.json_schema) if params.json_schema is not None else None
        generator = None
        if params.temperature > 0:
            generator = torch.Generator()
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
        seq = _Sequence(
            request_id, list(prompt_ids), params, _TextStream(self.tokenizer, params.stop), generator, matcher
        )
        self.waiting.append(seq)
        self._live[request_id] = seq

    def abort(self, request_id: str) -> None:
        """End a request at the next step (finish_reason "abort"); unknown or finished ids are ignored."""
        if request_id in self._live:
            self._aborts.add(request_id)

    def abort_all(self) -> list[TokenEvent]:
        """End every request now (engine shutdown): their "abort" events."""
        for request_id in self._live:
            self._aborts.add(request_id)
        events: dict[str, TokenEvent] = {}
        self._apply_aborts(events)
        for seq in self._drain_prefills():
            self._emit(events, seq, [], "", "abort")
        return list(events.values())

    def run_when_idle(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` in the engine thread once no sequence is running; admission pauses until then.

        Requests in flight finish on the model they started with (adapter hot-swap). The returned future
        holds ``fn``'s result or exception.
        """
        done: Future = Future()
        self._idle_fns.append((fn, done))
        if not self.running and not self._prefilling:
            self._run_idle_fns()
        return done

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._prefilling or self._idle_fns or self._aborts)

    def retry_after_s(self) -> float:
        """An estimate of when a waiting slot frees: the running sequences' mean remaining steps."""
        if not self.running:
            return 1.0
        left = sum(s.params.max_tokens - len(s.output_ids) for s in self.running) / len(self.running)
        return float(min(60.0, max(0.5, left * max(self._step_s, 0.01))))

    def stats(self) -> dict:
        """Counts for metrics. ``kv_tokens_used``: tokens reserved by admitted sequences (what admission checks
        against ``kv_tokens_capacity``); ``kv_tokens_cached``: real tokens in the cache now; ``kv_tensor_tokens``:
        rows × columns of the padded cache tensor."""
        rows, cols = (0, 0) if self._mask is None else tuple(self._mask.shape)
        return {
            "running": len(self.running) + self._in_prefill(),  # admitted (prefills included)
            "waiting": len(self.waiting),
            "kv_tokens_used": self._reserved,
            "kv_tokens_capacity": self.kv_cache_tokens,
            "kv_tokens_cached": int(self._mask.sum()) if self._mask is not None else 0,
            "kv_tensor_tokens": rows * cols,
            "paused": bool(self._idle_fns),
            **self.counters,
        }

    # ------------------------------------------------------------------ the iteration
    def step(self) -> list[TokenEvent]:
        """Abort what was asked, admit + prefill waiting sequences within the budgets, then one decode step."""
        t0 = time.perf_counter()
        events: dict[str, TokenEvent] = {}
        self._apply_aborts(events)
        if self._idle_fns and not self.running and not self._prefilling:
            self._run_idle_fns()
        try:
            with torch.inference_mode():
                admitted = [] if self._idle_fns else self._admissions()
                if self._prefilling or (admitted and self.running and self._overlap()):
                    self._overlapped(admitted, events)
                else:
                    self._join(self._started(admitted, [self._prefill(seq) for seq in admitted], events))
                    if self.running:
                        self._decode(events)
        except Exception as e:
            self._fail_all()
            raise EngineError(f"generation step failed: {e!r}") from e
        self.counters["steps"] += 1
        self._step_s = (
            0.8 * self._step_s + 0.2 * (time.perf_counter() - t0) if self._step_s else time.perf_counter() - t0
        )
        return list(events.values())

    def _admissions(self) -> list[_Sequence]:
        """The waiting sequences admitted this step (taken off the queue, their tokens reserved): within
        ``max_num_seqs``, the KV budget and ``max_prefill_tokens`` (the first one always, so none starves)."""
        budget, admitted = self.max_prefill_tokens, []
        while self.waiting and len(self.running) + self._in_prefill() + len(admitted) < self.max_num_seqs:
            seq = self.waiting[0]
            need = len(seq.prompt_ids) + seq.params.max_tokens
            over_budget = budget < self.max_prefill_tokens and len(seq.prompt_ids) > budget  # the first always joins
            if self._reserved + need > self.kv_cache_tokens or over_budget:
                break
            self.waiting.popleft()
            seq.reserved, budget = need, budget - len(seq.prompt_ids)
            self._reserved += need
            admitted.append(seq)
        return admitted

    def _overlap(self) -> bool:
        """Prefill beside the decode step only when a core is free for it: with as many torch threads as cores,
        a third thread stalls the decode's team (bf16, 16 rows, 2 threads on 2 cores: 10% fewer tokens/s)."""
        return self.overlap_prefill and torch.get_num_threads() < self._cpus

    def _overlapped(self, admitted: list[_Sequence], events: dict[str, TokenEvent]) -> None:
        """The admitted sequences' prefills in a second thread (one torch thread) while this thread goes on
        decoding the running ones; each batch of prefills joins the batch at the first step boundary after it
        has finished (their first token is chosen then), and this thread never waits for one while others run.

        A prefill is about a fifth of the engine's time with mixed prompts and answers (bf16, 16 rows), and
        while it runs inline every running sequence waits for it; waiting for it at the end of each step (our
        first version) still left the engine idle a fifth of the time in a 16-client Ray Serve run, since one
        prompt's prefill on one thread takes longer than a decode step. Each computes what it did alone: the
        tokens are the same. Only the model's forward runs there; token choice (and its schema masks) and all
        bookkeeping stay in this thread."""
        if admitted:
            if self._prefiller is None:
                from concurrent.futures import ThreadPoolExecutor

                self._prefiller = ThreadPoolExecutor(
                    1, "llm-prefill", initializer=torch.set_num_threads, initargs=(1,)
                )  # fmt: skip
            self._prefilling.append((admitted, self._prefiller.submit(self._prefills_apart, admitted)))
        if self.running:
            self._decode(events)
        else:  # nothing to decode meanwhile: wait for the oldest prefills
            self._prefilling[0][1].result()
        while self._prefilling and self._prefilling[0][1].done():
            batch, future = self._prefilling[0]
            prefills = future.result()  # a failed one stays listed: _fail_all releases its sequences
            self._prefilling.popleft()
            self._join(self._started(batch, prefills, events))

    def _drain_prefills(self) -> list[_Sequence]:
        """Wait for every prefill in flight (never leave one computing while the caller ends its sequences) and
        take them off the list: their sequences, whether the prefill succeeded or failed."""
        pending = []
        while self._prefilling:
            batch, future = self._prefilling.popleft()
            future.exception()
            pending += batch
        return pending

    def _in_prefill(self) -> int:
        return sum(len(batch) for batch, _ in self._prefilling)

    def _prefills_apart(self, admitted: list[_Sequence]) -> list[tuple]:
        with torch.inference_mode():  # thread-local
            return [self._prefill(seq) for seq in admitted]

    def _started(self, admitted: list[_Sequence], prefills: list[tuple], events: dict[str, TokenEvent]) -> list:
        """Each admitted sequence's first token from its prefill's logits; those that go on: (sequence, cache)."""
        joined = []
        for seq, (cache, logits, cached) in zip(admitted, prefills):
            self.counters["prompt_tokens"] += len(seq.prompt_ids)
            self.counters["prefix_cached_tokens"] += cached
            if seq.request_id in self._aborts:  # aborted while its prefill ran in the other thread
                self._emit(events, seq, [], "", "abort")
            elif not self._advance(seq, self._choose(logits, [seq])[0], events):
                joined.append((seq, cache))
        return joined

    def _prefill(self, seq: _Sequence) -> tuple:
        """The prompt alone, unpadded (as ``generate()`` computes it): (its cache, the last position's logits,
        how many prompt tokens came from the prefix cache). Touches nothing but the prefix cache, so it may run
        beside a decode step (:meth:`_overlapped`).

        With prefix caching, the keys and values of the longest prefix this prompt shares with a recent prompt
        (a system prompt, a few-shot block) are taken from that prompt's cache and only the rest is computed."""
        cache = self._new_cache()
        start = self._reuse_prefix(seq.prompt_ids, cache)
        ids = torch.tensor([seq.prompt_ids[start:]], device=self.device)
        out = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        self._remember_prefix(seq.prompt_ids, cache)
        return cache, out.logits[:, -1, :].float(), start

    def _reuse_prefix(self, prompt: list[int], cache) -> int:
        """Load into ``cache`` the longest cached prefix of ``prompt`` (at least ``min_prefix_tokens``, and one
        token short of the whole prompt: its last position must be computed for the logits); its length, or 0."""
        best, hit = 0, None
        for entry in self._prefixes:
            n = min(len(os.path.commonprefix([entry[0], prompt])), len(prompt) - 1)
            if n > best:
                best, hit = n, entry
        if hit is None or best < self.min_prefix_tokens:
            return 0
        self._prefixes.remove(hit)
        self._prefixes.append(hit)  # most recently used
        for i, (keys, values) in enumerate(hit[1]):
            cache.update(keys[:, :, :best], values[:, :, :best], i)  # views: the cache only ever concatenates
        return best

    def _remember_prefix(self, prompt: list[int], cache) -> None:
        """Keep this prompt's keys and values for later prompts, within ``prefix_cache_tokens`` (oldest out first)."""
        if len(prompt) > self.prefix_cache_tokens:
            return
        self._prefixes.append((list(prompt), [(layer.keys, layer.values) for layer in cache.layers]))
        while sum(len(p) for p, _ in self._prefixes) > self.prefix_cache_tokens:
            self._prefixes.popleft()

    def _join(self, joined: list) -> None:
        """Left-pad the batch cache and the new sequences' caches to one width and stack them as new rows."""
        if not joined:
            return
        width = max([0 if self._mask is None else self._mask.shape[1]] + [len(s.prompt_ids) for s, _ in joined])
        masks = [] if self._mask is None else [_left_pad(self._mask, width, 1)]
        masks += [
            _left_pad(torch.ones(1, len(s.prompt_ids), dtype=torch.long, device=self.device), width, 1)
            for s, _ in joined
        ]
        caches = ([] if self._cache is None else [self._cache]) + [c for _, c in joined]
        for i, layer in enumerate(caches[0].layers):
            layer.keys = torch.cat([_left_pad(c.layers[i].keys, width, 2) for c in caches])
            layer.values = torch.cat([_left_pad(c.layers[i].values, width, 2) for c in caches])
        self._cache, self._mask = caches[0], torch.cat(masks)
        self.running.extend(s for s, _ in joined)

    def _decode(self, events: dict[str, TokenEvent]) -> None:
        rows = len(self.running)
        tokens = torch.tensor([[s.output_ids[-1]] for s in self.running], device=self.device)
        positions = torch.tensor([[s.next_position] for s in self.running], device=self.device)
        self._mask = torch.cat([self._mask, torch.ones(rows, 1, dtype=torch.long, device=self.device)], dim=1)
        out = self.model(
            input_ids=tokens, attention_mask=self._mask, position_ids=positions, cache=self._cache, use_cache=True
        )
        chosen = self._choose(out.logits[:, -1, :].float(), self.running)
        done = [i for i, (s, t) in enumerate(zip(self.running, chosen)) if self._advance(s, t, events)]
        self._drop_rows(done)

    def _choose(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        """The next token of each row: the schema mask first, then greedy or seeded sampling."""
        constrained = [(i, s.matcher) for i, s in enumerate(seqs) if s.matcher is not None]
        if constrained:
            self._structured_decoder().mask_logits(logits, constrained)
        tokens = logits.argmax(dim=-1).tolist()
        for i, s in enumerate(seqs):
            if s.params.temperature > 0:
                tokens[i] = _sample(logits[i], s.params, s.generator)
        return tokens

    def _advance(self, seq: _Sequence, token: int, events: dict[str, TokenEvent]) -> bool:
        """Append ``token`` to ``seq`` and record its event; True when the sequence has finished."""
        seq.output_ids.append(token)
        self.counters["generated_tokens"] += 1
        reason = None
        if seq.matcher is not None and not seq.matcher.consume(token):
            reason = "stop"  # cannot happen with the mask applied; never continue past a grammar error
            log.warning("request %s: token %d rejected by its schema: %s", seq.request_id, token, seq.matcher.error)
        elif token in self.eos_token_ids or seq.stream.add(token) or (seq.matcher is not None and seq.matcher.done):
            reason = "stop"
        elif seq.params.stop_after_json and _holds_json(seq.stream.text):
            reason = "stop"
        elif len(seq.output_ids) >= seq.params.max_tokens:
            reason = "length"
        self._emit(events, seq, [token], seq.stream.delta(final=reason is not None), reason)
        return reason is not None

    def _emit(self, events: dict[str, TokenEvent], seq: _Sequence, ids: list[int], text: str, reason) -> None:
        old = events.get(seq.request_id)
        events[seq.request_id] = TokenEvent(
            seq.request_id,
            (old.token_ids if old else []) + ids,
            (old.text if old else "") + text,
            reason is not None,
            reason,
            len(seq.prompt_ids),
            len(seq.output_ids),
        )
        if reason is not None:
            self._release(seq, aborted=reason == "abort")

    def _release(self, seq: _Sequence, aborted: bool) -> None:
        self._live.pop(seq.request_id, None)
        self._aborts.discard(seq.request_id)
        self._reserved -= seq.reserved
        seq.reserved = 0
        self.counters["aborted" if aborted else "finished"] += 1

    def _drop_rows(self, rows: list[int]) -> None:
        """Remove finished rows from the batch and trim the leading columns that are padding in every row."""
        if not rows:
            return
        gone = set(rows)
        keep = [i for i in range(len(self.running)) if i not in gone]
        self.running = [self.running[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(dim=0).long().argmax())  # the first column some row still uses
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _apply_aborts(self, events: dict[str, TokenEvent]) -> None:
        if not self._aborts:
            return
        for seq in [s for s in self.waiting if s.request_id in self._aborts]:
            self.waiting.remove(seq)
            self._emit(events, seq, [], "", "abort")
        rows = [i for i, s in enumerate(self.running) if s.request_id in self._aborts]
        for i in rows:
            self._emit(events, self.running[i], [], "", "abort")
        self._drop_rows(rows)
        prefilling = {seq.request_id for batch, _ in self._prefilling for seq in batch}
        self._aborts &= prefilling  # the rest are done or unknown; these end when their prefill returns

    def _fail_all(self) -> None:
        for seq in list(self.waiting) + self.running + self._drain_prefills():
            if seq.request_id in self._live:  # not already finished in the failed step
                self._release(seq, aborted=True)
        self.waiting.clear()
        self.running, self._cache, self._mask = [], None, None
        self._prefixes.clear()

    def _run_idle_fns(self) -> None:
        self._prefixes.clear()  # an idle function may change the weights (adapter swap): cached keys are stale
        while self._idle_fns:
            fn, done = self._idle_fns.popleft()
            try:
                done.set_result(fn())
            except Exception as e:  # handed to whoever waits on the future
                done.set_exception(e)

    def _structured_decoder(self):
        if self._structured is None:
            from pipelines.llm.structured import StructuredDecoder

            self._structured = StructuredDecoder(self.tokenizer, sorted(self.eos_token_ids))
        return self._structured


def engine_from_generator(gen, **kwargs) -> LLMEngine:
    """An :class:`LLMEngine` over what :func:`pipelines.llm.generation.load_generator` returns (its model and
    tokenizer, already on its device and precision); ``kwargs`` go to :class:`LLMEngine`."""
    return LLMEngine(gen.model, gen.tokenizer, **kwargs)


def set_torch_threads(n: int) -> None:
    """``torch.set_num_threads(n)``: run it in the engine's thread (OpenMP thread counts are per calling thread);
    a module-level function so it can be sent to an engine in another process."""
    torch.set_num_threads(n)


def drive(
    engine: LLMEngine,
    commands: queue.SimpleQueue,
    apply: Callable[[tuple], bool],
    publish: Callable[[list[TokenEvent], dict], None],
    fail: Callable[[EngineError], None],
) -> None:
    """The engine thread's loop: apply ``commands`` between steps (``apply`` returns False for the one that stops
    the loop), step while anything is unfinished, hand each step's events and the engine's stats to ``publish``
    (a failed step to ``fail``), sleep on the queue while there is nothing to compute. On stop, the requests
    still in flight end with "abort" events (published)."""
    running = True
    while running:
        try:  # sleep on the queue while there is nothing to compute
            command = commands.get_nowait() if engine.has_unfinished() else commands.get()
        except queue.Empty:
            command = None
        while command is not None:
            running = apply(command) and running
            try:
                command = commands.get_nowait()
            except queue.Empty:
                command = None
        if not running or not engine.has_unfinished():
            publish([], engine.stats())
            continue
        try:
            events = engine.step()
        except EngineError as e:
            log.exception("LLM engine step failed; ending the requests in flight")
            fail(e)
            events = []
        publish(events, engine.stats())
    publish(engine.abort_all(), engine.stats())


class AsyncLLMEngine:
    """The step loop of an :class:`LLMEngine` in a thread of its own; the asyncio side only awaits events.

    Requests, aborts and idle functions reach the engine thread through a queue and are applied between
    steps (so :meth:`generate` learns of :class:`QueueFull` / :class:`RequestTooLong` within one step);
    events come back with ``loop.call_soon_threadsafe``. The event loop never runs the model.
    :class:`~pipelines.llm.engine_process.ProcessLLMEngine` has the same interface with the engine in a child
    process.
    """

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.max_model_len, self.kv_cache_tokens = engine.max_model_len, engine.kv_cache_tokens
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stats = engine.stats()

    async def start(self) -> None:
        if self._thread is not None:
            return
        args = (self.engine, self._commands, self._apply, self._publish, self._fail)
        self._thread = threading.Thread(target=drive, args=args, name="llm-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the loop; requests still in flight end with an "abort" event."""
        if self._thread is None:
            return
        self._commands.put(("stop",))
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        self.engine.close()
        self._abort_streams()

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[TokenEvent]:
        """The request's events until the finished one. Raises QueueFull / RequestTooLong / ValueError before the
        first event; closing the iterator early (a client that disconnects) aborts the request and frees its slot.
        Events that arrive while the consumer is busy are handed over as one (their tokens and text joined): a
        server that falls behind streams fewer, larger chunks instead of a growing backlog of one-token ones."""
        loop = asyncio.get_running_loop()
        added: asyncio.Future = loop.create_future()
        events: asyncio.Queue = asyncio.Queue()
        self._submit(request_id, prompt_ids, params, loop, events, added)
        finished = False
        try:
            await added
            while not finished:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                later = None
                while not item.finished and not events.empty():  # steps that arrived meanwhile: one event
                    later = events.get_nowait()
                    if isinstance(later, BaseException):
                        break
                    item, later = _merged(item, later), None
                finished = item.finished
                yield item
                if later is not None:
                    raise later
        finally:
            if not finished:
                self._abort(request_id)

    def stats(self) -> dict:
        """The engine's counters as of its last step (safe to read from any thread)."""
        return dict(self._stats)

    async def run_when_idle(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` in the engine thread once the running sequences have finished (admission paused meanwhile)."""
        done: Future = Future()
        self._commands.put(("idle", fn, done))
        return await asyncio.wrap_future(done)

    # ------------------------------------------------------------------ the asyncio side
    def _submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, loop, events, added) -> None:
        if self._thread is None:
            raise RuntimeError("AsyncLLMEngine.start() was not awaited")
        self._commands.put(("add", request_id, prompt_ids, params, loop, events, added))

    def _abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def _abort_streams(self) -> None:
        self._deliver([(rid, TokenEvent(rid, [], "", True, "abort", 0, 0)) for rid in list(self._streams)])

    # ------------------------------------------------------------------ the engine thread
    def _apply(self, command: tuple) -> bool:
        kind = command[0]
        if kind == "add":
            _, request_id, prompt_ids, params, loop, events, added = command
            try:
                self.engine.add_request(request_id, prompt_ids, params)
            except Exception as e:  # QueueFull, RequestTooLong, ValueError: raised in the caller
                loop.call_soon_threadsafe(_settle, added, e)
                return True
            self._streams[request_id] = (loop, events)
            loop.call_soon_threadsafe(_settle, added, None)
        elif kind == "abort":
            self.engine.abort(command[1])
        elif kind == "idle":
            _, fn, done = command
            inner = self.engine.run_when_idle(fn)
            inner.add_done_callback(lambda f: _copy_future(f, done))
        return kind != "stop"

    def _publish(self, events: list[TokenEvent], stats: dict) -> None:
        self._deliver([(event.request_id, event) for event in events])
        self._stats = stats

    def _fail(self, error: BaseException) -> None:
        self._deliver([(request_id, error) for request_id in list(self._streams)])

    def _deliver(self, items: list[tuple[str, TokenEvent | BaseException]]) -> None:
        """Hand one step's events (or errors) to their streams: one call per event loop (a server has one).
        A finished event or an error ends its stream."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request_id, item in items:
            finished = isinstance(item, BaseException) or item.finished
            target = self._streams.pop(request_id, None) if finished else self._streams.get(request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], item))
        for loop, puts in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, puts)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                pass


def _put_all(items: list[tuple[asyncio.Queue, TokenEvent | BaseException]]) -> None:
    for events, item in items:
        events.put_nowait(item)


def _merged(first: TokenEvent, then: TokenEvent) -> TokenEvent:
    """Two consecutive events of one request as one (its tokens and text in order; the later one's state)."""
    return TokenEvent(
        then.request_id,
        first.token_ids + then.token_ids,
        first.text + then.text,
        then.finished,
        then.finish_reason,
        then.prompt_tokens,
        then.completion_tokens,
    )


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    future.set_exception(error) if error is not None else future.set_result(None)


def _copy_future(source: Future, target: Future) -> None:
    if source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())
