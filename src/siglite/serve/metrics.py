"""Prometheus metrics of one server (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ROUTES = ("/v1/embeddings", "/v1/classify", "/v1/models", "/health/live", "/health/ready", "/metrics")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Requests by route and status, queue depth, batch sizes, per-stage latency (read, decode, preprocess, queue,
    model)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("siglite_requests", "HTTP requests by route and status code", ["route", "status"],
                                registry=r)
        self.request_seconds = Histogram("siglite_request_seconds", "HTTP request latency", ["route"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("siglite_queue_depth", "items waiting in the batch queue", ["model", "modality"],
                                 registry=r)
        self.admitted = Gauge("siglite_admitted_items", "items admitted (queued or being decoded)",
                              ["model", "modality"], registry=r)
        self.batch_size = Histogram("siglite_batch_size", "items per engine batch", ["model", "modality"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.stage_seconds = Histogram("siglite_stage_seconds", "time per item (read/decode/preprocess/queue) or "
                                       "per batch (model)", ["stage", "model", "modality"], buckets=_LATENCY_BUCKETS,
                                       registry=r)

    def route(self, path: str) -> str:
        return path if path in ROUTES else "other"  # bounded label values whatever paths clients try

    def watch_batcher(self, model: str, modality: str, batcher) -> None:
        self.queue_depth.labels(model, modality).set_function(lambda: batcher.queued)
        self.admitted.labels(model, modality).set_function(lambda: batcher.admitted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
