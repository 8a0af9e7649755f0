"""Prometheus metrics of one validator (all workers, when PROMETHEUS_MULTIPROC_DIR is set).

Decisions are counted in plain dicts and lists, and `flush` moves them into the Prometheus
metrics: every second (the validator's gauge task), before each scrape, and at shutdown.
A prometheus_client `inc` or `observe` takes a lock (and writes an mmap with several
workers) each time, a noticeable part of a cached decision's cost (docs/benchmarks.md,
"Costs the code relies on").
"""

from __future__ import annotations

import os
from bisect import bisect_left

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .reasons import Reason

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class BatchedHistogram(Histogram):
    """A Histogram that also takes observations already sorted into its buckets."""

    def observe_counts(self, counts: list[int], total: float) -> None:
        """Add `counts[i]` observations to bucket i (`i == len(buckets)`: +Inf) and `total` to the sum."""
        self._raise_if_not_observable()
        self._sum.inc(total)
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r = self.registry = CollectorRegistry()
        self.decisions = Counter(
            "mltokens_validator_decisions", "Decisions by HTTP status and reason.", ["status", "reason"], registry=r
        )
        self.latency = BatchedHistogram(
            "mltokens_validator_decision_seconds", "Time to decide, in seconds.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.revocations = Gauge(
            "mltokens_validator_revocations",
            "Entries in the in-memory revocation set.",
            registry=r,
            multiprocess_mode="max",
        )
        self.revocation_age = Gauge(
            "mltokens_validator_revocation_age_seconds",
            "Seconds since the revocation set was last confirmed current (worst worker).",
            registry=r,
            multiprocess_mode="max",
        )
        self.key_refreshes = Counter(
            "mltokens_validator_key_refreshes", "JWKS fetches by issuer and result.", ["issuer", "result"], registry=r
        )
        self.feed_reconnects = Counter(
            "mltokens_validator_revocation_feed_reconnects",
            "Times a worker lost its PostgreSQL LISTEN connection and reconnected.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "mltokens_validator_token_cache_entries", "Verified tokens cached.", registry=r, multiprocess_mode="sum"
        )
        self.ratelimit_redis_errors = Counter(
            "mltokens_validator_ratelimit_redis_errors",
            "Rate limit checks that could not reach Redis and were counted locally instead.",
            registry=r,
        )
        self.ratelimit_fallback = Gauge(
            "mltokens_validator_ratelimit_local_fallback",
            "1 while a worker counts rate limits locally because Redis is unreachable.",
            registry=r,
            multiprocess_mode="max",
        )
        self.introspections = Counter(
            "mltokens_validator_introspections",
            "RFC 7662 introspection answers by `active` (a 503 or a refused caller is neither).",
            ["active"],
            registry=r,
        )
        self._decisions: dict[Reason, int] = {}
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def decision(self, reason: Reason, seconds: float) -> None:
        """Count a decision (its status is its reason's) and how long it took."""
        self._decisions[reason] = self._decisions.get(reason, 0) + 1
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # bucket i: seconds <= bound i
        self._latency_sum += seconds

    def decisions_in_buckets(self, reason: Reason, latency: list[int], seconds: float) -> None:
        """Count decisions already sorted into the latency buckets (`latency[i]` in bucket i), taking
        `seconds` in all."""
        count = sum(latency)
        if count:
            self._decisions[reason] = self._decisions.get(reason, 0) + count
            counts = self._latency_counts
            for bucket, n in enumerate(latency):
                counts[bucket] += n
            self._latency_sum += seconds

    def flush(self) -> None:
        """Move the decisions counted since the last flush into the Prometheus metrics."""
        decisions, self._decisions = self._decisions, {}
        for reason, count in decisions.items():
            self.decisions.labels(str(reason.status), reason).inc(count)
        if decisions:
            counts, self._latency_counts = self._latency_counts, [0] * (len(LATENCY_BUCKETS) + 1)
            total, self._latency_sum = self._latency_sum, 0.0
            self.latency.observe_counts(counts, total)

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
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
