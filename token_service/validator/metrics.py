"""Prometheus metrics of one validator (all workers, when PROMETHEUS_MULTIPROC_DIR is set)."""
from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r = self.registry = CollectorRegistry()
        self.decisions = Counter("mltokens_validator_decisions", "Decisions by HTTP status and reason.",
                                 ["status", "reason"], registry=r)
        self.latency = Histogram("mltokens_validator_decision_seconds", "Time to decide, in seconds.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.revocations = Gauge("mltokens_validator_revocations", "Entries in the in-memory revocation set.",
                                 registry=r, multiprocess_mode="max")
        self.revocation_age = Gauge("mltokens_validator_revocation_age_seconds",
                                    "Seconds since the revocation set was last confirmed current (worst worker).",
                                    registry=r, multiprocess_mode="max")
        self.key_refreshes = Counter("mltokens_validator_key_refreshes", "JWKS fetches by issuer and result.",
                                     ["issuer", "result"], registry=r)
        self.feed_reconnects = Counter("mltokens_validator_revocation_feed_reconnects",
                                       "Times a worker lost its PostgreSQL LISTEN connection and reconnected.",
                                       registry=r)
        self.cache_entries = Gauge("mltokens_validator_token_cache_entries", "Verified tokens cached.",
                                   registry=r, multiprocess_mode="sum")
        self.ratelimit_redis_errors = Counter(
            "mltokens_validator_ratelimit_redis_errors",
            "Rate limit checks that could not reach Redis and were counted locally instead.", registry=r)
        self.ratelimit_fallback = Gauge(
            "mltokens_validator_ratelimit_local_fallback",
            "1 while a worker counts rate limits locally because Redis is unreachable.",
            registry=r, multiprocess_mode="max")
        self._children: dict[tuple[int, str], Counter] = {}

    def decision(self, status: int, reason: str, seconds: float) -> None:
        child = self._children.get((status, reason))
        if child is None:
            child = self._children[(status, reason)] = self.decisions.labels(str(status), reason)
        child.inc()
        self.latency.observe(seconds)

    def key_refresh(self, issuer: str, result: str) -> None:
        self.key_refreshes.labels(issuer, result).inc()

    def ratelimit_backend(self, state: str) -> None:
        """`redis_error` (counted locally this time) or `redis_ok` (shared counters again)."""
        if state == "redis_error":
            self.ratelimit_redis_errors.inc()
            self.ratelimit_fallback.set(1)
        else:
            self.ratelimit_fallback.set(0)

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
