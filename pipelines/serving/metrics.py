"""Prometheus metrics of the serving app (``GET /metrics``).

With several worker processes each one writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` (set by
``pipelines/serving/server.py`` before the workers start) and ``/metrics`` adds them up, whichever worker answers.
Counts are then per process, not per app: tests compare before and after.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

# Milliseconds matter here: a checkout waits on the score.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """The app's counters and histograms, registered in their own registry (one app, one set)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "storefront_serving_requests",
            "Requests by model, serving version, route and HTTP status.",
            ["model", "version", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "storefront_serving_request_seconds",
            "Time from request to response inside the app, by model, version and route.",
            ["model", "version", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.entities = Counter(
            "storefront_serving_entities", "Entities scored, by model and version.", ["model", "version"], registry=r
        )
        self.missing = Counter(
            "storefront_serving_entities_missing_features",
            "Entities scored without any stored online feature (cold start or a store gap), by model and version.",
            ["model", "version"],
            registry=r,
        )
        self.unlogged = Counter(
            "storefront_serving_predictions_not_logged",
            "Scores the prediction log refused because it was full (the lake is slow or unreachable).",
            ["model"],
            registry=r,
        )
        self.swaps = Counter("storefront_serving_swaps", "Champion versions swapped in.", ["model"], registry=r)
        self.refusals = Counter(
            "storefront_serving_refusals",
            "Versions refused (the audit check, the load or the canary failed).",
            ["model"],
            registry=r,
        )
        self.auth_failures = Counter(
            "storefront_serving_auth_failures",
            "Requests refused by authentication (401) or scope (403).",
            ["status"],
            registry=r,
        )

    def model_event(self, model: str, event: str) -> None:
        (self.swaps if event == "swap" else self.refusals).labels(model).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every worker's samples (or this process's, with one worker)."""
        # prometheus_client picks file-backed values at import when PROMETHEUS_MULTIPROC_DIR is set (the server
        # sets it; importing Feast sets it too): then samples live in the directory, one file per process.
        if getattr(values.ValueClass, "_multiprocess", False):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
