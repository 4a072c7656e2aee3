"""Prometheus metrics of the LM replica (``prometheus_client``, a private registry, as serving/telemetry.py).

Latency as users feel it (time to first token, time per output token, whole request), throughput
(``rate(ticketops_llm_completion_tokens_total[1m])`` and a 10 s ``tokens_per_second`` gauge), and the engine's
state read at scrape time: running and waiting sequences, KV-cache tokens used and capacity.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_WINDOW_S = 10.0


class LLMMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "ticketops_llm_"
        self.requests = Counter(
            f"{p}requests_total", "/v1 requests by endpoint and status", ["endpoint", "code"], registry=r
        )
        self.ttft = Histogram(
            f"{p}time_to_first_token_seconds", "Time to first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            f"{p}time_per_output_token_seconds",
            "Mean time per output token after the first, per request",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            f"{p}request_latency_seconds", "Whole generation inside the replica", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter(f"{p}prompt_tokens_total", "Prompt tokens prefilled", registry=r)
        self.completion_tokens = Counter(f"{p}completion_tokens_total", "Tokens generated", registry=r)
        self.finished = Counter(f"{p}finished_total", "Finished generations by reason", ["reason"], registry=r)
        self.tokens_per_s = Gauge(
            f"{p}tokens_per_second", f"Tokens generated per second (last {RATE_WINDOW_S:.0f} s)", registry=r
        )
        self.running = Gauge(f"{p}running_sequences", "Sequences being decoded", registry=r)
        self.waiting = Gauge(f"{p}waiting_sequences", "Requests waiting for a slot", registry=r)
        self.kv_used = Gauge(f"{p}kv_cache_tokens_used", "KV-cache tokens held by sequences", registry=r)
        self.kv_capacity = Gauge(f"{p}kv_cache_tokens_capacity", "KV-cache token budget", registry=r)
        self.kv_usage = Gauge(f"{p}kv_cache_usage_ratio", "KV-cache tokens used / capacity", registry=r)
        self.prefix_cached = Gauge(
            f"{p}prefix_cached_tokens",
            "Prompt tokens taken from the prefix cache, not prefilled, since the engine started",
            registry=r,
        )
        self.model_info = Gauge(f"{p}model_info", "1 for the LM version being served", ["model", "version"], registry=r)
        self.swaps = Counter(f"{p}adapter_swaps_total", "Hot swaps to a new registry version", ["kind"], registry=r)
        self.log_rows = Counter(f"{p}log_rows_total", "Rows appended to the prediction log", ["kind"], registry=r)
        self._tokens: deque[tuple[float, int]] = deque()
        self.tokens_per_s.set_function(self._rate)

    def watch_engine(self, stats: Callable[[], dict | None]) -> None:
        """Read the engine's ``stats()`` at scrape time (None: no engine yet, every gauge 0)."""

        def read(key: str) -> Callable[[], float]:
            return lambda: float((stats() or {}).get(key, 0) or 0)

        self.running.set_function(read("running"))
        self.waiting.set_function(read("waiting"))
        self.kv_used.set_function(read("kv_tokens_used"))
        self.kv_capacity.set_function(read("kv_tokens_capacity"))
        self.prefix_cached.set_function(read("prefix_cached_tokens"))

        def usage() -> float:
            s = stats() or {}
            cap = float(s.get("kv_tokens_capacity") or 0)
            return float(s.get("kv_tokens_used") or 0) / cap if cap else 0.0

        self.kv_usage.set_function(usage)

    def observe_tokens(self, n: int) -> None:
        if n > 0:
            self.completion_tokens.inc(n)
            self._tokens.append((time.monotonic(), n))

    def observe_finished(
        self, reason: str, ttft_s: float | None, total_s: float, completion_tokens: int, prompt_tokens: int
    ) -> None:
        self.finished.labels(reason=reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
            if completion_tokens > 1:
                self.tpot.observe((total_s - ttft_s) / (completion_tokens - 1))
        self.latency.observe(total_s)

    def _rate(self) -> float:
        cut = time.monotonic() - RATE_WINDOW_S
        while self._tokens and self._tokens[0][0] < cut:
            self._tokens.popleft()
        return sum(n for _, n in self._tokens) / RATE_WINDOW_S

    def set_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model=name, version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
