"""Prometheus metrics of one replica (``prometheus_client``, a private registry per service)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Requests, errors, latency, batch sizes, queue depth, the model being served, swaps and log rows."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "ticketops_requests_total", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.errors = Counter(
            "ticketops_request_errors_total",
            "Requests that failed, by endpoint and reason",
            ["endpoint", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "ticketops_request_latency_seconds",
            "Request latency inside the replica",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter("ticketops_texts_predicted_total", "Texts answered", registry=r)
        self.batch_size = Histogram("ticketops_batch_size", "Texts per model call", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "ticketops_batch_seconds", "Duration of one model call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_tokens = Counter(
            "ticketops_batch_tokens_total",
            "Tokens of the texts in model calls (continuous batching; real/padded = padding efficiency)",
            ["kind"],
            registry=r,
        )
        self.queue_depth = Gauge("ticketops_queue_depth", "Texts waiting for the model", registry=r)
        self.model_version = Gauge("ticketops_model_version", "Registry version being served (0: none)", registry=r)
        self.model_info = Gauge(
            "ticketops_model_info", "1 for the model being served", ["model", "version"], registry=r
        )
        self.swaps = Counter("ticketops_model_swaps_total", "Hot swaps to a new registry version", registry=r)
        self.log_rows = Counter(
            "ticketops_prediction_log_rows_total", "Rows appended to the prediction log", ["kind"], registry=r
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def observe_batch(self, size: int, seconds: float, tokens: int | None = None, padded: int | None = None) -> None:
        """One model call of ``size`` texts; ``tokens`` (their lengths summed) and ``padded`` (size x longest)
        when the runner knows them, so ``rate(real) / rate(padded)`` shows how much of the compute padding takes."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        if tokens is not None and padded is not None:
            self.batch_tokens.labels(kind="real").inc(tokens)
            self.batch_tokens.labels(kind="padded").inc(padded)

    def set_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model=name, version=version).set(1)
        try:
            self.model_version.set(float(version))
        except ValueError:
            self.model_version.set(-1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
